/* SPDX-License-Identifier: MIT */
/*
 * Span records -> the protobuf bytes of an OTLP ExportTraceServiceRequest
 * (src/observe/otlp_trace.proto): one resource (service.name,
 * telemetry.sdk.*), one instrumentation scope ("mica"), the batch's spans.
 *
 * Written by hand, not through protoc-c's structs: with protobuf-c a span
 * cost about 8,600 instructions to pack (a generic, descriptor-driven walk,
 * once to size and once to write, over a struct per attribute and per
 * value that first had to be filled). Here a record's attributes and
 * events were encoded when they were set (trace.c, wire.h), and a span is
 * its fixed fields plus two copies; sizes come first (nested messages are
 * length-prefixed), then one pass writes. tests/unit/observe/test_otlp.c
 * holds the bytes to the .proto: protoc-c decodes them and packs them back
 * byte for byte. The receiver's answer (ExportTraceServiceResponse) is
 * decoded with protoc-c's generated code.
 *
 * As protobuf-c does for proto3, scalar fields at their default (0, "")
 * are left out, fields go in field-number order, and a oneof member or a
 * sub-message that is set is written even when empty.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "observe/trace_internal.h"
#include "observe/wire.h"
#include "otlp_trace.pb-c.h"

static size_t str_size(uint32_t field, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n ? mica__lenf(field, n) : 0;
}

static uint8_t *put_str(uint8_t *p, uint32_t field, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n ? mica__bytes(p, field, s, n) : p;
}

static size_t status_size(const mica__span_rec_t *r)
{
    return str_size(MICA__STATUS_MESSAGE, r->status_msg) + 1 + mica__vsize(r->status);
}

static size_t span_size(const mica__span_rec_t *r)
{
    size_t n = mica__lenf(MICA__SPAN_TRACE_ID, 16) + mica__lenf(MICA__SPAN_SPAN_ID, 8) +
               str_size(MICA__SPAN_TRACE_STATE, r->tracestate) +
               (r->has_parent ? mica__lenf(MICA__SPAN_PARENT, 8) : 0) +
               str_size(MICA__SPAN_NAME, r->name) + (r->kind ? 2 : 0) + (r->start_ns ? 9 : 0) +
               (r->end_ns ? 9 : 0) + r->attrs_len + r->events_len;
    if (r->dropped_attrs)
        n += 1 + mica__vsize(r->dropped_attrs);
    if (r->dropped_events)
        n += 1 + mica__vsize(r->dropped_events);
    if (r->status != MICA_SPAN_UNSET)
        n += mica__lenf(MICA__SPAN_STATUS, status_size(r));
    if (r->sc.flags)
        n += mica__vsize(MICA__TAG(MICA__SPAN_FLAGS, MICA__WT_FIXED32)) + 4;
    return n;
}

static uint8_t *put_span(uint8_t *p, const mica__span_rec_t *r, size_t size)
{
    p = mica__head(p, MICA__SS_SPANS, size);
    p = mica__bytes(p, MICA__SPAN_TRACE_ID, r->sc.trace_id, 16);
    p = mica__bytes(p, MICA__SPAN_SPAN_ID, r->sc.span_id, 8);
    p = put_str(p, MICA__SPAN_TRACE_STATE, r->tracestate);
    if (r->has_parent)
        p = mica__bytes(p, MICA__SPAN_PARENT, r->parent_id, 8);
    p = put_str(p, MICA__SPAN_NAME, r->name);
    if (r->kind)
        p = mica__uint(p, MICA__SPAN_KIND, r->kind);
    if (r->start_ns)
        p = mica__fixed(p, MICA__SPAN_START, (uint64_t)r->start_ns, 8);
    if (r->end_ns)
        p = mica__fixed(p, MICA__SPAN_END, (uint64_t)r->end_ns, 8);
    memcpy(p, r->attrs_enc, r->attrs_len);
    p += r->attrs_len;
    if (r->dropped_attrs)
        p = mica__uint(p, MICA__SPAN_DROPPED_ATTRS, r->dropped_attrs);
    memcpy(p, r->events_enc, r->events_len);
    p += r->events_len;
    if (r->dropped_events)
        p = mica__uint(p, MICA__SPAN_DROPPED_EVENTS, r->dropped_events);
    if (r->status != MICA_SPAN_UNSET) {
        p = mica__head(p, MICA__SPAN_STATUS, status_size(r));
        p = put_str(p, MICA__STATUS_MESSAGE, r->status_msg);
        p = mica__uint(p, MICA__STATUS_CODE, r->status);
    }
    if (r->sc.flags)
        p = mica__fixed(p, MICA__SPAN_FLAGS, r->sc.flags, 4);
    return p;
}

int mica__otlp_encode(const mica_tracer_t *t, mica__span_rec_t *const *recs, size_t n,
                      uint8_t **out, size_t *len)
{
    static const char *const keys[3] = {"service.name", "telemetry.sdk.name",
                                        "telemetry.sdk.version"};
    mica__value_t res[3] = {{.type = MICA_LOG_T_STR, .v.s = t->service_name},
                            {.type = MICA_LOG_T_STR, .v.s = "mica"},
                            {.type = MICA_LOG_T_STR, .v.s = MICA__VERSION}};
    size_t res_any[3], res_body[3], res_size = 0;
    for (int i = 0; i < 3; i++) {
        res[i].slen = strlen(res[i].v.s);
        res_body[i] = mica__kv_size(strlen(keys[i]), &res[i], &res_any[i]);
        res_size += mica__lenf(MICA__RES_ATTRS, res_body[i]);
    }
    size_t vlen = strlen(MICA__VERSION);
    size_t scope_size = mica__lenf(MICA__SCOPE_NAME, 4) + mica__lenf(MICA__SCOPE_VERSION, vlen);
    size_t ss_size = mica__lenf(MICA__SS_SCOPE, scope_size);
    size_t *sizes = mica__malloc(n * sizeof(*sizes) + 1); /* each span's, for the writing pass */
    if (!sizes)
        return MICA_ENOMEM;
    for (size_t i = 0; i < n; i++)
        ss_size += mica__lenf(MICA__SS_SPANS, sizes[i] = span_size(recs[i]));
    size_t rs_size =
        mica__lenf(MICA__RS_RESOURCE, res_size) + mica__lenf(MICA__RS_SCOPE_SPANS, ss_size);
    size_t total = mica__lenf(MICA__REQ_RESOURCE_SPANS, rs_size);

    uint8_t *buf = mica__malloc(total), *p = buf;
    if (!buf) {
        mica__free(sizes);
        return MICA_ENOMEM;
    }
    p = mica__head(p, MICA__REQ_RESOURCE_SPANS, rs_size);
    p = mica__head(p, MICA__RS_RESOURCE, res_size);
    for (int i = 0; i < 3; i++)
        p = mica__put_kv(p, MICA__RES_ATTRS, keys[i], strlen(keys[i]), &res[i], res_any[i],
                         res_body[i], NULL);
    p = mica__head(p, MICA__RS_SCOPE_SPANS, ss_size);
    p = mica__head(p, MICA__SS_SCOPE, scope_size);
    p = mica__bytes(p, MICA__SCOPE_NAME, "mica", 4);
    p = mica__bytes(p, MICA__SCOPE_VERSION, MICA__VERSION, vlen);
    for (size_t i = 0; i < n; i++)
        p = put_span(p, recs[i], sizes[i]);
    mica__free(sizes);
    *out = buf;
    *len = (size_t)(p - buf);
    return *len == total ? 0 : MICA_EINTERNAL; /* sizes and writes disagree: a bug */
}

static void *pb_alloc(void *data, size_t size)
{
    return mica__malloc(size);
}

static void pb_free(void *data, void *p)
{
    mica__free(p);
}

static ProtobufCAllocator mica__otlp_allocator = {pb_alloc, pb_free, NULL};

int64_t mica__otlp_rejected(const void *body, size_t len, char *msg, size_t size)
{
    if (!len)
        return 0;
    Mica__Otlp__ExportTraceServiceResponse *r =
        mica__otlp__export_trace_service_response__unpack(&mica__otlp_allocator, len, body);
    if (!r)
        return 0; /* not ours to judge: the status said it was accepted */
    int64_t n = 0;
    if (r->partial_success) {
        n = r->partial_success->rejected_spans;
        const char *m = r->partial_success->error_message;
        snprintf(msg, size, "%s", m ? m : "");
    }
    mica__otlp__export_trace_service_response__free_unpacked(r, &mica__otlp_allocator);
    return n;
}

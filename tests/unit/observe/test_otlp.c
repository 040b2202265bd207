/* SPDX-License-Identifier: MIT */
/*
 * The OTLP encoder (src/observe/trace_otlp.c, wire.h) writes protobuf by
 * hand for speed; here protoc-c's code generated from the same .proto
 * decodes what it wrote, the values come back as set, and protoc-c packs
 * them back to the same bytes -- which holds the hand-written field
 * numbers, wire types, default-omission and order to the .proto. Also:
 * attribute limits and replacement, events, partial-success answers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "observe/trace_internal.h"
#include "otlp_trace.pb-c.h"

typedef Mica__Otlp__KeyValue kv_t;
typedef Mica__Otlp__AnyValue any_t;

/* ---- records, made through the span API ------------------------------------------------ */

static mica_span_t *span(int i)
{
    mica_span_t *sp = calloc(1, sizeof(*sp));
    mica__span_rec_t *r = calloc(1, sizeof(*r));
    for (int b = 0; b < 16; b++)
        r->sc.trace_id[b] = (uint8_t)(0x40 + b + i);
    for (int b = 0; b < 8; b++)
        r->sc.span_id[b] = (uint8_t)(0x80 + b * 3 + i);
    r->sc.flags = (uint8_t)(i % 2);
    r->start_ns = 1764000000000000000 + i * 1000;
    r->end_ns = r->start_ns + 123456789;
    sp->sc = r->sc;
    sp->rec = r;
    return sp;
}

/*
 * Encodes `n` records, then: protoc-c decodes the bytes, and packing what
 * it decoded gives the same bytes back -- every field known to the .proto,
 * with its type, in order, defaults left out (an unknown or misnumbered
 * field would be kept aside by protobuf-c and re-packed at the end).
 * Returns the decoded request (free it).
 */
static Mica__Otlp__ExportTraceServiceRequest *round_trip(mica__span_rec_t **recs, size_t n)
{
    mica_tracer_t t = {.service_name = "users"};
    uint8_t *mine;
    size_t len;
    assert_int_equal(mica__otlp_encode(&t, recs, n, &mine, &len), 0);
    Mica__Otlp__ExportTraceServiceRequest *m =
        mica__otlp__export_trace_service_request__unpack(NULL, len, mine);
    assert_non_null(m);
    size_t again_len = mica__otlp__export_trace_service_request__get_packed_size(m);
    uint8_t *again = malloc(again_len + 1);
    mica__otlp__export_trace_service_request__pack(m, again);
    assert_int_equal(again_len, len);
    assert_memory_equal(again, mine, len);
    free(again);
    free(mine);
    assert_int_equal(m->n_resource_spans, 1);
    assert_int_equal(m->resource_spans[0]->n_scope_spans, 1);
    assert_int_equal(m->resource_spans[0]->scope_spans[0]->n_spans, n);
    return m;
}

static const Mica__Otlp__AnyValue *attr_of(Mica__Otlp__KeyValue **kv, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(kv[i]->key, key) == 0)
            return kv[i]->value;
    return NULL;
}

static void test_the_encoder_writes_what_protoc_c_reads_and_packs_the_same(void **state)
{
    mica_span_t *s[5];
    /* a server span: parent, tracestate, every attribute type, an error */
    s[0] = span(0);
    mica__span_rec_t *r = s[0]->rec;
    r->has_parent = true;
    memcpy(r->parent_id, "\x12\x34\x56\x78\x9a\xbc\xde\xf0", 8);
    mica__span_tracestate(s[0], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    mica__span_name(s[0], "GET", 3, "/users/{id}", 11);
    r->kind = MICA_SPAN_SERVER;
    MICA__ATTR_STR(s[0], "http.request.method", "GET", 3);
    MICA__ATTR_INT(s[0], "http.response.status_code", 503);
    mica_span_set_attrs(
        s[0],
        (mica_log_field_t[]){MICA_LOG_INT("negative", -7), MICA_LOG_INT("big", INT64_MAX),
                             MICA_LOG_FLOAT("ratio", 0.25), MICA_LOG_FLOAT("zero", 0.0),
                             MICA_LOG_BOOL("yes", 1), MICA_LOG_BOOL("no", 0),
                             MICA_LOG_STR("empty", ""), MICA_LOG_STR("again", "first"),
                             MICA_LOG_STR("", "x"), MICA_LOG_STR("again", "second")},
        10);
    mica_span_set_status(s[0], MICA_SPAN_ERROR, "upstream said no");
    /* events with attributes, one unnamed; more than the record holds */
    s[1] = span(1);
    r = s[1]->rec;
    mica__span_name(s[1], "load user", 9, NULL, 0);
    r->kind = MICA_SPAN_INTERNAL;
    mica_span_add_event(s[1], "cache miss", (mica_log_field_t[]){MICA_LOG_STR("key", "u:7")}, 1);
    mica_span_add_event(s[1], NULL, (mica_log_field_t[]){MICA_LOG_BOOL("hit", 0)}, 1);
    for (int i = 0; i < 10; i++)
        mica_span_add_event(s[1], "tick", NULL, 0);
    mica_span_set_int(s[1], "user.id", 7);
    mica_span_set_status(s[1], MICA_SPAN_OK, NULL);
    mica_span_set_status(s[1], MICA_SPAN_ERROR, "ignored: OK is final");
    /* nothing but ids: every default left out */
    s[2] = span(2);
    s[2]->rec->start_ns = s[2]->rec->end_ns = 0;
    s[2]->rec->sc.flags = 0;
    /* long values: two-byte lengths all the way up, and more than fits */
    s[3] = span(3);
    static char longv[700];
    memset(longv, 'v', sizeof(longv) - 1);
    mica_span_set_str(s[3], "long", longv);
    mica_span_set_str(s[3], "long2", longv); /* no room left: dropped */
    for (int i = 0; i < 40; i++)
        mica_span_set_int(s[3], "k", i); /* one key, set 40 times */
    s[3]->rec->kind = MICA_SPAN_CLIENT;
    s[4] = span(4);
    mica_span_set_status(s[4], MICA_SPAN_ERROR, NULL);
    for (int i = 0; i < 40; i++) {
        char k[8];
        snprintf(k, sizeof(k), "k%d", i);
        mica_span_set_int(s[4], k, i); /* 32 fit */
    }

    mica__span_rec_t *recs[5];
    for (int i = 0; i < 5; i++)
        recs[i] = s[i]->rec;
    for (size_t n = 1; n <= 5; n++)
        mica__otlp__export_trace_service_request__free_unpacked(round_trip(recs, n), NULL);

    Mica__Otlp__ExportTraceServiceRequest *m = round_trip(recs, 5);
    const Mica__Otlp__ResourceSpans *rs = m->resource_spans[0];
    const Mica__Otlp__AnyValue *sn =
        attr_of(rs->resource->attributes, rs->resource->n_attributes, "service.name");
    assert_non_null(sn);
    assert_string_equal(sn->string_value, "users");
    Mica__Otlp__Span **sp = rs->scope_spans[0]->spans;
    assert_string_equal(sp[0]->name, "GET /users/{id}");
    assert_string_equal(sp[0]->trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    assert_int_equal(sp[0]->parent_span_id.len, 8);
    assert_int_equal(sp[0]->kind, MICA__OTLP__SPAN__SPAN_KIND__SPAN_KIND_SERVER);
    assert_int_equal(sp[0]->n_attributes, 11); /* "again" once; the empty key kept */
    Mica__Otlp__KeyValue **a = sp[0]->attributes;
    size_t na = sp[0]->n_attributes;
    assert_int_equal(attr_of(a, na, "http.response.status_code")->int_value, 503);
    assert_int_equal(attr_of(a, na, "negative")->int_value, -7);
    assert_int_equal(attr_of(a, na, "big")->int_value, INT64_MAX);
    assert_true(attr_of(a, na, "ratio")->double_value == 0.25);
    assert_int_equal(attr_of(a, na, "zero")->value_case, MICA__OTLP__ANY_VALUE__VALUE_DOUBLE_VALUE);
    assert_int_equal(attr_of(a, na, "yes")->bool_value, 1);
    assert_int_equal(attr_of(a, na, "no")->value_case, MICA__OTLP__ANY_VALUE__VALUE_BOOL_VALUE);
    assert_string_equal(attr_of(a, na, "empty")->string_value, "");
    assert_string_equal(attr_of(a, na, "again")->string_value, "second");
    assert_string_equal(a[na - 1]->key, "again"); /* set again: moved to the end */
    assert_int_equal(sp[0]->status->code, MICA__OTLP__STATUS__STATUS_CODE__STATUS_CODE_ERROR);
    assert_string_equal(sp[0]->status->message, "upstream said no");

    assert_int_equal(sp[1]->n_events, 8);
    assert_int_equal(sp[1]->dropped_events_count, 4);
    assert_string_equal(sp[1]->events[0]->name, "cache miss");
    assert_string_equal(sp[1]->events[0]->attributes[0]->value->string_value, "u:7");
    assert_string_equal(sp[1]->events[1]->name, "");
    assert_true(sp[1]->events[1]->time_unix_nano >= sp[1]->events[0]->time_unix_nano);
    assert_int_equal(sp[1]->n_attributes, 1);
    assert_int_equal(sp[1]->status->code, MICA__OTLP__STATUS__STATUS_CODE__STATUS_CODE_OK);

    assert_int_equal(sp[2]->start_time_unix_nano, 0);
    assert_int_equal(sp[2]->flags, 0);
    assert_int_equal(sp[3]->n_attributes, 2); /* long, and k's last value */
    assert_int_equal(attr_of(sp[3]->attributes, 2, "k")->int_value, 39);
    assert_int_equal(sp[3]->dropped_attributes_count, 1);
    assert_int_equal(sp[4]->n_attributes, 32);
    assert_int_equal(sp[4]->dropped_attributes_count, 8);
    assert_string_equal(sp[4]->status->message, "");
    mica__otlp__export_trace_service_request__free_unpacked(m, NULL);

    /* a batch of 512 */
    mica__span_rec_t *many[512];
    for (int i = 0; i < 512; i++)
        many[i] = recs[i % 5];
    mica__otlp__export_trace_service_request__free_unpacked(round_trip(many, 512), NULL);
    for (int i = 0; i < 5; i++) {
        free(s[i]->rec);
        free(s[i]);
    }
}

static void test_a_partial_success_is_read(void **state)
{
    char msg[64] = "x";
    assert_int_equal(mica__otlp_rejected(NULL, 0, msg, sizeof(msg)), 0);
    Mica__Otlp__ExportTracePartialSuccess ps = MICA__OTLP__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    ps.rejected_spans = 3;
    ps.error_message = "too old";
    Mica__Otlp__ExportTraceServiceResponse r = MICA__OTLP__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    r.partial_success = &ps;
    uint8_t buf[64];
    size_t n = mica__otlp__export_trace_service_response__pack(&r, buf);
    assert_int_equal(mica__otlp_rejected(buf, n, msg, sizeof(msg)), 3);
    assert_string_equal(msg, "too old");
    Mica__Otlp__ExportTraceServiceResponse ok = MICA__OTLP__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    n = mica__otlp__export_trace_service_response__pack(&ok, buf);
    assert_int_equal(mica__otlp_rejected(buf, n, msg, sizeof(msg)), 0);
    assert_int_equal(mica__otlp_rejected("\xff\xff\xff", 3, msg, sizeof(msg)),
                     0); /* not protobuf */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_encoder_writes_what_protoc_c_reads_and_packs_the_same),
        cmocka_unit_test(test_a_partial_success_is_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

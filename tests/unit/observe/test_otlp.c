/* SPDX-License-Identifier: MIT */
/*
 * The OTLP encoder (src/observe/trace_otlp.c) writes protobuf by hand for
 * speed; here the same records are packed with protoc-c's code generated
 * from the same .proto, and the bytes must be identical -- which holds the
 * hand-written field numbers, wire types, default-omission and order to
 * the .proto. Also: partial-success answers are read.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "observe/internal.h"
#include "otlp_trace.pb-c.h"

typedef Mica__Otlp__KeyValue kv_t;
typedef Mica__Otlp__AnyValue any_t;

/* ---- the reference: protoc-c's structs, filled from the records ------------------------- */

static kv_t *kv_of(const mica__attr_t *a)
{
    kv_t *kv = calloc(1, sizeof(*kv));
    any_t *v = calloc(1, sizeof(*v));
    mica__otlp__key_value__init(kv);
    mica__otlp__any_value__init(v);
    kv->key = (char *)(a->key_len ? a->key : "");
    kv->value = v;
    switch (a->type) {
    case MICA_LOG_T_INT:
        v->value_case = MICA__OTLP__ANY_VALUE__VALUE_INT_VALUE;
        v->int_value = a->v.i;
        break;
    case MICA_LOG_T_FLOAT:
        v->value_case = MICA__OTLP__ANY_VALUE__VALUE_DOUBLE_VALUE;
        v->double_value = a->v.f;
        break;
    case MICA_LOG_T_BOOL:
        v->value_case = MICA__OTLP__ANY_VALUE__VALUE_BOOL_VALUE;
        v->bool_value = a->v.b;
        break;
    default:
        v->value_case = MICA__OTLP__ANY_VALUE__VALUE_STRING_VALUE;
        v->string_value = (char *)a->v.s;
    }
    return kv;
}

static char *str(const char *s)
{
    return (char *)(s ? s : "");
}

static void free_kvs(kv_t **kvs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kvs[i]->value);
        free(kvs[i]);
    }
    free(kvs);
}

static uint8_t *reference(const mica_tracer_t *t, mica__span_rec_t **recs, size_t n, size_t *len)
{
    Mica__Otlp__Span **spans = calloc(n + 1, sizeof(*spans));
    for (size_t i = 0; i < n; i++) {
        const mica__span_rec_t *r = recs[i];
        Mica__Otlp__Span *s = calloc(1, sizeof(*s));
        mica__otlp__span__init(s);
        s->trace_id = (ProtobufCBinaryData){16, (uint8_t *)r->sc.trace_id};
        s->span_id = (ProtobufCBinaryData){8, (uint8_t *)r->sc.span_id};
        if (r->has_parent)
            s->parent_span_id = (ProtobufCBinaryData){8, (uint8_t *)r->parent_id};
        s->trace_state = str(r->tracestate);
        s->name = str(r->name);
        s->kind = (Mica__Otlp__Span__SpanKind)r->kind;
        s->start_time_unix_nano = (uint64_t)r->start_ns;
        s->end_time_unix_nano = (uint64_t)r->end_ns;
        s->flags = r->sc.flags;
        s->dropped_attributes_count = r->dropped_attrs;
        s->dropped_events_count = r->dropped_events;
        s->attributes = calloc(r->nattrs + 1, sizeof(kv_t *));
        for (size_t a = 0; a < r->nattrs; a++)
            if (r->attrs[a].event == 0)
                s->attributes[s->n_attributes++] = kv_of(&r->attrs[a]);
        s->events = calloc(r->nevents + 1, sizeof(*s->events));
        for (size_t e = 0; e < r->nevents; e++) {
            Mica__Otlp__Span__Event *ev = calloc(1, sizeof(*ev));
            mica__otlp__span__event__init(ev);
            ev->time_unix_nano = (uint64_t)r->events[e].time_ns;
            ev->name = str(r->events[e].name);
            ev->attributes = calloc(r->nattrs + 1, sizeof(kv_t *));
            for (size_t a = 0; a < r->nattrs; a++)
                if (r->attrs[a].event == e + 1)
                    ev->attributes[ev->n_attributes++] = kv_of(&r->attrs[a]);
            s->events[s->n_events++] = ev;
        }
        if (r->status != MICA_SPAN_UNSET) {
            s->status = calloc(1, sizeof(*s->status));
            mica__otlp__status__init(s->status);
            s->status->code = (Mica__Otlp__Status__StatusCode)r->status;
            s->status->message = str(r->status_msg);
        }
        spans[i] = s;
    }
    kv_t rkv[3];
    any_t rany[3];
    kv_t *rkvp[3];
    const char *keys[3] = {"service.name", "telemetry.sdk.name", "telemetry.sdk.version"};
    const char *vals[3] = {t->service_name, "mica", MICA__VERSION};
    for (int i = 0; i < 3; i++) {
        mica__otlp__key_value__init(&rkv[i]);
        mica__otlp__any_value__init(&rany[i]);
        rany[i].value_case = MICA__OTLP__ANY_VALUE__VALUE_STRING_VALUE;
        rany[i].string_value = (char *)vals[i];
        rkv[i].key = (char *)keys[i];
        rkv[i].value = &rany[i];
        rkvp[i] = &rkv[i];
    }
    Mica__Otlp__Resource res = MICA__OTLP__RESOURCE__INIT;
    res.attributes = rkvp;
    res.n_attributes = 3;
    Mica__Otlp__InstrumentationScope scope = MICA__OTLP__INSTRUMENTATION_SCOPE__INIT;
    scope.name = "mica";
    scope.version = MICA__VERSION;
    Mica__Otlp__ScopeSpans ss = MICA__OTLP__SCOPE_SPANS__INIT, *ssp = &ss;
    ss.scope = &scope;
    ss.spans = spans;
    ss.n_spans = n;
    Mica__Otlp__ResourceSpans rs = MICA__OTLP__RESOURCE_SPANS__INIT, *rsp = &rs;
    rs.resource = &res;
    rs.scope_spans = &ssp;
    rs.n_scope_spans = 1;
    Mica__Otlp__ExportTraceServiceRequest req = MICA__OTLP__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.resource_spans = &rsp;
    req.n_resource_spans = 1;
    *len = mica__otlp__export_trace_service_request__get_packed_size(&req);
    uint8_t *buf = malloc(*len + 1);
    mica__otlp__export_trace_service_request__pack(&req, buf);
    for (size_t i = 0; i < n; i++) {
        Mica__Otlp__Span *s = spans[i];
        free_kvs(s->attributes, s->n_attributes);
        for (size_t e = 0; e < s->n_events; e++) {
            free_kvs(s->events[e]->attributes, s->events[e]->n_attributes);
            free(s->events[e]);
        }
        free(s->events);
        free(s->status);
        free(s);
    }
    free(spans);
    return buf;
}

/* ---- records ---------------------------------------------------------------------------- */

static void attr(mica__span_rec_t *r, uint8_t ev, const char *k, int type, ...)
{
    mica__attr_t *a = &r->attrs[r->nattrs++];
    *a = (mica__attr_t){.key = k, .key_len = (uint16_t)strlen(k), .type = (uint8_t)type, .event = ev};
    va_list ap;
    va_start(ap, type);
    switch (type) {
    case MICA_LOG_T_INT:
        a->v.i = va_arg(ap, int64_t);
        break;
    case MICA_LOG_T_FLOAT:
        a->v.f = va_arg(ap, double);
        break;
    case MICA_LOG_T_BOOL:
        a->v.b = va_arg(ap, int);
        break;
    default:
        a->v.s = va_arg(ap, const char *);
        a->val_len = (uint16_t)strlen(a->v.s);
    }
    va_end(ap);
}

static mica__span_rec_t *rec(int i)
{
    mica__span_rec_t *r = calloc(1, sizeof(*r));
    for (int b = 0; b < 16; b++)
        r->sc.trace_id[b] = (uint8_t)(0x40 + b + i);
    for (int b = 0; b < 8; b++)
        r->sc.span_id[b] = (uint8_t)(0x80 + b * 3 + i);
    r->sc.flags = (uint8_t)(i % 2);
    r->start_ns = 1764000000000000000 + i * 1000;
    r->end_ns = r->start_ns + 123456789;
    return r;
}

static void check_same(mica__span_rec_t **recs, size_t n)
{
    mica_tracer_t t = {.service_name = "users"};
    uint8_t *mine, *theirs;
    size_t mlen, tlen;
    assert_int_equal(mica__otlp_encode(&t, recs, n, &mine, &mlen), 0);
    theirs = reference(&t, recs, n, &tlen);
    assert_int_equal(mlen, tlen);
    assert_memory_equal(mine, theirs, tlen);
    /* and protoc-c reads it back */
    Mica__Otlp__ExportTraceServiceRequest *m =
        mica__otlp__export_trace_service_request__unpack(NULL, mlen, mine);
    assert_non_null(m);
    assert_int_equal(m->resource_spans[0]->scope_spans[0]->n_spans, n);
    mica__otlp__export_trace_service_request__free_unpacked(m, NULL);
    free(mine);
    free(theirs);
}

static void test_the_encoder_writes_what_protoc_c_packs(void **state)
{
    mica__span_rec_t *recs[5];
    /* a server span: parent, tracestate, every attribute type, an error */
    recs[0] = rec(0);
    mica__span_rec_t *r = recs[0];
    r->has_parent = true;
    memcpy(r->parent_id, "\x12\x34\x56\x78\x9a\xbc\xde\xf0", 8);
    r->tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    r->name = "GET /users/{id}";
    r->kind = MICA_SPAN_SERVER;
    attr(r, 0, "http.request.method", MICA_LOG_T_STR, "GET");
    attr(r, 0, "http.response.status_code", MICA_LOG_T_INT, (int64_t)503);
    attr(r, 0, "negative", MICA_LOG_T_INT, (int64_t)-7);
    attr(r, 0, "big", MICA_LOG_T_INT, (int64_t)INT64_MAX);
    attr(r, 0, "ratio", MICA_LOG_T_FLOAT, 0.25);
    attr(r, 0, "zero", MICA_LOG_T_FLOAT, 0.0);
    attr(r, 0, "yes", MICA_LOG_T_BOOL, 1);
    attr(r, 0, "no", MICA_LOG_T_BOOL, 0);
    attr(r, 0, "empty", MICA_LOG_T_STR, "");
    r->status = MICA_SPAN_ERROR;
    r->status_msg = "upstream said no";
    r->dropped_attrs = 300;
    /* events with attributes, one unnamed */
    recs[1] = rec(1);
    r = recs[1];
    r->name = "load user";
    r->kind = MICA_SPAN_INTERNAL;
    r->events[0] = (mica__event_t){"cache miss", 1764000000000001000};
    r->events[1] = (mica__event_t){NULL, 1764000000000002000};
    r->nevents = 2;
    r->dropped_events = 3;
    attr(r, 1, "key", MICA_LOG_T_STR, "u:7");
    attr(r, 0, "user.id", MICA_LOG_T_INT, (int64_t)7);
    attr(r, 2, "hit", MICA_LOG_T_BOOL, 0);
    r->status = MICA_SPAN_OK;
    /* nothing but ids: every default left out */
    recs[2] = rec(2);
    recs[2]->start_ns = recs[2]->end_ns = 0;
    recs[2]->sc.flags = 0;
    /* a long value: two-byte lengths all the way up */
    recs[3] = rec(3);
    static char longv[900];
    memset(longv, 'v', sizeof(longv) - 1);
    attr(recs[3], 0, "long", MICA_LOG_T_STR, longv);
    recs[3]->kind = MICA_SPAN_CLIENT;
    recs[3]->name = "mica.interop.Echo/Unary";
    recs[4] = rec(4);
    recs[4]->status = MICA_SPAN_ERROR; /* without a message */

    for (size_t n = 1; n <= 5; n++)
        check_same(recs, n);
    check_same(recs + 2, 1);
    /* a batch of 512 */
    mica__span_rec_t *many[512];
    for (int i = 0; i < 512; i++)
        many[i] = recs[i % 5];
    check_same(many, 512);
    for (int i = 0; i < 5; i++)
        free(recs[i]);
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
    assert_int_equal(mica__otlp_rejected("\xff\xff\xff", 3, msg, sizeof(msg)), 0); /* not protobuf */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_encoder_writes_what_protoc_c_packs),
        cmocka_unit_test(test_a_partial_success_is_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * Span records -> an OTLP ExportTraceServiceRequest (otlp_trace.proto,
 * compiled by protoc-c), one resource (service.name, telemetry.sdk.*) and
 * one instrumentation scope ("mica") per request.
 *
 * The messages point into the records (ids, names, attribute text), so
 * nothing is copied until protobuf-c packs them. The message structs of a
 * whole batch come from a handful of arrays sized up front -- one per
 * message type -- not from one allocation per attribute.
 */
#include <string.h>

#include "common/alloc.h"
#include "observe/internal.h"
#include "otlp_trace.pb-c.h"

typedef Mica__Otlp__KeyValue kv_t;
typedef Mica__Otlp__AnyValue any_t;
typedef Mica__Otlp__Span span_t;
typedef Mica__Otlp__Span__Event event_t;
typedef Mica__Otlp__Status status_t;

static void set_value(any_t *v, const mica__attr_t *a)
{
    *v = (any_t)MICA__OTLP__ANY_VALUE__INIT;
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
}

static void set_kv(kv_t *kv, any_t *v, const char *key, const char *s)
{
    *kv = (kv_t)MICA__OTLP__KEY_VALUE__INIT;
    *v = (any_t)MICA__OTLP__ANY_VALUE__INIT;
    v->value_case = MICA__OTLP__ANY_VALUE__VALUE_STRING_VALUE;
    v->string_value = (char *)s;
    kv->key = (char *)key;
    kv->value = v;
}

static char *str(const char *s)
{
    return (char *)(s ? s : protobuf_c_empty_string);
}

int mica__otlp_encode(const mica_tracer_t *t, mica__span_rec_t *const *recs, size_t n,
                      uint8_t **out, size_t *len)
{
    size_t nattrs = 0, nevents = 0;
    for (size_t i = 0; i < n; i++) {
        nattrs += recs[i]->nattrs;
        nevents += recs[i]->nevents;
    }
    span_t *spans = mica__malloc(n * sizeof(*spans) + 1);
    span_t **span_ptrs = mica__malloc(n * sizeof(*span_ptrs) + 1);
    status_t *statuses = mica__malloc(n * sizeof(*statuses) + 1);
    kv_t *kvs = mica__malloc(nattrs * sizeof(*kvs) + 1);
    kv_t **kv_ptrs = mica__malloc(nattrs * sizeof(*kv_ptrs) + 1);
    any_t *anys = mica__malloc(nattrs * sizeof(*anys) + 1);
    event_t *events = mica__malloc(nevents * sizeof(*events) + 1);
    event_t **event_ptrs = mica__malloc(nevents * sizeof(*event_ptrs) + 1);
    int rc = MICA_ENOMEM;
    if (!spans || !span_ptrs || !statuses || !kvs || !kv_ptrs || !anys || !events || !event_ptrs)
        goto out;

    size_t k = 0, e = 0;
    for (size_t i = 0; i < n; i++) {
        const mica__span_rec_t *r = recs[i];
        span_t *s = &spans[i];
        *s = (span_t)MICA__OTLP__SPAN__INIT;
        span_ptrs[i] = s;
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
        /* The span's attributes, then each event's, as consecutive runs of kvs. */
        s->attributes = kv_ptrs + k;
        for (size_t a = 0; a < r->nattrs; a++)
            if (r->attrs[a].event == 0) {
                kv_t *kv = &kvs[k];
                *kv = (kv_t)MICA__OTLP__KEY_VALUE__INIT;
                kv->key = (char *)r->attrs[a].key;
                set_value(&anys[k], &r->attrs[a]);
                kv->value = &anys[k];
                kv_ptrs[k++] = kv;
                s->n_attributes++;
            }
        s->events = event_ptrs + e;
        for (size_t ev = 0; ev < r->nevents; ev++) {
            event_t *x = &events[e];
            *x = (event_t)MICA__OTLP__SPAN__EVENT__INIT;
            x->time_unix_nano = (uint64_t)r->events[ev].time_ns;
            x->name = str(r->events[ev].name);
            x->attributes = kv_ptrs + k;
            for (size_t a = 0; a < r->nattrs; a++)
                if (r->attrs[a].event == ev + 1) {
                    kv_t *kv = &kvs[k];
                    *kv = (kv_t)MICA__OTLP__KEY_VALUE__INIT;
                    kv->key = (char *)r->attrs[a].key;
                    set_value(&anys[k], &r->attrs[a]);
                    kv->value = &anys[k];
                    kv_ptrs[k++] = kv;
                    x->n_attributes++;
                }
            event_ptrs[e++] = x;
            s->n_events++;
        }
        if (r->status != MICA_SPAN_UNSET) {
            status_t *st = &statuses[i];
            *st = (status_t)MICA__OTLP__STATUS__INIT;
            st->code = (Mica__Otlp__Status__StatusCode)r->status;
            st->message = str(r->status_msg);
            s->status = st;
        }
    }

    kv_t rkv[3];
    any_t rany[3];
    kv_t *rkv_ptrs[3] = {&rkv[0], &rkv[1], &rkv[2]};
    set_kv(&rkv[0], &rany[0], "service.name", t->service_name);
    set_kv(&rkv[1], &rany[1], "telemetry.sdk.name", "mica");
    set_kv(&rkv[2], &rany[2], "telemetry.sdk.version", MICA__VERSION);
    Mica__Otlp__Resource res = MICA__OTLP__RESOURCE__INIT;
    res.attributes = rkv_ptrs;
    res.n_attributes = 3;
    Mica__Otlp__InstrumentationScope scope = MICA__OTLP__INSTRUMENTATION_SCOPE__INIT;
    scope.name = "mica";
    scope.version = MICA__VERSION;
    Mica__Otlp__ScopeSpans ss = MICA__OTLP__SCOPE_SPANS__INIT;
    ss.scope = &scope;
    ss.spans = span_ptrs;
    ss.n_spans = n;
    Mica__Otlp__ScopeSpans *ss_ptr = &ss;
    Mica__Otlp__ResourceSpans rs = MICA__OTLP__RESOURCE_SPANS__INIT;
    rs.resource = &res;
    rs.scope_spans = &ss_ptr;
    rs.n_scope_spans = 1;
    Mica__Otlp__ResourceSpans *rs_ptr = &rs;
    Mica__Otlp__ExportTraceServiceRequest req = MICA__OTLP__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.resource_spans = &rs_ptr;
    req.n_resource_spans = 1;

    size_t size = mica__otlp__export_trace_service_request__get_packed_size(&req);
    uint8_t *buf = mica__malloc(size + 1);
    if (!buf)
        goto out;
    *len = mica__otlp__export_trace_service_request__pack(&req, buf);
    *out = buf;
    rc = 0;
out:
    mica__free(spans);
    mica__free(span_ptrs);
    mica__free(statuses);
    mica__free(kvs);
    mica__free(kv_ptrs);
    mica__free(anys);
    mica__free(events);
    mica__free(event_ptrs);
    return rc;
}

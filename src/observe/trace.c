/* SPDX-License-Identifier: MIT */
/*
 * Spans and the tracer: ids, the parent-based ratio sampler, span records
 * and the span API. The instrumentation (server middleware, client
 * interceptor) is trace_http.c; the queues and exporters trace_export.c.
 *
 * A span is two things. Its identity (trace id, span id, flags) is what
 * propagation and logs need, and every span has one, sampled or not, as
 * OpenTelemetry's non-recording spans do: an unsampled request still hands
 * its trace id to its callees with the sampled flag off. Its record
 * (name, times, attributes, events, status) exists only while a sampled
 * span records, and is what goes to the exporter: a fixed-size block
 * taken from the worker's pool, strings copied into it, so nothing on the
 * request path allocates once the pool is warm.
 *
 * Sampling (OpenTelemetry's ParentBased(TraceIdRatioBased)): a span with a
 * parent takes the parent's sampled flag, remote or local; a root samples
 * when the low 56 bits of its trace id, as an integer, fall below ratio *
 * 2^56. That is the threshold test of OpenTelemetry's consistent
 * probability sampling and W3C level 2's "random" trace-id bits: the same
 * trace id gets the same decision everywhere, and a trace sampled at one
 * ratio is sampled at every higher one.
 *
 * Ids come from a xoshiro256** generator per thread, seeded by getrandom():
 * a few nanoseconds, no lock, and never all zero.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/log.h"
#include "observe/trace_internal.h"
#include "observe/wire.h"

const char mica_trace_span_key = 0;

static _Atomic(mica_tracer_t *) default_tracer;

/* ---- ids ------------------------------------------------------------------------- */

static _Thread_local struct {
    uint64_t s[4];
    bool seeded;
} rng;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next64(void)
{
    if (!rng.seeded) {
        if (getrandom(rng.s, sizeof(rng.s), 0) != sizeof(rng.s)) {
            struct timespec ts; /* no entropy source: time and address still differ */
            clock_gettime(CLOCK_REALTIME, &ts);
            rng.s[0] = (uint64_t)ts.tv_nsec ^ (uintptr_t)&rng;
            rng.s[1] = (uint64_t)ts.tv_sec * 0x9e3779b97f4a7c15u;
            rng.s[2] = rng.s[0] * 0xbf58476d1ce4e5b9u;
            rng.s[3] = rng.s[1] ^ 0x94d049bb133111ebu;
        }
        if (!(rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3]))
            rng.s[0] = 1;
        rng.seeded = true;
    }
    uint64_t *s = rng.s;
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static void random_id(uint8_t *out, size_t n)
{
    for (;;) {
        uint64_t acc = 0;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = next64();
            memcpy(out + i, &v, 8);
            acc |= v;
        }
        if (acc)
            return;
    }
}

int64_t mica__trace_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The low 56 bits of a trace id, big-endian (bytes 9..15). */
static uint64_t low56(const uint8_t id[16])
{
    uint64_t r = 0;
    for (int i = 9; i < 16; i++)
        r = r << 8 | id[i];
    return r;
}

/* ---- records --------------------------------------------------------------------- */

mica__trace_worker_t *mica__trace_worker(const mica_tracer_t *t)
{
    int id = mica_worker_id();
    if (id < 0 || id >= t->nworkers || mica_worker_count() != t->nworkers)
        return NULL;
    return &t->w[id];
}

static mica__span_rec_t *rec_get(mica__trace_worker_t *w)
{
    mica__span_rec_t *r = w->pool;
    if (r) {
        w->pool = r->next;
        w->npool--;
    } else if (!(r = mica__malloc(sizeof(*r)))) {
        return NULL;
    }
    r->next = NULL;
    r->has_parent = false;
    r->status = MICA_SPAN_UNSET;
    r->name = r->status_msg = r->tracestate = NULL;
    r->nattrs = r->nevents = r->dropped_attrs = r->dropped_events = 0;
    r->attrs_len = r->events_len = r->text_used = 0;
    return r;
}

void mica__rec_put(mica__trace_worker_t *w, mica__span_rec_t *r)
{
    if (w && w->npool < 4096) {
        r->next = w->pool;
        w->pool = r;
        w->npool++;
    } else {
        mica__free(r);
    }
}

/* Copies `len` bytes of `s` into the record's text; NULL when it is full. */
static const char *rec_text(mica__span_rec_t *r, const char *s, size_t len)
{
    if (len >= (size_t)MICA__SPAN_TEXT_BYTES - r->text_used)
        return NULL;
    char *p = r->text + r->text_used;
    memcpy(p, s, len);
    p[len] = '\0';
    r->text_used = (uint16_t)(r->text_used + len + 1);
    return p;
}

/* Removes encoded attribute i (a key set again). */
static void rec_attr_remove(mica__span_rec_t *r, size_t i)
{
    mica__attr_at_t gone = r->at[i];
    memmove(r->attrs_enc + gone.off, r->attrs_enc + gone.off + gone.len,
            r->attrs_len - gone.off - gone.len);
    r->attrs_len = (uint16_t)(r->attrs_len - gone.len);
    memmove(&r->at[i], &r->at[i + 1], (r->nattrs - i - 1) * sizeof(r->at[0]));
    r->nattrs--;
    for (size_t j = i; j < r->nattrs; j++) {
        r->at[j].off = (uint16_t)(r->at[j].off - gone.len);
        r->at[j].key_off = (uint16_t)(r->at[j].key_off - gone.len);
    }
}

/*
 * Encodes attribute key = v as a Span.attributes field. With `search`, an
 * earlier one with the same key goes (a key set twice keeps the last);
 * beyond the record's room it is dropped and counted.
 */
static void rec_attr(mica__span_rec_t *r, const char *key, size_t klen, const mica__value_t *v,
                     bool search)
{
    if (search)
        for (size_t i = 0; i < r->nattrs; i++)
            if (r->at[i].key_len == klen &&
                memcmp(r->attrs_enc + r->at[i].key_off, key, klen) == 0) {
                rec_attr_remove(r, i);
                break;
            }
    size_t any, body = mica__kv_size(klen, v, &any);
    size_t need = mica__lenf(MICA__SPAN_ATTRS, body);
    if (r->nattrs == MICA__SPAN_MAX_ATTRS || need > (size_t)MICA__SPAN_ATTR_BYTES - r->attrs_len) {
        r->dropped_attrs++;
        return;
    }
    uint8_t *start = r->attrs_enc + r->attrs_len, *key_at;
    uint8_t *end = mica__put_kv(start, MICA__SPAN_ATTRS, key, klen, v, any, body, &key_at);
    r->at[r->nattrs++] = (mica__attr_at_t){r->attrs_len, (uint16_t)need,
                                           (uint16_t)(key_at - r->attrs_enc), (uint16_t)klen};
    r->attrs_len = (uint16_t)(r->attrs_len + (end - start));
}

/* A typed log field as an attribute value (a NULL string is ""). */
static mica__value_t value_of(const mica_log_field_t *f)
{
    mica__value_t v = {.type = f->type};
    switch (f->type) {
    case MICA_LOG_T_INT:
        v.v.i = f->v.i;
        break;
    case MICA_LOG_T_FLOAT:
        v.v.f = f->v.f;
        break;
    case MICA_LOG_T_BOOL:
        v.v.b = f->v.b;
        break;
    default:
        v.type = MICA_LOG_T_STR;
        v.v.s = f->type == MICA_LOG_T_STR && f->v.s ? f->v.s : "";
        v.slen = strlen(v.v.s);
    }
    return v;
}

/* ---- spans ------------------------------------------------------------------------ */

void mica__span_begin(mica_tracer_t *t, mica_span_t *sp, const mica_span_context_t *parent,
                      bool remote_parent, mica_span_kind_t kind, const char *name)
{
    sp->tracer = t;
    sp->rec = NULL;
    sp->ctx = NULL;
    sp->tracestate = NULL;
    sp->allocated = false;
    bool sampled;
    if (parent) {
        memcpy(sp->sc.trace_id, parent->trace_id, 16);
        sampled = parent->flags & MICA_TRACE_FLAG_SAMPLED;
    } else {
        random_id(sp->sc.trace_id, 16);
        sampled = t && low56(sp->sc.trace_id) < t->threshold;
    }
    uint64_t sid = next64();
    if (!sid)
        sid = 1;
    memcpy(sp->sc.span_id, &sid, 8);
    sp->sc.flags = sampled ? MICA_TRACE_FLAG_SAMPLED : 0;
    if (!sampled || !t || !t->exporting)
        return;
    mica__trace_worker_t *w = mica__trace_worker(t);
    mica__span_rec_t *r = w ? rec_get(w) : NULL;
    if (!r)
        return; /* off a worker, or no memory: the span does not record */
    r->sc = sp->sc;
    if (parent) {
        memcpy(r->parent_id, parent->span_id, 8);
        r->has_parent = true;
    }
    (void)remote_parent;
    r->kind = (uint8_t)kind;
    r->start_ns = mica__trace_now_ns();
    if (name)
        r->name = rec_text(r, name, strlen(name));
    r->worker = (int)(w - t->w);
    mica__count(&w->started, 1);
    sp->rec = r;
}

void mica__span_finish(mica_span_t *sp)
{
    mica__span_rec_t *r = sp->rec;
    if (!r)
        return;
    sp->rec = NULL;
    r->end_ns = mica__trace_now_ns();
    mica__trace_enqueue(sp->tracer, r);
}

void mica__span_tracestate(mica_span_t *sp, const char *state)
{
    sp->tracestate = state;
    if (sp->rec && state && *state) /* copied now: the borrowed text may go before the end */
        sp->rec->tracestate = rec_text(sp->rec, state, strlen(state));
}

void mica__span_attr_str(mica_span_t *sp, const char *key, size_t klen, const char *value,
                         size_t len)
{
    if (!sp->rec)
        return;
    mica__value_t v = {.type = MICA_LOG_T_STR, .v.s = value, .slen = len};
    rec_attr(sp->rec, key, klen, &v, false);
}

void mica__span_attr_int(mica_span_t *sp, const char *key, size_t klen, int64_t value)
{
    if (!sp->rec)
        return;
    mica__value_t v = {.type = MICA_LOG_T_INT, .v.i = value};
    rec_attr(sp->rec, key, klen, &v, false);
}

void mica__span_name(mica_span_t *sp, const char *a, size_t alen, const char *b, size_t blen)
{
    mica__span_rec_t *r = sp->rec;
    if (!r || alen + blen + 2 > (size_t)MICA__SPAN_TEXT_BYTES - r->text_used)
        return;
    char *p = r->text + r->text_used;
    memcpy(p, a, alen);
    if (blen) {
        p[alen] = ' ';
        memcpy(p + alen + 1, b, blen);
        alen += blen + 1;
    }
    p[alen] = '\0';
    r->text_used = (uint16_t)(r->text_used + alen + 1);
    r->name = p;
}

mica_span_t *mica_trace_span(const mica_ctx_t *ctx)
{
    return ctx ? mica_ctx_value(ctx, MICA_TRACE_SPAN_KEY) : NULL;
}

int mica_trace_start(mica_ctx_t *parent, const char *name, mica_span_kind_t kind, mica_ctx_t **ctx,
                     mica_span_t **span)
{
    mica_span_t *p = mica_trace_span(parent);
    mica_tracer_t *t = p ? p->tracer : atomic_load(&default_tracer);
    mica_span_t *sp = mica__malloc(sizeof(*sp));
    if (!sp)
        return MICA_ENOMEM;
    mica__span_begin(t, sp, p ? &p->sc : NULL, false, kind, name);
    sp->allocated = true;
    mica__span_tracestate(sp, p ? p->tracestate : NULL);
    if (mica_ctx_with_value(parent, MICA_TRACE_SPAN_KEY, sp, &sp->ctx) != 0) {
        if (sp->rec) { /* never queued: back to the pool (a record means a worker of t) */
            mica__trace_worker_t *w = mica__trace_worker(t);
            if (w) {
                mica__count(&w->ended, 1);
                mica__rec_put(w, sp->rec);
            } else {
                mica__free(sp->rec);
            }
        }
        mica__free(sp);
        return MICA_ENOMEM;
    }
    *ctx = sp->ctx;
    *span = sp;
    return 0;
}

void mica_span_end(mica_span_t *span)
{
    if (!span)
        return;
    mica__span_finish(span);
    if (span->allocated) {
        mica_ctx_free(span->ctx);
        mica__free(span);
    }
}

void mica_span_context(const mica_span_t *span, mica_span_context_t *out)
{
    *out = span->sc;
}

bool mica_span_recording(const mica_span_t *span)
{
    return span && span->rec;
}

void mica_span_set_attrs(mica_span_t *span, const mica_log_field_t *attrs, size_t n)
{
    if (!span || !span->rec)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!attrs[i].key)
            continue;
        mica__value_t v = value_of(&attrs[i]);
        rec_attr(span->rec, attrs[i].key, strlen(attrs[i].key), &v, true);
    }
}

void mica_span_set_str(mica_span_t *span, const char *key, const char *value)
{
    mica_span_set_attrs(span, &MICA_LOG_STR(key, value), 1);
}

void mica_span_set_int(mica_span_t *span, const char *key, int64_t value)
{
    mica_span_set_attrs(span, &MICA_LOG_INT(key, value), 1);
}

void mica_span_add_event(mica_span_t *span, const char *name, const mica_log_field_t *attrs,
                         size_t n)
{
    mica__span_rec_t *r = span ? span->rec : NULL;
    if (!r)
        return;
    /* Sized first (an Event is length-prefixed), then written whole, or dropped whole. */
    int64_t now = mica__trace_now_ns();
    size_t nlen = name ? strlen(name) : 0;
    size_t body = 9 + (nlen ? mica__lenf(MICA__EV_NAME, nlen) : 0);
    for (size_t i = 0; i < n; i++) {
        if (!attrs[i].key)
            continue;
        mica__value_t v = value_of(&attrs[i]);
        size_t any;
        body += mica__lenf(MICA__EV_ATTRS, mica__kv_size(strlen(attrs[i].key), &v, &any));
    }
    size_t need = mica__lenf(MICA__SPAN_EVENTS, body);
    if (r->nevents == MICA__SPAN_MAX_EVENTS ||
        need > (size_t)MICA__SPAN_EVENT_BYTES - r->events_len) {
        r->dropped_events++;
        return;
    }
    uint8_t *p = mica__head(r->events_enc + r->events_len, MICA__SPAN_EVENTS, body);
    p = mica__fixed(p, MICA__EV_TIME, (uint64_t)now, 8);
    if (nlen)
        p = mica__bytes(p, MICA__EV_NAME, name, nlen);
    for (size_t i = 0; i < n; i++) {
        if (!attrs[i].key)
            continue;
        mica__value_t v = value_of(&attrs[i]);
        size_t any, klen = strlen(attrs[i].key), kv = mica__kv_size(klen, &v, &any);
        p = mica__put_kv(p, MICA__EV_ATTRS, attrs[i].key, klen, &v, any, kv, NULL);
    }
    r->events_len = (uint16_t)(p - r->events_enc);
    r->nevents++;
}

void mica_span_set_status(mica_span_t *span, mica_span_status_t status, const char *msg)
{
    mica__span_rec_t *r = span ? span->rec : NULL;
    if (!r || r->status == MICA_SPAN_OK || status > MICA_SPAN_ERROR)
        return; /* OK is final (OpenTelemetry's Set Status) */
    r->status = (uint8_t)status;
    r->status_msg = status == MICA_SPAN_ERROR && msg ? rec_text(r, msg, strlen(msg)) : NULL;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

int mica_trace_ids(const mica_ctx_t *ctx, mica_trace_ids_t *out)
{
    const mica_span_t *sp = mica_trace_span(ctx);
    if (!sp)
        return MICA_ENOTFOUND;
    hex(sp->sc.trace_id, 16, out->trace_id);
    hex(sp->sc.span_id, 8, out->span_id);
    out->sampled = sp->sc.flags & MICA_TRACE_FLAG_SAMPLED;
    return 0;
}

void mica_trace_inject(const mica_span_t *span, mica_trace_headers_t *out)
{
    mica_traceparent_format(&span->sc, out->traceparent);
    out->tracestate = span->tracestate && *span->tracestate ? span->tracestate : NULL;
}

/* ---- the tracer ----------------------------------------------------------------------- */

size_t mica_trace_settings(mica_trace_opts_t *o, mica_setting_t *out, size_t cap)
{
    const mica_setting_t all[] = {
        {"trace_sample", MICA_SETTING_STR, "1",
         "ratio of new traces sampled, 0..1 (a caller's sampled flag wins)", &o->sample, 0, 0,
         NULL},
        {"otlp_endpoint", MICA_SETTING_STR, NULL,
         "OTLP/HTTP traces URL (http://host:4318[/v1/traces]); unset: no export", &o->endpoint, 0,
         0, NULL},
        {"service_name", MICA_SETTING_STR, NULL,
         "service.name of exported spans (default: program)", &o->service_name, 0, 0, NULL},
        {"trace_max_queue", MICA_SETTING_COUNT, "2048", "spans waiting for export, per worker",
         &o->max_queue, 1, 1 << 20, NULL},
        {"trace_max_batch", MICA_SETTING_COUNT, "512", "spans per export request", &o->max_batch, 1,
         1 << 16, NULL},
        {"trace_schedule_delay", MICA_SETTING_MS, "5s", "export at least this often",
         &o->schedule_delay_ms, 1, 3600 * 1000, NULL},
        {"trace_export_timeout", MICA_SETTING_MS, "30s", "one export, retries included",
         &o->export_timeout_ms, 1, 3600 * 1000, NULL},
    };
    size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = all[i];
    return n;
}

int mica_trace_opts_from_env(mica_trace_opts_t *o)
{
    /* Read into a zeroed copy, then fill only what the caller left unset. */
    mica_trace_opts_t env = {0};
    mica_setting_t e[MICA_TRACE_SETTINGS];
    size_t n = mica_trace_settings(&env, e, MICA_TRACE_SETTINGS);
    int rc = mica_config_from_env(e, n);
    if (rc != 0)
        return rc;
    if (!o->sample)
        o->sample = env.sample;
    if (!o->endpoint)
        o->endpoint = env.endpoint;
    if (!o->service_name)
        o->service_name = env.service_name;
    if (!o->max_queue)
        o->max_queue = env.max_queue;
    if (!o->max_batch)
        o->max_batch = env.max_batch;
    if (!o->schedule_delay_ms)
        o->schedule_delay_ms = env.schedule_delay_ms;
    if (!o->export_timeout_ms)
        o->export_timeout_ms = env.export_timeout_ms;
    return 0;
}

/* "0".."1" into a threshold on the low 56 bits of trace ids. */
static int parse_ratio(const char *text, uint64_t *threshold)
{
    char *end;
    double r = strtod(text, &end);
    while (*end == ' ')
        end++;
    if (end == text || *end || !isfinite(r) || r < 0 || r > 1)
        return MICA_EINVAL;
    *threshold = r >= 1 ? UINT64_C(1) << 56 : (uint64_t)ldexp(r, 56);
    return 0;
}

/* The log layer's seam (mica_log_set_trace): the ids of the span in `ctx`. */
static bool log_trace_ids(mica_ctx_t *ctx, char trace_id[33], char span_id[17], void *arg)
{
    (void)arg;
    mica_trace_ids_t ids;
    if (mica_trace_ids(ctx, &ids) != 0)
        return false;
    memcpy(trace_id, ids.trace_id, 33);
    memcpy(span_id, ids.span_id, 17);
    return true;
}

int mica_tracer_new(mica_tracer_t **out, mica_runtime_t *rt, const mica_trace_opts_t *opts)
{
    if (!rt)
        return MICA_EINVAL;
    mica_tracer_t *t = mica__calloc(1, sizeof(*t));
    if (!t)
        return MICA_ENOMEM;
    t->rt = rt;
    if (opts)
        t->o = *opts;
    if (!t->o.max_queue)
        t->o.max_queue = 2048;
    if (!t->o.max_batch)
        t->o.max_batch = 512;
    if (t->o.max_batch > t->o.max_queue)
        t->o.max_batch = t->o.max_queue;
    if (t->o.schedule_delay_ms <= 0)
        t->o.schedule_delay_ms = 5000;
    if (t->o.export_timeout_ms <= 0)
        t->o.export_timeout_ms = 30000;
    int rc = 0;
    const char *sample = t->o.sample && *t->o.sample ? t->o.sample : "1";
    if (parse_ratio(sample, &t->threshold) != 0) {
        mica__log_error("trace: bad sample ratio (want 0..1)", "trace_sample", sample);
        rc = MICA_EINVAL;
    }
    const char *name =
        t->o.service_name && *t->o.service_name ? t->o.service_name : program_invocation_short_name;
    if (rc == 0 && !(t->service_name = mica__strdup(name && *name ? name : "mica")))
        rc = MICA_ENOMEM;
    if (rc == 0 && t->o.endpoint && *t->o.endpoint) {
        if (mica__otlp_parse_url(t->o.endpoint, &t->target) != 0) {
            mica__log_error(
                "trace: bad OTLP endpoint (want http://<ip or localhost>:<port>[/path])",
                "otlp_endpoint", t->o.endpoint);
            rc = MICA_EINVAL;
        } else if (!(t->endpoint = mica__strdup(t->o.endpoint))) {
            rc = MICA_ENOMEM;
        }
        t->exporting = true;
    }
    t->o.sample = NULL; /* not kept: the caller owns them */
    t->o.endpoint = t->endpoint;
    t->o.service_name = t->service_name;
    t->transport = &mica__otlp_http1;
    t->nworkers = mica_runtime_workers(rt);
    if (rc == 0 && !(t->w = mica__calloc((size_t)t->nworkers, sizeof(*t->w))))
        rc = MICA_ENOMEM;
    if (rc == 0 && t->exporting)
        rc = mica__trace_export_start(t);
    if (rc != 0) {
        mica_tracer_free(t);
        return rc;
    }
    mica_tracer_t *none = NULL;
    atomic_compare_exchange_strong(&default_tracer, &none, t);
    /* Log lines written under a traced request's ctx carry its ids. */
    mica_log_set_trace(log_trace_ids, NULL);
    *out = t;
    return 0;
}

void mica_tracer_free(mica_tracer_t *t)
{
    if (!t)
        return;
    mica_tracer_t *self = t;
    if (atomic_compare_exchange_strong(&default_tracer, &self, NULL))
        mica_log_set_trace(NULL, NULL);
    for (int i = 0; t->w && i < t->nworkers; i++) {
        mica__trace_worker_t *w = &t->w[i];
        for (mica__span_rec_t *r = w->head, *next; r; r = next) {
            next = r->next;
            mica__free(r);
        }
        for (mica__span_rec_t *r = w->pool, *next; r; r = next) {
            next = r->next;
            mica__free(r);
        }
    }
    mica__free(t->w);
    mica__free(t->endpoint);
    mica__free(t->service_name);
    mica__free(t);
}

void mica_trace_stats(const mica_tracer_t *t, mica_trace_stats_t *out)
{
    *out = (mica_trace_stats_t){0};
    for (int i = 0; i < t->nworkers; i++) {
        const mica__trace_worker_t *w = &t->w[i];
        out->started += atomic_load_explicit(&w->started, memory_order_relaxed);
        out->exported += atomic_load_explicit(&w->exported, memory_order_relaxed);
        out->dropped += atomic_load_explicit(&w->dropped, memory_order_relaxed);
        out->queued += atomic_load_explicit(&w->queued, memory_order_relaxed);
        out->exports += atomic_load_explicit(&w->exports, memory_order_relaxed);
        out->failures += atomic_load_explicit(&w->failures, memory_order_relaxed);
    }
    out->dropped += atomic_load_explicit(&t->dropped_elsewhere, memory_order_relaxed);
}

int mica_trace_enable(mica_tracer_t **out, mica_runtime_t *rt, mica_http_server_t *srv,
                      const mica_trace_opts_t *opts)
{
    mica_tracer_t *t;
    int rc = mica_tracer_new(&t, rt, opts);
    if (rc != 0)
        return rc;
    if ((rc = mica_trace_http_server(t, srv)) != 0) {
        mica_tracer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

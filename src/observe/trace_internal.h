/* SPDX-License-Identifier: MIT */
/* Tracing internals shared by the tracing files of src/observe (trace*.c, otlp*.c). */
#ifndef MICA_OBSERVE_TRACE_INTERNAL_H
#define MICA_OBSERVE_TRACE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "mica/sync.h"
#include "mica/trace.h"

#define MICA__VERSION "0.1.0" /* telemetry.sdk.version, the exporter's User-Agent */

#define MICA__SPAN_MAX_ATTRS 32
#define MICA__SPAN_MAX_EVENTS 8
#define MICA__SPAN_ATTR_BYTES 1024 /* the span's attributes, encoded */
#define MICA__SPAN_EVENT_BYTES 512 /* its events, encoded */
#define MICA__SPAN_TEXT_BYTES 768  /* name, status message, tracestate */

/* Where an encoded attribute sits in the record's attrs_enc. */
typedef struct mica__attr_at {
    uint16_t off, len; /* the whole field */
    uint16_t key_off, key_len;
} mica__attr_at_t;

/*
 * What a recording span keeps until it is exported, self-contained, so it
 * outlives the request that made it: its attributes and events already
 * encoded as the protobuf fields of an OTLP Span (so export copies them),
 * other strings in `text`. Pooled per worker.
 */
typedef struct mica__span_rec {
    struct mica__span_rec *next; /* the worker's queue, or its pool */
    mica_span_context_t sc;
    uint8_t parent_id[8];
    bool has_parent;
    uint8_t kind;                               /* mica_span_kind_t */
    uint8_t status;                             /* mica_span_status_t */
    int worker;                                 /* where it started */
    const char *name, *status_msg, *tracestate; /* in text, or NULL */
    int64_t start_ns, end_ns;                   /* CLOCK_REALTIME */
    uint16_t nattrs, nevents, dropped_attrs, dropped_events;
    uint16_t attrs_len, events_len, text_used;
    mica__attr_at_t at[MICA__SPAN_MAX_ATTRS];
    uint8_t attrs_enc[MICA__SPAN_ATTR_BYTES];   /* repeated Span.attributes (field 9) */
    uint8_t events_enc[MICA__SPAN_EVENT_BYTES]; /* repeated Span.events (field 11) */
    char text[MICA__SPAN_TEXT_BYTES];
} mica__span_rec_t;

/*
 * A span as the API sees it: ids always, a record while it records. A
 * server span lives in its request's arena, so its ids stay readable for
 * the request's observers after it ended; one from mica_trace_start() is
 * allocated and goes at its end with the ctx that carried it.
 */
struct mica_span {
    mica_span_context_t sc;
    mica_tracer_t *tracer;
    mica__span_rec_t *rec;  /* NULL: not recording, or ended */
    mica_ctx_t *ctx;        /* mica_trace_start()'s ctx, freed at the end */
    const char *tracestate; /* propagated to callees; NULL: none */
    bool allocated;         /* by mica_trace_start(): freed at the end */
};

/* Where and how spans are posted: one transport behind these callbacks. */
typedef struct mica__otlp_target {
    char host[64]; /* an IP literal */
    char port[8];
    char path[256]; /* "/v1/traces" */
    char authority[80];
} mica__otlp_target_t;

/* An export's outcome, as the exporter needs it. */
typedef struct mica__post_result {
    int status;             /* HTTP status, 0: none (a connection failure) */
    int64_t retry_after_ms; /* Retry-After, -1: none */
    size_t body_len;        /* the start of the response body (0: none, or longer than body) */
    uint8_t body[1024];
} mica__post_result_t;

/*
 * The transport: post `len` bytes of protobuf to the target and report the
 * status. One per worker (state), used only by that worker's exporter.
 * Returns 0 (an answer came: see res) or a MICA_E* code (none came).
 */
typedef struct mica__otlp_transport {
    int (*open)(void **state, const mica__otlp_target_t *target);
    int (*post)(void *state, mica_ctx_t *ctx, int64_t deadline_ms, const void *body, size_t len,
                mica__post_result_t *res);
    void (*close)(void *state);
} mica__otlp_transport_t;

extern const mica__otlp_transport_t mica__otlp_http1;

/* A worker's half of the tracer: touched by that worker's thread only, counters aside. */
typedef struct mica__trace_worker {
    mica__span_rec_t *head, *tail; /* ended spans waiting for export */
    size_t len;
    mica__span_rec_t *pool; /* free records */
    size_t npool;
    mica_event_t wake; /* set when a batch is full, or the worker stops */
    bool stopping;
    bool running;        /* the exporter coroutine is up */
    mica_ctx_t *run_ctx; /* the exporter's; cancelled when the worker drains */
    /* counters: written by the worker alone, read by mica_trace_stats() */
    atomic_uint_least64_t started, ended, exported, dropped, queued, exports, failures;
    char pad[64];
} mica__trace_worker_t;

struct mica_tracer {
    mica_runtime_t *rt;
    uint64_t threshold;  /* root spans sample when their trace id's low 56 bits are below it */
    bool exporting;      /* an endpoint is set: sampled spans record */
    mica_trace_opts_t o; /* strings below */
    char *endpoint, *service_name;
    mica__otlp_target_t target;
    const mica__otlp_transport_t *transport;
    int nworkers;
    mica__trace_worker_t *w;
    atomic_uint_least64_t dropped_elsewhere; /* spans ended off the tracer's workers */
    atomic_uint_least64_t ended_elsewhere;
};

/* trace.c */
int64_t mica__trace_now_ns(void);
/* Begins `sp` (the caller's memory): a child of `parent` (NULL: a root, sampled by ratio). */
void mica__span_begin(mica_tracer_t *t, mica_span_t *sp, const mica_span_context_t *parent,
                      bool remote_parent, mica_span_kind_t kind, const char *name);
/* Ends the span's record (now) and queues it; the span stays readable. */
void mica__span_finish(mica_span_t *sp);
/* Sets the tracestate `sp` propagates (borrowed) and copies it into its record. */
void mica__span_tracestate(mica_span_t *sp, const char *state);
/*
 * Adds an attribute with a static key, not looked for among the span's
 * (the instrumentation sets each key once). MICA__ATTR_STR/INT take the
 * key's length from the literal.
 */
void mica__span_attr_str(mica_span_t *sp, const char *key, size_t klen, const char *value,
                         size_t len);
void mica__span_attr_int(mica_span_t *sp, const char *key, size_t klen, int64_t value);
#define MICA__ATTR_STR(sp, k, v, n) mica__span_attr_str(sp, k, sizeof(k) - 1, v, n)
#define MICA__ATTR_INT(sp, k, v) mica__span_attr_int(sp, k, sizeof(k) - 1, v)
void mica__span_name(mica_span_t *sp, const char *a, size_t alen, const char *b, size_t blen);
void mica__rec_put(mica__trace_worker_t *w, mica__span_rec_t *r);
static inline void mica__count(atomic_uint_least64_t *c, uint64_t n)
{
    /* one writer: a plain load and store, no locked instruction */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* The calling thread's worker of `t`, or NULL (not one of t's workers). */
mica__trace_worker_t *mica__trace_worker(const mica_tracer_t *t);

/* trace_export.c */
int mica__trace_export_start(mica_tracer_t *t);
/* Queues an ended record on the calling worker (dropped, counted, when it cannot). */
void mica__trace_enqueue(mica_tracer_t *t, mica__span_rec_t *r);

/* trace_otlp.c: encodes `n` records as an ExportTraceServiceRequest. */
int mica__otlp_encode(const mica_tracer_t *t, mica__span_rec_t *const *recs, size_t n,
                      uint8_t **out, size_t *len);
/* Spans an ExportTraceServiceResponse says were rejected (0: none); its message in msg. */
int64_t mica__otlp_rejected(const void *body, size_t len, char *msg, size_t size);

/* trace_transport.c: parses an endpoint URL. */
int mica__otlp_parse_url(const char *url, mica__otlp_target_t *out);

#endif /* MICA_OBSERVE_TRACE_INTERNAL_H */

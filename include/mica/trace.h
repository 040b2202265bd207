/* SPDX-License-Identifier: MIT */
/*
 * Distributed tracing: W3C Trace Context in and out, spans with
 * OpenTelemetry's semantic conventions, a parent-based ratio sampler, and
 * export over OTLP/HTTP (protobuf) in batches that never hold up a request.
 *
 *     mica_trace_opts_t to = {0};               // or mica_trace_settings() in a config table
 *     mica_tracer_t *tr;
 *     mica_trace_enable(&tr, rt, http, &to);    // a server span per request (HTTP and gRPC)
 *     mica_trace_grpc_client(tr, users);        // child client spans, traceparent injected
 *
 *     // in a handler: a child span of the request's
 *     mica_ctx_t *ctx;
 *     mica_span_t *sp;
 *     mica_trace_start(mica_http_req_ctx(req), "load user", MICA_SPAN_INTERNAL, &ctx, &sp);
 *     mica_span_set_int(sp, "user.id", id);
 *     int rc = repo_get(repo, ctx, id, &u);     // calls under ctx are children of sp
 *     mica_span_end(sp);                        // also frees ctx
 *
 * The request's span sits in its ctx under MICA_TRACE_SPAN_KEY, so
 * handlers, loggers and clients find it with mica_trace_span(ctx). A
 * request with a valid `traceparent` continues that trace (its sampled flag
 * decides: a sampled parent is sampled, an unsampled one is not); one
 * without starts a trace, sampled when its trace id falls under the ratio
 * (MICA_TRACE_SAMPLE). Unsampled spans still carry ids (logs, propagation)
 * but record nothing. Ended spans go to their worker's queue; an exporter
 * coroutine per worker posts them to MICA_OTLP_ENDPOINT in batches (the
 * BatchSpanProcessor's defaults: queue 2048, batch 512, every 5 s, 30 s
 * per export), retrying 429/502/503/504 with backoff and Retry-After; a
 * full queue drops spans and counts them (mica_trace_stats()).
 */
#ifndef MICA_TRACE_H
#define MICA_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/config.h"
#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/grpc.h"
#include "mica/http.h"
#include "mica/http_client.h"
#include "mica/log.h"
#include "mica/runtime.h"

/* ---- W3C Trace Context ------------------------------------------------------- */

/* Length of a version-00 traceparent value ("00-<32 hex>-<16 hex>-<2 hex>"). */
#define MICA_TRACEPARENT_LEN 55
/* Most list members a tracestate may have (W3C: 32). */
#define MICA_TRACESTATE_MAX_MEMBERS 32
/* Longest tracestate mica propagates: longer lists lose whole members (W3C's rule). */
#define MICA_TRACESTATE_MAX_LEN 512

/* The trace flags mica knows: bit 0, sampled. Others are sent as 0 (W3C level 1). */
#define MICA_TRACE_FLAG_SAMPLED 0x01

/* What identifies a span across processes: a traceparent's content. */
typedef struct mica_span_context {
    uint8_t trace_id[16]; /* never all zero when valid */
    uint8_t span_id[8];   /* never all zero when valid */
    uint8_t flags;        /* MICA_TRACE_FLAG_SAMPLED */
} mica_span_context_t;

/**
 * Parses a traceparent value (`len` bytes, surrounding spaces and tabs
 * ignored) into *out: version 00 exactly, a later version by its first
 * four fields (W3C "Versioning of traceparent"). Returns 0, or MICA_EINVAL
 * for version ff, all-zero ids, uppercase or non-hex digits, bad lengths or separators.
 */
MICA_API int mica_traceparent_parse(const char *s, size_t len, mica_span_context_t *out);

/**
 * Writes `sc` as a version-00 traceparent (unknown flags cleared) into
 * `out`, NUL-terminated: out needs MICA_TRACEPARENT_LEN + 1 bytes.
 */
MICA_API void mica_traceparent_format(const mica_span_context_t *sc,
                                      char out[MICA_TRACEPARENT_LEN + 1]);

/**
 * Validates tracestate `s` (`len` bytes; repeated fields joined with ",") and writes the list
 * to propagate into `out` (`size` >= 1, NUL-terminated): no whitespace or empty members, cut
 * to MICA_TRACESTATE_MAX_LEN by whole members. Returns its length, or MICA_EINVAL (a bad or
 * repeated key or value, over 32 members: discard it whole; *out is "").
 */
MICA_API int mica_tracestate_parse(const char *s, size_t len, char *out, size_t size);

/* ---- spans -------------------------------------------------------------------- */

typedef struct mica_tracer mica_tracer_t;
typedef struct mica_span mica_span_t;

typedef enum mica_span_kind {
    MICA_SPAN_INTERNAL = 1,
    MICA_SPAN_SERVER = 2,
    MICA_SPAN_CLIENT = 3,
    MICA_SPAN_PRODUCER = 4,
    MICA_SPAN_CONSUMER = 5,
} mica_span_kind_t;

typedef enum mica_span_status {
    MICA_SPAN_UNSET = 0,
    MICA_SPAN_OK = 1,
    MICA_SPAN_ERROR = 2,
} mica_span_status_t;

/*
 * The ctx key under which the current span is stored (compared by address,
 * as every ctx key): mica_ctx_value(ctx, MICA_TRACE_SPAN_KEY) is a
 * `mica_span_t *`. mica_trace_span() reads it.
 */
MICA_API extern const char mica_trace_span_key;
#define MICA_TRACE_SPAN_KEY ((const void *)&mica_trace_span_key)

/** Returns the span in `ctx` or its ancestors, or NULL; borrowed from the ctx's owner. */
MICA_API mica_span_t *mica_trace_span(const mica_ctx_t *ctx);

/**
 * Starts a span named `name` (copied), a child of the span in `parent`
 * (else a new trace, sampled by the default tracer's ratio), and makes
 * *ctx, a child of `parent` carrying it. End it with mica_span_end(),
 * which frees *ctx: use *ctx only until then. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_trace_start(mica_ctx_t *parent, const char *name, mica_span_kind_t kind,
                              mica_ctx_t **ctx, mica_span_t **span);

/**
 * Ends a span of mica_trace_start() (its end time is now), frees its ctx
 * and hands a recording span to its worker's export queue; `span` is
 * invalid after. Never waits. NULL is a no-op.
 */
MICA_API void mica_span_end(mica_span_t *span);

/** Copies the span's trace id, span id and flags into *out. */
MICA_API void mica_span_context(const mica_span_t *span, mica_span_context_t *out);

/** Returns whether the span records (sampled, with an exporter): else skip costly attributes. */
MICA_API bool mica_span_recording(const mica_span_t *span);

/**
 * Sets attributes (keys and strings copied; a key set twice keeps the last
 * value). Beyond the span's room (32 attributes in 1 KiB, encoded) they
 * are dropped and counted. No-op on a span that does not record.
 */
MICA_API void mica_span_set_attrs(mica_span_t *span, const mica_log_field_t *attrs, size_t n);

/** Sets one string attribute, as mica_span_set_attrs(). */
MICA_API void mica_span_set_str(mica_span_t *span, const char *key, const char *value);

/** Sets one integer attribute, as mica_span_set_attrs(). */
MICA_API void mica_span_set_int(mica_span_t *span, const char *key, int64_t value);

/**
 * Adds an event `name` at the current time with `n` attributes (copied;
 * up to 8 events in 512 bytes a span, more are dropped and counted). No-op
 * unless recording.
 */
MICA_API void mica_span_add_event(mica_span_t *span, const char *name,
                                  const mica_log_field_t *attrs, size_t n);

/**
 * Sets the span's status; `msg` (copied, may be NULL) is kept with
 * MICA_SPAN_ERROR only. OK is final: later calls do not change it.
 */
MICA_API void mica_span_set_status(mica_span_t *span, mica_span_status_t status, const char *msg);

/* The span ids of a ctx as hex text, for log lines. */
typedef struct mica_trace_ids {
    char trace_id[33]; /* 32 lower-case hex digits */
    char span_id[17];  /* 16 lower-case hex digits */
    bool sampled;
} mica_trace_ids_t;

/**
 * Fills *out with the ids of the span in `ctx` (the request's server span,
 * or the innermost child started under it) -- what a log line written under
 * `ctx` should carry as "trace_id" and "span_id". Returns 0, or
 * MICA_ENOTFOUND when `ctx` has no span. Cheap; any thread.
 */
MICA_API int mica_trace_ids(const mica_ctx_t *ctx, mica_trace_ids_t *out);

/* Headers that carry a span to a callee (W3C): what an HTTP client sends. */
typedef struct mica_trace_headers {
    char traceparent[MICA_TRACEPARENT_LEN + 1];
    const char *tracestate; /* the trace's tracestate, or NULL: none (borrowed from the span) */
} mica_trace_headers_t;

/**
 * Fills *out with the traceparent (and tracestate) that make a callee's
 * spans children of `span`: start a MICA_SPAN_CLIENT span for the call
 * and inject it. For HTTP clients until they take mica_trace interceptors.
 */
MICA_API void mica_trace_inject(const mica_span_t *span, mica_trace_headers_t *out);

/* ---- the tracer: sampling, servers, clients, export ------------------------------ */

/* Tracer settings; 0/NULL picks the default shown. */
typedef struct mica_trace_opts {
    const char *sample;       /* ratio of new traces sampled, "0".."1" (MICA_TRACE_SAMPLE): "1" */
    const char *endpoint;     /* OTLP/HTTP traces URL (MICA_OTLP_ENDPOINT), "http://127.0.0.1:4318"
                                 or ".../v1/traces"; NULL or "": nothing exported or recorded */
    const char *service_name; /* resource service.name (MICA_SERVICE_NAME): the program's name */
    size_t max_queue;         /* spans waiting per worker (MICA_TRACE_MAX_QUEUE): 2048 */
    size_t max_batch;         /* spans per export (MICA_TRACE_MAX_BATCH): 512 */
    int schedule_delay_ms;    /* export at least this often (MICA_TRACE_SCHEDULE_DELAY): 5000 */
    int export_timeout_ms;    /* one export, retries included (MICA_TRACE_EXPORT_TIMEOUT): 30000 */
} mica_trace_opts_t;

/* Room enough for every setting mica_trace_settings() describes. */
#define MICA_TRACE_SETTINGS 7

/**
 * Describes the tracer's settings (trace_sample, otlp_endpoint,
 * service_name, trace_max_queue, trace_max_batch, trace_schedule_delay,
 * trace_export_timeout) bound to `opts`' fields into `out` (room for `cap`),
 * for an app's mica_config_load() table. Returns how many there are.
 */
MICA_API size_t mica_trace_settings(mica_trace_opts_t *opts, mica_setting_t *out, size_t cap);

/**
 * Fills unset fields of `opts` from MICA_TRACE_SAMPLE, MICA_OTLP_ENDPOINT,
 * MICA_SERVICE_NAME and MICA_TRACE_* (above). Returns 0 or MICA_EINVAL
 * (naming the bad variable in a log line).
 */
MICA_API int mica_trace_opts_from_env(mica_trace_opts_t *opts);

/**
 * Creates a tracer for `rt` with `opts` (NULL: defaults; strings copied) and its exporters on
 * every worker; call before mica_runtime_run(). The first one made is the process's default
 * (mica_trace_start() without a span). Returns 0, MICA_EINVAL (a bad ratio or endpoint URL:
 * logged) or MICA_ENOMEM.
 */
MICA_API int mica_tracer_new(mica_tracer_t **out, mica_runtime_t *rt,
                             const mica_trace_opts_t *opts);

/** Frees the tracer after its runtime has stopped. NULL is a no-op. */
MICA_API void mica_tracer_free(mica_tracer_t *t);

/**
 * Traces every request of `srv` -- REST routes and gRPC methods alike --
 * with a server span, through a middleware: add it before the others so
 * the span covers them. Call before attach. Returns 0, MICA_EINVAL, MICA_ENOMEM.
 */
MICA_API int mica_trace_http_server(mica_tracer_t *t, mica_http_server_t *srv);

/**
 * Makes every call of `c` a client span, child of the span in the call's
 * ctx, and sends it as traceparent/tracestate metadata (an interceptor:
 * call before the client's first call). Returns 0 or the errors of
 * mica_grpc_client_intercept().
 */
MICA_API int mica_trace_grpc_client(mica_tracer_t *t, mica_grpc_client_t *c);

/**
 * Makes every call of HTTP client `c` a client span, child of the span in the
 * call's ctx, and sends traceparent/tracestate headers (an interceptor: call
 * before the client's first call). The span ends when the response head is
 * in. Returns 0 or the errors of mica_http_client_intercept().
 */
MICA_API int mica_trace_http_client(mica_tracer_t *t, mica_http_client_t *c);

/** mica_tracer_new() then mica_trace_http_server(): the one call an app makes. Errors of both. */
MICA_API int mica_trace_enable(mica_tracer_t **out, mica_runtime_t *rt, mica_http_server_t *srv,
                               const mica_trace_opts_t *opts);

/* A tracer's counters, summed over its workers (ever-growing, but `queued`). */
typedef struct mica_trace_stats {
    uint64_t started;  /* recording spans started */
    uint64_t exported; /* spans the receiver accepted */
    uint64_t dropped;  /* spans dropped: a full queue, ended off a worker, a failed export */
    uint64_t queued;   /* spans waiting now */
    uint64_t exports;  /* export requests that succeeded */
    uint64_t failures; /* export attempts that failed (each retry counts) */
} mica_trace_stats_t;

/** Fills *out with `t`'s counters (any thread; a moment's snapshot). */
MICA_API void mica_trace_stats(const mica_tracer_t *t, mica_trace_stats_t *out);

#endif /* MICA_TRACE_H */

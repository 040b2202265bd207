/* SPDX-License-Identifier: MIT */
/*
 * Limits a server puts on its own traffic (the resilience layer):
 *
 * - Rate limiters: a token bucket, GCRA and a sliding window, per key, shared
 *   by every worker of the process without a lock, as a library and as HTTP
 *   middleware / gRPC server interceptors (429 with Retry-After,
 *   RESOURCE_EXHAUSTED) keyed by client IP, principal or route.
 * - Adaptive load shedding: each worker refuses new requests (503,
 *   UNAVAILABLE) while it is saturated and holds more in flight than its
 *   recent throughput times its best latency (Little's law), before their
 *   bodies are read.
 * - Deadlines across hops: X-Request-Timeout (gRPC: grpc-timeout) becomes the
 *   request ctx's deadline, requests already out of time are refused before
 *   their handler, and calls made under that ctx pass the rest on.
 *
 *     mica_limiter_t *per_ip;
 *     mica_limiter_new(&per_ip, &(mica_limiter_opts_t){.rate = 100, .burst = 20});
 *     mica_limit_http(srv, per_ip, MICA_LIMIT_BY_IP, NULL);  // srv: mica_http_server_t
 *
 *     mica_shed_t *shed;                     // what a mica service installs by default
 *     mica_shed_opts_t so = {0};
 *     mica_shed_opts_from_env(&so);          // MICA_SHED=off opts out (or mica_shed_settings())
 *     mica_shed_new(&shed, &so);
 *     mica_shed_attach(shed, srv);           // its gRPC calls too
 *     mica_deadline_http(srv);               // X-Request-Timeout, early refusal
 *
 * docs/guide/resilience.md explains the choices; every decision is counted
 * (the *_stats() calls) and shedding logs when it starts and stops.
 */
#ifndef MICA_LIMIT_H
#define MICA_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/error.h"
#include "mica/grpc.h"
#include "mica/http.h"

/* ---- rate limiters ------------------------------------------------------------ */

typedef struct mica_limiter mica_limiter_t;

typedef enum mica_limit_algo {
    MICA_LIMIT_TOKEN_BUCKET,   /* `burst` tokens, refilled at `rate` as time passes (lazily) */
    MICA_LIMIT_GCRA,           /* the same admissions as one timestamp per key (rate, burst) */
    MICA_LIMIT_SLIDING_WINDOW, /* rate * window_ms / 1000 per window, two-window estimate */
} mica_limit_algo_t;

/* Limiter settings; 0 picks the default shown. */
typedef struct mica_limiter_opts {
    mica_limit_algo_t algo;
    double rate;      /* requests per second per key: required, 0.01 .. 1e9 */
    double burst;     /* bucket, GCRA: requests admitted at once: rate (min 1), max 2^20 */
    int window_ms;    /* sliding window: 1000; the limit per window must be 1 .. 2^20-1 */
    size_t max_keys;  /* keys tracked at once: 65536 (rounded up to a power of two) */
} mica_limiter_opts_t;

typedef enum mica_limit_by {
    MICA_LIMIT_BY_GLOBAL,    /* one budget for all requests */
    MICA_LIMIT_BY_IP,        /* per client IP address (mica_http_req_peer_addr) */
    MICA_LIMIT_BY_PRINCIPAL, /* per ctx value (a string) an auth middleware set; else per IP */
    MICA_LIMIT_BY_ROUTE,     /* per route pattern ("/users/{id}") or gRPC method */
} mica_limit_by_t;
#define MICA_LIMIT_BY_COUNT 4

typedef struct mica_limiter_stats {
    uint64_t admitted, limited;                /* decisions of mica_limiter_take() and the rules */
    uint64_t limited_by[MICA_LIMIT_BY_COUNT];  /* refusals of the middleware/interceptors, by the
                                                  key class that decided (principal: IP fallback
                                                  counts as IP) */
    uint64_t evicted;                          /* keys forgotten before their budget was whole
                                                  again: max_keys is too small for the traffic */
} mica_limiter_stats_t;

/**
 * Creates a limiter with `opts`. Its state is shared by every thread, one
 * 64-bit word per key changed by compare-and-swap; it allocates only here.
 * Returns 0, MICA_EINVAL (bad settings) or MICA_ENOMEM.
 */
MICA_API int mica_limiter_new(mica_limiter_t **out, const mica_limiter_opts_t *opts);

/** Frees `l`; no take may be running and no server using it. NULL is a no-op. */
MICA_API void mica_limiter_free(mica_limiter_t *l);

/**
 * Takes `n` requests' worth from the budget of `key` (`len` bytes, not kept:
 * the table holds a 64-bit keyed hash). Any thread, never suspends. Returns 0,
 * MICA_EOVERLOAD with *retry_after_us (may be NULL) set to when it would fit,
 * or MICA_EINVAL (n = 0, or more than burst / the window's limit).
 */
MICA_API int mica_limiter_take(mica_limiter_t *l, const void *key, size_t len, uint32_t n,
                               int64_t *retry_after_us);

/**
 * As mica_limiter_take() at time `now_ns` of the caller's own monotonic clock
 * (non-decreasing, starting at or after 0) instead of the real one: for
 * simulations and tests. Do not mix both clocks on one limiter.
 */
MICA_API int mica_limiter_take_at(mica_limiter_t *l, const void *key, size_t len, uint32_t n,
                                  int64_t now_ns, int64_t *retry_after_us);

/** Fills `st` with `l`'s counters: a snapshot, from any thread. */
MICA_API void mica_limiter_stats(const mica_limiter_t *l, mica_limiter_stats_t *st);

/**
 * Limits every request of `srv` (HTTP middleware: add it where it should run
 * in the chain) by `l`, keyed `by`; `principal_key` is the ctx key of the
 * principal for MICA_LIMIT_BY_PRINCIPAL. Refusals: 429 with Retry-After; gRPC
 * requests get RESOURCE_EXHAUSTED and grpc-retry-pushback-ms. `l` must outlive `srv`.
 * Returns 0, MICA_EINVAL, MICA_ELIMIT (8 rules per limiter) or MICA_ENOMEM.
 */
MICA_API int mica_limit_http(mica_http_server_t *srv, mica_limiter_t *l, mica_limit_by_t by,
                             const void *principal_key);

/**
 * As mica_limit_http(), as a gRPC server interceptor of `gs` (route: the
 * method path), after the request message is read; refusals end the call with
 * RESOURCE_EXHAUSTED and a message saying when to retry. Returns as above.
 */
MICA_API int mica_limit_grpc(mica_grpc_server_t *gs, mica_limiter_t *l, mica_limit_by_t by,
                             const void *principal_key);

/* ---- adaptive load shedding -------------------------------------------------------- */

typedef struct mica_shed mica_shed_t;

/* Shedder settings; 0 picks the default shown. */
typedef struct mica_shed_opts {
    bool disabled;         /* opt out: attach installs nothing (MICA_SHED=off) */
    int cpu_threshold_pct; /* a worker is saturated from this CPU demand on: 90 */
    int window_ms;         /* throughput and latency are remembered this long: 5000 */
    int bucket_ms;         /* ... in buckets of: 100 */
    int cool_off_ms;       /* the in-flight limit holds this long after saturation: 1000 */
    int sample_ms;         /* CPU demand is sampled this often: 100 */
    int queue_ms;          /* the queue a worker may hold before it sheds, in time at its best
                              rate: 5 (-1: none, Little's law alone) */
} mica_shed_opts_t;

typedef struct mica_shed_stats {
    uint64_t admitted, shed; /* decisions, ever */
    uint64_t episodes;       /* times shedding started (logged, as is each stop) */
    uint64_t inflight;       /* admitted requests not finished, now (all workers) */
    uint64_t limit;          /* the in-flight limits' sum (workers without an estimate: 0) */
    int cpu_pct;             /* the busiest worker's CPU demand estimate, percent */
    int64_t min_rt_us;       /* the best bucket's mean latency, lowest over workers (-1: none) */
    uint64_t max_pass;       /* the best bucket's completions, summed over workers */
    bool shedding;           /* some worker refused within cool_off_ms */
} mica_shed_stats_t;

/* Room enough for every setting mica_shed_settings() describes. */
#define MICA_SHED_SETTINGS 5

/**
 * Describes the shedder's settings for an app's mica_config_load() table into
 * `out` (room for `cap`): shed (into *on; the app sets opts->disabled = !*on),
 * shed_cpu_pct, shed_window_ms, shed_cool_off_ms, shed_queue_ms, bound to
 * `opts`' fields. Returns how many there are (--shed=off, MICA_SHED=off).
 */
MICA_API size_t mica_shed_settings(mica_shed_opts_t *opts, bool *on, mica_setting_t *out,
                                   size_t cap);

/**
 * Fills unset fields of `opts` from the variables of mica_shed_settings():
 * MICA_SHED ("on"/"off"), MICA_SHED_CPU_PCT, MICA_SHED_WINDOW_MS,
 * MICA_SHED_COOL_OFF_MS, MICA_SHED_QUEUE_MS. Returns 0 or MICA_EINVAL
 * (naming the bad variable in a log line).
 */
MICA_API int mica_shed_opts_from_env(mica_shed_opts_t *opts);

/** Creates a shedder with `opts` (NULL: defaults). Returns 0, MICA_EINVAL or MICA_ENOMEM. */
MICA_API int mica_shed_new(mica_shed_t **out, const mica_shed_opts_t *opts);

/**
 * Sheds `srv`'s requests, gRPC calls included, at their head (an HTTP gate):
 * 503 / UNAVAILABLE at once, their bodies unread. Call before attach; `sh`
 * must outlive `srv`. Returns 0 (also when disabled), MICA_EINVAL, MICA_ELIMIT.
 */
MICA_API int mica_shed_attach(mica_shed_t *sh, mica_http_server_t *srv);

/**
 * The shedder as a library, for work other than a server's requests: admits
 * one unit of work on this worker (0, *token set) or refuses it
 * (MICA_EOVERLOAD). An admitted unit must end with mica_shed_done(token).
 */
MICA_API int mica_shed_allow(mica_shed_t *sh, int64_t *token);

/** Ends a unit admitted by mica_shed_allow() on the same worker: its latency counts. */
MICA_API void mica_shed_done(mica_shed_t *sh, int64_t token);

/** Fills `st` with `sh`'s counters and estimates: a snapshot, from any thread. */
MICA_API void mica_shed_stats(const mica_shed_t *sh, mica_shed_stats_t *st);

/** Frees `sh` after the servers using it are freed. NULL is a no-op. */
MICA_API void mica_shed_free(mica_shed_t *sh);

/* ---- deadlines ----------------------------------------------------------------------- */

typedef struct mica_deadline_stats {
    uint64_t propagated; /* requests whose deadline came from X-Request-Timeout or grpc-timeout */
    uint64_t expired;    /* refused (504, DEADLINE_EXCEEDED) before their handler ran */
    uint64_t malformed;  /* refused with 400 for a malformed X-Request-Timeout */
} mica_deadline_stats_t;

/**
 * Makes `srv` honour incoming deadlines: X-Request-Timeout (decimal ms; gRPC
 * calls: grpc-timeout), counted from the head's arrival, becomes the request
 * ctx's deadline; a request whose deadline has passed when it arrives or before
 * its handler runs gets 504 (gRPC: DEADLINE_EXCEEDED) and no handler. Call
 * before attach. Returns 0, MICA_EINVAL, MICA_ELIMIT (gates) or MICA_ENOMEM.
 */
MICA_API int mica_deadline_http(mica_http_server_t *srv);

/**
 * Refuses gRPC calls of `gs` whose deadline passed before their handler runs
 * (after the request message arrived) with DEADLINE_EXCEEDED (an interceptor;
 * add it first). Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_deadline_grpc(mica_grpc_server_t *gs);

/** Fills `st` with the process's deadline counters (every server): a snapshot. */
MICA_API void mica_deadline_stats(mica_deadline_stats_t *st);

#endif /* MICA_LIMIT_H */

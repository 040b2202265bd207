/* SPDX-License-Identifier: MIT */
/*
 * Resilient calls: circuit breakers, retries with backoff and a retry
 * budget, and hedging, as client-agnostic policy objects, plus the
 * adapter that puts them around every call of a gRPC client (an
 * interceptor). Balancers (per-endpoint breakers among them) are in
 * include/mica/balancer.h.
 *
 *     mica_resilience_t *res;
 *     mica_resilience_new(&res, rt, NULL);             // defaults, below
 *     mica_resilience_grpc_attach(res, client, NULL);  // before the client's first call
 *     ...
 *     mica_resilience_stats_t st;                      // any thread
 *     mica_resilience_stats(res, &st);
 *
 * Defaults: a per-method SRE adaptive throttle (K = 1.5 over 10 s), up to
 * 3 attempts on UNAVAILABLE with exponential backoff and full jitter
 * (gRFC A6), retries limited to 20 % of the calls in flight (at least 3
 * at a time: Envoy's retry budget), no hedging.
 *
 * Threads. A policy object (breaker, budget) belongs to one worker: its
 * verbs are called there only, without locks. Its counters and state may
 * be read from any thread. mica_resilience_t keeps one set per worker.
 */
#ifndef MICA_RESILIENCE_H
#define MICA_RESILIENCE_H

#include <stdbool.h>
#include <stdint.h>

#include "mica/error.h"
#include "mica/grpc.h"
#include "mica/runtime.h"

/* ---- circuit breakers ------------------------------------------------------------ */

typedef struct mica_breaker mica_breaker_t;

typedef enum mica_breaker_kind {
    MICA_BREAKER_SRE,     /* Google SRE adaptive throttle (the default) */
    MICA_BREAKER_CLASSIC, /* closed / open / half-open on error and slow-call ratios */
    MICA_BREAKER_NONE,    /* no breaker (for options that would otherwise make one) */
} mica_breaker_kind_t;

typedef enum mica_breaker_state {
    MICA_BREAKER_CLOSED,    /* calls pass */
    MICA_BREAKER_OPEN,      /* calls are refused (SRE: a share of them, the drop ratio) */
    MICA_BREAKER_HALF_OPEN, /* classic: probes only; SRE: recovering, the drop ratio ramps to 0 */
} mica_breaker_state_t;

/* Breaker settings; 0 picks the default shown. */
typedef struct mica_breaker_opts {
    mica_breaker_kind_t kind;
    int64_t window_ms;  /* rolling window of outcomes: 10000 */
    int buckets;        /* of the window: 40 (250 ms each) */
    uint32_t min_calls; /* SRE: requests in the window before any drop: 5; classic: calls in the
                           window before it may open: 20 */
    uint32_t consecutive_failures; /* open at once after this many failures in a row, whatever
                                      the window says (Envoy's consecutive_5xx): 0, never */
    /* SRE */
    double k;                  /* drop when requests > k * accepts: 1.5 */
    int64_t probe_interval_ms; /* while dropping, let one call through at least this often: 500 */
    int64_t recovery_ms; /* after the first success, the drop ratio falls to 0 over this: 5000 */
    /* classic */
    double failure_ratio;     /* open when this share of the window's calls failed: 0.5 */
    double slow_ratio;        /* ... or was this slow: 0.5 (> 1: never on slowness) */
    int64_t slow_call_ms;     /* a call this long or longer is slow: 800 */
    int64_t open_ms;          /* refuse every call this long, then probe: 5000 */
    uint32_t half_open_calls; /* probes that must succeed to close: 5 */
    int64_t probe_timeout_ms; /* a probe not back after this counts as failed: 2 * slow_call_ms */
} mica_breaker_opts_t;

/* A breaker's numbers, as mica_breaker_stats() reads them. */
typedef struct mica_breaker_stats {
    mica_breaker_state_t state;
    uint32_t drop_ppm;   /* SRE: the share of calls refused now, in millionths */
    uint64_t calls;      /* outcomes recorded */
    uint64_t failures;   /* ... of them failures */
    uint64_t slow;       /* ... of them slow (classic) */
    uint64_t rejections; /* calls refused */
    uint64_t opens;      /* changes to OPEN */
} mica_breaker_stats_t;

/**
 * Creates a breaker named `name` (copied; it names the breaker in log lines)
 * with `opts` (NULL: the SRE throttle's defaults). Returns 0, MICA_EINVAL
 * (kind NONE, a bad ratio or time) or MICA_ENOMEM.
 */
MICA_API int mica_breaker_new(mica_breaker_t **out, const char *name,
                              const mica_breaker_opts_t *opts);

/** Frees `b`. NULL is a no-op. */
MICA_API void mica_breaker_free(mica_breaker_t *b);

/**
 * May a call start at `now_ms` (mica_now_ms())? Returns 0, or MICA_EOVERLOAD:
 * the breaker refuses it (open, dropped by the throttle, or probes all out).
 * A call let through must be reported with mica_breaker_record(). Owner only.
 */
MICA_API int mica_breaker_allow(mica_breaker_t *b, int64_t now_ms);

/**
 * Records how a call let through by allow() ended: started at `started_ms`,
 * ended at `now_ms` (started_ms = now_ms when unknown: never slow), failed
 * or not (the caller's classification). Owner only.
 */
MICA_API void mica_breaker_record(mica_breaker_t *b, int64_t now_ms, int64_t started_ms,
                                  bool failure);

/** The breaker's state as of its last call. Any thread. */
MICA_API mica_breaker_state_t mica_breaker_state(const mica_breaker_t *b);

/** Fills `out` with the breaker's state and counters. Any thread. */
MICA_API void mica_breaker_stats(const mica_breaker_t *b, mica_breaker_stats_t *out);

/** "closed", "open" or "half-open". */
MICA_API const char *mica_breaker_state_name(mica_breaker_state_t s);

/* ---- retries ------------------------------------------------------------------------ */

/*
 * A retry policy (gRFC A6's retryPolicy); 0 picks the default shown. The
 * n-th retry waits random(0, min(initial * multiplier^(n-1), max)) ms
 * ("full jitter"), or the server's pushback when it sent one.
 */
typedef struct mica_retry_policy {
    int max_attempts;           /* the first attempt included: 3; at most 5; 1: no retries */
    int64_t initial_backoff_ms; /* 100 */
    int64_t max_backoff_ms;     /* 2000 */
    double multiplier;          /* 2 */
    int64_t per_try_timeout_ms; /* each attempt's own limit inside the call's deadline: none */
} mica_retry_policy_t;

/* One call's retry state; fields are private. */
typedef struct mica_retry {
    mica_retry_policy_t _p;
    int _attempts;
    uint64_t _rng;
    int64_t _deadline_ms;
} mica_retry_t;

/**
 * Begins a call's retries under `p` (NULL: defaults; copied) and the call's
 * `deadline_ms` (MICA_NO_DEADLINE: none). The first attempt is counted.
 */
MICA_API void mica_retry_begin(mica_retry_t *r, const mica_retry_policy_t *p, int64_t deadline_ms);

/**
 * An attempt failed: may another one be made? `retryable` is the caller's
 * classification, `pushback_ms` the server's (MICA_RETRY_* below, or ms to
 * wait). Returns 0 with *delay_ms, MICA_ELIMIT (attempts used up), MICA_EPERM
 * (not retryable, or the server said no) or MICA_ETIMEDOUT (no time left).
 */
MICA_API int mica_retry_next(mica_retry_t *r, int64_t now_ms, bool retryable, int64_t pushback_ms,
                             int64_t *delay_ms);

/** The attempts made so far (1 after begin). */
MICA_API int mica_retry_attempts(const mica_retry_t *r);

/**
 * The deadline of the attempt about to start: the call's, or earlier with a
 * per-try timeout.
 */
MICA_API int64_t mica_retry_attempt_deadline(const mica_retry_t *r, int64_t now_ms);

/* A server's retry pushback (gRFC A6's grpc-retry-pushback-ms), besides a
 * delay in ms: the values mica_grpc_result_t.retry_pushback_ms takes too. */
#define MICA_RETRY_NO_PUSHBACK (-1)   /* none sent */
#define MICA_RETRY_PUSHBACK_STOP (-2) /* negative or malformed: do not retry */

/* ---- retry budget --------------------------------------------------------------------- */

/* Envoy's retry budget: retries in flight at most `ratio` of the calls in
 * flight, but `min_concurrency` always; 0 picks the default shown. */
typedef struct mica_budget_opts {
    double ratio;             /* 0.2 */
    uint32_t min_concurrency; /* 3 */
} mica_budget_opts_t;

typedef struct mica_budget mica_budget_t;

/** Creates a budget with `opts` (NULL: defaults). Returns 0, MICA_EINVAL or MICA_ENOMEM. */
MICA_API int mica_budget_new(mica_budget_t **out, const mica_budget_opts_t *opts);
/** Frees `b`. NULL is a no-op. */
MICA_API void mica_budget_free(mica_budget_t *b);
/** A call starts (counted as active until mica_budget_call_end()). Owner only; NULL: no-op. */
MICA_API void mica_budget_call_begin(mica_budget_t *b);
/** The call started with mica_budget_call_begin() ended. Owner only; NULL: no-op. */
MICA_API void mica_budget_call_end(mica_budget_t *b);
/**
 * May a retry (or hedge) start now? Returns 0 (counted until
 * mica_budget_retry_end()) or MICA_ELIMIT: the budget is spent. Owner only;
 * NULL (no budget) always returns 0.
 */
MICA_API int mica_budget_retry_begin(mica_budget_t *b);
/** The retry mica_budget_retry_begin() let start ended. Owner only; NULL: no-op. */
MICA_API void mica_budget_retry_end(mica_budget_t *b);

/* A budget's numbers; any thread. */
typedef struct mica_budget_stats {
    uint32_t active_calls, active_retries;
    uint32_t peak_retries; /* the most retries ever in flight at once */
    uint64_t retries;      /* retries let through */
    uint64_t exhausted;    /* retries refused */
} mica_budget_stats_t;

/** Fills `out` with the budget's numbers. Any thread. */
MICA_API void mica_budget_stats(const mica_budget_t *b, mica_budget_stats_t *out);

/* ---- hedging ---------------------------------------------------------------------------- */

/* gRFC A6's hedgingPolicy: after delay_ms without an answer, another attempt
 * goes out (up to max_attempts in all); the first good answer wins and the
 * others are cancelled. An attempt that fails with a non-fatal code sends the
 * next one at once. Replaces retries for the calls it covers. */
typedef struct mica_hedge_policy {
    int max_attempts;         /* 2..5; 0 or 1: no hedging */
    int64_t delay_ms;         /* between attempts: 0 sends them all at once */
    uint32_t non_fatal_codes; /* gRPC codes (bit 1u << code) that let the others go on:
                                 0 picks UNAVAILABLE */
} mica_hedge_policy_t;

/* ---- per-call policy --------------------------------------------------------------------- */

/* mica_grpc_call_opts_t.flags bits read by the resilience interceptor and balancers. */
#define MICA_CALL_IDEMPOTENT (1u << 24) /* safe to repeat (for idempotent_only policies) */
#define MICA_CALL_NO_RETRY (1u << 25)   /* never retry or hedge this call */
#define MICA_CALL_POLICY (1u << 26)     /* opts.policy points at a mica_call_policy_t */

/* A call's own policy: opts.policy with MICA_CALL_POLICY in opts.flags. */
typedef struct mica_call_policy {
    const char *hash_key;             /* ring-hash balancer: the key (NULL: any endpoint) */
    size_t hash_key_len;              /* 0: strlen(hash_key) */
    const mica_retry_policy_t *retry; /* NULL: the client's */
    const mica_hedge_policy_t *hedge; /* NULL: the client's */
} mica_call_policy_t;

/* ---- the policy set, and its gRPC adapter -------------------------------------------------- */

typedef struct mica_resilience mica_resilience_t;

/* mica_resilience_new() settings; zero fields take the defaults above. */
typedef struct mica_resilience_opts {
    mica_breaker_opts_t breaker; /* per method (per key); kind NONE: no breakers */
    mica_retry_policy_t retry;   /* max_attempts 1: no retries */
    mica_budget_opts_t budget;
    bool no_budget;            /* retries unlimited by the budget (not advised) */
    mica_hedge_policy_t hedge; /* max_attempts >= 2: hedge unary calls instead of retrying */
} mica_resilience_opts_t;

/**
 * Creates a policy set for calls made on `rt`'s workers (one breaker per
 * key, a budget and counters per worker) with `opts` (NULL: defaults;
 * copied). Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_resilience_new(mica_resilience_t **out, mica_runtime_t *rt,
                                 const mica_resilience_opts_t *opts);

/** Frees `r` once the clients it is attached to are freed. NULL is a no-op. */
MICA_API void mica_resilience_free(mica_resilience_t *r);

/**
 * Answers a unary call a breaker refused or that failed for good with a
 * failure code: returns the call's code (fill call->res, and *call->resp,
 * which the caller frees, for OK) -- a cached answer, a default, or `code`
 * itself. Runs in the caller's coroutine. Streaming calls get no fallback.
 */
typedef int (*mica_resilience_grpc_fallback_fn)(mica_grpc_call_info_t *call, int code, void *arg);

/* The gRPC adapter's settings; 0 picks the default shown. Codes are bit masks (1u << code). */
typedef struct mica_resilience_grpc_opts {
    uint32_t failure_codes;    /* count against the breaker: UNAVAILABLE, DEADLINE_EXCEEDED,
                                  INTERNAL, RESOURCE_EXHAUSTED */
    uint32_t retry_codes;      /* retried: UNAVAILABLE */
    bool idempotent_only;      /* retry and hedge only calls flagged MICA_CALL_IDEMPOTENT */
    const char *hash_metadata; /* this request metadata's value becomes the ring-hash key
                                  (borrowed for the client's life) */
    mica_resilience_grpc_fallback_fn fallback; /* NULL: refused calls get UNAVAILABLE */
    void *fallback_arg;
} mica_resilience_grpc_opts_t;

/** The default failure_codes of the gRPC adapter and the balancers. */
#define MICA_RESILIENCE_GRPC_FAILURES                                                              \
    ((1u << MICA_GRPC_UNAVAILABLE) | (1u << MICA_GRPC_DEADLINE_EXCEEDED) |                         \
     (1u << MICA_GRPC_INTERNAL) | (1u << MICA_GRPC_RESOURCE_EXHAUSTED))

/**
 * Puts `r`'s policies around every call of `c` (an interceptor: add it
 * where it should sit in the chain; calls of one method share a breaker).
 * `opts` is copied (NULL: defaults). Call before the client's first call;
 * `r` serves one client. Returns 0, MICA_EBUSY, MICA_ELIMIT or MICA_ENOMEM.
 */
MICA_API int mica_resilience_grpc_attach(mica_resilience_t *r, mica_grpc_client_t *c,
                                         const mica_resilience_grpc_opts_t *opts);

/* What a policy set did, summed over its workers. */
typedef struct mica_resilience_stats {
    uint64_t calls;            /* calls through the policies */
    uint64_t rejected;         /* refused by an open breaker */
    uint64_t fallbacks;        /* answered by the fallback */
    uint64_t retries;          /* attempts after the first (hedges not included) */
    uint64_t budget_exhausted; /* retries and hedges the budget refused */
    uint64_t hedges;           /* hedged attempts sent */
    uint64_t hedge_wins;       /* calls a hedged attempt answered */
    uint64_t pushbacks;        /* retries delayed or stopped by the server's pushback */
    uint32_t peak_retries;     /* the most retries in flight at once on one worker */
} mica_resilience_stats_t;

/** Fills `out`. Any thread. */
MICA_API void mica_resilience_stats(const mica_resilience_t *r, mica_resilience_stats_t *out);

/**
 * Fills `out` with the breaker of `key` (a method path, "/pkg.Service/Method")
 * summed over the workers; state: the worst worker's (open > half-open >
 * closed), drop_ppm its largest. Any thread. Returns 0 or MICA_ENOTFOUND.
 */
MICA_API int mica_resilience_breaker_stats(mica_resilience_t *r, const char *key,
                                           mica_breaker_stats_t *out);

/* ---- HTTP outcomes, for an HTTP client's adapter ----------------------------------------- */

/**
 * Whether HTTP `method` may be repeated without the caller saying so: the
 * idempotent methods of RFC 9110 section 9.2.2 (GET, HEAD, OPTIONS, TRACE,
 * PUT, DELETE). Others are retried only when the call is flagged
 * MICA_CALL_IDEMPOTENT.
 */
MICA_API bool mica_resilience_http_idempotent(const char *method);

/** Whether HTTP `status` counts against a breaker by default: 5xx. */
MICA_API bool mica_resilience_http_failure(int status);

/** Whether HTTP `status` is worth a retry by default: 502, 503, 504 (and 0: no response). */
MICA_API bool mica_resilience_http_retryable(int status);

/* ---- the policy set's verbs, for adapters of other clients ------------------------------- */

/**
 * The calling worker's breaker for `key`, created on first use (NULL: breakers
 * are off, not on a worker, or no memory). Valid for r's life; owner only.
 */
MICA_API mica_breaker_t *mica_resilience_breaker(mica_resilience_t *r, const char *key);

/** The calling worker's retry budget (NULL: none). */
MICA_API mica_budget_t *mica_resilience_budget(mica_resilience_t *r);

/** The options `r` was made with (defaults filled in). */
MICA_API const mica_resilience_opts_t *mica_resilience_opts(const mica_resilience_t *r);

#endif /* MICA_RESILIENCE_H */

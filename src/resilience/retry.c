/* SPDX-License-Identifier: MIT */
/*
 * Retries and the retry budget, client-agnostic.
 *
 * Backoff follows gRFC A6: the n-th retry waits a uniformly random time in
 * [0, min(initial * multiplier^(n-1), max)] ("full jitter": clients that
 * failed together do not retry together), unless the server sent
 * grpc-retry-pushback-ms, which then decides alone (a delay, or "do not
 * retry"). At most 5 attempts whatever the policy says (A6's cap). A retry
 * whose wait would end past the call's deadline is not made.
 *
 * The budget is Envoy's: retries in flight may be at most `ratio` of the
 * calls in flight, but `min_concurrency` are always allowed, so a quiet
 * client can still retry while a busy one cannot multiply an outage (with
 * 20 %, a backend that fails everything sees at most 1.2x the calls, not
 * max_attempts x). Counted per worker, like everything on the call path.
 */
#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "resilience/internal.h"

#define MAX_ATTEMPTS 5

static void retry_defaults(mica_retry_policy_t *p)
{
    if (p->max_attempts <= 0)
        p->max_attempts = 3;
    if (p->max_attempts > MAX_ATTEMPTS)
        p->max_attempts = MAX_ATTEMPTS;
    if (p->initial_backoff_ms <= 0)
        p->initial_backoff_ms = 100;
    if (p->max_backoff_ms <= 0)
        p->max_backoff_ms = 2000;
    if (p->max_backoff_ms < p->initial_backoff_ms)
        p->max_backoff_ms = p->initial_backoff_ms;
    if (!(p->multiplier >= 1))
        p->multiplier = 2;
    if (p->per_try_timeout_ms < 0)
        p->per_try_timeout_ms = 0;
}

void mica_retry_begin(mica_retry_t *r, const mica_retry_policy_t *p, int64_t deadline_ms)
{
    r->_p = p ? *p : (mica_retry_policy_t){0};
    retry_defaults(&r->_p);
    r->_attempts = 1;
    r->_rng = 0; /* seeded by the first retry: most calls never need it */
    r->_deadline_ms = deadline_ms;
}

int mica_retry_attempts(const mica_retry_t *r)
{
    return r->_attempts;
}

int64_t mica_retry_attempt_deadline(const mica_retry_t *r, int64_t now_ms)
{
    int64_t d = r->_deadline_ms;
    if (r->_p.per_try_timeout_ms > 0 && now_ms + r->_p.per_try_timeout_ms < d)
        d = now_ms + r->_p.per_try_timeout_ms;
    return d;
}

int mica_retry_next(mica_retry_t *r, int64_t now_ms, bool retryable, int64_t pushback_ms,
                    int64_t *delay_ms)
{
    if (!retryable || pushback_ms == MICA_RETRY_PUSHBACK_STOP)
        return MICA_EPERM;
    if (r->_attempts >= r->_p.max_attempts)
        return MICA_ELIMIT;
    int64_t delay;
    if (pushback_ms >= 0) {
        delay = pushback_ms;
    } else {
        if (!r->_rng)
            r->_rng = mica__rand_seed(r);
        double cap = (double)r->_p.initial_backoff_ms;
        for (int i = 1; i < r->_attempts && cap < (double)r->_p.max_backoff_ms; i++)
            cap *= r->_p.multiplier;
        if (cap > (double)r->_p.max_backoff_ms)
            cap = (double)r->_p.max_backoff_ms;
        delay = (int64_t)(mica__rand01(&r->_rng) * (cap + 1));
    }
    if (r->_deadline_ms != MICA_NO_DEADLINE && now_ms + delay >= r->_deadline_ms)
        return MICA_ETIMEDOUT;
    r->_attempts++;
    *delay_ms = delay;
    return 0;
}

/* ---- retry budget ------------------------------------------------------------------- */

struct mica_budget {
    mica_budget_opts_t o;
    _Atomic uint32_t active_calls, active_retries, peak;
    mica__ctr_t retries, exhausted;
};

static void add32(_Atomic uint32_t *v, int32_t d)
{
    uint32_t x = atomic_load_explicit(v, memory_order_relaxed);
    if (d < 0 && x < (uint32_t)-d)
        x = 0; /* a stray end: never wrap */
    else
        x += (uint32_t)d;
    atomic_store_explicit(v, x, memory_order_relaxed);
}

int mica_budget_new(mica_budget_t **out, const mica_budget_opts_t *opts)
{
    mica_budget_opts_t o = opts ? *opts : (mica_budget_opts_t){0};
    if (o.ratio < 0 || o.ratio > 1 || isnan(o.ratio))
        return MICA_EINVAL;
    if (o.ratio == 0)
        o.ratio = 0.2;
    if (!o.min_concurrency)
        o.min_concurrency = 3;
    mica_budget_t *b = mica__calloc(1, sizeof(*b));
    if (!b)
        return MICA_ENOMEM;
    b->o = o;
    *out = b;
    return 0;
}

void mica_budget_free(mica_budget_t *b)
{
    mica__free(b);
}

void mica_budget_call_begin(mica_budget_t *b)
{
    if (!b)
        return;
    add32(&b->active_calls, 1);
}

void mica_budget_call_end(mica_budget_t *b)
{
    if (!b)
        return;
    add32(&b->active_calls, -1);
}

int mica_budget_retry_begin(mica_budget_t *b)
{
    if (!b)
        return 0; /* no budget: every retry may go */
    uint32_t calls = atomic_load_explicit(&b->active_calls, memory_order_relaxed);
    uint32_t retries = atomic_load_explicit(&b->active_retries, memory_order_relaxed);
    uint32_t allowed = (uint32_t)(b->o.ratio * calls);
    if (allowed < b->o.min_concurrency)
        allowed = b->o.min_concurrency;
    if (retries >= allowed) {
        mica__ctr_add(&b->exhausted, 1);
        return MICA_ELIMIT;
    }
    add32(&b->active_retries, 1);
    if (retries + 1 > atomic_load_explicit(&b->peak, memory_order_relaxed))
        atomic_store_explicit(&b->peak, retries + 1, memory_order_relaxed);
    mica__ctr_add(&b->retries, 1);
    return 0;
}

void mica_budget_retry_end(mica_budget_t *b)
{
    if (!b)
        return;
    add32(&b->active_retries, -1);
}

void mica_budget_stats(const mica_budget_t *b, mica_budget_stats_t *out)
{
    out->active_calls = atomic_load_explicit(&b->active_calls, memory_order_relaxed);
    out->active_retries = atomic_load_explicit(&b->active_retries, memory_order_relaxed);
    out->peak_retries = atomic_load_explicit(&b->peak, memory_order_relaxed);
    out->retries = mica__ctr_get(&b->retries);
    out->exhausted = mica__ctr_get(&b->exhausted);
}

/* ---- HTTP outcomes ------------------------------------------------------------------- */

bool mica_resilience_http_idempotent(const char *method)
{
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; method && i < sizeof(idem) / sizeof(idem[0]); i++)
        if (strcmp(method, idem[i]) == 0)
            return true;
    return false;
}

bool mica_resilience_http_failure(int status)
{
    return status >= 500 && status <= 599;
}

bool mica_resilience_http_retryable(int status)
{
    return status == 0 || status == 502 || status == 503 || status == 504;
}

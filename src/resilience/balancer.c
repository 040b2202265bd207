/* SPDX-License-Identifier: MIT */
/*
 * What every balancer shares: the per-worker picker state, the entry hung
 * on each endpoint (its breaker and counters), and the mica_balancer_t that
 * holds the settings and lets other threads read the counters.
 *
 * A client creates one picker state per worker and calls it only there, so
 * a pick touches this worker's memory alone. The one lock here is per
 * worker and never taken by a pick: the worker takes it when an endpoint
 * list is applied (entries come and go), readers of the counters take it to
 * walk the entries. Counters are single-writer atomics (internal.h).
 *
 * The algorithms (lb_*.c) only choose: they offer candidates to
 * mica__lb_try(), which skips endpoints the client backs off from and asks
 * the endpoint's breaker. A breaker's refusal is remembered for the rest of
 * the pick (mark == seq) so that no breaker is asked twice for one call.
 */
#include <string.h>

#include "common/alloc.h"
#include "resilience/internal.h"

struct mica_balancer {
    mica_balancer_opts_t o;
    int nworkers;
    struct lb_worker {
        pthread_mutex_t lock;
        mica__lb_t *states; /* every picker state of this worker using us */
        char pad[64];
    } * w;
};

static void defaults(mica_balancer_opts_t *o)
{
    if (!o->breaker.consecutive_failures)
        o->breaker.consecutive_failures = 5;
    if (o->breaker.kind != MICA_BREAKER_NONE)
        mica__breaker_defaults(&o->breaker);
    if (!o->failure_codes)
        o->failure_codes = MICA_RESILIENCE_GRPC_FAILURES;
    if (o->p2c_decay_ms <= 0)
        o->p2c_decay_ms = 1000;
    if (o->p2c_penalty_ms <= 0)
        o->p2c_penalty_ms = 250;
    if (!o->ring_points)
        o->ring_points = 256;
}

int mica_balancer_new(mica_balancer_t **out, mica_runtime_t *rt, const mica_balancer_opts_t *opts)
{
    if (!rt)
        return MICA_EINVAL;
    mica_balancer_opts_t o = opts ? *opts : (mica_balancer_opts_t){0};
    defaults(&o);
    if (o.breaker.kind != MICA_BREAKER_NONE && mica__breaker_check(&o.breaker) != 0)
        return MICA_EINVAL;
    mica_balancer_t *b = mica__calloc(1, sizeof(*b));
    if (!b)
        return MICA_ENOMEM;
    b->o = o;
    b->nworkers = mica_runtime_workers(rt);
    b->w = mica__calloc((size_t)b->nworkers, sizeof(*b->w));
    if (!b->w) {
        mica__free(b);
        return MICA_ENOMEM;
    }
    for (int i = 0; i < b->nworkers; i++)
        pthread_mutex_init(&b->w[i].lock, NULL);
    *out = b;
    return 0;
}

void mica_balancer_free(mica_balancer_t *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->nworkers; i++)
        pthread_mutex_destroy(&b->w[i].lock);
    mica__free(b->w);
    mica__free(b);
}

int mica_balancer_endpoint_stats(mica_balancer_t *b, const char *addr,
                                 mica_balancer_endpoint_stats_t *out)
{
    *out = (mica_balancer_endpoint_stats_t){0};
    bool found = false;
    for (int i = 0; i < b->nworkers; i++) {
        pthread_mutex_lock(&b->w[i].lock);
        for (mica__lb_t *lb = b->w[i].states; lb; lb = lb->reg_next)
            for (mica__lb_ep_t *g = lb->eps; g; g = g->next) {
                if (strcmp(g->addr, addr) != 0)
                    continue;
                found = true;
                out->picks += mica__ctr_get(&g->picks);
                out->calls += mica__ctr_get(&g->calls);
                out->failures += mica__ctr_get(&g->failures);
                uint32_t l = atomic_load_explicit(&g->ewma_us, memory_order_relaxed);
                if (l > out->latency_ewma_us)
                    out->latency_ewma_us = l;
                if (g->breaker)
                    mica__breaker_stats_add(&out->breaker, g->breaker);
            }
        pthread_mutex_unlock(&b->w[i].lock);
    }
    return found ? 0 : MICA_ENOTFOUND;
}

/* ---- the picker state --------------------------------------------------------------- */

int mica__lb_create(void **state, const void *conf, const mica__lb_algo_t *algo)
{
    mica__lb_t *lb = mica__calloc(1, sizeof(*lb));
    if (!lb)
        return MICA_ENOMEM;
    lb->algo = algo;
    lb->owner = (mica_balancer_t *)conf;
    if (lb->owner) {
        lb->o = lb->owner->o;
    } else {
        defaults(&lb->o);
    }
    lb->worker = mica_worker_id();
    lb->rng = mica__rand_seed(lb);
    lb->next = lb->worker > 0 ? (size_t)lb->worker * 7919 : 0; /* workers start apart */
    if (lb->owner && lb->worker >= 0 && lb->worker < lb->owner->nworkers) {
        struct lb_worker *w = &lb->owner->w[lb->worker];
        lb->lock = &w->lock;
        pthread_mutex_lock(lb->lock);
        lb->reg_next = w->states;
        w->states = lb;
        pthread_mutex_unlock(lb->lock);
    }
    *state = lb;
    return 0;
}

static void ep_free(mica__lb_ep_t *g)
{
    mica_breaker_free(g->breaker);
    mica__free(g->addr);
    mica__free(g);
}

static mica__lb_ep_t *ep_new(mica__lb_t *lb, const char *addr)
{
    mica__lb_ep_t *g = mica__calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->addr = mica__strdup(addr);
    if (!g->addr || (lb->o.breaker.kind != MICA_BREAKER_NONE &&
                     mica_breaker_new(&g->breaker, addr, &lb->o.breaker) != 0)) {
        ep_free(g);
        return NULL;
    }
    g->last_pick_ms = mica_now_ms();
    return g;
}

void mica__lb_update(void *state, mica_picker_endpoint_t *const *eps, size_t n)
{
    mica__lb_t *lb = state;
    if (lb->lock)
        pthread_mutex_lock(lb->lock);
    for (mica__lb_ep_t *g = lb->eps; g; g = g->next)
        g->seen = false;
    for (size_t i = 0; i < n; i++) {
        mica__lb_ep_t *g = mica__lb_ep(eps[i]);
        if (!g && eps[i]->ep && (g = ep_new(lb, eps[i]->ep->addr))) {
            g->next = lb->eps;
            lb->eps = g;
            eps[i]->picker_ptr = g;
        }
        if (g)
            g->seen = true;
    }
    /* Entries of endpoints that left: the client calls neither pick nor done with them again. */
    for (mica__lb_ep_t **p = &lb->eps; *p;) {
        mica__lb_ep_t *g = *p;
        if (g->seen) {
            p = &g->next;
        } else {
            *p = g->next;
            ep_free(g);
        }
    }
    if (lb->lock)
        pthread_mutex_unlock(lb->lock);
    if (lb->algo->update)
        lb->algo->update(lb, eps, n); /* on ENOMEM it keeps working without its extra state */
}

bool mica__lb_try(mica__lb_t *lb, mica_picker_endpoint_t *e, int64_t now_ms)
{
    if (!mica_picker_endpoint_usable(e, now_ms))
        return false;
    mica__lb_ep_t *g = mica__lb_ep(e);
    if (!g)
        return true;
    if (g->mark == lb->seq)
        return false;
    if (g->breaker && mica_breaker_allow(g->breaker, now_ms) != 0) {
        g->mark = lb->seq;
        return false;
    }
    mica__ctr_add(&g->picks, 1);
    g->last_pick_ms = now_ms;
    return true;
}

int mica__lb_fallback(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        mica__lb_ep_t *g = mica__lb_ep(eps[i]);
        if (!g || g->mark != lb->seq)
            return (int)i; /* backing off: the client fails the call with its last error */
    }
    return -1;
}

int mica__lb_pick(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                  const mica_pick_info_t *info)
{
    mica__lb_t *lb = state;
    if (n == 0)
        return -1;
    lb->seq++;
    return lb->algo->pick(lb, eps, n, info);
}

void mica__lb_done(void *state, mica_picker_endpoint_t *ep, int code, uint32_t latency_us)
{
    mica__lb_t *lb = state;
    mica__lb_ep_t *g = mica__lb_ep(ep);
    if (!g)
        return;
    bool failure = code >= 0 && code < 32 && (lb->o.failure_codes >> code & 1);
    mica__ctr_add(&g->calls, 1);
    if (failure)
        mica__ctr_add(&g->failures, 1);
    int64_t now = mica_now_ms();
    if (g->breaker)
        mica_breaker_record(g->breaker, now, now - latency_us / 1000, failure);
    if (lb->algo != &mica__lb_p2c_algo || !latency_us)
        return;
    /*
     * The estimate is an EWMA weighted by time and by count: a sample's weight
     * is dt / p2c_decay_ms (the time since the last sample), at least 1/16
     * and at most 1. Dense samples converge within a few dozen calls and a
     * lone outlier moves the estimate by 1/16; a sample after a quiet spell
     * of p2c_decay_ms or more replaces it, as an estimate that old says
     * nothing (p2c compares stale estimates by queue length alone, so the
     * endpoint gets that sample). A failure counts as at least
     * p2c_penalty_ms slow, so a backend that fails fast does not look fast.
     */
    double sample = latency_us;
    if (failure && sample < (double)lb->o.p2c_penalty_ms * 1000)
        sample = (double)lb->o.p2c_penalty_ms * 1000;
    double w = g->ewma <= 0 ? 1 : (double)(now - g->ewma_at_ms) / (double)lb->o.p2c_decay_ms;
    w = w < 1.0 / 16 ? 1.0 / 16 : w > 1 ? 1 : w;
    g->ewma = g->ewma * (1 - w) + sample * w;
    g->ewma_at_ms = now;
    atomic_store_explicit(&g->ewma_us, g->ewma > 4e9 ? 4000000000u : (uint32_t)g->ewma,
                          memory_order_relaxed);
}

void mica__lb_destroy(void *state)
{
    mica__lb_t *lb = state;
    if (!lb)
        return;
    if (lb->lock) {
        pthread_mutex_lock(lb->lock);
        for (mica__lb_t **p = &lb->owner->w[lb->worker].states; *p; p = &(*p)->reg_next)
            if (*p == lb) {
                *p = lb->reg_next;
                break;
            }
        pthread_mutex_unlock(lb->lock);
    }
    while (lb->eps) {
        mica__lb_ep_t *g = lb->eps;
        lb->eps = g->next;
        ep_free(g);
    }
    if (lb->algo->destroy)
        lb->algo->destroy(lb);
    mica__free(lb);
}

const char *mica__lb_hash_key(const mica_pick_info_t *info, size_t *len)
{
    if (!info || !(info->flags & MICA_CALL_POLICY) || !info->policy)
        return NULL;
    const mica_call_policy_t *p = info->policy;
    if (!p->hash_key)
        return NULL;
    *len = p->hash_key_len ? p->hash_key_len : strlen(p->hash_key);
    return p->hash_key;
}

int mica__lb_scan(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n, int64_t now_ms)
{
    size_t start = mica__rand_below(&lb->rng, (uint32_t)n);
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (mica__lb_try(lb, eps[i], now_ms))
            return (int)i;
    }
    return mica__lb_fallback(lb, eps, n);
}

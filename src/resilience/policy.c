/* SPDX-License-Identifier: MIT */
/*
 * mica_resilience_t: a set of policies for one client, kept per worker --
 * a breaker per key (method), a retry budget, counters -- so that a call
 * consults only its own worker's objects, without locks. A worker's lock
 * guards its table of breakers against readers on other threads; the
 * worker takes it only to add a key (once per method per worker).
 */
#include <string.h>

#include "common/alloc.h"
#include "resilience/internal.h"

static void opts_defaults(mica_resilience_opts_t *o)
{
    if (o->breaker.kind != MICA_BREAKER_NONE)
        mica__breaker_defaults(&o->breaker);
    mica_retry_t tmp; /* the retry policy's defaults, as mica_retry_begin() fills them */
    mica_retry_begin(&tmp, &o->retry, MICA_NO_DEADLINE);
    o->retry = tmp._p;
    if (o->budget.ratio == 0)
        o->budget.ratio = 0.2;
    if (!o->budget.min_concurrency)
        o->budget.min_concurrency = 3;
    if (o->hedge.max_attempts > 5)
        o->hedge.max_attempts = 5;
    if (o->hedge.max_attempts < 2)
        o->hedge.max_attempts = 0;
    if (o->hedge.delay_ms < 0)
        o->hedge.delay_ms = 0;
    if (!o->hedge.non_fatal_codes)
        o->hedge.non_fatal_codes = 1u << MICA_GRPC_UNAVAILABLE;
}

int mica_resilience_new(mica_resilience_t **out, mica_runtime_t *rt,
                        const mica_resilience_opts_t *opts)
{
    if (!rt)
        return MICA_EINVAL;
    mica_resilience_opts_t o = opts ? *opts : (mica_resilience_opts_t){0};
    opts_defaults(&o);
    if ((o.breaker.kind != MICA_BREAKER_NONE && mica__breaker_check(&o.breaker) != 0) ||
        o.budget.ratio < 0 || o.budget.ratio > 1)
        return MICA_EINVAL;
    mica_resilience_t *r = mica__calloc(1, sizeof(*r));
    if (!r)
        return MICA_ENOMEM;
    r->o = o;
    r->nworkers = mica_runtime_workers(rt);
    r->w = mica__calloc((size_t)r->nworkers, sizeof(*r->w));
    int rc = r->w ? 0 : MICA_ENOMEM;
    for (int i = 0; rc == 0 && i < r->nworkers; i++) {
        mica__res_worker_t *w = mica__calloc(1, sizeof(*w));
        if (!w) {
            rc = MICA_ENOMEM;
            break;
        }
        r->w[i] = w;
        pthread_mutex_init(&w->lock, NULL);
        w->rng = mica__rand_seed(w);
        if (!o.no_budget)
            rc = mica_budget_new(&w->budget, &o.budget);
    }
    if (rc != 0) {
        mica_resilience_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void mica_resilience_free(mica_resilience_t *r)
{
    if (!r)
        return;
    for (int i = 0; r->w && i < r->nworkers; i++) {
        mica__res_worker_t *w = r->w[i];
        if (!w)
            continue;
        for (size_t k = 0; k < w->breakers.cap; k++)
            mica_breaker_free(w->breakers.slots[k].value);
        mica__table_destroy(&w->breakers);
        mica_budget_free(w->budget);
        pthread_mutex_destroy(&w->lock);
        mica__free(w);
    }
    mica__free(r->w);
    mica__free(r);
}

const mica_resilience_opts_t *mica_resilience_opts(const mica_resilience_t *r)
{
    return &r->o;
}

mica__res_worker_t *mica__res_worker(mica_resilience_t *r)
{
    int id = mica_worker_id();
    return id >= 0 && id < r->nworkers ? r->w[id] : NULL;
}

mica_breaker_t *mica__res_breaker(mica_resilience_t *r, mica__res_worker_t *w, const void *id,
                                  const char *key)
{
    if (r->o.breaker.kind == MICA_BREAKER_NONE)
        return NULL;
    size_t slot = ((uintptr_t)id >> 4) % 16;
    if (id && w->cache[slot].id == id)
        return w->cache[slot].b;
    mica_breaker_t *b = mica_resilience_breaker(r, key);
    if (b && id) {
        w->cache[slot].id = id;
        w->cache[slot].b = b;
    }
    return b;
}

mica_breaker_t *mica_resilience_breaker(mica_resilience_t *r, const char *key)
{
    mica__res_worker_t *w;
    if (r->o.breaker.kind == MICA_BREAKER_NONE || !(w = mica__res_worker(r)))
        return NULL;
    mica_breaker_t *b = mica__table_get(&w->breakers, key);
    if (b)
        return b;
    if (mica_breaker_new(&b, key, &r->o.breaker) != 0)
        return NULL;
    pthread_mutex_lock(&w->lock);
    int rc = mica__table_put(&w->breakers, key, b);
    pthread_mutex_unlock(&w->lock);
    if (rc != 0) {
        mica_breaker_free(b);
        return NULL;
    }
    return b;
}

mica_budget_t *mica_resilience_budget(mica_resilience_t *r)
{
    mica__res_worker_t *w = mica__res_worker(r);
    return w ? w->budget : NULL;
}

void mica_resilience_stats(const mica_resilience_t *r, mica_resilience_stats_t *out)
{
    *out = (mica_resilience_stats_t){0};
    for (int i = 0; i < r->nworkers; i++) {
        const mica__res_worker_t *w = r->w[i];
        out->calls += mica__ctr_get(&w->calls);
        out->rejected += mica__ctr_get(&w->rejected);
        out->fallbacks += mica__ctr_get(&w->fallbacks);
        out->retries += mica__ctr_get(&w->retries);
        out->hedges += mica__ctr_get(&w->hedges);
        out->hedge_wins += mica__ctr_get(&w->hedge_wins);
        out->pushbacks += mica__ctr_get(&w->pushbacks);
        if (w->budget) {
            mica_budget_stats_t b;
            mica_budget_stats(w->budget, &b);
            out->budget_exhausted += b.exhausted;
            if (b.peak_retries > out->peak_retries)
                out->peak_retries = b.peak_retries;
        }
    }
}

int mica_resilience_breaker_stats(mica_resilience_t *r, const char *key, mica_breaker_stats_t *out)
{
    *out = (mica_breaker_stats_t){0};
    bool found = false;
    for (int i = 0; i < r->nworkers; i++) {
        mica__res_worker_t *w = r->w[i];
        pthread_mutex_lock(&w->lock);
        mica_breaker_t *b = mica__table_get(&w->breakers, key);
        if (b) {
            mica__breaker_stats_add(out, b);
            found = true;
        }
        pthread_mutex_unlock(&w->lock);
    }
    return found ? 0 : MICA_ENOTFOUND;
}

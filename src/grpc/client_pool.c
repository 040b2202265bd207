/* SPDX-License-Identifier: MIT */
/*
 * The gRPC client's endpoints, per worker: the resolver's list turned into
 * endpoints with their connections and the numbers pickers read.
 *
 * The resolver publishes immutable lists under a generation number. A call
 * compares that number (one atomic load) with the one its worker applied
 * and, only when it moved, applies the new list: endpoints still listed
 * keep their connections and numbers, new ones start IDLE (connected by the
 * first pick), and those that left are drained -- their connections take
 * no new calls and close once their calls end. Each worker also runs a
 * small coroutine that waits on the resolver's event, so an idle worker
 * drains promptly too. Nothing here takes a lock.
 *
 * A connection attempt that fails puts its endpoint in FAILING for a
 * back-off (gRPC's connection-backoff: 1 s, x1.6, +-20 % jitter, here
 * capped at backoff_max_ms, 30 s by default) and the call picks again,
 * since nothing of it was sent: a dead endpoint costs the calls that find
 * it one refused connect each per back-off, never a failure while others
 * answer. When the picker has only FAILING endpoints left, the call fails
 * UNAVAILABLE at once.
 */
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "grpc/client.h"

#define BACKOFF_INITIAL_MS 1000

static mica__grpc_worker_t *this_worker(mica_grpc_client_t *c)
{
    int id = mica_worker_id();
    return id >= 0 && id < c->nworkers ? c->workers[id] : NULL;
}

/* ---- endpoints ------------------------------------------------------------------- */

void mica__grpc_ep_unref(mica__grpc_ep_t *ep)
{
    if (--ep->refs > 0)
        return;
    mica__free(ep->conns);
    mica__free(ep->addr);
    mica__free(ep);
}

static mica__grpc_ep_t *ep_new(mica__grpc_worker_t *w, const mica_endpoint_t *e)
{
    mica__grpc_ep_t *ep = mica__calloc(1, sizeof(*ep));
    if (!ep)
        return NULL;
    ep->conns = mica__calloc((size_t)w->c->o.conns_per_worker, sizeof(*ep->conns));
    ep->addr = mica__strdup(e->addr);
    if (!ep->conns || !ep->addr) {
        mica__free(ep->conns);
        mica__free(ep->addr);
        mica__free(ep);
        return NULL;
    }
    ep->w = w;
    ep->refs = 1; /* the worker's list */
    ep->pub.ep = e;
    ep->pub.state = MICA_ENDPOINT_IDLE;
    ep->fresh = true;
    return ep;
}

/* The endpoint left the list: no picks, connections drain, freed after them. */
static void ep_remove(mica__grpc_ep_t *ep)
{
    ep->removed = true;
    ep->pub.ep = NULL;
    for (int i = 0; i < ep->w->c->o.conns_per_worker; i++) {
        mica__grpc_conn_t *cn = ep->conns[i];
        if (cn) {
            cn->slot = NULL;
            ep->conns[i] = NULL;
            mica__grpc_conn_drain(cn);
        }
    }
    mica__grpc_ep_unref(ep);
}

void mica__grpc_ep_conn_up(mica__grpc_ep_t *ep)
{
    ep->live++;
    ep->pub.state = MICA_ENDPOINT_READY;
    ep->pub.consecutive_failures = 0;
    ep->backoff_ms = 0;
}

void mica__grpc_ep_conn_down(mica__grpc_ep_t *ep)
{
    if (--ep->live == 0 && ep->pub.state == MICA_ENDPOINT_READY)
        ep->pub.state = MICA_ENDPOINT_IDLE; /* the next pick reconnects */
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

void mica__grpc_ep_failed(mica__grpc_ep_t *ep, int err)
{
    uint32_t cap = (uint32_t)ep->w->c->o.backoff_max_ms;
    uint32_t b = ep->backoff_ms ? ep->backoff_ms : BACKOFF_INITIAL_MS;
    b = b > cap ? cap : b;
    int64_t jitter = (int64_t)(xorshift(&ep->w->rand) % (2 * b / 5 + 1)) - b / 5; /* +-20 % */
    ep->pub.state = MICA_ENDPOINT_FAILING;
    ep->pub.failing_until_ms = mica_now_ms() + b + jitter;
    ep->pub.consecutive_failures++;
    ep->backoff_ms = b * 8 / 5 > cap ? cap : b * 8 / 5;
    if (ep->last_error != err || ep->pub.consecutive_failures == 1) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%u", b);
        mica__log_warn("grpc client: cannot connect", "endpoint", ep->addr, "error",
                       mica_strerror(err), "retry_ms", ms);
    }
    ep->last_error = err;
}

/* Server-side failures count against an endpoint (as 5xx do in Envoy's outlier detection). */
static bool endpoint_failure(int code)
{
    return code == MICA_GRPC_UNAVAILABLE || code == MICA_GRPC_INTERNAL ||
           code == MICA_GRPC_UNKNOWN || code == MICA_GRPC_DATA_LOSS;
}

void mica__grpc_ep_done(mica__grpc_ep_t *ep, int code, uint32_t latency_us)
{
    mica_picker_endpoint_t *p = &ep->pub;
    p->inflight--;
    p->calls++;
    if (endpoint_failure(code)) {
        p->failures++;
        p->consecutive_failures++;
    } else {
        p->consecutive_failures = 0;
    }
    if (latency_us) /* EWMA, weight 1/8 */
        p->latency_ewma_us = p->latency_ewma_us
                                 ? (uint32_t)(((uint64_t)p->latency_ewma_us * 7 + latency_us) / 8)
                                 : latency_us;
    mica_grpc_client_t *c = ep->w->c;
    if (!ep->removed && c->picker->done)
        c->picker->done(ep->w->picker, p, code, latency_us);
}

/* ---- applying the resolver's list ------------------------------------------------ */

/* Applies the resolver's current list to this worker. Memory failures keep the old one. */
static void refresh(mica__grpc_worker_t *w)
{
    mica_grpc_client_t *c = w->c;
    mica_endpoints_t *l = mica_resolver_get(c->resolver);
    if (!l)
        return;
    if (l->error && !l->n && !w->list) { /* nothing resolved yet: calls fail */
        w->gen = l->generation;
        mica_endpoints_unref(l);
        return;
    }
    /* Build the new table aside, so that running out of memory changes nothing. */
    size_t n = l->n;
    mica__grpc_ep_t **eps = mica__calloc(n ? n : 1, sizeof(*eps));
    mica_picker_endpoint_t **view = mica__calloc(n ? n : 1, sizeof(*view));
    bool ok = eps && view;
    for (size_t j = 0; j < w->n; j++)
        w->eps[j]->kept = false;
    for (size_t i = 0; ok && i < n; i++) {
        for (size_t j = 0; j < w->n && !eps[i]; j++)
            if (!w->eps[j]->kept && strcmp(w->eps[j]->addr, l->eps[i].addr) == 0) {
                eps[i] = w->eps[j];
                eps[i]->kept = true;
            }
        if (!eps[i] && !(eps[i] = ep_new(w, &l->eps[i])))
            ok = false;
    }
    if (!ok) {
        for (size_t i = 0; eps && i < n && eps[i]; i++)
            if (eps[i]->fresh)
                mica__grpc_ep_unref(eps[i]);
        mica__free(eps);
        mica__free(view);
        mica_endpoints_unref(l);
        return;
    }
    for (size_t j = 0; j < w->n; j++)
        if (!w->eps[j]->kept)
            ep_remove(w->eps[j]);
    for (size_t i = 0; i < n; i++) {
        eps[i]->fresh = false;
        eps[i]->pub.ep = &l->eps[i];
        view[i] = &eps[i]->pub;
    }
    mica__free(w->eps);
    mica__free(w->view);
    w->eps = eps;
    w->view = view;
    w->n = n;
    mica_endpoints_unref(w->list);
    w->list = l;
    w->gen = l->generation;
    if (c->picker->update)
        c->picker->update(w->picker, w->view, w->n);
}

/* Applies a newer list if the resolver has one: one atomic load when not. */
static inline void maybe_refresh(mica__grpc_worker_t *w)
{
    if (mica_resolver_generation(w->c->resolver) != w->gen)
        refresh(w);
}

/* Per worker: applies new lists as they come, so idle workers drain too. */
static void worker_main(void *arg)
{
    mica__grpc_worker_t *w = arg;
    while (!mica_worker_stopping()) {
        mica_event_reset(&w->changed);
        maybe_refresh(w);
        /* Set by the resolver and by the stop hook; the deadline only bounds it. */
        int rc = mica_event_wait(&w->changed, NULL, mica_deadline_in(60000));
        if (rc != 0 && rc != MICA_ETIMEDOUT)
            break;
    }
}

static int worker_start(mica__grpc_worker_t *w)
{
    int rc = mica_resolver_start(w->c->resolver);
    if (rc == 0)
        rc = w->c->picker->create(&w->picker, w->c->o.picker_conf);
    if (rc == 0 && (rc = mica_go(worker_main, w)) != 0) {
        w->c->picker->destroy(w->picker);
        w->picker = NULL;
    }
    if (rc == 0)
        w->started = true;
    return rc;
}

void mica__grpc_worker_stop(int worker, void *arg)
{
    mica_grpc_client_t *c = arg;
    mica__grpc_worker_t *w = worker < c->nworkers ? c->workers[worker] : NULL;
    if (!w)
        return;
    mica_event_set(&w->changed);
    for (size_t i = 0; i < w->n; i++)
        for (int k = 0; k < c->o.conns_per_worker; k++)
            if (w->eps[i]->conns[k] && w->eps[i]->conns[k]->fd >= 0)
                mica__grpc_conn_nudge(w->eps[i]->conns[k]); /* idle ones close now */
}

/* ---- picking ------------------------------------------------------------------------ */

static bool ctx_over(mica_ctx_t *ctx, int64_t deadline_ms, int *rc)
{
    int err = ctx ? mica_ctx_err(ctx) : 0;
    if (err != 0) {
        *rc = err;
        return true;
    }
    if (deadline_ms != MICA_NO_DEADLINE && mica_now_ms() >= deadline_ms) {
        *rc = MICA_ETIMEDOUT;
        return true;
    }
    return false;
}

int mica__grpc_pick(mica_grpc_client_t *c, mica_ctx_t *ctx, int64_t deadline_ms,
                    const mica_pick_info_t *info, mica__grpc_conn_t **out)
{
    mica__grpc_worker_t *w = this_worker(c);
    if (!w)
        return MICA_EINVAL;
    int rc;
    if (!w->started && (rc = worker_start(w)) != 0)
        return rc;
    maybe_refresh(w);
    if (!w->list) {
        /* Nothing resolved yet: wait for the first list, within the call's
         * limits and at most a connect timeout. */
        int64_t limit = mica_deadline_in(c->o.connect_timeout_ms);
        if (deadline_ms < limit)
            limit = deadline_ms;
        while (!w->list) {
            mica_endpoints_t *l = mica_resolver_get(c->resolver);
            int err = l && !l->n ? l->error : 0;
            mica_endpoints_unref(l);
            if (err) /* resolution failed (the resolver logged why): nothing to call */
                return MICA_EUNAVAILABLE;
            mica_event_reset(&w->changed);
            maybe_refresh(w);
            if (w->list)
                break;
            if ((rc = mica_event_wait(&w->changed, ctx, limit)) != 0)
                return rc == MICA_ETIMEDOUT && limit < deadline_ms ? MICA_EUNAVAILABLE : rc;
            maybe_refresh(w);
        }
    }
    rc = MICA_EUNAVAILABLE;
    for (size_t attempt = 0, max = w->n; attempt < max; attempt++) {
        if (!w->n)
            break;
        int i = c->picker->pick(w->picker, w->view, w->n, info);
        if (i < 0 || (size_t)i >= w->n)
            break;
        mica__grpc_ep_t *ep = w->eps[i];
        if (!mica_picker_endpoint_usable(&ep->pub, mica_now_ms())) {
            rc = ep->last_error ? ep->last_error : MICA_EUNAVAILABLE; /* in back-off */
            break;
        }
        ep->refs++; /* the list may change while we connect */
        rc = mica__grpc_conn_get(ep, ctx, deadline_ms, out);
        if (rc == 0) {
            ep->pub.inflight++;
            mica__grpc_ep_unref(ep);
            return 0;
        }
        mica__grpc_ep_unref(ep);
        if (rc == MICA_ENOMEM || ctx_over(ctx, deadline_ms, &rc))
            return rc;
        mica_resolver_resolve_now(c->resolver); /* the list may be stale */
        maybe_refresh(w);
    }
    return rc;
}

/* ---- per-worker tables ------------------------------------------------------------- */

int mica__grpc_workers_new(mica_grpc_client_t *c)
{
    c->workers = mica__calloc((size_t)c->nworkers, sizeof(*c->workers));
    if (!c->workers)
        return MICA_ENOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    for (int i = 0; i < c->nworkers; i++) {
        mica__grpc_worker_t *w = mica__calloc(1, sizeof(*w));
        if (!w)
            return MICA_ENOMEM;
        c->workers[i] = w;
        w->c = c;
        w->id = i;
        w->rand = ((uint64_t)ts.tv_nsec << 16 ^ (uint64_t)(i + 1) * 0x9E3779B97F4A7C15u) | 1;
        mica__list_init(&w->free_streams);
        if (mica_resolver_watch(c->resolver, &w->changed) != 0)
            return MICA_ENOMEM;
    }
    return 0;
}

void mica__grpc_workers_free(mica_grpc_client_t *c)
{
    for (int i = 0; c->workers && i < c->nworkers; i++) {
        mica__grpc_worker_t *w = c->workers[i];
        if (!w)
            continue;
        mica_resolver_unwatch(c->resolver, &w->changed);
        /* The runtime has stopped: every connection has ended, so only the
         * list's references are left. */
        for (size_t k = 0; k < w->n; k++)
            mica__grpc_ep_unref(w->eps[k]);
        mica__free(w->eps);
        mica__free(w->view);
        mica_endpoints_unref(w->list);
        if (w->picker)
            c->picker->destroy(w->picker);
        mica__grpc_streams_free(w);
        mica__free(w);
    }
    mica__free(c->workers);
    c->workers = NULL;
}

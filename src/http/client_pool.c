/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1.1 client's endpoints and keep-alive pools, per worker.
 *
 * The resolver's list is applied as the gRPC client applies it: a call
 * compares the resolver's generation (one atomic load) with the one its
 * worker applied and rebuilds the table only when it moved; endpoints
 * still listed keep their pools, those that left close their idle
 * connections and the busy ones close when their exchange ends. A failed
 * connection attempt puts the endpoint in back-off (1 s, x1.6, +-20 %
 * jitter, at most backoff_max_ms: 30 s) and the call picks again, since nothing was sent.
 *
 * Each endpoint has a pool: at most max_conns_per_endpoint connections
 * (busy and idle) -- a call beyond waits for one to be released or closed,
 * at most connect_timeout_ms -- and at most max_idle_per_endpoint idle
 * ones, the most recently used first (its socket buffers and TLS state are
 * the warmest, and the cold ones at the back time out). A connection goes
 * back only after its response was read to the end (client.c decides).
 *
 * An idle connection is watched, as Go's Transport watches it with a
 * pending read: mica_net_on_readable() spawns a check when its socket
 * becomes readable, which for an idle HTTP/1.1 connection means the
 * server closed it (or sent something unasked, which makes it unusable
 * too), so it is closed at once instead of being handed to the next call.
 * A small coroutine per worker applies resolver updates when idle and
 * closes connections idle past idle_timeout_ms.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "http/client.h"
#include "mica/net.h"

#define BACKOFF_INITIAL_MS 1000

#define COUNT(w, field) atomic_fetch_add_explicit(&(w)->stats.field, 1, memory_order_relaxed)

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- endpoints ------------------------------------------------------------------- */

static void ep_unref(mica__hc_ep_t *ep)
{
    if (--ep->refs > 0)
        return;
    mica__free(ep->addr);
    mica__free(ep);
}

static mica__hc_ep_t *ep_new(mica__hc_worker_t *w, const mica_endpoint_t *e)
{
    mica__hc_ep_t *ep = mica__calloc(1, sizeof(*ep));
    if (!ep)
        return NULL;
    if (!(ep->addr = mica__strdup(e->addr))) {
        mica__free(ep);
        return NULL;
    }
    ep->w = w;
    ep->refs = 1; /* the worker's list */
    ep->pub.ep = e;
    ep->pub.state = MICA_ENDPOINT_IDLE;
    ep->fresh = true;
    mica__list_init(&ep->idle);
    return ep;
}

static void close_idle(mica__hc_ep_t *ep)
{
    mica__list_t *n;
    while ((n = mica__list_first(&ep->idle))) {
        COUNT(ep->w, idle_evictions);
        mica__hc_conn_close(mica__list_entry(n, mica__hc_conn_t, link));
    }
}

/* The endpoint left the list: no picks; idle connections close, busy ones when released. */
static void ep_remove(mica__hc_ep_t *ep)
{
    ep->removed = true;
    ep->pub.ep = NULL;
    ep->refs++; /* closing the last connection must not free it under us */
    close_idle(ep);
    if (ep->waiters)
        mica_event_set(&ep->freed);
    ep_unref(ep);
    ep_unref(ep);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void ep_failed(mica__hc_ep_t *ep, int err)
{
    uint32_t cap = (uint32_t)ep->w->c->o.backoff_max_ms;
    uint32_t b = ep->backoff_ms ? ep->backoff_ms : BACKOFF_INITIAL_MS;
    b = b > cap ? cap : b;
    int64_t jitter = (int64_t)(xorshift(&ep->w->rand) % (2 * b / 5 + 1)) - b / 5;
    ep->pub.state = MICA_ENDPOINT_FAILING;
    ep->pub.failing_until_ms = mica_now_ms() + b + jitter;
    ep->pub.consecutive_failures++;
    ep->backoff_ms = b * 8 / 5 > cap ? cap : b * 8 / 5;
    if (ep->last_error != err || ep->pub.consecutive_failures == 1) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%u", b);
        mica__log_warn("http client: cannot connect", "endpoint", ep->addr, "error",
                       mica_strerror(err), "retry_ms", ms);
    }
    ep->last_error = err;
}

/* Server-side failures count against an endpoint: 5xx but 501/505, and transport errors. */
static int grpc_code_of(int status, int err)
{
    if (err)
        return mica_err_grpc_code(err);
    if (!status)
        return 0; /* ended without a verdict (a stale connection retried) */
    if (status >= 500 && status != 501 && status != 505)
        return status == 500 ? 13 /* INTERNAL */ : 14 /* UNAVAILABLE */;
    return mica_err_grpc_code(mica_err_from_http(status));
}

void mica__hc_ep_done(mica__hc_ep_t *ep, int status, int err, uint32_t latency_us)
{
    mica_picker_endpoint_t *p = &ep->pub;
    int code = grpc_code_of(status, err);
    p->inflight--;
    p->calls++;
    if (code == 14 || code == 13 || code == 2 || code == 15) {
        p->failures++;
        p->consecutive_failures++;
    } else {
        p->consecutive_failures = 0;
    }
    if (latency_us)
        p->latency_ewma_us = p->latency_ewma_us
                                 ? (uint32_t)(((uint64_t)p->latency_ewma_us * 7 + latency_us) / 8)
                                 : latency_us;
    mica_http_client_t *c = ep->w->c;
    if (!ep->removed && c->picker->done)
        c->picker->done(ep->w->picker, p, code, latency_us);
}

/* ---- connections ------------------------------------------------------------------ */

void mica__hc_conn_close(mica__hc_conn_t *cn)
{
    mica__hc_ep_t *ep = cn->ep;
    if (cn->idle) {
        mica__list_remove(&cn->link);
        cn->idle = false;
        ep->nidle--;
    }
    mica_tls_close(cn->tls);
    if (cn->fd >= 0)
        mica_net_close(cn->fd); /* drops an on-readable arrangement too */
    mica__buf_free(&cn->in);
    COUNT(ep->w, conns_closed);
    ep->conns--;
    if (ep->waiters)
        mica_event_set(&ep->freed);
    mica__free(cn);
    ep_unref(ep);
}

/* Whether an idle connection is still usable: nothing to read, no EOF. Never waits. */
static bool idle_alive(mica__hc_conn_t *cn)
{
    if (cn->tls) {
        /* TLS 1.3 session tickets arrive after the handshake: OpenSSL takes
         * them and reports "nothing yet", which is alive. */
        char b[64];
        return mica_tls_read(cn->tls, b, sizeof(b), mica_now_ms()) == MICA_EAGAIN;
    }
    char b;
    ssize_t n = recv(cn->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static void watch_idle(mica__hc_conn_t *cn);

static void evict(mica__hc_conn_t *cn, const char *why)
{
    mica__hc_worker_t *w = cn->ep->w;
    COUNT(w, idle_evictions);
    int64_t now = mica_now_ms();
    if (now - w->last_evict_log_ms >= 1000) { /* at most one line a second per worker */
        w->last_evict_log_ms = now;
        mica__log_info("http client: closing an idle connection", "endpoint", cn->ep->addr,
                       "reason", why);
    }
    mica__hc_conn_close(cn);
}

/* Spawned when an idle connection's socket becomes readable: the server closed it. */
static void on_idle_readable(void *arg)
{
    mica__hc_conn_t *cn = arg;
    cn->watched = false;
    if (!cn->idle)
        return; /* busy again: its exchange reads whatever came */
    if (!idle_alive(cn)) {
        evict(cn, "closed by the server");
        return;
    }
    watch_idle(cn);
}

static void watch_idle(mica__hc_conn_t *cn)
{
    for (int i = 0; i < 3; i++) {
        int rc = mica_net_on_readable(cn->fd, on_idle_readable, cn);
        if (rc == 0) {
            cn->watched = true;
            return;
        }
        if (rc != MICA_EAGAIN)
            break;
        /* MICA_EAGAIN: the loop remembered a readable edge, most often the
         * response's own (already read; the call cleared it), or a hang-up,
         * which it keeps reporting. Look only from the second time on, so a
         * healthy connection costs no system call here. */
        if (i > 0 && !idle_alive(cn))
            break;
    }
    evict(cn, "unreadable or closed by the server");
}

void mica__hc_conn_release(mica__hc_conn_t *cn)
{
    mica__hc_ep_t *ep = cn->ep;
    mica__hc_worker_t *w = ep->w;
    if (ep->removed || w->stopping || mica_worker_stopping() || mica__buf_len(&cn->in) != 0) {
        mica__hc_conn_close(cn);
        return;
    }
    if (ep->nidle >= w->c->o.max_idle_per_endpoint) {
        evict(cn, "over max_idle_per_endpoint");
        return;
    }
    mica__buf_reset(&cn->in);
    cn->idle = true;
    cn->idle_since_ms = mica_now_ms();
    mica__list_push_front(&ep->idle, &cn->link);
    ep->nidle++;
    if (ep->waiters)
        mica_event_set(&ep->freed);
    watch_idle(cn);
}

/* Takes the most recently used idle connection that is still good, or NULL. */
static mica__hc_conn_t *take_idle(mica__hc_ep_t *ep)
{
    int64_t now = mica_now_ms(), timeout = ep->w->c->o.idle_timeout_ms;
    mica__list_t *n;
    while ((n = mica__list_first(&ep->idle))) {
        mica__hc_conn_t *cn = mica__list_entry(n, mica__hc_conn_t, link);
        mica__list_remove(&cn->link);
        cn->idle = false;
        ep->nidle--;
        if (now - cn->idle_since_ms >= timeout) {
            cn->idle = true; /* for evict's bookkeeping */
            mica__list_push_front(&ep->idle, &cn->link);
            ep->nidle++;
            evict(cn, "idle timeout");
            continue;
        }
        return cn;
    }
    return NULL;
}

/* "host:port" or "[v6]:port" -> the host, into buf. */
static const char *host_of(const char *hostport, char *buf, size_t size)
{
    const char *colon = strrchr(hostport, ':');
    size_t n = colon ? (size_t)(colon - hostport) : strlen(hostport);
    if (hostport[0] == '[' && n >= 2 && hostport[n - 1] == ']') {
        hostport++;
        n -= 2;
    }
    snprintf(buf, size, "%.*s", (int)n, hostport);
    return buf;
}

/* Opens a new connection to `ep` (its slot already counted in ep->conns). */
static int conn_open(mica__hc_ep_t *ep, mica_ctx_t *ctx, int64_t deadline_ms,
                     mica__hc_conn_t **out)
{
    mica_http_client_t *c = ep->w->c;
    mica__hc_conn_t *cn = mica__calloc(1, sizeof(*cn));
    if (!cn)
        return MICA_ENOMEM;
    int64_t limit = mica_deadline_in(c->o.connect_timeout_ms);
    if (deadline_ms < limit)
        limit = deadline_ms;
    cn->fd = mica_net_connect(ep->addr, ctx, limit);
    int rc = cn->fd < 0 ? cn->fd : 0;
    if (rc == 0 && c->tls) {
        char host[256];
        const char *name = c->tls_name ? c->tls_name : host_of(ep->addr, host, sizeof(host));
        rc = mica_tls_connect(c->tls, cn->fd, name, limit, &cn->tls);
    }
    if (rc != 0) {
        if (cn->fd >= 0)
            mica_net_close(cn->fd);
        mica__free(cn);
        return rc;
    }
    mica__buf_init(&cn->in, c->limits.max_head_bytes + MICA__HC_READ_BYTES);
    mica__list_init(&cn->link);
    cn->ep = ep;
    ep->refs++;
    COUNT(ep->w, conns_opened);
    ep->pub.state = MICA_ENDPOINT_READY;
    ep->pub.consecutive_failures = 0;
    ep->backoff_ms = 0;
    *out = cn;
    return 0;
}

static bool over(mica_ctx_t *ctx, int64_t deadline_ms, int *rc)
{
    int err = ctx ? mica_ctx_err(ctx) : 0;
    if (err == 0 && deadline_ms != MICA_NO_DEADLINE && mica_now_ms() >= deadline_ms)
        err = MICA_ETIMEDOUT;
    *rc = err;
    return err != 0;
}

/*
 * A connection of `ep`: an idle one (unless `fresh`), else a new one when
 * the endpoint has a free slot, else wait for one to free up.
 */
static int ep_conn(mica__hc_ep_t *ep, mica_ctx_t *ctx, int64_t deadline_ms, bool fresh,
                   mica__hc_conn_t **out, int64_t *connect_us)
{
    mica_http_client_t *c = ep->w->c;
    int64_t slot_limit = 0;
    int rc;
    for (;;) {
        if (ep->removed)
            return MICA_EUNAVAILABLE;
        mica__hc_conn_t *cn = fresh ? NULL : take_idle(ep);
        if (cn) {
            *connect_us = 0;
            *out = cn;
            return 0;
        }
        if (ep->conns < c->o.max_conns_per_endpoint) {
            ep->conns++;
            int64_t t0 = now_us();
            rc = conn_open(ep, ctx, deadline_ms, out);
            if (rc != 0) {
                ep->conns--;
                if (ep->waiters)
                    mica_event_set(&ep->freed);
                return rc;
            }
            *connect_us = now_us() - t0;
            return 0;
        }
        /* At the limit: wait for a release or a close (Go's MaxConnsPerHost). */
        if (!slot_limit) {
            COUNT(ep->w, pool_waits);
            slot_limit = mica_deadline_in(c->o.connect_timeout_ms);
            if (deadline_ms < slot_limit)
                slot_limit = deadline_ms;
        }
        if (over(ctx, slot_limit, &rc))
            return rc == MICA_ETIMEDOUT && slot_limit < deadline_ms ? MICA_EOVERLOAD : rc;
        mica_event_reset(&ep->freed);
        ep->waiters++;
        ep->refs++;
        rc = mica_event_wait(&ep->freed, ctx, slot_limit);
        ep->waiters--;
        ep_unref(ep); /* still listed, or our caller's reference keeps it */
        if (rc != 0)
            return rc == MICA_ETIMEDOUT && slot_limit < deadline_ms ? MICA_EOVERLOAD : rc;
    }
}

/* ---- applying the resolver's list ------------------------------------------------ */

static void refresh(mica__hc_worker_t *w)
{
    mica_http_client_t *c = w->c;
    mica_endpoints_t *l = mica_resolver_get(c->resolver);
    if (!l)
        return;
    if (l->error && !l->n && !w->list) {
        w->gen = l->generation;
        mica_endpoints_unref(l);
        return;
    }
    size_t n = l->n;
    mica__hc_ep_t **eps = mica__calloc(n ? n : 1, sizeof(*eps));
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
    if (!ok) { /* out of memory: keep the old table */
        for (size_t i = 0; eps && i < n && eps[i]; i++)
            if (eps[i]->fresh)
                ep_unref(eps[i]);
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

static inline void maybe_refresh(mica__hc_worker_t *w)
{
    if (mica_resolver_generation(w->c->resolver) != w->gen)
        refresh(w);
}

/* Closes the connections idle for idle_timeout_ms or more (the oldest are at the back). */
static void sweep_idle(mica__hc_worker_t *w)
{
    int64_t now = mica_now_ms(), timeout = w->c->o.idle_timeout_ms;
    for (size_t i = 0; i < w->n; i++) {
        mica__hc_ep_t *ep = w->eps[i];
        while (!mica__list_empty(&ep->idle)) {
            mica__hc_conn_t *cn = mica__list_entry(ep->idle.prev, mica__hc_conn_t, link);
            if (now - cn->idle_since_ms < timeout)
                break;
            evict(cn, "idle timeout");
        }
    }
}

/* Per worker: applies new lists as they come, and times idle connections out. */
static void worker_main(void *arg)
{
    mica__hc_worker_t *w = arg;
    int64_t period = w->c->o.idle_timeout_ms / 4;
    if (period < 50)
        period = 50;
    if (period > 5000)
        period = 5000;
    while (!mica_worker_stopping() && !w->stopping) {
        mica_event_reset(&w->changed);
        maybe_refresh(w);
        sweep_idle(w);
        int rc = mica_event_wait(&w->changed, NULL, mica_deadline_in(period));
        if (rc != 0 && rc != MICA_ETIMEDOUT)
            break;
    }
}

int mica__hc_worker_get(mica_http_client_t *c, mica__hc_worker_t **out)
{
    int id = mica_worker_id();
    if (id < 0 || id >= c->nworkers)
        return MICA_EINVAL;
    mica__hc_worker_t *w = c->workers[id];
    if (!w->started) {
        int rc = mica_resolver_start(c->resolver);
        if (rc == 0)
            rc = c->picker->create(&w->picker, c->o.picker_conf);
        if (rc == 0 && (rc = mica_go(worker_main, w)) != 0) {
            c->picker->destroy(w->picker);
            w->picker = NULL;
        }
        if (rc != 0)
            return rc;
        w->started = true;
    }
    *out = w;
    return 0;
}

void mica__hc_worker_stop(int worker, void *arg)
{
    mica_http_client_t *c = arg;
    mica__hc_worker_t *w = worker < c->nworkers ? c->workers[worker] : NULL;
    if (!w)
        return;
    w->stopping = true;
    mica_event_set(&w->changed);
    for (size_t i = 0; i < w->n; i++) {
        close_idle(w->eps[i]);
        if (w->eps[i]->waiters)
            mica_event_set(&w->eps[i]->freed);
    }
}

/* ---- picking ------------------------------------------------------------------------ */

int mica__hc_pick(mica__hc_worker_t *w, mica_ctx_t *ctx, int64_t deadline_ms,
                  const mica_pick_info_t *info, bool fresh, mica__hc_conn_t **out,
                  int64_t *connect_us)
{
    mica_http_client_t *c = w->c;
    int rc;
    maybe_refresh(w);
    if (!w->list) {
        /* Nothing resolved yet: wait for the first list, at most a connect timeout. */
        int64_t limit = mica_deadline_in(c->o.connect_timeout_ms);
        if (deadline_ms < limit)
            limit = deadline_ms;
        while (!w->list) {
            mica_endpoints_t *l = mica_resolver_get(c->resolver);
            int err = l && !l->n ? l->error : 0;
            mica_endpoints_unref(l);
            if (err)
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
        mica__hc_ep_t *ep = w->eps[i];
        if (!mica_picker_endpoint_usable(&ep->pub, mica_now_ms())) {
            rc = ep->last_error ? ep->last_error : MICA_EUNAVAILABLE;
            break;
        }
        ep->refs++;
        ep->pub.inflight++;
        rc = ep_conn(ep, ctx, deadline_ms, fresh, out, connect_us);
        if (rc == 0) {
            ep_unref(ep);
            return 0;
        }
        ep->pub.inflight--;
        int orc;
        if (rc == MICA_ENOMEM || rc == MICA_EOVERLOAD || rc == MICA_EUNAVAILABLE) {
            ep_unref(ep);
            return rc;
        }
        if (over(ctx, deadline_ms, &orc)) { /* the call's own limit ended the attempt */
            ep_unref(ep);
            return orc;
        }
        ep_failed(ep, rc);
        ep_unref(ep);
        mica_resolver_resolve_now(c->resolver);
        maybe_refresh(w);
    }
    return rc;
}

/* ---- per-worker tables ------------------------------------------------------------- */

int mica__hc_workers_new(mica_http_client_t *c)
{
    c->workers = mica__calloc((size_t)c->nworkers, sizeof(*c->workers));
    if (!c->workers)
        return MICA_ENOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    for (int i = 0; i < c->nworkers; i++) {
        mica__hc_worker_t *w = mica__calloc(1, sizeof(*w));
        if (!w)
            return MICA_ENOMEM;
        c->workers[i] = w;
        w->c = c;
        w->id = i;
        w->rand = ((uint64_t)ts.tv_nsec << 16 ^ (uint64_t)(i + 1) * 0x9E3779B97F4A7C15u) | 1;
        if (mica_resolver_watch(c->resolver, &w->changed) != 0) {
            mica__free(w);
            c->workers[i] = NULL;
            return MICA_ENOMEM;
        }
    }
    return 0;
}

void mica__hc_workers_free(mica_http_client_t *c)
{
    for (int i = 0; c->workers && i < c->nworkers; i++) {
        mica__hc_worker_t *w = c->workers[i];
        if (!w)
            continue;
        mica_resolver_unwatch(c->resolver, &w->changed);
        for (size_t k = 0; k < w->n; k++) {
            close_idle(w->eps[k]); /* (a runtime that never ran its stop hooks) */
            ep_unref(w->eps[k]);
        }
        mica__free(w->eps);
        mica__free(w->view);
        mica_endpoints_unref(w->list);
        if (w->picker)
            c->picker->destroy(w->picker);
        mica__free(w);
    }
    mica__free(c->workers);
    c->workers = NULL;
}

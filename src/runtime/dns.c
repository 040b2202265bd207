/* SPDX-License-Identifier: MIT */
/*
 * The DNS resolver. "dns:///host:port" (or a bare "host:port" that is not
 * an IP literal): A and AAAA records through getaddrinfo(), which follows
 * nsswitch.conf (/etc/hosts, then DNS) as every other program on the host
 * does. "dns:///_grpc._tcp.user.shop.svc" (a name without a port): SRV
 * records, which give the ports too (Kubernetes names a headless Service's
 * ports this way). "dns://10.96.0.10:53/..." asks that server instead of
 * resolv.conf's. The lookups (src/common/dnsq.c) block, so they run on the
 * runtime's offload pool and the resolver's coroutine only waits for them;
 * no worker ever blocks.
 *
 * The coroutine re-resolves every refresh interval (30 s by default), and
 * sooner when a client hints that an endpoint failed (at most once per
 * MIN_GAP_MS). A failed resolution keeps the last good list and is logged;
 * before any list it is published as an error, so that waiting calls fail
 * instead of waiting, and retried after 1, 2, 4... seconds. Addresses are
 * sorted, so that a refresh finding the same records publishes nothing.
 * At shutdown, stop() cancels the coroutine's ctx and wakes it; a lookup
 * already running on the pool is waited for (getaddrinfo cannot be
 * interrupted), bounded by the system resolver's own timeouts.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/dnsq.h"
#include "common/log.h"
#include "mica/net.h"
#include "mica/resolver.h"

#define MIN_GAP_MS 2000
#define RETRY_MAX_MS 30000

typedef struct dns {
    mica_resolver_t *r;
    char *host, *port; /* port NULL: SRV records */
    char *server;      /* the target's authority (a DNS server), or NULL */
    char *name;        /* the target's endpoint, for logs */
    int64_t interval_ms;
    mica_ctx_t *ctx;   /* cancelled by stop */
    mica_event_t wake; /* stop, or a hint */
    atomic_bool stopping;
    _Atomic int64_t last_ms; /* when the last lookup finished */
} dns_t;

typedef struct lookup {
    const dns_t *d;
    mica__dns_result_t res;
} lookup_t;

/* Runs on an offload thread. */
static int lookup_run(void *arg)
{
    lookup_t *q = arg;
    mica__dns_lookup(q->d->server, q->d->host, q->d->port, &q->res);
    return 0;
}

/* One lookup: publishes the list or reports the error. Returns 0 or the error. */
static int resolve(dns_t *d)
{
    lookup_t *q = mica__calloc(1, sizeof(*q)); /* 5 KiB: off the coroutine's stack */
    if (!q)
        return MICA_ENOMEM;
    q->d = d;
    int result = 0;
    int rc = mica_offload(NULL, d->ctx, lookup_run, q, &result);
    const char *why = NULL;
    if (rc == 0 && q->res.err) {
        rc = q->res.err;
        why = q->res.why;
    } else if (rc != 0) {
        why = mica_strerror(rc); /* the pool's queue is full, or we are stopping */
    }
    if (rc == 0) {
        mica_endpoint_t eps[MICA__DNS_MAX_ADDRS];
        for (size_t i = 0; i < q->res.n; i++)
            eps[i] = (mica_endpoint_t){.addr = q->res.a[i].addr, .weight = q->res.a[i].weight};
        rc = mica_resolver_update(d->r, eps, q->res.n);
    } else if (!atomic_load(&d->stopping)) {
        mica__log_warn("dns resolver: lookup failed, keeping the last list", "name", d->name,
                       "error", why);
        mica_resolver_report_error(d->r, rc);
    }
    mica__free(q);
    return rc;
}

static void dns_start(void *state)
{
    dns_t *d = state;
    int64_t retry_ms = 1000;
    while (!atomic_load(&d->stopping) && !mica_worker_stopping()) {
        mica_event_reset(&d->wake);
        int rc = resolve(d);
        atomic_store(&d->last_ms, mica_now_ms());
        int64_t next = d->interval_ms;
        if (rc != 0) { /* sooner, backing off, until it works again */
            next = retry_ms < next ? retry_ms : next;
            retry_ms = retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : retry_ms * 2;
        } else {
            retry_ms = 1000;
        }
        /* Woken early by a hint (resolve_now) or by stop. */
        rc = mica_event_wait(&d->wake, d->ctx, mica_deadline_in(next));
        if (rc == MICA_ECANCELED)
            break;
    }
}

static void dns_stop(void *state, int worker_id)
{
    dns_t *d = state;
    if (atomic_exchange(&d->stopping, true))
        return;
    mica_ctx_cancel(d->ctx);
    mica_event_set(&d->wake);
}

static void dns_resolve_now(void *state)
{
    dns_t *d = state;
    if (mica_now_ms() - atomic_load(&d->last_ms) >= MIN_GAP_MS)
        mica_event_set(&d->wake);
}

static void dns_destroy(void *state)
{
    dns_t *d = state;
    mica_ctx_free(d->ctx);
    mica__free(d->host);
    mica__free(d->port);
    mica__free(d->server);
    mica__free(d->name);
    mica__free(d);
}

static int dns_init(mica_resolver_t *r, const mica_target_t *t, const mica_resolver_opts_t *opts,
                    void **state)
{
    /* "host:port" or "[v6]:port": A/AAAA; a name without a port: SRV records */
    const char *ep = t->endpoint;
    const char *colon = strrchr(ep, ':');
    const char *close = ep[0] == '[' ? strchr(ep, ']') : NULL;
    if (ep[0] == '[' && (!close || close + 1 != colon))
        colon = NULL;
    bool srv = !colon && *ep && ep[0] != '[';
    if (!srv && (!colon || colon == ep || !colon[1])) {
        mica__log_error("dns resolver: the target needs host:port (A/AAAA) or an SRV name",
                        "endpoint", ep);
        return MICA_EINVAL;
    }
    if (!srv) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end || port <= 0 || port > 65535) {
            mica__log_error("dns resolver: bad port", "endpoint", ep);
            return MICA_EINVAL;
        }
    }
    dns_t *d = mica__calloc(1, sizeof(*d));
    if (!d)
        return MICA_ENOMEM;
    size_t hlen = srv ? strlen(ep) : (size_t)(colon - ep);
    const char *h = ep;
    if (ep[0] == '[') {
        h++;
        hlen -= 2;
    }
    d->host = mica__strndup(h, hlen);
    d->port = srv ? NULL : mica__strdup(colon + 1);
    d->name = mica__strdup(ep);
    d->server = *t->authority ? mica__strdup(t->authority) : NULL;
    if (!d->host || (!srv && !d->port) || !d->name || (*t->authority && !d->server) ||
        mica_ctx_with_cancel(NULL, &d->ctx) != 0) {
        dns_destroy(d);
        return MICA_ENOMEM;
    }
    d->r = r;
    d->interval_ms = opts->refresh_interval_ms;
    atomic_init(&d->last_ms, INT64_MIN / 2);
    *state = d;
    return 0;
}

const mica_resolver_ops_t mica__resolver_dns = {
    .init = dns_init,
    .start = dns_start,
    .stop = dns_stop,
    .resolve_now = dns_resolve_now,
    .destroy = dns_destroy,
};

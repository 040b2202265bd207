/* SPDX-License-Identifier: MIT */
/*
 * The DNS resolver ("dns:///host:port", or a bare "host:port" that is not
 * an IP literal): A and AAAA records through getaddrinfo(), which follows
 * nsswitch.conf (/etc/hosts, then DNS) as every other program on the host
 * does. getaddrinfo() blocks, so it runs on the runtime's offload pool and
 * the resolver's coroutine only waits for it; no worker ever blocks.
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
#include <errno.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/net.h"
#include "mica/resolver.h"

#define MAX_ADDRS 64
#define MIN_GAP_MS 2000
#define RETRY_MAX_MS 30000

typedef struct dns {
    mica_resolver_t *r;
    char *host, *port;
    char *name; /* "host:port", for logs */
    int64_t interval_ms;
    mica_ctx_t *ctx;   /* cancelled by stop */
    mica_event_t wake; /* stop, or a hint */
    atomic_bool stopping;
    _Atomic int64_t last_ms; /* when the last lookup finished */
} dns_t;

typedef struct lookup {
    const char *host, *port;
    char addrs[MAX_ADDRS][64];
    size_t n;
    int gai_err, sys_err;
} lookup_t;

/* Runs on an offload thread. */
static int lookup_run(void *arg)
{
    lookup_t *q = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    /* No AI_ADDRCONFIG: it hides ::1 on hosts whose only IPv6 address is loopback. */
    q->gai_err = getaddrinfo(q->host, q->port, &hints, &res);
    if (q->gai_err == EAI_SYSTEM)
        q->sys_err = errno;
    for (struct addrinfo *a = res; a && q->n < MAX_ADDRS; a = a->ai_next)
        if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
            mica_net_format_addr(a->ai_addr, q->addrs[q->n], sizeof(q->addrs[0])) == 0)
            q->n++;
    if (res)
        freeaddrinfo(res);
    return 0;
}

static int cmp_addr(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int gai_to_mica(const lookup_t *q)
{
    switch (q->gai_err) {
    case EAI_NONAME:
    case EAI_NODATA:
        return MICA_ENOTFOUND;
    case EAI_AGAIN:
        return MICA_EAGAIN;
    case EAI_MEMORY:
        return MICA_ENOMEM;
    case EAI_SYSTEM:
        return q->sys_err ? -q->sys_err : MICA_EIO;
    default:
        return MICA_EUNAVAILABLE;
    }
}

/* One lookup: publishes the list or reports the error. Returns 0 or the error. */
static int resolve(dns_t *d)
{
    lookup_t *q = mica__calloc(1, sizeof(*q)); /* 4 KiB: off the coroutine's stack */
    if (!q)
        return MICA_ENOMEM;
    q->host = d->host;
    q->port = d->port;
    int result = 0;
    int rc = mica_offload(NULL, d->ctx, lookup_run, q, &result);
    const char *why = NULL;
    if (rc == 0 && q->gai_err) {
        rc = gai_to_mica(q);
        why = q->gai_err == EAI_SYSTEM ? mica_strerror(rc) : gai_strerror(q->gai_err);
    } else if (rc == 0 && q->n == 0) {
        rc = MICA_ENOTFOUND;
        why = "no IPv4 or IPv6 address";
    } else if (rc != 0) {
        why = mica_strerror(rc); /* the pool's queue is full, or we are stopping */
    }
    if (rc == 0) {
        qsort(q->addrs, q->n, sizeof(q->addrs[0]), cmp_addr);
        mica_endpoint_t eps[MAX_ADDRS];
        for (size_t i = 0; i < q->n; i++)
            eps[i] = (mica_endpoint_t){.addr = q->addrs[i], .weight = 1};
        rc = mica_resolver_update(d->r, eps, q->n);
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
    mica__free(d->name);
    mica__free(d);
}

static int dns_init(mica_resolver_t *r, const mica_target_t *t, const mica_resolver_opts_t *opts,
                    void **state)
{
    if (*t->authority) {
        mica__log_error("dns resolver: a DNS server in the target is not supported",
                        "authority", t->authority);
        return MICA_EINVAL;
    }
    /* "host:port" or "[v6]:port" */
    const char *ep = t->endpoint;
    const char *colon = strrchr(ep, ':');
    const char *close = ep[0] == '[' ? strchr(ep, ']') : NULL;
    if (!colon || colon == ep || !colon[1] || (ep[0] == '[' && (!close || close + 1 != colon))) {
        mica__log_error("dns resolver: the target needs host:port", "endpoint", ep);
        return MICA_EINVAL;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) {
        mica__log_error("dns resolver: bad port", "endpoint", ep);
        return MICA_EINVAL;
    }
    dns_t *d = mica__calloc(1, sizeof(*d));
    if (!d)
        return MICA_ENOMEM;
    size_t hlen = (size_t)(colon - ep);
    const char *h = ep;
    if (ep[0] == '[') {
        h++;
        hlen -= 2;
    }
    /* host and port in one allocation: "host\0port\0" */
    d->host = mica__malloc(hlen + 1 + strlen(colon + 1) + 1);
    d->name = mica__strdup(ep);
    if (!d->host || !d->name || mica_ctx_with_cancel(NULL, &d->ctx) != 0) {
        dns_destroy(d);
        return MICA_ENOMEM;
    }
    memcpy(d->host, h, hlen);
    d->host[hlen] = '\0';
    d->port = d->host + hlen + 1;
    memcpy(d->port, colon + 1, strlen(colon + 1) + 1);
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

/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1.1 client's internals, shared by its files:
 *
 *   client.c       the public API, the interceptor chain, one exchange on a
 *                  connection (request out, response head and body in)
 *   client_pool.c  per-worker endpoint tables fed by the resolver, picks,
 *                  keep-alive pools with their limits, idle watching
 *
 * Ownership runs downward: a response holds its connection until freed, a
 * connection holds its endpoint, so an endpoint that left the resolver's
 * list lives until its last connection is gone. Everything belongs to one
 * worker and is touched only there, without locks; the counters are
 * atomics only so that mica_http_client_stats() may read them anywhere.
 */
#ifndef MICA_HTTP_CLIENT_INTERNAL_H
#define MICA_HTTP_CLIENT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/list.h"
#include "http/parser.h"
#include "mica/http_client.h"
#include "mica/sync.h"
#include "mica/tls.h"

#define MICA__HC_MAX_INTERCEPTORS 16
#define MICA__HC_READ_BYTES 16384 /* socket reads of the response */

typedef struct mica__hc_worker mica__hc_worker_t;
typedef struct mica__hc_ep mica__hc_ep_t;
typedef struct mica__hc_conn mica__hc_conn_t;

typedef struct mica__hc_interceptor {
    mica_http_client_interceptor_fn fn;
    void *arg;
} mica__hc_interceptor_t;

/* Per-worker counters (mica_http_client_stats_t, field for field). */
typedef struct mica__hc_counters {
    _Atomic uint64_t calls, failures, conns_opened, conns_reused, conns_closed, stale_retries,
        idle_evictions, pool_waits;
} mica__hc_counters_t;

struct mica_http_client {
    mica_http_client_opts_t o; /* the caller's strings are not kept */
    mica_resolver_t *resolver;
    const mica_picker_ops_t *picker;
    mica_tls_client_t *tls; /* TLS connections when set */
    char *tls_name;         /* verified and sent as SNI; NULL: each endpoint's IP */
    char *authority;        /* Host; NULL: each endpoint's address */
    mica__http_limits_t limits;
    int nworkers;
    mica__hc_worker_t **workers;
    mica__hc_interceptor_t icpt[MICA__HC_MAX_INTERCEPTORS];
    size_t nicpt;
    atomic_bool used; /* a call was made: no more interceptors */
};

/* One worker's view of the target. */
struct mica__hc_worker {
    mica_http_client_t *c;
    int id;
    bool started; /* resolver started, maintenance coroutine spawned */
    bool stopping;
    uint64_t gen; /* resolver generation applied */
    mica_endpoints_t *list;
    mica__hc_ep_t **eps;
    mica_picker_endpoint_t **view;
    size_t n;
    void *picker;
    mica_event_t changed; /* set by the resolver and at stop */
    mica__hc_counters_t stats;
    uint64_t rand;
    int64_t last_evict_log_ms;
    char pad[64];
};

/* One endpoint on one worker, with its keep-alive pool. */
struct mica__hc_ep {
    mica_picker_endpoint_t pub; /* first */
    mica__hc_worker_t *w;
    char *addr;
    int refs;      /* the worker's list, each connection, each pick under way */
    int conns;     /* open or opening connections, busy and idle */
    int nidle;
    mica__list_t idle; /* idle connections, the most recently used first */
    mica_event_t freed; /* set when a connection slot frees up, for waiters */
    int waiters;
    bool removed, kept, fresh;
    uint32_t backoff_ms;
    int last_error;
};

struct mica__hc_conn {
    mica__hc_ep_t *ep;
    int fd;
    mica_tls_conn_t *tls;
    mica__buf_t in;   /* response bytes not yet parsed or handed out (capped) */
    mica__list_t link; /* on ep->idle while idle */
    bool idle;
    bool watched; /* an on-readable arrangement is armed */
    int64_t idle_since_ms;
    uint32_t requests; /* responses read on it */
};

/* ---- client_pool.c ---------------------------------------------------------------- */

/* This worker's table of `c`, or NULL outside c's workers. Starts it on first use. */
int mica__hc_worker_get(mica_http_client_t *c, mica__hc_worker_t **out);

/*
 * Picks an endpoint and returns a connection to it (*out), reused from the
 * endpoint's idle pool unless `fresh`, else connected (TCP, then TLS). A
 * failed attempt puts the endpoint in back-off and picks again (nothing was
 * sent). *connect_us gets the connect time (0 when reused). Waits are
 * bounded by ctx, deadline_ms and connect_timeout_ms. Returns 0, or
 * MICA_EUNAVAILABLE, a connect error, MICA_EPROTO (TLS), MICA_EOVERLOAD (no
 * connection slot freed within connect_timeout_ms), ctx errors, MICA_ENOMEM.
 */
int mica__hc_pick(mica__hc_worker_t *w, mica_ctx_t *ctx, int64_t deadline_ms,
                  const mica_pick_info_t *info, bool fresh, mica__hc_conn_t **out,
                  int64_t *connect_us);

/* Returns a connection whose exchange ended cleanly to its idle pool (or closes it). */
void mica__hc_conn_release(mica__hc_conn_t *cn);
/* Closes a connection (its exchange failed, or it may not be reused). */
void mica__hc_conn_close(mica__hc_conn_t *cn);
/* A call on `ep` ended: HTTP `status` (0: none) or MICA_E* `err`. Stats and the picker's done. */
void mica__hc_ep_done(mica__hc_ep_t *ep, int status, int err, uint32_t latency_us);

int mica__hc_workers_new(mica_http_client_t *c);
void mica__hc_workers_free(mica_http_client_t *c);
void mica__hc_worker_stop(int worker, void *arg);

#endif /* MICA_HTTP_CLIENT_INTERNAL_H */

/* SPDX-License-Identifier: MIT */
/*
 * The gRPC client's internals, shared by its three files:
 *
 *   client.c       the public API: clients, interceptors, calls and streams
 *   client_pool.c  per-worker endpoint tables fed by the resolver, picks
 *   client_conn.c  HTTP/2 connections: nghttp2 sessions, their coroutine
 *
 * Ownership runs downward: a stream holds a reference on its connection, a
 * connection on its endpoint, so each outlives what points into it. All of
 * it belongs to one worker and is touched only there, without locks.
 */
#ifndef MICA_GRPC_CLIENT_H
#define MICA_GRPC_CLIENT_H

#include <nghttp2/nghttp2.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/buf.h"
#include "common/list.h"
#include "mica/grpc.h"
#include "mica/resolver.h"
#include "mica/sync.h"
#include "mica/tls.h"

#define MICA__GRPC_MAX_MD 16        /* metadata entries a call sends (and keeps of a response) */
#define MICA__GRPC_MAX_OBSERVERS 4  /* mica_grpc_stream_on_finish() per stream */
#define MICA__GRPC_WINDOW_BYTES (1 << 20)
#define MICA__GRPC_OUT_HIGH_WATER (256 * 1024)

typedef struct mica__grpc_worker mica__grpc_worker_t;
typedef struct mica__grpc_ep mica__grpc_ep_t;
typedef struct mica__grpc_conn mica__grpc_conn_t;

typedef struct mica__grpc_interceptor {
    mica_grpc_client_interceptor_fn fn;
    void *arg;
} mica__grpc_interceptor_t;

struct mica_grpc_client {
    mica_grpc_client_opts_t o; /* the caller's strings are not kept */
    mica_resolver_t *resolver;
    const mica_picker_ops_t *picker;
    mica_tls_client_t *tls; /* TLS connections when set */
    char *tls_name;         /* verified and sent as SNI; NULL: each endpoint's host */
    char *authority;        /* :authority; NULL: each endpoint's address */
    int nworkers;
    mica__grpc_worker_t **workers; /* one each, allocated apart (no false sharing) */
    mica__grpc_interceptor_t *icpt;
    size_t nicpt;
    atomic_bool used; /* a call was made: no more interceptors */
};

/* One worker's view of the target: its endpoints and their connections. */
struct mica__grpc_worker {
    mica_grpc_client_t *c;
    int id;
    bool started; /* resolver started, maintenance coroutine spawned */
    uint64_t gen; /* resolver generation applied */
    mica_endpoints_t *list; /* the list applied (a reference), or NULL */
    mica__grpc_ep_t **eps;  /* live endpoints, in the list's order */
    mica_picker_endpoint_t **view; /* &eps[i]->pub: what the picker sees */
    size_t n;
    void *picker; /* the picker's state for this worker */
    mica_event_t changed; /* set by the resolver (a new list) and at stop */
    mica__list_t free_streams; /* finished streams kept for reuse, with their buffers */
    size_t nfree;
    uint64_t rand;        /* xorshift state: back-off jitter */
    char pad[64];         /* keeps the next worker's hot fields off these lines */
};

/* One endpoint on one worker. */
struct mica__grpc_ep {
    mica_picker_endpoint_t pub; /* first */
    mica__grpc_worker_t *w;
    char *addr;                 /* "ip:port" (own copy) */
    mica__grpc_conn_t **conns;  /* o.conns_per_worker slots */
    unsigned rr;
    int refs;    /* the worker's list, each connection, each pick under way */
    int live;    /* connections up */
    bool removed; /* gone from the list: its connections drain */
    bool kept, fresh; /* while a new list is applied */
    uint32_t backoff_ms;
    int last_error;
};

struct mica__grpc_conn {
    mica_grpc_client_t *c;
    mica__grpc_ep_t *ep;
    mica__grpc_conn_t **slot; /* where the endpoint points at us, while it does */
    int fd;
    mica_tls_conn_t *tls; /* TLS connections */
    nghttp2_session *sess;
    mica_event_t connected; /* set once the connection attempt ends */
    int connect_rc;
    bool up;      /* counted in ep->live */
    bool dead;    /* no new streams */
    bool reading; /* conn_main waits for the socket */
    int refs;     /* conn_main (or the attempt) + open streams + waiters */
    int nstreams; /* streams nghttp2 has not closed */
    mica__list_t streams; /* every stream not yet freed */
};

typedef struct mica__grpc_field {
    char *name, *value;
} mica__grpc_field_t;

typedef struct mica__grpc_observer {
    void (*fn)(const mica_grpc_result_t *res, void *arg);
    void *arg;
} mica__grpc_observer_t;

struct mica_grpc_stream {
    mica__grpc_conn_t *cn;
    int32_t id;
    const ProtobufCMethodDescriptor *md;
    mica_ctx_t *ctx;
    int64_t deadline_ms;
    mica__arena_t arena;
    size_t max_msg;
    bool unary;
    int64_t started_ns; /* for the latency of pickers that want it, else 0 */

    /* response */
    int http_status;
    mica__grpc_field_t headers[MICA__GRPC_MAX_MD], trailers[MICA__GRPC_MAX_MD];
    size_t nheaders, ntrailers;
    const char *grpc_status, *grpc_message;
    mica__buf_t in;    /* capped: one message plus a window */
    bool remote_ended; /* END_STREAM received */
    bool closed;       /* nghttp2 closed the stream */
    uint32_t rst_code;
    bool rst_queued;   /* we submitted RST_STREAM (once is enough) */
    int local_code; /* >0: how the client itself ended the call */
    const char *local_message;

    /* request */
    mica__buf_t out; /* capped: the high-water mark plus one message */
    bool out_eof, out_deferred;

    mica_event_t ev; /* set when the stream changed, while `waiting` */
    bool waiting;
    bool orphan; /* finished by its caller, freed when nghttp2 closes it */
    mica__grpc_observer_t obs[MICA__GRPC_MAX_OBSERVERS];
    int nobs;
    mica__list_t link; /* on cn->streams */
};

/* ---- client_pool.c ------------------------------------------------------------ */

/*
 * Picks an endpoint for a call on the calling worker and returns a live
 * connection to it with a reference for the caller (*out), connecting when
 * needed. A failed connection attempt marks its endpoint FAILING and picks
 * again (nothing was sent). Waits are bounded by ctx and deadline_ms.
 * Returns 0, MICA_EUNAVAILABLE (no endpoint), a connect error, ctx errors,
 * MICA_EINVAL outside a worker, MICA_ENOMEM.
 */
int mica__grpc_pick(mica_grpc_client_t *c, mica_ctx_t *ctx, int64_t deadline_ms,
                    const mica_pick_info_t *info, mica__grpc_conn_t **out);
/* A call on `ep` ended with `code` after latency_us (0: not measured): stats, picker's done. */
void mica__grpc_ep_done(mica__grpc_ep_t *ep, int code, uint32_t latency_us);
void mica__grpc_ep_unref(mica__grpc_ep_t *ep);
/* A connection of `ep` came up or went down. */
void mica__grpc_ep_conn_up(mica__grpc_ep_t *ep);
void mica__grpc_ep_conn_down(mica__grpc_ep_t *ep);
/* A connection attempt to `ep` failed with `err`: FAILING with back-off. */
void mica__grpc_ep_failed(mica__grpc_ep_t *ep, int err);
/* Allocates the per-worker tables of a new client. 0 or MICA_ENOMEM. */
int mica__grpc_workers_new(mica_grpc_client_t *c);
void mica__grpc_workers_free(mica_grpc_client_t *c);
/* The on_stop hook: wakes the worker's coroutines so they end. */
void mica__grpc_worker_stop(int worker, void *arg);

/* ---- client_conn.c ------------------------------------------------------------- */

/*
 * Returns a live connection of `ep` (connecting if its slot is empty) with a
 * reference for the caller. Returns 0, the connect or handshake error,
 * ctx errors or MICA_ENOMEM.
 */
int mica__grpc_conn_get(mica__grpc_ep_t *ep, mica_ctx_t *ctx, int64_t deadline_ms,
                        mica__grpc_conn_t **out);
void mica__grpc_conn_unref(mica__grpc_conn_t *cn);
/* Wakes the connection's coroutine (bytes to send, or time to end). */
void mica__grpc_conn_nudge(mica__grpc_conn_t *cn);
/* Marks the connection as taking no new streams; it ends once its streams have. */
void mica__grpc_conn_drain(mica__grpc_conn_t *cn);
/* Wakes the stream's waiter, if any. */
void mica__grpc_stream_wake(mica_grpc_stream_t *st);
/* Ends the call from this side: records why and resets the stream. */
void mica__grpc_stream_abort(mica_grpc_stream_t *st, int code, const char *msg);
/* Unlinks `st`, drops its connection reference and keeps it for reuse (or frees it). */
void mica__grpc_stream_free(mica_grpc_stream_t *st);
/* A zeroed stream for a call on worker `w` (reused when one is kept), or NULL: ENOMEM. */
mica_grpc_stream_t *mica__grpc_stream_new(mica__grpc_worker_t *w, size_t max_msg);
/* Keeps unlinked `st` for reuse on `w` (or frees it). */
void mica__grpc_stream_put(mica__grpc_worker_t *w, mica_grpc_stream_t *st);
/* Frees the streams `w` keeps. */
void mica__grpc_streams_free(mica__grpc_worker_t *w);
/* The data provider of request bodies (nghttp2 reads st->out through it). */
ssize_t mica__grpc_read_request(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                                uint32_t *flags, nghttp2_data_source *src, void *user);

#endif /* MICA_GRPC_CLIENT_H */

/* SPDX-License-Identifier: MIT */
/*
 * HTTP internals shared by the files of src/http. The dependency order is
 * one-way: the protocol files (conn.c for HTTP/1.1, h2.c for HTTP/2) parse
 * requests and call request.c to route and serve them; request.c and
 * response.c reach the protocol only through the request's operations table
 * (mica__http_ops_t), never by name.
 */
#ifndef MICA_HTTP_INTERNAL_H
#define MICA_HTTP_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "common/arena.h"
#include "common/buf.h"
#include "common/list.h"
#include "http/parser.h"
#include "http/tls.h"
#include "mica/http.h"

#define MICA__HTTP_MAX_PARAMS 8
#define MICA__HTTP_BUF_BYTES 4096
#define MICA__HTTP_OUT_CAP_BYTES ((size_t)64 << 20) /* one connection's/stream's pending output */
#define MICA__HTTP_RESP_FIELDS_BYTES 8192           /* response header (or trailer) octets */
#define MICA__HTTP_RESP_MAX_FIELDS 64 /* the masks in mica_http_resp_t have 64 bits */
#define MICA__HTTP_OUT_HIGH_WATER (256 * 1024) /* a streaming writer waits above this */
#define MICA__HTTP_OUT_LOW_WATER (64 * 1024)

/* ---- router (router.c) ------------------------------------------------------ */

typedef struct mica__router mica__router_t;

typedef struct mica__route {
    char *method;
    char *pattern;
    mica_http_handler_fn fn;
    void *arg;
    bool stream;       /* starts at the head; reads the body as it arrives */
    size_t max_buffer; /* stream: body bytes buffered unread at most */
} mica__route_t;

typedef struct mica__route_match {
    const mica__route_t *route;
    size_t nparams;
    const char *names[MICA__HTTP_MAX_PARAMS]; /* owned by the router */
    const char *values[MICA__HTTP_MAX_PARAMS]; /* raw, point into the path */
    size_t value_lens[MICA__HTTP_MAX_PARAMS];
    char allow[160]; /* for 405/OPTIONS: "GET, HEAD, POST" */
} mica__route_match_t;

int mica__router_new(mica__router_t **out);
void mica__router_free(mica__router_t *r);
/* Adds a route (copied but for fn/arg). 0, MICA_EINVAL, MICA_EEXIST, MICA_ENOMEM. */
int mica__router_add(mica__router_t *r, const char *method, const char *pattern,
                     mica_http_handler_fn fn, void *arg, bool stream, size_t max_buffer);
/*
 * Finds the route for method + path. Returns 0 (m->route set), -404 when no
 * pattern matches the path, or -405 when the path matches but not the method
 * (m->allow lists the methods that do). HEAD falls back to GET.
 */
int mica__router_match(const mica__router_t *r, const char *method, size_t method_len,
                       const char *path, size_t path_len, mica__route_match_t *m);

/* ---- server and workers (server.c) ------------------------------------------ */

typedef struct mica__http_worker mica__http_worker_t;
typedef struct mica__http_conn mica__http_conn_t;
typedef struct mica__h2_stream mica__h2_stream_t;

typedef struct mica__http_mw {
    mica_http_middleware_fn fn;
    void *arg;
} mica__http_mw_t;

typedef struct mica__http_obs {
    mica_http_observer_fn fn;
    void *arg;
} mica__http_obs_t;

typedef struct mica__http_gate {
    const mica_http_gate_ops_t *ops;
    void *arg;
} mica__http_gate_t;

#define MICA__HTTP_MAX_GATES 8

struct mica_http_server {
    mica_http_server_opts_t o;
    mica__http_limits_t limits;
    mica__router_t *router;
    mica__route_t fallback; /* fn NULL: the server's 404 */
    size_t max_stream_buffer; /* the largest streaming route buffer (sizes conn buffers) */
    mica__http_mw_t *mw;
    size_t nmw;
    mica__http_obs_t *obs;
    size_t nobs;
    mica__http_gate_t gates[MICA__HTTP_MAX_GATES];
    size_t ngates;
    char **addrs;
    size_t naddrs;
    int *fds; /* naddrs * nworkers listening sockets, [worker * naddrs + i] */
    int *ports;
    int nworkers;
    mica__http_worker_t *workers;
    struct ssl_ctx_st *tls; /* set by mica_http_server_tls(), for the TLS listeners */
    bool *addr_tls;         /* per address: a TLS listener */
};

struct mica__http_worker {
    mica_http_server_t *srv;
    int id;
    mica__list_t conns; /* every open connection, for the drain */
    /* Written by this worker only; relaxed atomics so that
     * mica_http_server_stats() may read them from any thread. */
    _Atomic int nconns;
    int spare_fd; /* closed and reopened to refuse a connection on EMFILE */
    _Atomic uint64_t accepted, refused, requests;
    int64_t last_refuse_log_ms;
    mica__list_t idle; /* parked connections, oldest first */
    char *free_bufs;   /* pool of MICA__HTTP_BUF_BYTES buffers, linked through their first bytes */
    size_t nfree_bufs;
    mica__list_t h2_spare; /* freed HTTP/2 streams kept for reuse, with their buffers */
    size_t nh2_spare;
    mica_ctx_t *reaper_ctx; /* cancelled to stop the idle reaper */
    time_t date_sec;
    char date[40]; /* "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" */
    size_t date_len;
};

/* Adds `d` to a counter only its worker writes: a plain load and store, no locked RMW. */
#define MICA__HTTP_COUNT(p, d)                                                                    \
    atomic_store_explicit((p), atomic_load_explicit((p), memory_order_relaxed) + (d),           \
                          memory_order_relaxed)
#define MICA__HTTP_GET(p) atomic_load_explicit((p), memory_order_relaxed)

/* Takes a MICA__HTTP_BUF_BYTES buffer from the worker's pool (or allocates). NULL on ENOMEM. */
char *mica__http_buf_get(mica__http_worker_t *w);
/* Returns a buffer to the pool when it has MICA__HTTP_BUF_BYTES capacity, else frees it. */
void mica__http_buf_put(mica__http_worker_t *w, char *buf, size_t cap);
/* Gives b's memory back (to the pool when it is a pool buffer) and empties b. */
void mica__http_buf_release(mica__http_worker_t *w, mica__buf_t *b);
/* Makes b hold a pool buffer if it has no memory yet. 0 or MICA_ENOMEM. */
int mica__http_buf_ready(mica__http_worker_t *w, mica__buf_t *b);

/* ---- requests and responses (request.c, response.c) ------------------------- */

/*
 * What a protocol does for a request and its response. HTTP/1.1 (conn.c)
 * and HTTP/2 (h2.c) each have one; request.c and response.c call these and
 * nothing else of the protocol's.
 */
typedef struct mica__http_ops {
    /* Sends a whole response: resp->status, resp->fields, then `len` body bytes. */
    int (*send)(mica_http_resp_t *resp, const char *content_type, const void *body, size_t len);
    /* Streaming response: body bytes (the head first, if not out yet). */
    int (*write)(mica_http_resp_t *resp, const void *p, size_t n);
    /* Ends a streaming response with resp->trailers (the head too, if not out yet). */
    int (*end)(mica_http_resp_t *resp);
    /* A streamed response that cannot be completed: reset the stream / close. */
    void (*abort)(mica_http_resp_t *resp);
    /* Streaming body: wait until `want` unread bytes, or the end (MICA_ECLOSED);
     * *data and *len get the unread bytes either way. */
    int (*body_wait)(mica_http_req_t *req, size_t want, const char **data, size_t *len);
    void (*body_consume)(mica_http_req_t *req, size_t n);
} mica__http_ops_t;

typedef struct mica__ctx_link mica__ctx_link_t;
typedef struct mica__ctx_value mica__ctx_value_t;

struct mica_http_req {
    const mica__http_ops_t *ops;
    void *proto; /* the mica__http_conn_t or mica__h2_stream_t */
    mica_http_server_t *srv;
    int fd;      /* HTTP/1.1: the socket (ctx cancelled on hang-up); -1 on HTTP/2 */
    int sock;    /* the connection's socket, either protocol (the peer's address) */
    char *peer;  /* the connection's cache of the peer's address ("" until asked) */
    int version; /* 10, 11, 20 */
    const mica__http_field_t *headers;
    size_t nheaders;
    mica__arena_t *arena;
    const char *method;
    const char *path;
    const char *query;
    size_t method_len, path_len;
    const char *body; /* buffered routes: the whole body */
    size_t body_len;
    size_t body_taken; /* buffered routes: bytes consumed through body_wait */
    mica__route_match_t match;
    int route_rc;  /* 0, -404, -405, -400 (bad target) */
    bool streaming; /* the body is read through ops->body_wait */
    bool cancelled; /* client gone before the ctx existed */
    const char *params[MICA__HTTP_MAX_PARAMS]; /* decoded lazily */
    int64_t deadline_ms;
    mica_ctx_t *ctx;      /* innermost: created on first mica_http_req_ctx() */
    mica_ctx_t *ctx_base; /* the one cancelled when the client goes */
    mica__ctx_link_t *ctxs; /* every ctx made for the request, newest first */
    mica__ctx_value_t *values; /* values given before the ctx was made, newest first */
    const char *tls_peer; /* the connection's verified client certificate subject, or NULL */
    int64_t start_ns;     /* observers: when the head arrived */
    uint64_t bytes_in;
    int refused;             /* a gate's refusal (MICA_E*), answered by that gate's refuse */
    unsigned gates_admitted; /* gates whose admit let the request in: each gets done() */
    int64_t admit_ns;        /* when the gates ran (their done()'s elapsed time) */
};

struct mica_http_resp {
    mica_http_req_t *req;
    bool sent;    /* the head has gone out (queued) */
    bool started; /* mica_http_resp_start() */
    bool ended;   /* a streaming response ended (or a whole one sent) */
    int status;
    const char *content_type;
    mica__http_field_t *fields, *trailers; /* in the request arena */
    size_t nfields, ntrailers, fields_bytes, trailers_bytes;
    /* Bit i: field i's name has upper-case letters (HTTP/2 lower-cases a copy),
     * or is connection-specific (HTTP/2 leaves it out). Set once, when added. */
    uint64_t fields_upper, fields_hop, trailers_upper, trailers_hop;
    uint64_t bytes_out;
};

/* Resets req/resp for a new request of `srv` over protocol `ops`. */
void mica__http_req_init(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_server_t *srv,
                         const mica__http_ops_t *ops, void *proto, mica__arena_t *arena);
/*
 * Routes req (method, path set): sets req->match, req->route_rc and
 * req->streaming. Called when the head is in, before any body is read.
 */
void mica__http_route(mica_http_req_t *req);
/*
 * Serves req: the middleware chain around the route's handler (or the
 * server's 404/405/OPTIONS/400), error mapping, the end of a streamed
 * response, the ctx's release, then the observers.
 */
void mica__http_serve(mica_http_req_t *req, mica_http_resp_t *resp);
/* Sends a server-generated {"error": msg} response (fields dropped). */
int mica__http_send_error(mica_http_resp_t *resp, int status, const char *msg);
/* Calls the observers for a finished request (no-op without observers). */
void mica__http_observe(mica_http_req_t *req, mica_http_resp_t *resp);
/* Starts the observers' clock for a request (no-op without observers). */
void mica__http_clock_start(mica_http_req_t *req);
/* The monotonic clock in ns (observers' durations). */
int64_t mica__http_now_ns(void);
/*
 * Runs done() of every gate that admitted req, once (later calls do nothing).
 * Every routed request reaches it: at the end of serving, or wherever a
 * protocol gives up on a request it routed (a bad body, a reset stream).
 */
void mica__http_gates_done(mica_http_req_t *req);
/* Cancels the request's ctx (client gone); a later ctx starts cancelled. */
void mica__http_req_cancel(mica_http_req_t *req);
/* Frees the ctxs made for the request. */
void mica__http_req_release(mica_http_req_t *req);

/* Writes v in decimal at buf (no NUL; room for 20 digits). Returns the length. */
size_t mica__http_u64_dec(char *buf, uint64_t v);
/* Whether `name` is a connection-specific field HTTP/2 forbids (RFC 9113 §8.2.2). */
bool mica__http_hop_field(const char *name, size_t len);
/* "Date: ...\r\n" for now, from the worker's per-second cache. */
void mica__http_date(mica__http_worker_t *w, const char **line, size_t *len);

/* ---- HTTP/1.1 connections (conn.c) ------------------------------------------ */

struct mica__http_conn {
    int fd;
    mica__http_worker_t *w;
    mica__list_t link; /* on the worker's conns */
    mica__list_t idle_link; /* on the worker's idle list while parked */
    bool idle;      /* waiting for the first byte of a request: the drain may close it */
    bool parked;    /* idle between requests with no coroutine: on the worker's idle list */
    uint64_t requests;
    int64_t idle_since_ms;
    bool must_wait; /* the last read drained the socket: wait before reading again */
    bool close;     /* close after the current response */
    bool head_only; /* HEAD: headers only */
    int version_minor;

    mica__tls_t tls;  /* TLS connections: tls.ssl set */
    bool tls_pending; /* accepted on a TLS listener, handshake not run yet */
    char peer[48];    /* the client's address, once a request asked for it */

    mica__buf_t in;  /* capped: head + body (+ chunk framing); off stays 0 */
    mica__buf_t out; /* capped at MICA__HTTP_OUT_CAP_BYTES */

    mica__http_head_t *head; /* on the connection coroutine's stack while it runs */
    mica__arena_t arena;
    mica_http_req_t req;
    mica_http_resp_t resp;

    /* The body of a streaming request: decoded bytes in in[boff, bend),
     * raw bytes not yet decoded in in[braw, in.len). */
    size_t head_len, boff, bend, braw;
    uint64_t bremaining; /* Content-Length bytes not yet decoded */
    mica__http_chunked_t bdec;
    bool bchunked, beof, berr, bcontinue;
    bool chunked_out; /* the response streams with chunked encoding */
    int64_t start_ns; /* observers: when this request's first byte came */
};

/* The connection coroutine of an accepted socket (accept loop, parked wake-ups). */
void mica__http_conn_main(void *arg);
/* Closes and frees a connection. */
void mica__http_conn_close(mica__http_conn_t *c);

/*
 * Reads what is there into buf without waiting for it: > 0 bytes, 0 at the
 * client's close, MICA_EAGAIN (drained: wait for readable), or an error.
 * TLS may still wait, until `deadline`, for a write the protocol needs.
 */
ssize_t mica__http_conn_recv(mica__http_conn_t *c, void *buf, size_t len, int64_t deadline);
/* Writes all of buf to the connection (TLS or not) before deadline: 0 or an error. */
int mica__http_conn_write(mica__http_conn_t *c, const void *buf, size_t len, int64_t deadline);

/* ---- HTTP/2 (h2.c) ---------------------------------------------------------- */

/* The client connection preface (RFC 9113 §3.4) that marks an h2c connection. */
#define MICA__H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define MICA__H2_PREFACE_LEN 24

/* Serves connection `c` as HTTP/2 until it ends; c->in holds what was read so far. */
void mica__h2_serve(mica__http_conn_t *c);
/* Frees the worker's pool of spare HTTP/2 streams (at server free). */
void mica__h2_worker_free(mica__http_worker_t *w);

#endif /* MICA_HTTP_INTERNAL_H */

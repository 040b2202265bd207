/* SPDX-License-Identifier: MIT */
/* HTTP internals shared by the files of src/http. */
#ifndef MICA_HTTP_INTERNAL_H
#define MICA_HTTP_INTERNAL_H

#include "http/parser.h"
#include "mica/http.h"

#define MICA__HTTP_MAX_PARAMS 8

typedef struct mica__router mica__router_t;

typedef struct mica__route_match {
    mica_http_handler_fn fn;
    void *arg;
    size_t nparams;
    const char *names[MICA__HTTP_MAX_PARAMS]; /* owned by the router */
    const char *values[MICA__HTTP_MAX_PARAMS]; /* raw, point into the path */
    size_t value_lens[MICA__HTTP_MAX_PARAMS];
    char allow[160]; /* for 405/OPTIONS: "GET, HEAD, POST" */
} mica__route_match_t;

int mica__router_new(mica__router_t **out);
void mica__router_free(mica__router_t *r);
int mica__router_add(mica__router_t *r, const char *method, const char *pattern,
                     mica_http_handler_fn fn, void *arg);
/*
 * Finds the handler for method + path. Returns 0 (m->fn set), -404 when no
 * pattern matches the path, or -405 when the path matches but not the method
 * (m->allow lists the methods that do). HEAD falls back to GET.
 */
int mica__router_match(const mica__router_t *r, const char *method, size_t method_len,
                       const char *path, size_t path_len, mica__route_match_t *m);

#endif /* MICA_HTTP_INTERNAL_H */

/* ---- server, connections, requests (server.c, response.c) ---------------- */

#include <time.h>

#include "common/arena.h"
#include "http/tls.h"

typedef struct mica__http_worker mica__http_worker_t;
typedef struct mica__http_conn mica__http_conn_t;
typedef struct mica__h2_stream mica__h2_stream_t;

struct mica_http_server {
    mica_http_server_opts_t o;
    mica__http_limits_t limits;
    mica__router_t *router;
    char **addrs;
    size_t naddrs;
    int *fds; /* naddrs * nworkers listening sockets, [worker * naddrs + i] */
    int *ports;
    int nworkers;
    mica__http_worker_t *workers;

    /* HTTP/2 requests with content-type application/grpc* go to stream_fn,
     * in a coroutine of their own, as soon as their headers are in (set by
     * the gRPC layer, which owns stream_arg and frees it with stream_free). */
    void (*stream_fn)(mica__h2_stream_t *s, void *arg);
    void *stream_arg;
    void (*stream_free)(void *arg);
    size_t stream_max_buffer; /* request bytes a stream may buffer unread */

    struct ssl_ctx_st *tls; /* set by mica_http_server_tls(), for the TLS listeners */
    bool *addr_tls;         /* per address: a TLS listener */
};

struct mica__http_worker {
    mica_http_server_t *srv;
    int id;
    mica__http_conn_t *conns; /* every open connection, for the drain */
    int nconns;
    int spare_fd; /* closed and reopened to refuse a connection on EMFILE */
    uint64_t accepted, refused, requests;
    int64_t last_refuse_log_ms;
    mica__http_conn_t *idle_head, *idle_tail; /* parked connections, oldest first */
    char *free_bufs; /* pool of MICA__HTTP_BUF_BYTES buffers, linked through their first bytes */
    size_t nfree_bufs;
    mica__h2_stream_t *h2_spare; /* freed HTTP/2 streams kept for reuse, with their buffers */
    size_t nh2_spare;
    mica_ctx_t *reaper_ctx; /* cancelled to stop the idle reaper */
    time_t date_sec;
    char date[40]; /* "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" */
    size_t date_len;
};

struct mica_http_req {
    mica__http_conn_t *conn; /* HTTP/1.1 connection, or NULL on HTTP/2 */
    int fd;
    const mica__http_field_t *headers;
    size_t nheaders;
    mica__arena_t *arena;
    const char *method;
    const char *path;
    const char *query;
    const char *body;
    size_t body_len;
    mica__route_match_t match;
    const char *params[MICA__HTTP_MAX_PARAMS]; /* decoded lazily */
    int64_t deadline_ms;
    mica_ctx_t *ctx;      /* created on first mica_http_req_ctx() */
    const char *tls_peer; /* the connection's verified client certificate subject, or NULL */
};

struct mica_http_resp {
    mica__http_conn_t *conn; /* HTTP/1.1 connection, or NULL on HTTP/2 */
    mica__h2_stream_t *h2;   /* HTTP/2 stream, or NULL */
    mica_http_req_t *req;
    bool sent;
    int status;
    char *headers; /* extra "Name: value\r\n" lines, in the arena */
    size_t headers_len, headers_cap;
};

struct mica__http_conn {
    int fd;
    mica__http_worker_t *w;
    mica__http_conn_t *prev, *next;
    bool idle;      /* waiting for the first byte of a request: the drain may close it */
    bool parked;    /* idle between requests with no coroutine: on the worker's idle list */
    uint64_t requests;
    int64_t idle_since_ms;
    mica__http_conn_t *idle_prev, *idle_next;
    bool must_wait; /* the last read drained the socket: wait before reading again */
    bool close;     /* close after the current response */
    bool head_only; /* HEAD: headers only */
    int version_minor;

    mica__tls_t tls;  /* TLS connections: tls.ssl set */
    bool tls_pending; /* accepted on a TLS listener, handshake not run yet */

    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_cap;

    mica__http_head_t *head; /* on the connection coroutine's stack while it runs */
    mica__arena_t arena;
    mica_http_req_t req;
    mica_http_resp_t resp;
};

#define MICA__HTTP_BUF_BYTES 4096

/* Takes a MICA__HTTP_BUF_BYTES buffer from the worker's pool (or malloc). NULL on ENOMEM. */
char *mica__http_buf_get(mica__http_worker_t *w);
/* Returns a buffer to the pool when it has MICA__HTTP_BUF_BYTES capacity, else frees it. */
void mica__http_buf_put(mica__http_worker_t *w, char *buf, size_t cap);

/*
 * Reads what is there into buf without waiting for it: > 0 bytes, 0 at the
 * client's close, MICA_EAGAIN (drained: wait for readable), or an error.
 * TLS may still wait, until `deadline`, for a write the protocol needs.
 */
ssize_t mica__http_conn_recv(mica__http_conn_t *c, void *buf, size_t len, int64_t deadline);
/* Writes all of buf to the connection (TLS or not) before deadline: 0 or an error. */
int mica__http_conn_write(mica__http_conn_t *c, const void *buf, size_t len, int64_t deadline);

/* Appends raw bytes to the connection's output. Returns 0 or MICA_ELIMIT/MICA_ENOMEM. */
int mica__http_out_append(mica__http_conn_t *c, const void *p, size_t len);
/* Sends a server-generated {"error": msg} response and marks the connection to close. */
int mica__http_send_error(mica__http_conn_t *c, int status, const char *msg);
/*
 * Routes req (method and path set) and runs its handler, answering 404/405/
 * OPTIONS itself and mapping a handler's error to a status; used by HTTP/1.1
 * and HTTP/2 alike.
 */
void mica__http_call(mica_http_server_t *srv, mica_http_req_t *req, mica_http_resp_t *resp,
                     size_t method_len, size_t path_len);

/* ---- HTTP/2 (h2.c) ---- */

/* The client connection preface (RFC 9113 §3.4) that marks an h2c connection. */
#define MICA__H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define MICA__H2_PREFACE_LEN 24

/* Serves connection `c` as HTTP/2 until it ends; c->in holds what was read so far. */
void mica__h2_serve(mica__http_conn_t *c);
/* Frees the worker's pool of spare HTTP/2 streams (at server free). */
void mica__h2_worker_free(mica__http_worker_t *w);
/* mica_http_resp_send() for a response on an HTTP/2 stream. */
int mica__h2_respond(mica_http_resp_t *resp, int status, const char *content_type,
                     const void *body, size_t len);

/*
 * Streaming streams (srv->stream_fn). All calls run on the stream's worker.
 * Request bytes arrive in a buffer the reader takes from; response headers,
 * bytes and trailers are queued to the connection, which sends them.
 */
#define MICA__H2_OUT_HIGH_WATER (256 * 1024) /* mica__h2_out_wait() above this */
#define MICA__H2_OUT_LOW_WATER (64 * 1024)

/* The stream's request: method, path, headers, arena and ctx (owned by the stream). */
mica_http_req_t *mica__h2_req(mica__h2_stream_t *s);
/*
 * Waits until `want` request bytes are buffered. Returns 0, MICA_ECLOSED (the
 * client ended the request first), MICA_ECANCELED (stream reset or worker
 * stopping), MICA_ETIMEDOUT (deadline_ms) or ctx's error.
 */
int mica__h2_in_wait(mica__h2_stream_t *s, size_t want, mica_ctx_t *ctx, int64_t deadline_ms);
/* Returns the buffered request bytes (*len of them); valid until the next wait. */
const char *mica__h2_in_data(const mica__h2_stream_t *s, size_t *len);
/* Takes n buffered bytes, returning window to the client. */
void mica__h2_in_consume(mica__h2_stream_t *s, size_t n);
/* Returns room for n more response bytes (NULL: ENOMEM); commit what was written. */
char *mica__h2_out_reserve(mica__h2_stream_t *s, size_t n);
/* Queues n reserved bytes after the headers. Returns 0 or MICA_ECANCELED (reset/finished). */
int mica__h2_out_commit(mica__h2_stream_t *s, size_t n);
/* Waits while more than MICA__H2_OUT_HIGH_WATER bytes are queued. Errors as in_wait. */
int mica__h2_out_wait(mica__h2_stream_t *s, mica_ctx_t *ctx, int64_t deadline_ms);
/* Submits the response headers: :status and `f` (copied). 0, MICA_EINVAL (twice), MICA_ECANCELED. */
int mica__h2_out_headers(mica__h2_stream_t *s, int status, const mica__http_field_t *f, size_t n);
/*
 * Ends the response: after the queued bytes, `f` goes as trailers (copied);
 * if no headers were submitted, one HEADERS frame with :status and `f` ends
 * the stream instead. Returns 0, MICA_EINVAL (twice), MICA_ECANCELED, MICA_ENOMEM.
 */
int mica__h2_out_finish(mica__h2_stream_t *s, int status, const mica__http_field_t *f, size_t n);

/* Writes v in decimal at buf (no NUL; room for 20 digits). Returns the length. */
size_t mica__http_u64_dec(char *buf, uint64_t v);

/* Maps a handler's MICA_E* code to an HTTP status. */
int mica__http_status_of(int err);

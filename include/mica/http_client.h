/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 client on coroutines. A client calls one *target*, named as the
 * gRPC client's are (include/mica/resolver.h): "127.0.0.1:8080",
 * "http://127.0.0.1:8080", "https://api.internal:8443" (TLS),
 * "dns:///api.internal:8080", "static:///10.0.0.1:80,10.0.0.2:80", or a
 * scheme registered with mica_resolver_register(). A picker (round robin by
 * default; the same mica_picker_ops_t the gRPC client takes) chooses the
 * endpoint of every call, and each worker keeps its own keep-alive pool per
 * endpoint. Interceptors wrap every call, with the gRPC client's shapes.
 *
 *     mica_http_client_t *api;
 *     mica_http_client_new(&api, rt, "http://127.0.0.1:8080", NULL);
 *     // in a coroutine:
 *     mica_http_response_t *r;
 *     int rc = mica_http_client_get(api, ctx, "/users/1001", NULL, &r);
 *     if (rc == 0) {
 *         size_t len;
 *         const char *body = mica_http_response_body(r, &len);
 *         ... mica_http_response_status(r) ...
 *         mica_http_response_free(r);           // the connection goes back to the pool
 *     }
 *
 * Every wait of a call is bounded by its ctx, its deadline (call options)
 * and a per-phase timeout: connect (TCP and TLS), write, the response head,
 * and the silence between two body reads. Responses are parsed as strictly
 * as the server parses requests (no obs-fold, no Content-Length with
 * Transfer-Encoding, no repeated Content-Length, exact chunk framing);
 * anything else fails the call with MICA_EPROTO and closes the connection.
 */
#ifndef MICA_HTTP_CLIENT_H
#define MICA_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/resolver.h"
#include "mica/runtime.h"

typedef struct mica_http_client mica_http_client_t;
typedef struct mica_http_response mica_http_response_t;

/* Client settings; 0 (NULL) picks the default shown. */
typedef struct mica_http_client_opts {
    int max_conns_per_endpoint; /* per worker, busy + idle: 256; a call beyond waits for one */
    int max_idle_per_endpoint;  /* per worker, idle keep-alive connections kept: 32 */
    int idle_timeout_ms;        /* an idle connection is closed after: 30000 */
    int connect_timeout_ms;     /* TCP connect + TLS handshake, per attempt: 5000 */
    int write_timeout_ms;       /* each wait to write the request: 10000 */
    int response_timeout_ms;    /* from the request written to the response head: 30000 */
    int body_timeout_ms;        /* between two reads of the response body: 30000 */
    size_t max_head_bytes;      /* status line + fields: 16384 (MICA_ELIMIT beyond) */
    size_t max_headers;         /* response fields: 64, at most 64 (MICA_ELIMIT beyond) */
    size_t max_body_bytes;      /* a body read whole (mica_http_client_do): 8 MiB (MICA_ELIMIT) */
    const char *tls_ca_file;     /* TLS ("https://" targets, or any target when set): PEM CA
                                    bundle the server's certificate must chain to */
    const char *tls_server_name; /* TLS: name verified and sent as SNI; NULL: the target's host
                                    for a named target, else each endpoint's IP */
    const char *tls_cert_file;   /* mTLS: PEM certificate chain the client presents */
    const char *tls_key_file;    /* mTLS: its PEM private key */
    const mica_picker_ops_t *picker; /* NULL: mica_picker_round_robin */
    const void *picker_conf;         /* given to the picker's create (borrowed for the
                                        client's life) */
    int64_t resolve_interval_ms;     /* dns targets: re-resolution period: 30000 */
    int backoff_max_ms;              /* cap of an endpoint's back-off after failed connects
                                        (1 s, x1.6, +-20 %): 30000 */
} mica_http_client_opts_t;

/* A header field of a request. */
typedef struct mica_http_header {
    const char *name; /* a token ("x-request-id") */
    const char *value; /* no CR, LF or NUL */
} mica_http_header_t;

/** Header fields a call may send (MICA_ELIMIT beyond). */
#define MICA_HTTP_MAX_REQUEST_HEADERS 64

/*
 * Per-call options (NULL: none), the gRPC client's mica_grpc_call_opts_t:
 * headers, a deadline, and flags and policy that mica does not read but
 * interceptors and pickers do. Borrowed for the call.
 */
typedef struct mica_http_call_opts {
    const mica_http_header_t *headers; /* sent after Host (a "host" here replaces it);
                                          Content-Length, Transfer-Encoding, Connection,
                                          TE and Upgrade are the client's: MICA_EINVAL */
    size_t nheaders;
    int64_t deadline_ms; /* absolute (mica_deadline_in()), 0: none; the earlier of it and the
                            ctx's deadline bounds the call */
    uint32_t flags;      /* per-call policy for interceptors and pickers (their own bits) */
    const void *policy;  /* per-call policy object, read by interceptors and pickers */
} mica_http_call_opts_t;

/*
 * A request body produced piece by piece: copies up to `len` bytes into
 * `buf` and returns their count, 0 at the end of the body, or a negative
 * MICA_E* code that fails the call. It may suspend (read from a socket).
 */
typedef ssize_t (*mica_http_body_fn)(void *buf, size_t len, void *arg);

/*
 * What to send. Borrowed for the call; the strings (and the headers of the
 * call options) are read only until body_fn is first called, so body_fn
 * may invalidate them (a proxy's server-side request strings can move as
 * its body is read).
 */
typedef struct mica_http_request {
    const char *method; /* "GET", "POST", any token */
    const char *path;   /* origin-form: "/users/1001?fields=name" */
    const void *body;   /* a body in one buffer (body_len bytes), sent with Content-Length */
    size_t body_len;
    mica_http_body_fn body_fn; /* or a body from a callback (body NULL): with Content-Length
                                  when body_len_hint >= 0, else chunked */
    void *body_arg;
    int64_t body_len_hint; /* body_fn's exact length, or -1: unknown (chunked) */
} mica_http_request_t;

/*
 * What a call did, for observers, metrics and interceptors: filled as the
 * call goes; final once mica_http_client_do() returns, or once a streamed
 * body was read to its end (mica_http_response_result()).
 */
typedef struct mica_http_result {
    int error;           /* 0, or the MICA_E* code the call failed with */
    int status;          /* the response's HTTP status; 0: none came */
    char endpoint[64];   /* the endpoint chosen ("10.0.0.1:8080"); "" when none was */
    bool reused;         /* sent on a kept-alive connection */
    int attempts;        /* connections the request was written to: 2 after a stale retry */
    uint64_t bytes_out;  /* request octets written: head and body framing included */
    uint64_t bytes_in;   /* response octets read: head and body framing included */
    int64_t connect_us;  /* TCP connect and TLS handshake (0 on a reused connection) */
    int64_t head_us;     /* from the call's start to the response head */
    int64_t total_us;    /* from the call's start to the body's end */
} mica_http_result_t;

/*
 * A call as interceptors see it. They may change `ctx` and `opts` (add
 * headers by pointing opts.headers at a larger array that lives until next()
 * returns; move the deadline) and `req`, then call next() -- any number of
 * times, to retry (freeing a response they drop) -- or not at all, to answer
 * by themselves (*resp from mica_http_response_new(), or an error). What an
 * interceptor changed is put back when it returns, for the ones around it.
 */
typedef struct mica_http_call_info {
    mica_http_client_t *client;
    const mica_http_request_t *req;
    mica_ctx_t *ctx;
    mica_http_call_opts_t opts;
    bool streaming;              /* mica_http_client_open(): the body is left unread */
    mica_http_response_t **resp; /* where the response goes (NULL unless next returned 0) */
    mica_http_result_t *res;     /* never NULL */
    int _pos;                    /* the chain's position */
} mica_http_call_info_t;

/**
 * Continues a call down the interceptor chain to the network. Returns 0
 * with *call->resp set (any HTTP status), or a MICA_E* code with call->res
 * saying how far it got.
 */
typedef int (*mica_http_client_next_fn)(mica_http_call_info_t *call);

/** A client interceptor: returns as `next` does, after calling it or not. */
typedef int (*mica_http_client_interceptor_fn)(mica_http_call_info_t *call,
                                               mica_http_client_next_fn next, void *arg);

/* Counters of one client, summed over its workers (mica_http_client_stats()). */
typedef struct mica_http_client_stats {
    uint64_t calls;          /* transport attempts started (each retry counts) */
    uint64_t failures;       /* calls that ended with an error (no response) */
    uint64_t conns_opened;   /* connections established */
    uint64_t conns_reused;   /* requests sent on a kept-alive connection */
    uint64_t conns_closed;   /* connections closed, for any reason */
    uint64_t stale_retries;  /* requests retried because a kept-alive connection was dead */
    uint64_t idle_evictions; /* idle connections closed: timeout, over max_idle, server close */
    uint64_t pool_waits;     /* calls that waited for max_conns_per_endpoint */
} mica_http_client_stats_t;

/**
 * Fills unset (zero) fields of `opts` from MICA_HTTP_CLIENT_MAX_CONNS,
 * MICA_HTTP_CLIENT_MAX_IDLE, MICA_HTTP_CLIENT_IDLE_TIMEOUT_MS,
 * MICA_HTTP_CLIENT_CONNECT_TIMEOUT_MS, MICA_HTTP_CLIENT_RESPONSE_TIMEOUT_MS,
 * MICA_HTTP_CLIENT_BODY_TIMEOUT_MS. Returns 0 or MICA_EINVAL (logged).
 */
MICA_API int mica_http_client_opts_from_env(mica_http_client_opts_t *opts);

/**
 * Creates a client of `target` (above) for coroutines of `rt`'s workers;
 * call it before mica_runtime_run(). "https://" (or opts->tls_ca_file) makes
 * connections TLS: verified certificate, SNI, ALPN http/1.1. Returns 0,
 * MICA_EINVAL (bad target, unknown scheme, https without a CA file,
 * unreadable files: logged) or MICA_ENOMEM.
 */
MICA_API int mica_http_client_new(mica_http_client_t **out, mica_runtime_t *rt, const char *target,
                                  const mica_http_client_opts_t *opts);

/** Frees the client once no call is in flight and its runtime has stopped. NULL is a no-op. */
MICA_API void mica_http_client_free(mica_http_client_t *c);

/**
 * Adds an interceptor around every call of `c`; the first added is the
 * outermost. Call it before the first call. Returns 0, MICA_EBUSY (calls
 * were made), MICA_ELIMIT (16 interceptors) or MICA_ENOMEM.
 */
MICA_API int mica_http_client_intercept(mica_http_client_t *c, mica_http_client_interceptor_fn fn,
                                        void *arg);

/** The client's resolver (owned by the client): mica_resolver_update() replaces a static list. */
MICA_API mica_resolver_t *mica_http_client_resolver(mica_http_client_t *c);

/** Sums the client's counters over its workers into *out (any thread; a moment's snapshot). */
MICA_API void mica_http_client_stats(const mica_http_client_t *c, mica_http_client_stats_t *out);

/**
 * Sends `req` from a coroutine and reads the whole response (its body up to
 * max_body_bytes) into *out; free it with mica_http_response_free(). `ctx`
 * (NULL: none) and opts->deadline_ms bound the call. `res` (may be NULL)
 * gets what happened. Returns 0 for any HTTP status, or MICA_EINVAL (bad
 * request or header), MICA_ELIMIT (too many headers, response over a limit),
 * MICA_EUNAVAILABLE (no endpoint), MICA_ECONNREFUSED and other socket
 * errors, MICA_ETIMEDOUT, MICA_ECANCELED, MICA_EPROTO (malformed or
 * truncated response, failed TLS handshake), MICA_ENOMEM.
 */
MICA_API int mica_http_client_do(mica_http_client_t *c, mica_ctx_t *ctx,
                                 const mica_http_request_t *req, const mica_http_call_opts_t *opts,
                                 mica_http_response_t **out, mica_http_result_t *res);

/**
 * As mica_http_client_do(), but returns once the response head is in: read
 * the body with mica_http_response_read(). The connection stays with the
 * response until it is freed: read to the end, it goes back to the pool,
 * else it is closed. Errors as mica_http_client_do().
 */
MICA_API int mica_http_client_open(mica_http_client_t *c, mica_ctx_t *ctx,
                                   const mica_http_request_t *req,
                                   const mica_http_call_opts_t *opts, mica_http_response_t **out,
                                   mica_http_result_t *res);

/** A GET of `path` with mica_http_client_do(). */
MICA_API int mica_http_client_get(mica_http_client_t *c, mica_ctx_t *ctx, const char *path,
                                  const mica_http_call_opts_t *opts, mica_http_response_t **out);

/* ---- responses: every returned pointer is valid until the response is freed ---- */

/**
 * Makes a response without a call, for an interceptor that answers by
 * itself (a cache, a breaker's fallback): `status`, Content-Type
 * `content_type` (NULL: none) and `len` bytes of `body`, copied. Returns 0,
 * MICA_EINVAL (status outside 100..999) or MICA_ENOMEM.
 */
MICA_API int mica_http_response_new(mica_http_response_t **out, int status,
                                    const char *content_type, const void *body, size_t len);

/** Frees `r`; its connection goes back to the pool if its body was read to the end. NULL: no-op. */
MICA_API void mica_http_response_free(mica_http_response_t *r);

/** Returns the response's status code (200). */
MICA_API int mica_http_response_status(const mica_http_response_t *r);

/** Returns the value of header `name` (case-insensitive; the first if repeated), or NULL. */
MICA_API const char *mica_http_response_header(const mica_http_response_t *r, const char *name);

/** Returns the number of header fields (for iterating with mica_http_response_header_at()). */
MICA_API size_t mica_http_response_header_count(const mica_http_response_t *r);

/** Points *name, *value at field `i` (as received). Returns 0 or MICA_EINVAL (no such field). */
MICA_API int mica_http_response_header_at(const mica_http_response_t *r, size_t i,
                                          const char **name, const char **value);

/** Returns the body's length from Content-Length, or -1 (chunked, or until the close). */
MICA_API int64_t mica_http_response_content_length(const mica_http_response_t *r);

/**
 * Returns the body read by mica_http_client_do() (NUL-terminated, not
 * counted in *len), "" and 0 when empty; after mica_http_client_open(),
 * what mica_http_response_read() has not returned is not here: "" and 0.
 */
MICA_API const char *mica_http_response_body(const mica_http_response_t *r, size_t *len);

/**
 * Reads up to `len` body bytes of a streamed response into `buf`, waiting
 * for some (body timeout, the call's ctx and deadline). Returns the count
 * (> 0), 0 at the body's end, MICA_ETIMEDOUT, MICA_ECANCELED, MICA_EPROTO
 * (bad framing, or the connection ended early) or a socket error; after an
 * error the connection is closed.
 */
MICA_API ssize_t mica_http_response_read(mica_http_response_t *r, void *buf, size_t len);

/** Returns what the call did (final once the body has been read to its end). */
MICA_API const mica_http_result_t *mica_http_response_result(const mica_http_response_t *r);

#endif /* MICA_HTTP_CLIENT_H */

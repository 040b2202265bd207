/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 server: a strict parser (RFC 9112), keep-alive and pipelining, a
 * router on method + path pattern ("/users/{id}"), and response helpers.
 * Each connection is served by one coroutine on the worker that accepted it;
 * handlers are plain functions that may suspend (socket I/O, sleeps).
 *
 *     mica_http_server_t *srv;
 *     mica_http_server_new(&srv, NULL);
 *     mica_http_route(srv, "GET", "/users/{id}", get_user, NULL);
 *     mica_http_server_listen(srv, "127.0.0.1:8080");
 *     mica_http_server_tls(srv, "cert.pem", "key.pem");   // optional: TLS
 *     mica_http_server_listen_tls(srv, "127.0.0.1:8443");
 *     mica_http_server_attach(srv, rt);   // then mica_runtime_run(rt)
 *
 * Seams for the layers above (docs/guide.md, "Middleware and observers"):
 * mica_http_use() wraps every handler in a middleware chain,
 * mica_http_observe() sees every finished request, and
 * mica_http_route_stream() serves a route as a stream: the handler starts
 * once the head is in, reads the body as it arrives and writes the
 * response in parts (headers, chunks, trailers), on HTTP/1.1 and HTTP/2.
 */
#ifndef MICA_HTTP_H
#define MICA_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "mica/config.h"
#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/runtime.h"

typedef struct mica_http_server mica_http_server_t;
typedef struct mica_http_req mica_http_req_t;
typedef struct mica_http_resp mica_http_resp_t;
typedef struct mica_http_next mica_http_next_t;

/**
 * A route handler. It fills `resp` (mica_http_resp_send() and friends) and
 * returns 0, or returns a negative MICA_E* code without responding, which
 * the server maps to a status with mica_err_http_status() (error.h's table:
 * MICA_ETIMEDOUT 504, MICA_ENOTFOUND 404, MICA_EINVAL 400, MICA_ELIMIT 413,
 * MICA_EUNAUTHENTICATED 401, MICA_EPERM 403, MICA_EOVERLOAD 503, ...).
 */
typedef int (*mica_http_handler_fn)(mica_http_req_t *req, mica_http_resp_t *resp, void *arg);

/* Limits and timeouts; 0 picks the default shown. */
typedef struct mica_http_server_opts {
    size_t max_head_bytes;   /* request line + fields: 16384, beyond -> 431 */
    size_t max_target_bytes; /* request-target: 8192 (RFC 9110 §4.1: >= 8000), beyond -> 414 */
    size_t max_headers;      /* fields per request: 64 (at most 64), beyond -> 431 */
    size_t max_body_bytes;   /* decoded body: 1 MiB, beyond -> 413 */
    int header_timeout_ms;   /* whole head, from its first byte or accept: 5000 -> 408 */
    int body_timeout_ms;     /* between two reads of a body: 5000 -> 408 */
    int write_timeout_ms;    /* one response flush: 5000, then the connection closes */
    int idle_timeout_ms;     /* keep-alive wait for the next request: 60000 */
    int max_conns;           /* open connections per worker: 100000; beyond, refused */
    int request_timeout_ms;  /* deadline of a handler's ctx (mica_http_req_ctx): 30000;
                                streaming routes have none unless they set one */
} mica_http_server_opts_t;

/* TLS listener settings as text (what MICA_TLS_LISTEN, _CERT, _KEY, _CLIENT_CA hold). */
typedef struct mica_http_tls_settings {
    const char *listen;    /* comma-separated TLS listen addresses; NULL or "": no TLS */
    const char *cert;      /* PEM certificate chain */
    const char *key;       /* PEM private key */
    const char *client_ca; /* PEM CA bundle for client certificates (mTLS), or NULL */
} mica_http_tls_settings_t;

/* Room enough for every setting mica_http_server_settings() describes. */
#define MICA_HTTP_SETTINGS 14

/**
 * Describes the server's settings (include/mica/config.h) bound to `opts`'
 * fields -- http_max_head_bytes ... http_max_conns, i.e. MICA_HTTP_* -- and,
 * with `tls` (may be NULL), tls_listen/tls_cert/tls_key/tls_client_ca, into
 * `out` (room for `cap`). Returns how many there are; add them to an app's
 * table so flags, variables and the config file reach the server.
 */
MICA_API size_t mica_http_server_settings(mica_http_server_opts_t *opts,
                                          mica_http_tls_settings_t *tls, mica_setting_t *out,
                                          size_t cap);

/**
 * Sets up the TLS listeners `tls` describes (nothing when tls->listen is
 * empty): certificate, key, optional client CA, addresses. Call before
 * attach. Returns 0, MICA_EINVAL (logged: missing cert/key, bad files or
 * addresses) or MICA_ENOMEM.
 */
MICA_API int mica_http_server_tls_apply(mica_http_server_t *srv, const mica_http_tls_settings_t *tls);

/**
 * Fills unset (zero) fields of `opts` from the environment: the MICA_HTTP_*
 * variables of mica_http_server_settings() (MICA_HTTP_MAX_HEAD_BYTES,
 * MICA_HTTP_MAX_TARGET_BYTES, MICA_HTTP_MAX_HEADERS, MICA_HTTP_MAX_BODY_BYTES,
 * MICA_HTTP_HEADER_TIMEOUT_MS, MICA_HTTP_BODY_TIMEOUT_MS,
 * MICA_HTTP_WRITE_TIMEOUT_MS, MICA_HTTP_IDLE_TIMEOUT_MS, MICA_HTTP_MAX_CONNS,
 * MICA_HTTP_REQUEST_TIMEOUT_MS; sizes take KiB/MiB, durations ms/s/m).
 * Returns 0 or MICA_EINVAL (naming the bad variable in a log line).
 */
MICA_API int mica_http_server_opts_from_env(mica_http_server_opts_t *opts);

/** Creates a server with `opts` (NULL: defaults). Returns 0, MICA_EINVAL or MICA_ENOMEM. */
MICA_API int mica_http_server_new(mica_http_server_t **out, const mica_http_server_opts_t *opts);

/**
 * Registers `fn` for `method` ("GET", any token) on `pattern`: segments
 * separated by '/', each literal or a "{name}" parameter matching one
 * non-empty segment. Literal segments win over parameters. Returns 0,
 * MICA_EINVAL (bad pattern or method), MICA_EEXIST, or MICA_ENOMEM.
 */
MICA_API int mica_http_route(mica_http_server_t *srv, const char *method, const char *pattern,
                             mica_http_handler_fn fn, void *arg);

/**
 * As mica_http_route(), but `fn` runs once the head is in (HTTP/1.1 and 2) and
 * reads the body as it arrives (mica_http_req_body_wait/_read); the body's size
 * is unlimited, at most `max_buffer_bytes` (0: max_body_bytes) wait unread.
 */
MICA_API int mica_http_route_stream(mica_http_server_t *srv, const char *method,
                                    const char *pattern, size_t max_buffer_bytes,
                                    mica_http_handler_fn fn, void *arg);

/**
 * Sets the handler of requests that match no route (instead of the
 * server's 404), run as a streaming route with max_body_bytes of buffer; it
 * may return MICA_ENOTFOUND for the usual 404. A path that matches with
 * another method still gets 405. Returns 0 or MICA_EINVAL (fn NULL).
 */
MICA_API int mica_http_route_fallback(mica_http_server_t *srv, mica_http_handler_fn fn, void *arg);

/* ---- middleware and observers ------------------------------------------- */

/**
 * A middleware, run around every handler (HTTP/1.1, HTTP/2, streams, gRPC, the
 * server's 404/405): it acts before and after mica_http_next(next), whose
 * result it returns, or short-circuits by responding or returning a MICA_E*
 * code instead of calling it.
 */
typedef int (*mica_http_middleware_fn)(mica_http_req_t *req, mica_http_resp_t *resp,
                                       mica_http_next_t *next, void *arg);

/**
 * Runs the rest of the chain (the next middleware, else the handler) and
 * returns its result. A handler's error is already answered (its mapped
 * status) when this returns. Call it at most once per middleware.
 */
MICA_API int mica_http_next(mica_http_next_t *next);

/**
 * Adds `fn` to the middleware chain; the first added runs outermost. Call
 * before attach. With no middleware the chain costs nothing. Returns 0,
 * MICA_EINVAL (fn NULL, or after attach) or MICA_ENOMEM.
 */
MICA_API int mica_http_use(mica_http_server_t *srv, mica_http_middleware_fn fn, void *arg);

/* What an observer learns about a finished request (valid during the call). */
typedef struct mica_http_completion {
    const char *method;      /* "GET"; "" when the request line could not be parsed */
    const char *route;       /* the matched pattern ("/users/{id}"; gRPC: the method
                                path), or NULL: no route (404, 405, refused requests) */
    const char *path;        /* as received, without the query; "" if unparsed */
    int status;              /* the HTTP status sent, 0 if none could be (client gone) */
    int http_version;        /* 10, 11 or 20 */
    uint64_t bytes_in;       /* request octets read: head and body (HTTP/2: fields, DATA) */
    uint64_t bytes_out;      /* response octets queued: head, body, trailers */
    int64_t duration_us;     /* from the head's arrival (refused: detection) to the end */
    mica_http_req_t *req;    /* the request (ctx values: mica_http_req_ctx) */
    const mica_http_resp_t *resp; /* the response: mica_http_resp_field("grpc-status") */
} mica_http_completion_t;

/** A request-completion observer; runs on the request's worker and must not suspend. */
typedef void (*mica_http_observer_fn)(const mica_http_completion_t *c, void *arg);

/**
 * Calls `fn` once for every request the server answers or gives up on,
 * including the 400/404/405/408/413/414/431 it answers itself, after the
 * response is queued. Call before attach. Returns 0, MICA_EINVAL, MICA_ENOMEM.
 */
MICA_API int mica_http_observe(mica_http_server_t *srv, mica_http_observer_fn fn, void *arg);

/* ---- admission gates --------------------------------------------------------- */

/*
 * A gate decides whether a request is served once its head is in and routed:
 * before its body is read and before any middleware, so a refusal costs
 * neither (middleware of a buffered route runs only after the whole body).
 * Load shedding and deadline checks (include/mica/limit.h) are gates.
 */
typedef struct mica_http_gate_ops {
    /* Returns 0 to let `req` in, or a negative MICA_E* code to refuse it; `now_ns` is
     * CLOCK_MONOTONIC, read once for all gates. Runs on the connection's coroutine
     * before the request has its own: it must not suspend. */
    int (*admit)(mica_http_req_t *req, int64_t now_ns, void *arg);
    /* Answers a request this gate refused (`why`: admit's code), in the request's coroutine;
     * returns as a handler does. The body stays unread. NULL: the status of `why`. */
    int (*refuse)(mica_http_req_t *req, mica_http_resp_t *resp, int why, void *arg);
    /* Runs once for each request this gate admitted, when it ends (answered, refused by a
     * later gate, or abandoned), at `now_ns`, `elapsed_ns` after admit. Must not suspend. */
    void (*done)(mica_http_req_t *req, int64_t now_ns, int64_t elapsed_ns, void *arg);
} mica_http_gate_ops_t;

/**
 * Adds a gate (`ops` borrowed for the server's life); gates run in the order
 * added, the first refusal wins. Refused requests skip middleware; observers
 * see them. Call before attach. Returns 0, MICA_EINVAL or MICA_ELIMIT (8 gates).
 */
MICA_API int mica_http_gate(mica_http_server_t *srv, const mica_http_gate_ops_t *ops, void *arg);

/* ---- request deadlines across hops ------------------------------------------- */

/* The header carrying a request's remaining time, in decimal milliseconds. */
#define MICA_HTTP_TIMEOUT_HEADER "X-Request-Timeout"

/**
 * Parses a timeout header value: decimal milliseconds ("250", X-Request-Timeout)
 * or gRPC's form ("250m", "2S": 1-8 digits and one of H M S m u n). Returns 0
 * with *timeout_ms set, or MICA_EINVAL.
 */
MICA_API int mica_http_timeout_parse(const char *value, int64_t *timeout_ms);

/**
 * Writes the milliseconds left before the earlier of `ctx`'s deadline and
 * `deadline_ms` (MICA_NO_DEADLINE: none) into `buf`, as an HTTP client sends
 * X-Request-Timeout. Returns 0, MICA_ENOTFOUND (no deadline: send no header),
 * MICA_ETIMEDOUT (already past: do not send the request), MICA_ELIMIT (buf too small).
 */
MICA_API int mica_http_timeout_header(mica_ctx_t *ctx, int64_t deadline_ms, char *buf,
                                      size_t size);

/** Adds a listen address ("host:port", "[v6]:port", ":port"). Returns 0, MICA_EINVAL, MICA_ENOMEM. */
MICA_API int mica_http_server_listen(mica_http_server_t *srv, const char *addr);

/**
 * Adds each address of a comma-separated list ("127.0.0.1:8080,[::1]:8080").
 * Returns 0 or the first error of mica_http_server_listen().
 */
MICA_API int mica_http_server_listen_list(mica_http_server_t *srv, const char *list);

/**
 * Loads the TLS certificate chain and private key (PEM files) that every TLS
 * listener presents; TLS 1.2 and later. ALPN picks "h2" (HTTP/2, gRPC) when
 * the client offers it, else HTTP/1.1. Call before attach; a later call
 * replaces the pair. Returns 0, MICA_EINVAL (unreadable files or a key that
 * does not match: logged with OpenSSL's reason) or MICA_ENOMEM.
 */
MICA_API int mica_http_server_tls(mica_http_server_t *srv, const char *cert_file,
                                  const char *key_file);

/**
 * Adds a TLS listen address (as mica_http_server_listen()); attach fails with
 * MICA_EINVAL unless mica_http_server_tls() was called. Returns 0,
 * MICA_EINVAL, MICA_ENOMEM.
 */
MICA_API int mica_http_server_listen_tls(mica_http_server_t *srv, const char *addr);

/**
 * Requires TLS clients to present a certificate that chains to the PEM CA
 * bundle `ca_file` (mutual TLS); a client without one fails the handshake.
 * Handlers read the verified subject with mica_http_req_tls_peer(). Call
 * after mica_http_server_tls(), before attach. Returns 0 or MICA_EINVAL
 * (no TLS certificate yet, or an unreadable file: logged).
 */
MICA_API int mica_http_server_tls_client_ca(mica_http_server_t *srv, const char *ca_file);

/**
 * When MICA_TLS_LISTEN is set (a comma-separated address list), loads
 * MICA_TLS_CERT and MICA_TLS_KEY and adds those TLS listeners; with
 * MICA_TLS_CLIENT_CA also requires client certificates (mTLS). Returns 0
 * (also when unset), or MICA_EINVAL (logged) / MICA_ENOMEM.
 */
MICA_API int mica_http_server_tls_from_env(mica_http_server_t *srv);

/**
 * Binds every address once per worker of `rt` (SO_REUSEPORT, so the kernel
 * spreads connections across workers) and arranges to serve on start and
 * drain on stop. Logs each bound address. Returns 0, MICA_EINVAL (no
 * address), MICA_EADDRINUSE, MICA_EACCES, ...: nothing is left bound on error.
 */
MICA_API int mica_http_server_attach(mica_http_server_t *srv, mica_runtime_t *rt);

/**
 * Returns the port actually bound for address `i` after attach (useful with
 * ":0"), or a negative MICA_E* code.
 */
MICA_API int mica_http_server_port(const mica_http_server_t *srv, size_t i);

/* A server's connection and request counters, summed over its workers. */
typedef struct mica_http_server_stats {
    uint64_t open_conns; /* connections open now */
    uint64_t accepted;   /* connections accepted, ever */
    uint64_t refused;    /* connections refused (max_conns, out of fds or memory), ever */
    uint64_t requests;   /* requests read (HTTP/1.1 requests, HTTP/2 streams), ever */
} mica_http_server_stats_t;

/**
 * Fills *out with `srv`'s counters: any thread, after attach (zeros before),
 * until the server is freed; takes no lock, and a worker's latest changes
 * may not be seen yet.
 */
MICA_API void mica_http_server_stats(const mica_http_server_t *srv, mica_http_server_stats_t *out);

/** Frees `srv` after its runtime has stopped. NULL is a no-op. */
MICA_API void mica_http_server_free(mica_http_server_t *srv);

/* ---- requests: every returned pointer is valid until the request ends ---- */

/**
 * Returns the request's ctx: its deadline is request_timeout_ms after the
 * request was read, and it is cancelled when the client disconnects. Pass it
 * to every call the handler makes that can wait. Owned by the request.
 */
MICA_API mica_ctx_t *mica_http_req_ctx(mica_http_req_t *req);

/**
 * Returns the client's IP address as text ("192.0.2.7", "2001:db8::1"; an
 * IPv4-mapped IPv6 address in its IPv4 form), or "" when unknown. Looked up
 * once per connection; valid until the request ends.
 */
MICA_API const char *mica_http_req_peer_addr(mica_http_req_t *req);

/**
 * Returns the subject of the client's verified TLS certificate in RFC 2253
 * form ("CN=orders,O=shop") on an mTLS listener, else NULL. Owned by the
 * connection; valid until the request ends.
 */
MICA_API const char *mica_http_req_tls_peer(const mica_http_req_t *req);

/**
 * Attaches `value` (borrowed) under `key` to the request's ctx: later
 * mica_http_req_ctx() calls return a child carrying it (Go's
 * r.WithContext(context.WithValue(...))), for the middlewares and handler
 * downstream; no ctx is made until one is asked for. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_http_req_with_value(mica_http_req_t *req, const void *key, void *value);

/** Returns the value under `key` in the request's ctx (mica_http_req_with_value()), or NULL. */
MICA_API void *mica_http_req_value(mica_http_req_t *req, const void *key);

/**
 * Moves the request's deadline earlier to `deadline_ms` (mica_now_ms()
 * clock; a later one is ignored): its ctx and body waits end then. Returns
 * 0 or MICA_ENOMEM.
 */
MICA_API int mica_http_req_set_deadline(mica_http_req_t *req, int64_t deadline_ms);

/** Returns the request's deadline (mica_now_ms() clock). */
MICA_API int64_t mica_http_req_deadline(const mica_http_req_t *req);

/** Returns the matched route's pattern ("/users/{id}"), or NULL (no route). */
MICA_API const char *mica_http_req_route(const mica_http_req_t *req);

/** Returns the request's HTTP version: 10, 11 or 20. */
MICA_API int mica_http_req_version(const mica_http_req_t *req);

/** Returns the request method ("GET"). */
MICA_API const char *mica_http_req_method(const mica_http_req_t *req);

/** Returns the path, as received (not percent-decoded), without the query. */
MICA_API const char *mica_http_req_path(const mica_http_req_t *req);

/** Returns the raw query string after '?', or NULL when there is none. */
MICA_API const char *mica_http_req_query(const mica_http_req_t *req);

/** Returns the value of header `name` (case-insensitive; the first if repeated), or NULL. */
MICA_API const char *mica_http_req_header(const mica_http_req_t *req, const char *name);

/**
 * Returns the value of the `n`th (0: first) header field named `name`
 * (case-insensitive), or NULL: for fields that may repeat (tracestate) or
 * must not (traceparent). Valid until the request ends.
 */
MICA_API const char *mica_http_req_header_nth(const mica_http_req_t *req, const char *name,
                                              size_t n);

/** Returns the number of request header fields, for mica_http_req_header_at(). */
MICA_API size_t mica_http_req_header_count(const mica_http_req_t *req);

/**
 * Points *name and *value at header field `i` (0..count-1) as received (HTTP/2:
 * names lower-case). Returns 0 or MICA_EINVAL (no such field).
 */
MICA_API int mica_http_req_header_at(const mica_http_req_t *req, size_t i, const char **name,
                                     const char **value);

/**
 * Writes the client's IP address ("10.0.0.7", "2001:db8::1"; an IPv4-mapped
 * address as IPv4) into buf, for X-Forwarded-For and logs (the cache of
 * mica_http_req_peer_addr()). Returns 0, MICA_ELIMIT (buf too small) or MICA_ENOTCONN.
 */
MICA_API int mica_http_req_remote_addr(const mica_http_req_t *req, char *buf, size_t size);

/** Returns route parameter `name` percent-decoded ("{id}" -> "1001"), or NULL. */
MICA_API const char *mica_http_req_param(const mica_http_req_t *req, const char *name);

/**
 * Parses route parameter `name` as a decimal int64 into *out. Returns 0,
 * MICA_ENOTFOUND (no such parameter) or MICA_EINVAL (not an integer).
 */
MICA_API int mica_http_req_param_i64(const mica_http_req_t *req, const char *name, int64_t *out);

/**
 * Returns the decoded request body and its length in *len (an empty body: ""
 * and 0). On a streaming route the body has not been read: "" and 0.
 */
MICA_API const char *mica_http_req_body(const mica_http_req_t *req, size_t *len);

/**
 * Allocates `size` bytes (16-byte aligned) that live until the request ends,
 * from the request's arena. Returns NULL when memory runs out.
 */
MICA_API void *mica_http_req_alloc(mica_http_req_t *req, size_t size);

/**
 * Waits until `want` body bytes are unread, then points *data, *len at all of
 * them (until the next wait or consume). 0; MICA_ECLOSED (ended with fewer),
 * MICA_ELIMIT (over the route's buffer), MICA_EPROTO (bad chunking),
 * MICA_ECANCELED (client gone), MICA_ETIMEDOUT (deadline, HTTP/1.1 body timeout).
 */
MICA_API int mica_http_req_body_wait(mica_http_req_t *req, size_t want, const void **data,
                                     size_t *len);

/** Drops `n` (<= *len of the last wait) bytes from the front of the buffered body. */
MICA_API void mica_http_req_body_consume(mica_http_req_t *req, size_t n);

/**
 * Copies up to `len` body bytes into `buf`, waiting for some. Returns the
 * count (> 0), 0 at the end of the body, or the errors of body_wait.
 */
MICA_API ssize_t mica_http_req_read(mica_http_req_t *req, void *buf, size_t len);

/* ---- responses ----------------------------------------------------------- */

/**
 * Adds a response header (copied). Call before sending. Returns 0,
 * MICA_EINVAL for a bad name or a value with CR, LF or NUL (header
 * injection), or MICA_ELIMIT when the headers exceed 8 KiB.
 */
MICA_API int mica_http_resp_header(mica_http_resp_t *resp, const char *name, const char *value);

/**
 * Sends the response: `status` (100..599, 1xx excluded), Content-Type
 * `content_type` (NULL: none) and `len` bytes of `body` (copied). Returns 0,
 * MICA_EINVAL (bad status, or already sent) or MICA_ELIMIT/MICA_ENOMEM.
 */
MICA_API int mica_http_resp_send(mica_http_resp_t *resp, int status, const char *content_type,
                                 const void *body, size_t len);

/**
 * Begins a response sent in parts: records `status` and `content_type`
 * (NULL: none); the head goes out with the first write or the end. HTTP/1.1
 * frames the body with chunked encoding (HTTP/1.0: by closing). Returns 0,
 * MICA_EINVAL (bad status, or already started or sent).
 */
MICA_API int mica_http_resp_start(mica_http_resp_t *resp, int status, const char *content_type);

/**
 * Sends `len` bytes of body (copied), the head first if it has not gone
 * out. Suspends while the client is more than 256 KiB behind. Returns 0,
 * MICA_EINVAL (not started, or ended), MICA_ECANCELED (client gone),
 * MICA_ETIMEDOUT, MICA_ELIMIT (over 64 MiB in one write) or MICA_ENOMEM.
 */
MICA_API int mica_http_resp_write(mica_http_resp_t *resp, const void *data, size_t len);

/**
 * Adds a trailer field (copied) sent by mica_http_resp_end(): HTTP/2
 * always; HTTP/1.1 when the client sent "TE: trailers", else dropped
 * (RFC 9110 §6.5.1). Errors as mica_http_resp_header().
 */
MICA_API int mica_http_resp_trailer(mica_http_resp_t *resp, const char *name, const char *value);

/**
 * Ends a started response: trailers after the body. If no byte was
 * written, one head carries the fields and trailers together (HTTP/2
 * "trailers-only"). A handler that returns without ending gets it ended.
 * Returns 0, MICA_EINVAL (not started, or twice), MICA_ECANCELED, MICA_ENOMEM.
 */
MICA_API int mica_http_resp_end(mica_http_resp_t *resp);

/** Returns the response's status once sent or started, else 0. */
MICA_API int mica_http_resp_status(const mica_http_resp_t *resp);

/**
 * Returns the value of response header or trailer `name` (case-insensitive;
 * headers first), or NULL. Valid until the request ends.
 */
MICA_API const char *mica_http_resp_field(const mica_http_resp_t *resp, const char *name);

/** Sends a text/plain; charset=utf-8 response. Errors as mica_http_resp_send(). */
MICA_API int mica_http_resp_text(mica_http_resp_t *resp, int status, const char *text);

/** Sends `json` (already serialized) as application/json. Errors as mica_http_resp_send(). */
MICA_API int mica_http_resp_json_str(mica_http_resp_t *resp, int status, const char *json);

/**
 * Serializes `value` (borrowed; compact) and sends it as application/json.
 * Returns 0, MICA_EINVAL if jansson cannot encode it, or the errors of send.
 */
MICA_API int mica_http_resp_json(mica_http_resp_t *resp, int status, const json_t *value);

/** Sends {"error": msg} with `status`. Errors as mica_http_resp_send(). */
MICA_API int mica_http_resp_error(mica_http_resp_t *resp, int status, const char *msg);

/** Returns the standard reason phrase of `status` ("Not Found"), or "Unknown". */
MICA_API const char *mica_http_status_reason(int status);

#endif /* MICA_HTTP_H */

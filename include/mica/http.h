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
 */
#ifndef MICA_HTTP_H
#define MICA_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/runtime.h"

typedef struct mica_http_server mica_http_server_t;
typedef struct mica_http_req mica_http_req_t;
typedef struct mica_http_resp mica_http_resp_t;

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
    size_t max_head_bytes;   /* request line + fields: 8192, beyond -> 431 */
    size_t max_target_bytes; /* request-target: 4096, beyond -> 414 */
    size_t max_headers;      /* fields per request: 64 (at most 64), beyond -> 431 */
    size_t max_body_bytes;   /* decoded body: 1 MiB, beyond -> 413 */
    int header_timeout_ms;   /* whole head, from its first byte or accept: 5000 -> 408 */
    int body_timeout_ms;     /* between two reads of a body: 5000 -> 408 */
    int write_timeout_ms;    /* one response flush: 5000, then the connection closes */
    int idle_timeout_ms;     /* keep-alive wait for the next request: 60000 */
    int max_conns;           /* open connections per worker: 100000; beyond, refused */
    int request_timeout_ms;  /* deadline of a handler's ctx (mica_http_req_ctx): 30000 */
    size_t max_message_bytes; /* gRPC message, either way: 4 MiB, beyond -> RESOURCE_EXHAUSTED */
} mica_http_server_opts_t;

/**
 * Fills unset (zero) fields of `opts` from MICA_HTTP_MAX_HEAD_BYTES,
 * MICA_HTTP_MAX_TARGET_BYTES, MICA_HTTP_MAX_HEADERS, MICA_HTTP_MAX_BODY_BYTES,
 * MICA_HTTP_HEADER_TIMEOUT_MS, MICA_HTTP_BODY_TIMEOUT_MS,
 * MICA_HTTP_WRITE_TIMEOUT_MS, MICA_HTTP_IDLE_TIMEOUT_MS, MICA_HTTP_MAX_CONNS,
 * MICA_HTTP_REQUEST_TIMEOUT_MS, MICA_GRPC_MAX_MESSAGE_BYTES.
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
 * Returns the subject of the client's verified TLS certificate in RFC 2253
 * form ("CN=orders,O=shop") on an mTLS listener, else NULL. Owned by the
 * connection; valid until the request ends.
 */
MICA_API const char *mica_http_req_tls_peer(const mica_http_req_t *req);

/** Returns the request method ("GET"). */
MICA_API const char *mica_http_req_method(const mica_http_req_t *req);

/** Returns the path, as received (not percent-decoded), without the query. */
MICA_API const char *mica_http_req_path(const mica_http_req_t *req);

/** Returns the raw query string after '?', or NULL when there is none. */
MICA_API const char *mica_http_req_query(const mica_http_req_t *req);

/** Returns the value of header `name` (case-insensitive; the first if repeated), or NULL. */
MICA_API const char *mica_http_req_header(const mica_http_req_t *req, const char *name);

/** Returns route parameter `name` percent-decoded ("{id}" -> "1001"), or NULL. */
MICA_API const char *mica_http_req_param(const mica_http_req_t *req, const char *name);

/**
 * Parses route parameter `name` as a decimal int64 into *out. Returns 0,
 * MICA_ENOTFOUND (no such parameter) or MICA_EINVAL (not an integer).
 */
MICA_API int mica_http_req_param_i64(const mica_http_req_t *req, const char *name, int64_t *out);

/** Returns the decoded request body and its length in *len (an empty body: "" and 0). */
MICA_API const char *mica_http_req_body(const mica_http_req_t *req, size_t *len);

/**
 * Allocates `size` bytes (16-byte aligned) that live until the request ends,
 * from the request's arena. Returns NULL when memory runs out.
 */
MICA_API void *mica_http_req_alloc(mica_http_req_t *req, size_t size);

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

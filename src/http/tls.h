/* SPDX-License-Identifier: MIT */
/*
 * TLS on a coroutine's non-blocking socket, through OpenSSL (tls.c): the
 * server side of HTTP listeners and the client side of mica's gRPC client.
 * A mica__tls_t is used by one coroutine at a time.
 */
#ifndef MICA_HTTP_TLS_H
#define MICA_HTTP_TLS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct ssl_ctx_st;
struct ssl_st;

typedef struct mica__tls {
    struct ssl_st *ssl; /* NULL: not TLS */
    int fd;
    bool drained; /* OpenSSL's last socket read drained the socket */
    bool dead;    /* TLS failed or was shut down: no more close_notify */
    char *peer;   /* server side: the verified client certificate's subject, or NULL */
} mica__tls_t;

/*
 * Creates a server context from PEM files (the chain, then the key), with
 * ALPN choosing h2, else http/1.1. Returns 0, MICA_EINVAL (logged) or MICA_ENOMEM.
 */
int mica__tls_server_ctx_new(struct ssl_ctx_st **out, const char *cert_file, const char *key_file);
/*
 * Makes a server context require client certificates that chain to the PEM
 * CA bundle `ca_file` (mTLS). Returns 0 or MICA_EINVAL (logged).
 */
int mica__tls_server_ctx_verify_clients(struct ssl_ctx_st *ctx, const char *ca_file);
/*
 * Creates a client context offering ALPN h2 (or, with `http1`, http/1.1)
 * and verifying servers against the PEM CA bundle `ca_file`; with cert_file
 * and key_file (else NULL) it presents that certificate when asked (mTLS).
 * Returns 0, MICA_EINVAL (logged) or MICA_ENOMEM.
 */
int mica__tls_client_ctx_new(struct ssl_ctx_st **out, const char *ca_file, const char *cert_file,
                             const char *key_file, bool http1);
void mica__tls_ctx_free(struct ssl_ctx_st *ctx);

/*
 * Runs the server handshake on fd until deadline; *h2 tells whether ALPN
 * chose h2, t->peer names a verified client certificate. 0 or an error.
 */
int mica__tls_accept(mica__tls_t *t, struct ssl_ctx_st *ctx, int fd, int64_t deadline, bool *h2);
/*
 * Runs the client handshake on fd until deadline, verifying the server's
 * certificate for `name` (a host name, sent as SNI, or an IP address).
 * Returns 0, MICA_EPROTO (handshake or verification failed, or the server
 * did not choose h2 -- with `http1`: chose something else than http/1.1 or
 * nothing; logged), MICA_ETIMEDOUT or a socket error.
 */
int mica__tls_connect(mica__tls_t *t, struct ssl_ctx_st *ctx, int fd, const char *name,
                      int64_t deadline, bool http1);
/*
 * Reads plaintext without waiting for the socket: > 0 bytes, 0 at the peer's
 * close, MICA_EAGAIN (drained: wait for readable), or an error. May wait,
 * until deadline, for a write the protocol needs.
 */
ssize_t mica__tls_read(mica__tls_t *t, void *buf, size_t len, int64_t deadline);
/* Writes all of buf before deadline: 0 or an error. */
int mica__tls_write(mica__tls_t *t, const void *buf, size_t len, int64_t deadline);
/* True when the socket is drained and OpenSSL holds no unread bytes: wait for the edge. */
bool mica__tls_drained(const mica__tls_t *t);
/* Sends close_notify once, without waiting; a no-op after a TLS error. */
void mica__tls_shutdown(mica__tls_t *t);
/* Frees t->ssl and t->peer (NULL is fine). */
void mica__tls_free(mica__tls_t *t);

#endif /* MICA_HTTP_TLS_H */

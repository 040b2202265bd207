/* SPDX-License-Identifier: MIT */
/*
 * TLS clients on coroutine sockets, through OpenSSL: a client context made
 * from PEM files, and connections that run their handshake, reads and
 * writes on a connected non-blocking socket (mica_net_connect()), waiting
 * the way mica's sockets do. What mica's gRPC and HTTP/1.1 clients use;
 * for any client that speaks HTTP/2 or HTTP/1.1 over TLS.
 *
 *     mica_tls_client_t *tc;
 *     mica_tls_client_new(&tc, &(mica_tls_client_opts_t){.ca_file = "ca.pem"});
 *     int fd = mica_net_connect("10.0.0.7:443", ctx, deadline);
 *     mica_tls_conn_t *t;
 *     rc = mica_tls_connect(tc, fd, "users.internal", deadline, &t);
 *     rc = mica_tls_write(t, buf, len, deadline);
 *     n = mica_tls_read(t, buf, sizeof(buf), deadline);  // MICA_EAGAIN: wait readable
 *     mica_tls_close(t);                                  // then mica_net_close(fd)
 *
 * Waits end at `deadline_ms` (MICA_ETIMEDOUT), or with MICA_ECANCELED when
 * mica_net_cancel(fd) is called or the worker's drain deadline passes.
 */
#ifndef MICA_TLS_H
#define MICA_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mica/error.h"

typedef struct mica_tls_client mica_tls_client_t;
typedef struct mica_tls_conn mica_tls_conn_t;

/* Settings of a TLS client context. */
typedef struct mica_tls_client_opts {
    const char *ca_file;   /* PEM CA bundle the server's certificate must chain to (required) */
    const char *cert_file; /* mTLS: PEM certificate chain to present (with key_file), or NULL */
    const char *key_file;  /* mTLS: its PEM private key, or NULL */
    const char *alpn;      /* the one protocol offered: "h2" (the default; the handshake
                              fails unless the server chooses it) or "http/1.1" (fails
                              if the server chooses anything else; none is fine) */
} mica_tls_client_opts_t;

/**
 * Creates a client context (TLS 1.2+, verifying servers against ca_file),
 * shareable by every worker. Returns 0, MICA_EINVAL (unreadable or
 * mismatched files, an unsupported alpn: logged) or MICA_ENOMEM.
 */
MICA_API int mica_tls_client_new(mica_tls_client_t **out, const mica_tls_client_opts_t *opts);

/** Frees `tc` once no connection made from it is left. NULL is a no-op. */
MICA_API void mica_tls_client_free(mica_tls_client_t *tc);

/**
 * Runs the client handshake on connected socket `fd` (borrowed: the caller
 * closes it after mica_tls_close()) until `deadline_ms`, sending
 * `server_name` as SNI and verifying the certificate for it (a host name, or
 * an IP address, then without SNI). Returns 0 with *out set, MICA_EPROTO (a
 * failed handshake or verification, or the server did not choose the ALPN
 * protocol: logged with the reason), MICA_ETIMEDOUT, MICA_ECANCELED, a
 * socket error, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_tls_connect(mica_tls_client_t *tc, int fd, const char *server_name,
                              int64_t deadline_ms, mica_tls_conn_t **out);

/**
 * Reads decrypted bytes without waiting for the socket: returns > 0 bytes,
 * 0 at the peer's close, MICA_EAGAIN when it must wait for readable
 * (mica_net_wait()), or an error. It may wait, until `deadline_ms`, for a
 * write the protocol needs.
 */
MICA_API ssize_t mica_tls_read(mica_tls_conn_t *t, void *buf, size_t len, int64_t deadline_ms);

/** Writes all `len` bytes (copied) before `deadline_ms`. Returns 0 or an error (MICA_ECLOSED, ...). */
MICA_API int mica_tls_write(mica_tls_conn_t *t, const void *buf, size_t len, int64_t deadline_ms);

/**
 * Whether the socket is drained and OpenSSL holds no unread bytes, so that
 * waiting for the next readable edge cannot miss data. A read that returned
 * data does not prove that (OpenSSL reads a record at a time).
 */
MICA_API bool mica_tls_drained(const mica_tls_conn_t *t);

/** Sends close_notify (once, without waiting) and frees `t`; the fd stays open. NULL is a no-op. */
MICA_API void mica_tls_close(mica_tls_conn_t *t);

#endif /* MICA_TLS_H */

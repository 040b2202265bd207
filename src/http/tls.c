/* SPDX-License-Identifier: MIT */
/*
 * TLS through OpenSSL on a connection's non-blocking socket: HTTP listeners
 * (server side) and mica's gRPC client (client side). One SSL_CTX per server
 * or client, shared by the workers (OpenSSL makes SSL_new() on a shared
 * context thread-safe); one SSL per connection, used only by the coroutine
 * that owns the connection. On listeners ALPN picks "h2" when the client
 * offers it, else "http/1.1" (RFC 7301), so REST and gRPC share a TLS port
 * as they share a cleartext one; a client offers "h2" (gRPC) or
 * "http/1.1" (the HTTP/1.1 client), one of them.
 *
 * Reads and writes map OpenSSL's WANT_READ/WANT_WRITE onto the loop's
 * edge-triggered waits: a wait follows only an SSL call that reported
 * WANT_*, i.e. one whose socket read or write came back with EAGAIN, which
 * is the contract of mica__io_wait(). With read-ahead on, OpenSSL reads as
 * much as its buffer holds, so a socket read that came back short drained
 * the socket just as in cleartext; a BIO callback notes that, and a request
 * costs one read(2), not a header read, a body read and an EAGAIN read.
 * OpenSSL's error queue is per thread and shared by every connection of
 * the worker, so it is cleared after each failure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "http/tls.h"
#include "mica/error.h"
#include "mica/net.h"

static const unsigned char ALPN_H2[] = "h2";
static const unsigned char ALPN_H1[] = "http/1.1";
static const unsigned char ALPN_CLIENT[] = "\x02h2";
static const unsigned char ALPN_CLIENT_H1[] = "\x08http/1.1";

/* ALPN: the first of h2, http/1.1 the client offers; neither: no ALPN (HTTP/1.1). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    const unsigned char *found = NULL;
    unsigned char found_len = 0;
    for (unsigned int i = 0; i < inlen;) {
        unsigned char len = in[i];
        if (len == 0 || i + 1 + len > inlen)
            return SSL_TLSEXT_ERR_NOACK; /* malformed list */
        const unsigned char *p = in + i + 1;
        if (len == 2 && memcmp(p, ALPN_H2, 2) == 0) {
            *out = p;
            *outlen = len;
            return SSL_TLSEXT_ERR_OK;
        }
        if (!found && len == 8 && memcmp(p, ALPN_H1, 8) == 0) {
            found = p;
            found_len = len;
        }
        i += 1u + len;
    }
    if (!found)
        return SSL_TLSEXT_ERR_NOACK;
    *out = found;
    *outlen = found_len;
    return SSL_TLSEXT_ERR_OK;
}

/* Logs OpenSSL's first queued error under `msg` and clears the queue. */
static void log_ssl_error(const char *msg, const char *what, const char *value)
{
    char buf[256];
    unsigned long e = ERR_peek_error();
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    mica__log_error(msg, what, value, "error", e ? buf : "unknown");
}

/* After each socket read OpenSSL makes: did it drain the socket? */
static long on_bio(BIO *bio, int oper, const char *argp, size_t len, int argi, long argl, int ret,
                   size_t *processed)
{
    (void)argp;
    (void)argi;
    (void)argl;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN)) {
        mica__tls_t *t = (mica__tls_t *)BIO_get_callback_arg(bio);
        t->drained = ret > 0 ? *processed < len : BIO_should_retry(bio);
    }
    return ret;
}

/* Settings both sides share: TLS 1.2+, read-ahead, partial writes, released idle buffers. */
static SSL_CTX *ctx_new(const SSL_METHOD *method)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx) {
        ERR_clear_error();
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* EOF without close_notify reads as EOF: HTTP/2 and HTTP/1.1 frame their messages. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    /* Idle keep-alive connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

/* Loads a PEM chain and its key into ctx. 0 or MICA_EINVAL (logged). */
static int load_pair(SSL_CTX *ctx, const char *cert_file, const char *key_file)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        log_ssl_error("cannot load TLS certificate chain", "file", cert_file);
        return MICA_EINVAL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        log_ssl_error("cannot load TLS private key", "file", key_file);
        return MICA_EINVAL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        log_ssl_error("TLS private key does not match the certificate", "file", key_file);
        return MICA_EINVAL;
    }
    return 0;
}

int mica__tls_server_ctx_new(struct ssl_ctx_st **out, const char *cert_file, const char *key_file)
{
    SSL_CTX *ctx = ctx_new(TLS_server_method());
    if (!ctx)
        return MICA_ENOMEM;
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    /* Resumption by stateless tickets only: no session cache shared, and
     * locked, across the workers. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    int rc = load_pair(ctx, cert_file, key_file);
    if (rc != 0) {
        SSL_CTX_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

int mica__tls_server_ctx_verify_clients(struct ssl_ctx_st *ctx, const char *ca_file)
{
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (!names || SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        log_ssl_error("cannot load TLS client CA certificates", "file", ca_file);
        return MICA_EINVAL;
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* ctx owns names now */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

int mica__tls_client_ctx_new(struct ssl_ctx_st **out, const char *ca_file, const char *cert_file,
                             const char *key_file, bool http1)
{
    SSL_CTX *ctx = ctx_new(TLS_client_method());
    if (!ctx)
        return MICA_ENOMEM;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int alpn = http1 ? SSL_CTX_set_alpn_protos(ctx, ALPN_CLIENT_H1, sizeof(ALPN_CLIENT_H1) - 1)
                     : SSL_CTX_set_alpn_protos(ctx, ALPN_CLIENT, sizeof(ALPN_CLIENT) - 1);
    if (alpn != 0 ||
        SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        log_ssl_error("cannot load TLS CA certificates", "file", ca_file);
        SSL_CTX_free(ctx);
        return MICA_EINVAL;
    }
    if ((cert_file || key_file) &&
        (!cert_file || !key_file || load_pair(ctx, cert_file, key_file) != 0)) {
        if (!cert_file || !key_file)
            mica__log_error("a TLS client certificate needs both a certificate and a key file");
        SSL_CTX_free(ctx);
        return MICA_EINVAL;
    }
    *out = ctx;
    return 0;
}

/* The subject of the peer's verified certificate (RFC 2253), malloc'd, or NULL. */
static char *peer_subject(SSL *ssl)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert || SSL_get_verify_result(ssl) != X509_V_OK)
        return NULL;
    BIO *mem = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (mem && X509_NAME_print_ex(mem, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
        char *p;
        long n = BIO_get_mem_data(mem, &p);
        if (n >= 0 && (out = malloc((size_t)n + 1))) {
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(mem);
    ERR_clear_error();
    return out;
}

void mica__tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}

/*
 * What to do after an SSL call returned `ret`: 0 to retry after the wait it
 * needed (until `deadline`), MICA_EAGAIN for a read that found the socket
 * drained when `nowait`, 1 for a clean close, or an error (the connection is
 * then dead for TLS: no close_notify).
 */
static int after(mica__tls_t *t, int ret, bool nowait, int64_t deadline)
{
    int err = SSL_get_error(t->ssl, ret);
    int rc;
    switch (err) {
    case SSL_ERROR_WANT_READ:
        if (nowait)
            return MICA_EAGAIN;
        rc = mica_net_wait(t->fd, MICA_NET_READABLE, NULL, deadline);
        break;
    case SSL_ERROR_WANT_WRITE:
        rc = mica_net_wait(t->fd, MICA_NET_WRITABLE, NULL, deadline);
        break;
    case SSL_ERROR_ZERO_RETURN:
        return 1;
    case SSL_ERROR_SYSCALL:
        rc = errno ? -errno : MICA_ECLOSED;
        if (rc == -EINTR)
            return 0;
        ERR_clear_error();
        t->dead = true;
        return rc;
    default:
        ERR_clear_error();
        t->dead = true;
        return MICA_EPROTO;
    }
    return rc;
}

/* Creates t->ssl on fd, with the BIO callback that tracks t->drained. */
static int tls_new(mica__tls_t *t, SSL_CTX *ctx, int fd)
{
    *t = (mica__tls_t){.fd = fd};
    t->ssl = SSL_new(ctx);
    BIO *bio = BIO_new_socket(fd, BIO_NOCLOSE);
    if (!t->ssl || !bio) {
        BIO_free(bio);
        ERR_clear_error();
        t->dead = true;
        return MICA_ENOMEM;
    }
    BIO_set_callback_arg(bio, (char *)t);
    BIO_set_callback_ex(bio, on_bio);
    SSL_set_bio(t->ssl, bio, bio); /* t->ssl owns it now */
    return 0;
}

/* Runs SSL_accept or SSL_connect to completion or deadline. */
static int handshake(mica__tls_t *t, int64_t deadline)
{
    for (;;) {
        int ret = SSL_do_handshake(t->ssl);
        if (ret == 1)
            return 0;
        int rc = after(t, ret, false, deadline);
        if (rc == 1)
            rc = MICA_ECLOSED;
        if (rc != 0) {
            t->dead = true;
            return rc;
        }
    }
}

int mica__tls_accept(mica__tls_t *t, struct ssl_ctx_st *ctx, int fd, int64_t deadline, bool *h2)
{
    int rc = tls_new(t, ctx, fd);
    if (rc != 0)
        return rc;
    SSL_set_accept_state(t->ssl);
    if ((rc = handshake(t, deadline)) != 0)
        return rc;
    const unsigned char *proto;
    unsigned int len;
    SSL_get0_alpn_selected(t->ssl, &proto, &len);
    *h2 = len == 2 && memcmp(proto, ALPN_H2, 2) == 0;
    t->peer = peer_subject(t->ssl);
    return 0;
}

int mica__tls_connect(mica__tls_t *t, struct ssl_ctx_st *ctx, int fd, const char *name,
                      int64_t deadline, bool http1)
{
    int rc = tls_new(t, ctx, fd);
    if (rc != 0)
        return rc;
    SSL_set_connect_state(t->ssl);
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
    if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
               : SSL_set_tlsext_host_name(t->ssl, name) && SSL_set1_host(t->ssl, name)) != 1) {
        ERR_clear_error();
        t->dead = true;
        return MICA_EINVAL;
    }
    if ((rc = handshake(t, deadline)) != 0) {
        if (rc == MICA_EPROTO) {
            long v = SSL_get_verify_result(t->ssl);
            mica__log_error("TLS handshake failed", "server", name, "reason",
                            v == X509_V_OK ? "protocol error (not a TLS server?)"
                                           : X509_verify_cert_error_string(v));
        }
        return rc;
    }
    const unsigned char *proto;
    unsigned int len;
    SSL_get0_alpn_selected(t->ssl, &proto, &len);
    if (http1) { /* no ALPN at all is HTTP/1.1 too (RFC 7301 §3.2: a server may ignore it) */
        if (len != 0 && (len != 8 || memcmp(proto, ALPN_H1, 8) != 0)) {
            mica__log_error("TLS server chose another protocol than http/1.1", "server", name);
            return MICA_EPROTO;
        }
        return 0;
    }
    if (len != 2 || memcmp(proto, ALPN_H2, 2) != 0) {
        mica__log_error("TLS server did not choose h2 by ALPN", "server", name);
        return MICA_EPROTO;
    }
    return 0;
}

ssize_t mica__tls_read(mica__tls_t *t, void *buf, size_t len, int64_t deadline)
{
    for (;;) {
        size_t n = 0;
        int ret = SSL_read_ex(t->ssl, buf, len, &n);
        if (ret == 1)
            return (ssize_t)n;
        int rc = after(t, ret, true, deadline);
        if (rc == 1)
            return 0;
        if (rc != 0)
            return rc;
    }
}

int mica__tls_write(mica__tls_t *t, const void *buf, size_t len, int64_t deadline)
{
    const char *p = buf;
    while (len > 0) {
        size_t n = 0;
        int ret = SSL_write_ex(t->ssl, p, len, &n);
        if (ret == 1) {
            p += n;
            len -= n;
            continue;
        }
        int rc = after(t, ret, false, deadline);
        if (rc == 1)
            return MICA_ECLOSED;
        if (rc != 0)
            return rc;
    }
    return 0;
}

bool mica__tls_drained(const mica__tls_t *t)
{
    return t->drained && !SSL_has_pending(t->ssl);
}

void mica__tls_shutdown(mica__tls_t *t)
{
    if (!t->ssl || t->dead || !SSL_is_init_finished(t->ssl))
        return;
    if (SSL_shutdown(t->ssl) < 0) /* one try: the socket may be full */
        ERR_clear_error();
    t->dead = true;
}

void mica__tls_free(mica__tls_t *t)
{
    SSL_free(t->ssl);
    t->ssl = NULL;
    free(t->peer);
    t->peer = NULL;
}

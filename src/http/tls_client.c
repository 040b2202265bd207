/* SPDX-License-Identifier: MIT */
/*
 * The public TLS client (include/mica/tls.h): a thin owner over tls.c's
 * mica__tls_* calls, which the HTTP listeners share. A mica_tls_client_t is
 * the SSL_CTX; a mica_tls_conn_t holds one connection's mica__tls_t, which
 * must not move once the handshake started (OpenSSL's BIO callback points
 * at it), hence one allocation per connection.
 */
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "http/tls.h"
#include "mica/tls.h"

struct mica_tls_client {
    struct ssl_ctx_st *ctx;
    bool http1; /* ALPN http/1.1, else h2 */
};

struct mica_tls_conn {
    mica__tls_t tls;
};

int mica_tls_client_new(mica_tls_client_t **out, const mica_tls_client_opts_t *opts)
{
    if (!opts || !opts->ca_file)
        return MICA_EINVAL;
    bool http1 = opts->alpn && strcmp(opts->alpn, "http/1.1") == 0;
    if (opts->alpn && !http1 && strcmp(opts->alpn, "h2") != 0) {
        mica__log_error("TLS client: ALPN must be h2 or http/1.1", "alpn", opts->alpn);
        return MICA_EINVAL;
    }
    mica_tls_client_t *tc = mica__calloc(1, sizeof(*tc));
    if (!tc)
        return MICA_ENOMEM;
    tc->http1 = http1;
    int rc = mica__tls_client_ctx_new(&tc->ctx, opts->ca_file, opts->cert_file, opts->key_file,
                                      http1);
    if (rc != 0) {
        mica__free(tc);
        return rc;
    }
    *out = tc;
    return 0;
}

void mica_tls_client_free(mica_tls_client_t *tc)
{
    if (!tc)
        return;
    mica__tls_ctx_free(tc->ctx);
    mica__free(tc);
}

int mica_tls_connect(mica_tls_client_t *tc, int fd, const char *server_name, int64_t deadline_ms,
                     mica_tls_conn_t **out)
{
    if (!tc || fd < 0 || !server_name || !*server_name)
        return MICA_EINVAL;
    mica_tls_conn_t *t = mica__calloc(1, sizeof(*t));
    if (!t)
        return MICA_ENOMEM;
    int rc = mica__tls_connect(&t->tls, tc->ctx, fd, server_name, deadline_ms, tc->http1);
    if (rc != 0) {
        mica__tls_free(&t->tls);
        mica__free(t);
        return rc;
    }
    *out = t;
    return 0;
}

ssize_t mica_tls_read(mica_tls_conn_t *t, void *buf, size_t len, int64_t deadline_ms)
{
    return mica__tls_read(&t->tls, buf, len, deadline_ms);
}

int mica_tls_write(mica_tls_conn_t *t, const void *buf, size_t len, int64_t deadline_ms)
{
    return mica__tls_write(&t->tls, buf, len, deadline_ms);
}

bool mica_tls_drained(const mica_tls_conn_t *t)
{
    return mica__tls_drained(&t->tls);
}

void mica_tls_close(mica_tls_conn_t *t)
{
    if (!t)
        return;
    mica__tls_shutdown(&t->tls);
    mica__tls_free(&t->tls);
    mica__free(t);
}

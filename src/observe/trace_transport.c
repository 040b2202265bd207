/* SPDX-License-Identifier: MIT */
/*
 * The exporter's transport: a minimal HTTP/1.1 client for one job, POST a
 * body and read the status, over mica's coroutine sockets. One keep-alive
 * connection per worker, reopened after any error or a "Connection: close".
 * It reads only what export needs -- the status, Retry-After, the body's
 * framing (Content-Length, chunked, or to the close) -- and discards the
 * body: OTLP's partial-success answer is informational.
 *
 * This sits behind mica__otlp_transport_t so that moving to mica's HTTP
 * client, when it lands, is this one file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/alloc.h"
#include "mica/net.h"
#include "observe/trace_internal.h"

#define HEAD_MAX 8192

typedef struct conn {
    mica__otlp_target_t tg;
    char addr[96];
    int fd;
    char buf[HEAD_MAX];
    size_t have; /* bytes of buf read and not yet consumed */
} conn_t;

int mica__otlp_parse_url(const char *url, mica__otlp_target_t *out)
{
    *out = (mica__otlp_target_t){0};
    if (strncmp(url, "http://", 7) != 0)
        return MICA_EINVAL; /* https: not yet (TLS through tls.h is the next step) */
    const char *h = url + 7, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    const char *path = slash ? slash : "";
    if (hl == 0 || hl >= sizeof(out->authority))
        return MICA_EINVAL;
    memcpy(out->authority, h, hl);
    const char *host = h, *colon = NULL;
    size_t host_len;
    if (h[0] == '[') {
        const char *close = memchr(h, ']', hl);
        if (!close)
            return MICA_EINVAL;
        host = h + 1;
        host_len = (size_t)(close - h - 1);
        if (close + 1 < h + hl) {
            if (close[1] != ':')
                return MICA_EINVAL;
            colon = close + 1;
        }
    } else {
        colon = memchr(h, ':', hl);
        host_len = colon ? (size_t)(colon - h) : hl;
    }
    size_t port_len = colon ? (size_t)(h + hl - colon - 1) : 4;
    if (host_len == 0 || host_len >= sizeof(out->host) || port_len == 0 || port_len > 5)
        return MICA_EINVAL;
    if (host_len == 9 && strncmp(host, "localhost", 9) == 0)
        memcpy(out->host, "127.0.0.1", 10);
    else
        memcpy(out->host, host, host_len);
    memcpy(out->port, colon ? colon + 1 : "4318", port_len); /* OTLP/HTTP's port */
    for (size_t i = 0; i < port_len; i++)
        if (out->port[i] < '0' || out->port[i] > '9')
            return MICA_EINVAL;
    /* The base URL gets OTLP's signal path; a full one is used as given. */
    if (!*path || strcmp(path, "/") == 0)
        path = "/v1/traces";
    if (strlen(path) >= sizeof(out->path) || strpbrk(path, " \r\n\t"))
        return MICA_EINVAL;
    memcpy(out->path, path, strlen(path) + 1);
    char probe[96];
    struct sockaddr_storage ss;
    socklen_t sl;
    snprintf(probe, sizeof(probe), strchr(out->host, ':') ? "[%s]:%s" : "%s:%s", out->host,
             out->port);
    return mica_net_parse_addr(probe, &ss, &sl) == 0 ? 0 : MICA_EINVAL; /* an IP literal */
}

static int open_conn(void **state, const mica__otlp_target_t *tg)
{
    conn_t *c = mica__malloc(sizeof(*c));
    if (!c)
        return MICA_ENOMEM;
    c->tg = *tg;
    c->fd = -1;
    c->have = 0;
    snprintf(c->addr, sizeof(c->addr), strchr(tg->host, ':') ? "[%s]:%s" : "%s:%s", tg->host,
             tg->port);
    *state = c;
    return 0;
}

static void drop_conn(conn_t *c)
{
    if (c->fd >= 0)
        mica_net_close(c->fd);
    c->fd = -1;
    c->have = 0;
}

static void close_conn(void *state)
{
    conn_t *c = state;
    if (!c)
        return;
    drop_conn(c);
    mica__free(c);
}

/* Reads more bytes into the buffer. Returns 0, MICA_ECLOSED at EOF, or an error. */
static int fill(conn_t *c, mica_ctx_t *ctx, int64_t deadline)
{
    if (c->have == sizeof(c->buf))
        return MICA_ELIMIT;
    ssize_t n = mica_net_read(c->fd, c->buf + c->have, sizeof(c->buf) - c->have, ctx, deadline);
    if (n < 0)
        return (int)n;
    if (n == 0)
        return MICA_ECLOSED;
    c->have += (size_t)n;
    return 0;
}

static void consume(conn_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->have - n);
    c->have -= n;
}

/* Reads up to and including the next CRLF; *line points at it (NUL-terminated, CRLF cut). */
static int read_line(conn_t *c, mica_ctx_t *ctx, int64_t deadline, char *line, size_t size)
{
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->have);
        if (nl) {
            size_t n = (size_t)(nl - c->buf) + 1, len = n - 1;
            if (len && c->buf[len - 1] == '\r')
                len--;
            if (len >= size)
                return MICA_EPROTO;
            memcpy(line, c->buf, len);
            line[len] = '\0';
            consume(c, n);
            return 0;
        }
        int rc = fill(c, ctx, deadline);
        if (rc != 0)
            return rc == MICA_ECLOSED || rc == MICA_ELIMIT ? MICA_EPROTO : rc;
    }
}

/* Keeps what fits of the body's start in res (a longer body is not kept at all). */
static void keep_body(mica__post_result_t *res, const char *p, size_t n, bool *overflow)
{
    if (*overflow || res->body_len + n > sizeof(res->body)) {
        *overflow = true;
        res->body_len = 0;
        return;
    }
    memcpy(res->body + res->body_len, p, n);
    res->body_len += n;
}

/* Reads `n` body bytes into res (what fits). */
static int skip(conn_t *c, mica_ctx_t *ctx, int64_t deadline, uint64_t n, mica__post_result_t *res,
                bool *overflow)
{
    while (n) {
        if (!c->have) {
            int rc = fill(c, ctx, deadline);
            if (rc != 0)
                return rc == MICA_ECLOSED ? MICA_EPROTO : rc;
        }
        size_t k = c->have < n ? c->have : (size_t)n;
        keep_body(res, c->buf, k, overflow);
        consume(c, k);
        n -= k;
    }
    return 0;
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), as ms from now; -1 if bad. */
static int64_t retry_after(const char *v)
{
    char *end;
    long long s = strtoll(v, &end, 10);
    if (end != v && *end == '\0' && s >= 0)
        return s > 86400 ? 86400000 : s * 1000;
    struct tm tm = {0};
    const char *p = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!p || *p)
        return -1;
    time_t at = timegm(&tm), now = time(NULL);
    return at > now ? (int64_t)(at - now) * 1000 : 0;
}

static int read_response(conn_t *c, mica_ctx_t *ctx, int64_t deadline, mica__post_result_t *res,
                         bool *keep)
{
    char line[1024];
    int rc = read_line(c, ctx, deadline, line, sizeof(line));
    if (rc != 0)
        return rc;
    int minor, status;
    if (sscanf(line, "HTTP/1.%d %3d", &minor, &status) != 2 || status < 100 || status > 999)
        return MICA_EPROTO;
    *keep = minor >= 1;
    int64_t length = -1;
    bool chunked = false, overflow = false;
    res->body_len = 0;
    for (;;) {
        if ((rc = read_line(c, ctx, deadline, line, sizeof(line))) != 0)
            return rc;
        if (!*line)
            break;
        char *colon = strchr(line, ':');
        if (!colon)
            return MICA_EPROTO;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        for (char *e = v + strlen(v); e > v && (e[-1] == ' ' || e[-1] == '\t');)
            *--e = '\0';
        if (strcasecmp(line, "content-length") == 0) {
            char *end;
            long long n = strtoll(v, &end, 10);
            if (end == v || *end || n < 0)
                return MICA_EPROTO;
            length = n;
        } else if (strcasecmp(line, "transfer-encoding") == 0) {
            chunked = strcasecmp(v, "chunked") == 0;
            if (!chunked)
                return MICA_EPROTO;
        } else if (strcasecmp(line, "connection") == 0) {
            if (strcasecmp(v, "close") == 0)
                *keep = false;
        } else if (strcasecmp(line, "retry-after") == 0) {
            res->retry_after_ms = retry_after(v);
        }
    }
    if (status < 200 || status == 204 || status == 304) {
        if (status < 200)
            return read_response(c, ctx, deadline, res, keep); /* 100 Continue: the next one */
    } else if (chunked) {
        for (;;) {
            if ((rc = read_line(c, ctx, deadline, line, sizeof(line))) != 0)
                return rc;
            char *end;
            unsigned long long n = strtoull(line, &end, 16);
            if (end == line || (*end && *end != ';'))
                return MICA_EPROTO;
            if (n == 0) {
                do { /* trailers up to the empty line */
                    if ((rc = read_line(c, ctx, deadline, line, sizeof(line))) != 0)
                        return rc;
                } while (*line);
                break;
            }
            if ((rc = skip(c, ctx, deadline, n, res, &overflow)) != 0 ||
                (rc = read_line(c, ctx, deadline, line, sizeof(line))) != 0)
                return rc;
        }
    } else if (length >= 0) {
        if ((rc = skip(c, ctx, deadline, (uint64_t)length, res, &overflow)) != 0)
            return rc;
    } else {
        while ((rc = fill(c, ctx, deadline)) == 0) { /* to the close */
            keep_body(res, c->buf, c->have, &overflow);
            c->have = 0;
        }
        if (rc != MICA_ECLOSED)
            return rc;
        *keep = false;
    }
    res->status = status;
    return 0;
}

static int post(void *state, mica_ctx_t *ctx, int64_t deadline, const void *body, size_t len,
                mica__post_result_t *res)
{
    conn_t *c = state;
    res->status = 0;
    res->retry_after_ms = -1;
    res->body_len = 0;
    int rc;
    for (int attempt = 0;; attempt++) {
        bool fresh = c->fd < 0;
        if (fresh) {
            int fd = mica_net_connect(c->addr, ctx, deadline);
            if (fd < 0)
                return fd;
            c->fd = fd;
            c->have = 0;
        }
        char head[512];
        int n = snprintf(head, sizeof(head),
                         "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mica-otlp/" MICA__VERSION
                         "\r\nContent-Type: application/x-protobuf\r\nContent-Length: %zu\r\n\r\n",
                         c->tg.path, c->tg.authority, len);
        bool keep = false;
        if ((rc = mica_net_write(c->fd, head, (size_t)n, ctx, deadline)) == 0 &&
            (rc = mica_net_write(c->fd, body, len, ctx, deadline)) == 0 &&
            (rc = read_response(c, ctx, deadline, res, &keep)) == 0) {
            if (!keep)
                drop_conn(c);
            return 0;
        }
        drop_conn(c);
        /* A kept-alive connection the receiver closed meanwhile: once more on a new one. */
        if (fresh || attempt > 0 ||
            (rc != MICA_EPROTO && rc != MICA_ECONNRESET && rc != MICA_EPIPE))
            return rc;
    }
}

const mica__otlp_transport_t mica__otlp_http1 = {open_conn, post, close_conn};

/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 client on coroutines: the public API, the interceptor chain,
 * and one exchange on a pooled connection (client_pool.c picks it).
 *
 * A call validates its request before anything goes out (method and header
 * tokens, values without CR/LF/NUL, no framing fields from the caller: the
 * client frames the body), goes through the interceptors (none: straight
 * through), then the transport: pick an endpoint and a connection, write
 * the request, read the response head, and either read the body (do) or
 * hand the connection to the response (open) until its body has been read.
 * A connection goes back to the pool only after a response read to its
 * end whose framing allows another (keep-alive, not delimited by close, no
 * stray bytes after it); anything else closes it.
 *
 * Responses are read as strictly as the server reads requests
 * (mica__http_parse_response_head(), the same chunked decoder): a response
 * that two parsers might frame differently is refused, not guessed at.
 * Framing follows RFC 9112 §6.3: no body after HEAD, 1xx, 204 and 304;
 * chunked; Content-Length; else the body runs to the close. Interim 1xx
 * responses are skipped (101 is refused: we never ask to switch).
 *
 * Stale connections. A kept-alive connection may have been closed by the
 * server just before we reuse it (client_pool.c watches idle ones, but the
 * close can cross our request on the wire). Go's net/http rule is kept: a
 * request is retried once, on a new connection, when it went out on a
 * reused connection and either nothing of it was written, or the
 * connection ended before any response byte and the request may be
 * repeated -- an idempotent method (RFC 9110 §9.2.2) or an Idempotency-Key
 * header, and a body we can send again (none, a buffer, or a callback not
 * yet called). A POST whose bytes may have reached the server is never
 * replayed: the error goes to the caller (or a retry interceptor) instead.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "http/client.h"
#include "mica/net.h"

#define COUNT(w, field) atomic_fetch_add_explicit(&(w)->stats.field, 1, memory_order_relaxed)
#define HEAD_INLINE_BYTES 2048  /* request heads built on the stack up to this size */
#define STREAM_CHUNK_BYTES 16384 /* pieces of a body_fn body */
#define MAX_INTERIM 8           /* 1xx responses skipped before the final one */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t earlier(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---- responses ------------------------------------------------------------------- */

enum framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };

typedef struct field {
    const char *name, *value;
} field_t;

struct mica_http_response {
    mica_http_client_t *c; /* NULL: made by mica_http_response_new() */
    mica__hc_conn_t *cn;   /* while the body is being read */
    mica__hc_ep_t *ep;     /* for the picker's done (while cn is held) */
    int status;
    bool keep_alive;
    bool done;    /* the body has ended (or there is none) */
    bool reported; /* ep_done called */
    int error;    /* the body failed: every later read returns it */
    enum framing framing;
    int64_t content_length;
    uint64_t remaining; /* BODY_LENGTH */
    mica__http_chunked_t chunked;
    mica_ctx_t *ctx;
    int64_t deadline_ms;
    int64_t t0_us;
    size_t nfields;
    field_t *fields;
    mica__buf_t body; /* do(): the whole body (+ a NUL) */
    mica_http_result_t res;
};

int mica_http_response_status(const mica_http_response_t *r)
{
    return r->status;
}

const char *mica_http_response_header(const mica_http_response_t *r, const char *name)
{
    for (size_t i = 0; i < r->nfields; i++)
        if (strcasecmp(r->fields[i].name, name) == 0)
            return r->fields[i].value;
    return NULL;
}

size_t mica_http_response_header_count(const mica_http_response_t *r)
{
    return r->nfields;
}

int mica_http_response_header_at(const mica_http_response_t *r, size_t i, const char **name,
                                 const char **value)
{
    if (i >= r->nfields)
        return MICA_EINVAL;
    *name = r->fields[i].name;
    *value = r->fields[i].value;
    return 0;
}

int64_t mica_http_response_content_length(const mica_http_response_t *r)
{
    return r->content_length;
}

const char *mica_http_response_body(const mica_http_response_t *r, size_t *len)
{
    size_t n = mica__buf_len(&r->body);
    *len = n ? n - 1 : 0; /* the NUL */
    return n ? mica__buf_data(&r->body) : "";
}

const mica_http_result_t *mica_http_response_result(const mica_http_response_t *r)
{
    return &r->res;
}

/* The picker's done and the endpoint's numbers, once per call. */
static void report(mica_http_response_t *r, int err)
{
    if (r->reported || !r->ep)
        return;
    r->reported = true;
    uint32_t latency_us = 0;
    if (r->c->picker->flags & MICA_PICKER_MEASURES_LATENCY) {
        int64_t us = now_us() - r->t0_us;
        latency_us = us <= 0 ? 1 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    }
    mica__hc_ep_done(r->ep, r->status, err, latency_us);
}

/* The body ended: the connection goes back to the pool when its framing allows. */
static void body_done(mica_http_response_t *r)
{
    r->done = true;
    r->res.total_us = now_us() - r->t0_us;
    report(r, 0);
    mica__hc_conn_t *cn = r->cn;
    r->cn = NULL;
    r->ep = NULL;
    if (!cn)
        return;
    cn->requests++;
    if (r->keep_alive && r->framing != BODY_CLOSE)
        mica__hc_conn_release(cn); /* closes it if bytes follow the body */
    else
        mica__hc_conn_close(cn);
}

static int body_fail(mica_http_response_t *r, int err)
{
    r->error = err;
    r->res.error = err;
    r->res.total_us = now_us() - r->t0_us;
    report(r, err);
    if (r->cn)
        mica__hc_conn_close(r->cn);
    r->cn = NULL;
    r->ep = NULL;
    return err;
}

void mica_http_response_free(mica_http_response_t *r)
{
    if (!r)
        return;
    if (r->cn) { /* body not read to its end: the connection cannot be reused */
        report(r, 0);
        mica__hc_conn_close(r->cn);
    }
    mica__buf_free(&r->body);
    mica__free(r);
}

int mica_http_response_new(mica_http_response_t **out, int status, const char *content_type,
                           const void *body, size_t len)
{
    if (status < 100 || status > 999)
        return MICA_EINVAL;
    size_t ct = content_type ? strlen(content_type) + 1 : 0;
    mica_http_response_t *r = mica__calloc(1, sizeof(*r) + sizeof(field_t) + ct);
    if (!r)
        return MICA_ENOMEM;
    r->status = r->res.status = status;
    r->done = true;
    r->content_length = (int64_t)len;
    mica__buf_init(&r->body, len + 1);
    if (mica__buf_append(&r->body, body ? body : "", len) != 0 ||
        mica__buf_append(&r->body, "", 1) != 0) {
        mica_http_response_free(r);
        return MICA_ENOMEM;
    }
    if (ct) {
        r->fields = (field_t *)(r + 1);
        char *v = (char *)(r->fields + 1);
        memcpy(v, content_type, ct);
        r->fields[0] = (field_t){"Content-Type", v};
        r->nfields = 1;
    }
    *out = r;
    return 0;
}

/* ---- reading from a connection ----------------------------------------------------- */

/* Reads what the socket has (waiting until deadline): > 0, 0 at EOF, or an error. */
static ssize_t conn_read(mica__hc_conn_t *cn, void *buf, size_t len, mica_ctx_t *ctx,
                         int64_t deadline)
{
    if (!cn->tls)
        return mica_net_read(cn->fd, buf, len, ctx, deadline);
    for (;;) {
        ssize_t n = mica_tls_read(cn->tls, buf, len, deadline);
        if (n != MICA_EAGAIN)
            return n;
        int rc = mica_net_wait(cn->fd, MICA_NET_READABLE, ctx, deadline);
        if (rc != 0)
            return rc;
    }
}

/* Reads more into cn->in. Returns the count, 0 at EOF, or an error. */
static ssize_t fill(mica__hc_conn_t *cn, mica_ctx_t *ctx, int64_t deadline, uint64_t *bytes_in)
{
    int err = 0;
    char *p = mica__buf_reserve(&cn->in, MICA__HC_READ_BYTES, &err);
    if (!p)
        return err;
    ssize_t n = conn_read(cn, p, MICA__HC_READ_BYTES, ctx, deadline);
    if (n > 0) {
        mica__buf_commit(&cn->in, (size_t)n);
        *bytes_in += (uint64_t)n;
    }
    return n;
}

/*
 * The next body bytes into dst (at most cap): > 0, 0 at the body's end, or
 * an error (then the connection is closed and the error sticks).
 */
static ssize_t body_next(mica_http_response_t *r, char *dst, size_t cap)
{
    if (r->error)
        return r->error;
    if (r->done || cap == 0)
        return 0;
    mica__hc_conn_t *cn = r->cn;
    mica_http_client_t *c = r->c;
    for (;;) {
        size_t have = mica__buf_len(&cn->in);
        char *data = mica__buf_data(&cn->in);
        if (r->framing == BODY_CHUNKED && have) {
            size_t n = have < cap ? have : cap, out = 0;
            int rc = mica__http_chunked_decode(&r->chunked, data, &n, &out);
            if (rc < 0)
                return body_fail(r, MICA_EPROTO);
            memcpy(dst, data, out);
            mica__buf_consume(&cn->in, n);
            if (rc == 1)
                body_done(r);
            if (out || rc == 1)
                return (ssize_t)out;
            continue; /* framing only so far */
        }
        if (r->framing != BODY_CHUNKED) {
            size_t want = cap;
            if (r->framing == BODY_LENGTH && r->remaining < want)
                want = (size_t)r->remaining;
            if (have) {
                size_t take = have < want ? have : want;
                memcpy(dst, data, take);
                mica__buf_consume(&cn->in, take);
                if (r->framing == BODY_LENGTH && (r->remaining -= take) == 0)
                    body_done(r);
                return (ssize_t)take;
            }
            /* Nothing buffered: read straight into the caller's memory. */
            int64_t dl = earlier(r->deadline_ms, mica_deadline_in(c->o.body_timeout_ms));
            ssize_t n = conn_read(cn, dst, want, r->ctx, dl);
            if (n > 0) {
                r->res.bytes_in += (uint64_t)n;
                if (r->framing == BODY_LENGTH && (r->remaining -= (uint64_t)n) == 0)
                    body_done(r);
                return n;
            }
            if (n == 0 && r->framing == BODY_CLOSE) {
                body_done(r);
                return 0;
            }
            return body_fail(r, n == 0 ? MICA_EPROTO : (int)n); /* 0: ended early */
        }
        int64_t dl = earlier(r->deadline_ms, mica_deadline_in(c->o.body_timeout_ms));
        mica__buf_reset(&cn->in); /* empty here: start at the front */
        ssize_t n = fill(cn, r->ctx, dl, &r->res.bytes_in);
        if (n <= 0)
            return body_fail(r, n == 0 ? MICA_EPROTO : (int)n);
    }
}

ssize_t mica_http_response_read(mica_http_response_t *r, void *buf, size_t len)
{
    if (r->c == NULL) { /* a made-up response: its body is in r->body */
        size_t have = mica__buf_len(&r->body);
        have = have ? have - 1 : 0;
        size_t off = (size_t)r->remaining, n = have - off < len ? have - off : len;
        memcpy(buf, mica__buf_data(&r->body) + off, n);
        r->remaining += n;
        return (ssize_t)n;
    }
    return body_next(r, buf, len);
}

/* Reads the whole body into r->body (capped), NUL-terminated. */
static int read_whole(mica_http_response_t *r)
{
    size_t max = r->c->o.max_body_bytes;
    if (r->framing == BODY_LENGTH && r->remaining > max)
        return body_fail(r, MICA_ELIMIT);
    mica__buf_init(&r->body, max + 1);
    int err = 0;
    for (;;) {
        size_t left = max - mica__buf_len(&r->body); /* body bytes we may still take */
        size_t room = left < MICA__HC_READ_BYTES ? left : MICA__HC_READ_BYTES;
        if (r->framing == BODY_LENGTH && r->remaining < room)
            room = (size_t)r->remaining;
        if (r->done)
            room = 0;
        char *p = mica__buf_reserve(&r->body, room + 1, &err);
        if (!p)
            return body_fail(r, err);
        ssize_t n;
        if (room == 0 && !r->done) { /* full: one more byte means too long */
            char probe;
            n = body_next(r, &probe, 1);
            if (n > 0)
                return body_fail(r, MICA_ELIMIT);
        } else {
            n = body_next(r, p, room);
        }
        if (n < 0)
            return (int)n;
        if (n == 0) {
            p[0] = '\0';
            mica__buf_commit(&r->body, 1);
            return 0;
        }
        mica__buf_commit(&r->body, (size_t)n);
    }
}

/* ---- request heads ----------------------------------------------------------------- */

static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool is_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s))
            return false;
    return true;
}

/* A field value: visible ASCII, obs-text, SP and HTAB; no CR, LF, NUL or other controls. */
static bool is_value(const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

/* Fields the client owns: framing and connection management (RFC 9110 §7.6.1). */
static bool reserved_field(const char *name)
{
    static const char *const names[] = {"content-length", "transfer-encoding", "connection",
                                        "te", "upgrade", "keep-alive", "proxy-connection"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(name, names[i]) == 0)
            return true;
    return false;
}

/* Checks what a call would send. Returns 0, MICA_EINVAL or MICA_ELIMIT. */
static int validate(const mica_http_request_t *req, const mica_http_call_opts_t *o)
{
    if (!req || !is_token(req->method) || !req->path)
        return MICA_EINVAL;
    const char *p = req->path;
    if (p[0] != '/' && strcmp(p, "*") != 0)
        return MICA_EINVAL;
    for (; *p; p++) /* request-target: visible ASCII, no SP */
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return MICA_EINVAL;
    if (req->body && req->body_fn)
        return MICA_EINVAL;
    if (o->nheaders > MICA_HTTP_MAX_REQUEST_HEADERS)
        return MICA_ELIMIT;
    for (size_t i = 0; i < o->nheaders; i++) {
        const mica_http_header_t *h = &o->headers[i];
        if (!is_token(h->name) || !h->value || !is_value(h->value) || reserved_field(h->name))
            return MICA_EINVAL;
    }
    return 0;
}

static bool has_header(const mica_http_call_opts_t *o, const char *name)
{
    for (size_t i = 0; i < o->nheaders; i++)
        if (strcasecmp(o->headers[i].name, name) == 0)
            return true;
    return false;
}

/* Appends s (n bytes) at *p if it fits before end; counts it in *need either way. */
static void put(char **p, char *end, size_t *need, const char *s, size_t n)
{
    if (*p && (size_t)(end - *p) >= n) {
        memcpy(*p, s, n);
        *p += n;
    } else {
        *p = NULL;
    }
    *need += n;
}

#define PUTS(s) put(&p, end, &need, (s), strlen(s))
#define PUTL(s) put(&p, end, &need, (s), sizeof(s) - 1)

/*
 * Writes the request head into buf[0..size). Returns its length; when it
 * does not fit, returns the size it needs with *fits false.
 */
static size_t build_head(char *buf, size_t size, const mica_http_request_t *req,
                         const mica_http_call_opts_t *o, const char *host, bool *fits)
{
    char *p = buf, *end = buf + size;
    size_t need = 0;
    PUTS(req->method);
    PUTL(" ");
    PUTS(req->path);
    PUTL(" HTTP/1.1\r\n");
    if (!has_header(o, "host")) {
        PUTL("Host: ");
        PUTS(host);
        PUTL("\r\n");
    }
    for (size_t i = 0; i < o->nheaders; i++) {
        PUTS(o->headers[i].name);
        PUTL(": ");
        PUTS(o->headers[i].value);
        PUTL("\r\n");
    }
    char cl[48];
    if (req->body_fn && req->body_len_hint < 0) {
        PUTL("Transfer-Encoding: chunked\r\n");
    } else {
        size_t len = req->body_fn ? (size_t)req->body_len_hint : req->body_len;
        /* RFC 9110 §8.6: no Content-Length on a bodiless request whose method
         * does not expect one; POST/PUT/PATCH always say how long. */
        bool expects = strcmp(req->method, "POST") == 0 || strcmp(req->method, "PUT") == 0 ||
                       strcmp(req->method, "PATCH") == 0;
        if (len || expects || req->body_fn) {
            snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", len);
            PUTS(cl);
        }
    }
    PUTL("\r\n");
    *fits = p != NULL;
    return need;
}

/* ---- writing to a connection ------------------------------------------------------- */

/*
 * Writes iov[0..n) whole. *written counts the bytes that left (for TLS,
 * every byte handed to OpenSSL counts, whether or not it left: a failed TLS
 * write never counts as "nothing written").
 */
static int conn_writev(mica__hc_conn_t *cn, struct iovec *iov, int n, mica_ctx_t *ctx,
                       int64_t deadline, uint64_t *written)
{
    if (cn->tls) {
        for (int i = 0; i < n; i++) {
            *written += iov[i].iov_len;
            int rc = mica_tls_write(cn->tls, iov[i].iov_base, iov[i].iov_len, deadline);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(cn->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0) {
            int err = errno;
            if (err == EINTR)
                continue;
            if (err != EAGAIN && err != EWOULDBLOCK)
                return -err;
            int rc = mica_net_wait(cn->fd, MICA_NET_WRITABLE, ctx, deadline);
            if (rc != 0)
                return rc;
            continue;
        }
        *written += (uint64_t)k;
        size_t left = (size_t)k;
        while (n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* State of one attempt, for the stale-connection rule. */
struct attempt {
    bool head_req;      /* a HEAD: no body comes back, whatever the head says */
    uint64_t written;   /* request bytes that left */
    bool body_pulled;   /* body_fn was called */
    bool got_bytes;     /* any response byte came */
};

/* Streams a body_fn body after the head: Content-Length or chunked. */
static int send_stream_body(mica__hc_conn_t *cn, const mica_http_request_t *req, mica_ctx_t *ctx,
                            int64_t deadline, int write_ms, struct attempt *a)
{
    bool chunked = req->body_len_hint < 0;
    char *buf = mica__malloc(STREAM_CHUNK_BYTES + 32);
    if (!buf)
        return MICA_ENOMEM;
    char *data = buf + 16; /* room for the chunk-size line in front */
    uint64_t sent = 0;
    int rc = 0;
    for (;;) {
        a->body_pulled = true;
        ssize_t n = req->body_fn(data, STREAM_CHUNK_BYTES, req->body_arg);
        if (n < 0) {
            rc = (int)n;
            break;
        }
        if (n > STREAM_CHUNK_BYTES) {
            rc = MICA_EINVAL;
            break;
        }
        sent += (uint64_t)n;
        if (!chunked && sent > (uint64_t)req->body_len_hint) {
            rc = MICA_EINVAL; /* longer than declared: the framing would lie */
            break;
        }
        int64_t dl = earlier(deadline, mica_deadline_in(write_ms));
        if (n == 0) {
            if (!chunked && sent != (uint64_t)req->body_len_hint) {
                rc = MICA_EINVAL;
                break;
            }
            if (chunked) {
                struct iovec iov = {(void *)"0\r\n\r\n", 5};
                rc = conn_writev(cn, &iov, 1, ctx, dl, &a->written);
            }
            break;
        }
        if (chunked) {
            char line[16];
            int k = snprintf(line, sizeof(line), "%zx\r\n", (size_t)n);
            memcpy(data - k, line, (size_t)k);
            memcpy(data + n, "\r\n", 2);
            struct iovec iov = {data - k, (size_t)k + (size_t)n + 2};
            rc = conn_writev(cn, &iov, 1, ctx, dl, &a->written);
        } else {
            struct iovec iov = {data, (size_t)n};
            rc = conn_writev(cn, &iov, 1, ctx, dl, &a->written);
        }
        if (rc != 0)
            break;
    }
    mica__free(buf);
    return rc;
}

/* Writes the request: its head and body. */
static int send_request(mica__hc_conn_t *cn, mica_http_call_info_t *call, int64_t deadline,
                        struct attempt *a)
{
    mica_http_client_t *c = call->client;
    const mica_http_request_t *req = call->req;
    const char *host = c->authority ? c->authority : cn->ep->addr;
    char inline_buf[HEAD_INLINE_BYTES], *head = inline_buf;
    bool fits;
    size_t len = build_head(inline_buf, sizeof(inline_buf), req, &call->opts, host, &fits);
    if (!fits) {
        if (!(head = mica__malloc(len)))
            return MICA_ENOMEM;
        build_head(head, len, req, &call->opts, host, &fits);
    }
    struct iovec iov[2] = {{head, len}, {(void *)req->body, req->body ? req->body_len : 0}};
    int n = req->body && req->body_len ? 2 : 1;
    int64_t dl = earlier(deadline, mica_deadline_in(c->o.write_timeout_ms));
    int rc = conn_writev(cn, iov, n, call->ctx, dl, &a->written);
    if (head != inline_buf)
        mica__free(head);
    if (rc == 0 && req->body_fn)
        rc = send_stream_body(cn, req, call->ctx, deadline, c->o.write_timeout_ms, a);
    return rc;
}

/* ---- response heads ---------------------------------------------------------------- */

/*
 * Reads the final response head into a new response (*out) whose fields are
 * a copy; the head's bytes leave cn->in, what follows is the body's start.
 * MICA_ECLOSED: the connection ended before any byte.
 */
static int read_head(mica__hc_conn_t *cn, mica_http_call_info_t *call, int64_t deadline,
                     int64_t t0, struct attempt *a, mica_http_response_t **out)
{
    mica_http_client_t *c = call->client;
    int64_t dl = earlier(deadline, mica_deadline_in(c->o.response_timeout_ms));
    mica__http_resp_head_t h;
    int interim = 0;
    uint64_t bytes_in = 0;
    for (;;) {
        int len = mica__http_parse_response_head(mica__buf_data(&cn->in), mica__buf_len(&cn->in),
                                                 &c->limits, &h);
        if (len == -431)
            return MICA_ELIMIT;
        if (len < 0)
            return MICA_EPROTO;
        if (len == 0) {
            /* Right after the request went out the answer cannot be there
             * yet: wait for the socket's edge first instead of paying a read
             * that says EAGAIN (plain TCP only: OpenSSL may hold bytes the
             * socket no longer shows). A remembered edge returns at once. */
            if (!a->got_bytes && !interim && !cn->tls && mica__buf_len(&cn->in) == 0) {
                int rc = mica_net_wait(cn->fd, MICA_NET_READABLE, call->ctx, dl);
                if (rc != 0)
                    return rc;
            }
            ssize_t n = fill(cn, call->ctx, dl, &bytes_in);
            call->res->bytes_in += bytes_in;
            bytes_in = 0;
            if (n > 0) {
                a->got_bytes = true;
                continue;
            }
            if (n == 0)
                return a->got_bytes ? MICA_EPROTO : MICA_ECLOSED;
            return n == MICA_ELIMIT ? MICA_ELIMIT : (int)n;
        }
        if (h.status >= 100 && h.status < 200) {
            /* RFC 9110 §15.2: interim responses; we never asked to switch protocols. */
            if (h.status == 101 || ++interim > MAX_INTERIM)
                return MICA_EPROTO;
            mica__buf_consume(&cn->in, (size_t)len);
            continue;
        }
        /* One allocation: the response, its field table, the head's text. */
        size_t nf = h.num_headers;
        mica_http_response_t *r =
            mica__calloc(1, sizeof(*r) + nf * sizeof(field_t) + (size_t)len + 1);
        if (!r)
            return MICA_ENOMEM;
        r->fields = (field_t *)(r + 1);
        char *text = (char *)(r->fields + nf);
        const char *base = mica__buf_data(&cn->in);
        memcpy(text, base, (size_t)len);
        for (size_t i = 0; i < nf; i++) {
            char *name = text + (h.headers[i].name - base);
            char *value = text + (h.headers[i].value - base);
            name[h.headers[i].name_len] = '\0';  /* over the ':' */
            value[h.headers[i].value_len] = '\0'; /* over OWS or the CR */
            r->fields[i] = (field_t){name, value};
        }
        r->nfields = nf;
        mica__buf_consume(&cn->in, (size_t)len);
        r->c = c;
        r->status = h.status;
        r->keep_alive = h.keep_alive;
        r->content_length = h.content_length;
        r->ctx = call->ctx;
        r->deadline_ms = deadline;
        r->t0_us = t0;
        if (a->head_req || h.status == 204 || h.status == 304) {
            r->framing = BODY_NONE;
            r->content_length = a->head_req ? h.content_length : 0;
        } else if (h.chunked) {
            r->framing = BODY_CHUNKED;
            mica__http_chunked_init(&r->chunked);
        } else if (h.content_length >= 0) {
            r->framing = BODY_LENGTH;
            r->remaining = (uint64_t)h.content_length;
        } else {
            r->framing = BODY_CLOSE;
            r->keep_alive = false;
        }
        *out = r;
        return 0;
    }
}

/* ---- the transport: the end of the interceptor chain ------------------------------- */

static bool idempotent(const mica_http_request_t *req, const mica_http_call_opts_t *o)
{
    static const char *const methods[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(req->method, methods[i]) == 0)
            return true;
    return has_header(o, "idempotency-key");
}

/* A failure that a closed kept-alive connection explains. */
static bool conn_lost(int rc)
{
    return rc == MICA_ECLOSED || rc == MICA_EPIPE || rc == MICA_ECONNRESET ||
           rc == MICA_ENOTCONN || rc == MICA_ECONNABORTED;
}

/* Whether a request that failed on a reused connection may go again (Go's rule). */
static bool may_retry(const mica_http_call_info_t *call, const struct attempt *a, int rc)
{
    const mica_http_request_t *req = call->req;
    if (!conn_lost(rc))
        return false;
    bool replayable = !req->body_fn || !a->body_pulled;
    if (a->written == 0 && replayable)
        return true; /* nothing of it left: the server cannot have seen it */
    return !a->got_bytes && replayable && !req->body_fn && idempotent(req, &call->opts);
}

static int transport(mica_http_call_info_t *call)
{
    mica_http_client_t *c = call->client;
    mica_http_result_t *res = call->res;
    *call->resp = NULL;
    memset(res, 0, sizeof(*res));
    int64_t t0 = now_us();
    mica__hc_worker_t *w = NULL;
    int rc = validate(call->req, &call->opts);
    if (rc == 0)
        rc = mica__hc_worker_get(c, &w);
    if (rc == 0 && call->ctx)
        rc = mica_ctx_err(call->ctx);
    int64_t deadline = call->ctx ? mica_ctx_deadline(call->ctx) : MICA_NO_DEADLINE;
    if (call->opts.deadline_ms > 0 && call->opts.deadline_ms < deadline)
        deadline = call->opts.deadline_ms;
    if (rc == 0 && deadline != MICA_NO_DEADLINE && deadline <= mica_now_ms())
        rc = MICA_ETIMEDOUT;
    if (rc != 0) {
        res->error = rc;
        return rc;
    }
    mica_pick_info_t pi = {.method = call->req->path, .flags = call->opts.flags,
                           .policy = call->opts.policy};
    bool fresh = false;
    for (int attempt = 0;; attempt++) {
        COUNT(w, calls);
        mica__hc_conn_t *cn;
        int64_t connect_us = 0;
        if ((rc = mica__hc_pick(w, call->ctx, deadline, &pi, fresh, &cn, &connect_us)) != 0)
            break;
        mica__hc_ep_t *ep = cn->ep;
        bool reused = cn->requests > 0;
        if (reused)
            COUNT(w, conns_reused);
        res->attempts++;
        res->reused = reused;
        res->connect_us += connect_us;
        size_t alen = strlen(ep->addr); /* (an IP literal and a port: it fits) */
        if (alen >= sizeof(res->endpoint))
            alen = sizeof(res->endpoint) - 1;
        memcpy(res->endpoint, ep->addr, alen);
        res->endpoint[alen] = '\0';
        /* Nothing of call->req is read once its body_fn has been called: a
         * proxy's request strings may move as its own body is read. */
        struct attempt a = {.head_req = strcmp(call->req->method, "HEAD") == 0};
        mica_http_response_t *r = NULL;
        rc = send_request(cn, call, deadline, &a);
        res->bytes_out += a.written;
        if (rc == 0)
            rc = read_head(cn, call, deadline, t0, &a, &r);
        if (rc == 0) {
            r->cn = cn;
            r->ep = ep;
            r->res = *res;
            r->res.status = r->status;
            r->res.head_us = now_us() - t0;
            if (r->framing == BODY_NONE || (r->framing == BODY_LENGTH && r->remaining == 0))
                body_done(r);
            if (!call->streaming && read_whole(r) != 0) {
                rc = r->error;
                *res = r->res;
                mica_http_response_free(r);
                break;
            }
            *res = r->res;
            *call->resp = r;
            return 0;
        }
        /* The exchange failed: this connection is done for. */
        bool retry = reused && attempt == 0 && may_retry(call, &a, rc);
        mica__hc_ep_done(ep, 0, retry ? 0 : rc, 0);
        mica__hc_conn_close(cn);
        if (!retry)
            break;
        COUNT(w, stale_retries);
        mica__log_info("http client: kept-alive connection was closed; retrying on a new one",
                       "endpoint", res->endpoint, "method", call->req->method, "written",
                       a.written ? "some" : "nothing", "error", mica_strerror(rc));
        fresh = true;
    }
    if (rc == MICA_ECLOSED)
        rc = MICA_ECONNRESET; /* the server closed without answering */
    COUNT(w, failures);
    res->error = rc;
    res->total_us = now_us() - t0;
    return rc;
}

/*
 * next(): the following interceptor, or the transport. Re-entrant, for
 * retries: what an interceptor changed (ctx, opts, req) is put back when it
 * returns, so an outer one that calls next() again starts from what it
 * passed, never from an inner one's headers array that has gone out of scope.
 */
static int call_next(mica_http_call_info_t *call)
{
    mica_http_client_t *c = call->client;
    int i = call->_pos;
    if ((size_t)i >= c->nicpt)
        return transport(call);
    mica_http_call_opts_t opts = call->opts;
    mica_ctx_t *ctx = call->ctx;
    const mica_http_request_t *req = call->req;
    call->_pos = i + 1;
    int rc = c->icpt[i].fn(call, call_next, c->icpt[i].arg);
    call->_pos = i;
    call->opts = opts;
    call->ctx = ctx;
    call->req = req;
    return rc;
}

static int call(mica_http_client_t *c, mica_ctx_t *ctx, const mica_http_request_t *req,
                const mica_http_call_opts_t *opts, bool streaming, mica_http_response_t **out,
                mica_http_result_t *res)
{
    mica_http_result_t local;
    *out = NULL;
    if (!atomic_load_explicit(&c->used, memory_order_relaxed))
        atomic_store(&c->used, true);
    mica_http_call_info_t info = {.client = c, .req = req, .ctx = ctx, .streaming = streaming,
                                  .resp = out, .res = res ? res : &local};
    if (opts)
        info.opts = *opts;
    int rc = c->nicpt ? call_next(&info) : transport(&info);
    if (rc != 0 && *out) { /* an interceptor's doing: keep the contract */
        mica_http_response_free(*out);
        *out = NULL;
    }
    if (rc == 0 && !*out)
        rc = MICA_EINTERNAL; /* an interceptor returned 0 without a response */
    return rc;
}

int mica_http_client_do(mica_http_client_t *c, mica_ctx_t *ctx, const mica_http_request_t *req,
                        const mica_http_call_opts_t *opts, mica_http_response_t **out,
                        mica_http_result_t *res)
{
    return call(c, ctx, req, opts, false, out, res);
}

int mica_http_client_open(mica_http_client_t *c, mica_ctx_t *ctx, const mica_http_request_t *req,
                          const mica_http_call_opts_t *opts, mica_http_response_t **out,
                          mica_http_result_t *res)
{
    return call(c, ctx, req, opts, true, out, res);
}

int mica_http_client_get(mica_http_client_t *c, mica_ctx_t *ctx, const char *path,
                         const mica_http_call_opts_t *opts, mica_http_response_t **out)
{
    mica_http_request_t req = {.method = "GET", .path = path};
    return call(c, ctx, &req, opts, false, out, NULL);
}

/* ---- the client -------------------------------------------------------------------- */

static int env_num(const char *name, int *field)
{
    if (*field)
        return 0;
    const char *s = getenv(name);
    if (!s || !*s)
        return 0;
    char *end;
    long long n = strtoll(s, &end, 10);
    if (*end || n <= 0 || n > 24LL * 3600 * 1000) {
        mica__log_error("invalid environment variable", "name", name, "value", s);
        return MICA_EINVAL;
    }
    *field = (int)n;
    return 0;
}

int mica_http_client_opts_from_env(mica_http_client_opts_t *o)
{
    int rc = 0;
    rc |= env_num("MICA_HTTP_CLIENT_MAX_CONNS", &o->max_conns_per_endpoint);
    rc |= env_num("MICA_HTTP_CLIENT_MAX_IDLE", &o->max_idle_per_endpoint);
    rc |= env_num("MICA_HTTP_CLIENT_IDLE_TIMEOUT_MS", &o->idle_timeout_ms);
    rc |= env_num("MICA_HTTP_CLIENT_CONNECT_TIMEOUT_MS", &o->connect_timeout_ms);
    rc |= env_num("MICA_HTTP_CLIENT_RESPONSE_TIMEOUT_MS", &o->response_timeout_ms);
    rc |= env_num("MICA_HTTP_CLIENT_BODY_TIMEOUT_MS", &o->body_timeout_ms);
    return rc ? MICA_EINVAL : 0;
}

static void set_defaults(mica_http_client_opts_t *o)
{
#define DEFAULT(f, v)                                                                             \
    if (o->f <= 0)                                                                                \
    o->f = (v)
    DEFAULT(max_conns_per_endpoint, 256);
    DEFAULT(max_idle_per_endpoint, 32);
    DEFAULT(idle_timeout_ms, 30000);
    DEFAULT(connect_timeout_ms, 5000);
    DEFAULT(write_timeout_ms, 10000);
    DEFAULT(response_timeout_ms, 30000);
    DEFAULT(body_timeout_ms, 30000);
    DEFAULT(backoff_max_ms, 30000);
#undef DEFAULT
    if (!o->max_head_bytes)
        o->max_head_bytes = 16384;
    if (!o->max_headers || o->max_headers > MICA__HTTP_MAX_HEADERS)
        o->max_headers = MICA__HTTP_MAX_HEADERS;
    if (!o->max_body_bytes)
        o->max_body_bytes = 8 << 20;
}

/*
 * "http://host[:port][/]" and "https://..." -> the resolver's target (the
 * host:port, a literal or a DNS name) into buf; *https, *named say what it
 * was. Other targets pass through. Returns 0 or MICA_EINVAL.
 */
static int http_target(const char *target, char *buf, size_t size, bool *https, bool *url)
{
    const char *t = target;
    *https = *url = false;
    if (strncmp(t, "https://", 8) == 0) {
        *https = *url = true;
        t += 8;
    } else if (strncmp(t, "http://", 7) == 0) {
        *url = true;
        t += 7;
    }
    if (!*url) {
        snprintf(buf, size, "%s", target);
        return strlen(target) < size ? 0 : MICA_EINVAL;
    }
    size_t n = strcspn(t, "/?#");
    if (n == 0 || (t[n] && strcmp(t + n, "/") != 0) || memchr(t, '@', n))
        return MICA_EINVAL; /* a path, a query or userinfo: not a target */
    const char *close = memchr(t, ']', n);
    const char *colon = memchr(close ? close : t, ':', n - (size_t)((close ? close : t) - t));
    int k = colon ? snprintf(buf, size, "%.*s", (int)n, t)
                  : snprintf(buf, size, "%.*s:%s", (int)n, t, *https ? "443" : "80");
    return k > 0 && (size_t)k < size ? 0 : MICA_EINVAL;
}

int mica_http_client_new(mica_http_client_t **out, mica_runtime_t *rt, const char *target,
                         const mica_http_client_opts_t *opts)
{
    if (!out || !rt || !target)
        return MICA_EINVAL;
    char resolved[512];
    bool https, url;
    if (http_target(target, resolved, sizeof(resolved), &https, &url) != 0) {
        mica__log_error("http client: bad target", "target", target);
        return MICA_EINVAL;
    }
    mica_http_client_t *c = mica__calloc(1, sizeof(*c));
    if (!c)
        return MICA_ENOMEM;
    if (opts)
        c->o = *opts;
    set_defaults(&c->o);
    c->limits = (mica__http_limits_t){.max_head_bytes = c->o.max_head_bytes,
                                      .max_target_bytes = 0,
                                      .max_headers = c->o.max_headers};
    c->picker = c->o.picker ? c->o.picker : &mica_picker_round_robin;
    c->nworkers = mica_runtime_workers(rt);
    /* TLS settings first: a resolver, once made, has hooked itself into rt's
     * stop, so nothing that can fail for a bad setting may follow it. */
    int rc = 0;
    if (https || c->o.tls_ca_file) {
        if (!c->o.tls_ca_file) {
            mica__log_error("http client: an https target needs tls_ca_file", "target", target);
            rc = MICA_EINVAL;
        } else {
            mica_tls_client_opts_t to = {.ca_file = c->o.tls_ca_file,
                                         .cert_file = c->o.tls_cert_file,
                                         .key_file = c->o.tls_key_file,
                                         .alpn = "http/1.1"};
            rc = mica_tls_client_new(&c->tls, &to);
        }
    }
    mica_resolver_opts_t ro = {.refresh_interval_ms = c->o.resolve_interval_ms};
    if (rc == 0)
        rc = mica_resolver_new(&c->resolver, rt, resolved, &ro);
    if (rc != 0) {
        mica_tls_client_free(c->tls);
        mica__free(c);
        return rc;
    }
    /* Host and the TLS name: the target's host when it names one (an URL, a
     * DNS name, a registered scheme's), else each endpoint's own address. */
    const char *endpoint = mica_resolver_endpoint(c->resolver);
    const char *authority = url ? endpoint : mica_resolver_authority(c->resolver);
    bool one_name = authority != NULL;
    if (one_name && !(c->authority = mica__strdup(authority)))
        rc = MICA_ENOMEM;
    if (rc == 0 && c->tls) {
        char host[256];
        const char *a = one_name ? authority : endpoint;
        const char *colon = strrchr(a, ':');
        size_t n = colon ? (size_t)(colon - a) : strlen(a);
        if (n >= 2 && a[0] == '[')
            snprintf(host, sizeof(host), "%.*s", (int)n - 2, a + 1);
        else
            snprintf(host, sizeof(host), "%.*s", (int)n, a);
        const char *name = c->o.tls_server_name ? c->o.tls_server_name : one_name ? host : NULL;
        if (name && !(c->tls_name = mica__strdup(name)))
            rc = MICA_ENOMEM;
    }
    c->o.tls_ca_file = c->o.tls_server_name = c->o.tls_cert_file = c->o.tls_key_file = NULL;
    if (rc == 0)
        rc = mica__hc_workers_new(c);
    if (rc == 0)
        rc = mica_runtime_on_stop(rt, mica__hc_worker_stop, c);
    if (rc != 0) {
        mica_http_client_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void mica_http_client_free(mica_http_client_t *c)
{
    if (!c)
        return;
    mica__hc_workers_free(c);
    mica_resolver_free(c->resolver);
    mica__free(c->authority);
    mica__free(c->tls_name);
    mica_tls_client_free(c->tls);
    mica__free(c);
}

int mica_http_client_intercept(mica_http_client_t *c, mica_http_client_interceptor_fn fn,
                               void *arg)
{
    if (!c || !fn)
        return MICA_EINVAL;
    if (atomic_load(&c->used))
        return MICA_EBUSY;
    if (c->nicpt == MICA__HC_MAX_INTERCEPTORS)
        return MICA_ELIMIT;
    c->icpt[c->nicpt++] = (mica__hc_interceptor_t){fn, arg};
    return 0;
}

mica_resolver_t *mica_http_client_resolver(mica_http_client_t *c)
{
    return c->resolver;
}

void mica_http_client_stats(const mica_http_client_t *c, mica_http_client_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < c->nworkers; i++) {
        mica__hc_counters_t *s = &c->workers[i]->stats;
#define SUM(f) out->f += atomic_load_explicit(&s->f, memory_order_relaxed)
        SUM(calls);
        SUM(failures);
        SUM(conns_opened);
        SUM(conns_reused);
        SUM(conns_closed);
        SUM(stale_retries);
        SUM(idle_evictions);
        SUM(pool_waits);
#undef SUM
    }
}

/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 connections: one coroutine per connection. It loops: read until
 * a complete head is buffered, route it, frame the body (Content-Length or
 * chunked, decoded in place), serve the request (request.c), append the
 * response to the output buffer. Output is flushed only when the coroutine
 * is about to wait for input, so a burst of pipelined requests is answered
 * with one write, in order (RFC 9112 §9.3.2).
 *
 * Reads: after a read that did not fill the buffer the socket is drained,
 * so the next read first waits for the fd's edge; in the steady state a
 * keep-alive request costs one read and one write system call.
 *
 * Streaming routes start as soon as the head is in and pull the body
 * through h1_body_wait(): decoded bytes are kept right after the head, raw
 * bytes after them, and the buffer is compacted before it grows. A
 * response in parts goes out chunked (HTTP/1.0: delimited by the close),
 * each write flushed at once; trailers follow the last chunk when the
 * client said "TE: trailers". A streaming request whose body was not read
 * to its end leaves the connection to close after the response: its
 * framing is then unknown to us.
 *
 * Errors that leave the framing in doubt (anything the parser rejects, a
 * body over the limit, a timeout mid-request) get their 4xx/5xx and then a
 * lingering close: shut down our side, discard what the client still sends
 * for a moment, then close, so the response is not destroyed by an RST.
 *
 * The input buffer may move when it grows; the head's strings point into
 * it, so a move rebases them (rebase()).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "http/internal.h"
#include "mica/net.h"

#define OUT_FLUSH_BYTES (64 * 1024) /* flush pipelined responses past this */
#define OUT_KEEP_BYTES (16 * 1024)  /* shrink the output buffer past this when idle */
#define LINGER_MS 1000
#define LINGER_BYTES (256 * 1024)
#define READ_ROOM 4096 /* room a streaming body read asks for */

static const mica__http_ops_t h1_ops;

/* ---- buffers and the socket ------------------------------------------------------ */

static void release_buffers(mica__http_conn_t *c)
{
    mica__http_buf_release(c->w, &c->in);
    mica__http_buf_release(c->w, &c->out);
    mica__arena_destroy(&c->arena);
}

void mica__http_conn_close(mica__http_conn_t *c)
{
    mica__http_worker_t *w = c->w;
    if (c->parked) {
        mica__list_remove(&c->idle_link);
        c->parked = false;
    }
    mica__list_remove(&c->link);
    MICA__HTTP_COUNT(&w->nconns, -1);
    if (c->tls.ssl) {
        mica__tls_shutdown(&c->tls);
        mica__tls_free(&c->tls);
    }
    mica_net_close(c->fd);
    release_buffers(c);
    mica__free(c);
}

ssize_t mica__http_conn_recv(mica__http_conn_t *c, void *buf, size_t len, int64_t deadline)
{
    if (c->tls.ssl)
        return mica__tls_read(&c->tls, buf, len, deadline);
    for (;;) {
        /* recv(2), not read(2): the socket call skips the VFS layer, ~2% of
         * a keep-alive request's CPU in docs/benchmarks.md's runs. */
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

int mica__http_conn_write(mica__http_conn_t *c, const void *buf, size_t len, int64_t deadline)
{
    if (c->tls.ssl)
        return mica__tls_write(&c->tls, buf, len, deadline);
    return mica_net_write(c->fd, buf, len, NULL, deadline);
}

/* Points the head's strings (and the body, params) that lie in [from, end]
 * at the same offsets from `to`. */
static void rebase_range(mica__http_conn_t *c, uintptr_t from, uintptr_t end, uintptr_t to)
{
#define MOVE(p)                                                                                   \
    do {                                                                                          \
        if ((p) && (uintptr_t)(p) >= from && (uintptr_t)(p) <= end)                               \
            (p) = (void *)((uintptr_t)(p) - from + to);                                           \
    } while (0)
    mica__http_head_t *h = c->head;
    MOVE(h->method_str);
    MOVE(h->target);
    MOVE(h->path);
    MOVE(h->query);
    for (size_t i = 0; i < h->num_headers; i++) {
        MOVE(h->headers[i].name);
        MOVE(h->headers[i].value);
    }
    mica_http_req_t *req = &c->req;
    MOVE(req->method);
    MOVE(req->path);
    MOVE(req->query);
    MOVE(req->body);
    for (size_t i = 0; i < req->match.nparams; i++)
        MOVE(req->match.values[i]);
#undef MOVE
}

/* Moves the head's strings along with a moved input buffer. */
static void rebase(mica__http_conn_t *c, const char *old)
{
    rebase_range(c, (uintptr_t)old, (uintptr_t)old + c->in.len, (uintptr_t)c->in.data);
}

/*
 * A streaming handler reads its body into the input buffer, which may then
 * grow and move; the strings it got before (method, path, headers, params)
 * must not. So they are copied to the request arena first. Returns 0 or
 * MICA_ENOMEM.
 */
static int pin_head(mica__http_conn_t *c)
{
    char *copy = mica__arena_alloc(&c->arena, c->head_len);
    if (!copy)
        return MICA_ENOMEM;
    memcpy(copy, c->in.data, c->head_len);
    uintptr_t from = (uintptr_t)c->in.data;
    rebase_range(c, from, from + c->head_len, (uintptr_t)copy);
    c->req.headers = c->head->headers;
    return 0;
}

/* Makes room for n more input bytes, rebasing a parsed head if the buffer moved. */
static int in_reserve(mica__http_conn_t *c, size_t n)
{
    const char *old = c->in.data;
    int err = 0;
    if (!mica__buf_reserve(&c->in, n, &err))
        return err;
    if (old && c->in.data != old && c->head_len)
        rebase(c, old);
    return 0;
}

/*
 * Reads what is available into c->in (which has room). Returns bytes read,
 * 0 at EOF, or an error; MICA_EAGAIN when `may_park` and the socket is
 * drained. Waits end with `ctx` (NULL: none) or at `deadline`.
 */
static ssize_t conn_fill(mica__http_conn_t *c, mica_ctx_t *ctx, int64_t deadline, bool may_park)
{
    for (;;) {
        if (c->must_wait) {
            int rc = mica_net_wait(c->fd, MICA_NET_READABLE, ctx, deadline);
            if (rc != 0)
                return rc;
        }
        size_t room = c->in.cap - c->in.len;
        ssize_t n = mica__http_conn_recv(c, c->in.data + c->in.len, room,
                                         mica_deadline_in(c->w->srv->o.write_timeout_ms));
        if (n > 0) {
            /* A short read drained the socket; TLS may still hold records. */
            c->must_wait = c->tls.ssl ? mica__tls_drained(&c->tls) : (size_t)n < room;
            c->in.len += (size_t)n;
            return n;
        }
        if (n != MICA_EAGAIN)
            return n;
        c->must_wait = true;
        if (may_park)
            return MICA_EAGAIN;
    }
}

static int conn_flush(mica__http_conn_t *c)
{
    int rc = 0;
    if (mica__buf_len(&c->out))
        rc = mica__http_conn_write(c, mica__buf_data(&c->out), mica__buf_len(&c->out),
                                   mica_deadline_in(c->w->srv->o.write_timeout_ms));
    mica__buf_reset(&c->out);
    if (c->out.cap > OUT_KEEP_BYTES)
        mica__http_buf_release(c->w, &c->out);
    return rc;
}

static int out_append_slow(mica__http_conn_t *c, const void *p, size_t len)
{
    if (!c->out.data && mica__http_buf_ready(c->w, &c->out) != 0)
        return MICA_ENOMEM;
    return mica__buf_append(&c->out, p, len);
}

/* The response path appends a dozen small pieces: the common case is inline. */
static inline int out_append(mica__http_conn_t *c, const void *p, size_t len)
{
    mica__buf_t *b = &c->out;
    if (len == 0 || len > b->cap - b->len)
        return out_append_slow(c, p, len);
    memcpy(b->data + b->len, p, len);
    b->len += len;
    return 0;
}

/* Flush, half-close, drain the client's unread bytes briefly, then close. */
static void conn_linger_close(mica__http_conn_t *c)
{
    bool flushed = conn_flush(c) == 0;
    if (flushed)
        mica__tls_shutdown(&c->tls); /* TLS: close_notify before the FIN */
    if (flushed && shutdown(c->fd, SHUT_WR) == 0) {
        int64_t deadline = mica_deadline_in(LINGER_MS);
        char sink[4096];
        size_t total = 0;
        while (total < LINGER_BYTES) {
            ssize_t n = mica_net_read(c->fd, sink, sizeof(sink), NULL, deadline);
            if (n <= 0)
                break;
            total += (size_t)n;
        }
    }
    mica__http_conn_close(c);
}

/* ---- responses (the HTTP/1.1 operations) ------------------------------------------- */

enum { FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE };

/* Appends the status line and header section; `len` is the Content-Length (FRAME_LENGTH). */
static int put_head(mica__http_conn_t *c, mica_http_resp_t *resp, const char *content_type,
                    int framing, size_t len, const mica__http_field_t *extra, size_t nextra)
{
    int status = resp->status;
    char head[256];
    size_t n = 0;
    memcpy(head, "HTTP/1.1 ", 9);
    n = 9;
    n += mica__http_u64_dec(head + n, (uint64_t)status);
    head[n++] = ' ';
    const char *reason = mica_http_status_reason(status);
    size_t rl = strlen(reason);
    memcpy(head + n, reason, rl);
    n += rl;
    memcpy(head + n, "\r\n", 2);
    n += 2;
    const char *date;
    size_t date_len;
    mica__http_date(c->w, &date, &date_len);
    memcpy(head + n, date, date_len);
    n += date_len;

    bool no_body = status == 204 || status == 304;
    int rc = out_append(c, head, n);
    if (rc == 0 && content_type && !no_body) {
        rc = out_append(c, "Content-Type: ", 14);
        if (rc == 0)
            rc = out_append(c, content_type, strlen(content_type));
        if (rc == 0)
            rc = out_append(c, "\r\n", 2);
    }
    n = 0;
    if (framing == FRAME_LENGTH && status != 204) {
        memcpy(head, "Content-Length: ", 16);
        n = 16 + mica__http_u64_dec(head + 16, no_body ? 0 : len);
        memcpy(head + n, "\r\n", 2);
        n += 2;
    } else if (framing == FRAME_CHUNKED && !no_body) {
        memcpy(head, "Transfer-Encoding: chunked\r\n", 28);
        n = 28;
    }
    if (framing == FRAME_CLOSE || c->close || mica_worker_stopping()) {
        c->close = true;
        memcpy(head + n, "Connection: close\r\n", 19);
        n += 19;
    } else if (c->version_minor == 0) {
        memcpy(head + n, "Connection: keep-alive\r\n", 24);
        n += 24;
    }
    if (rc == 0)
        rc = out_append(c, head, n);
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        const mica__http_field_t *f = pass ? extra : resp->fields;
        size_t nf = pass ? nextra : resp->nfields;
        for (size_t i = 0; i < nf && rc == 0; i++) {
            rc = out_append(c, f[i].name, f[i].name_len);
            if (rc == 0)
                rc = out_append(c, ": ", 2);
            if (rc == 0)
                rc = out_append(c, f[i].value, f[i].value_len);
            if (rc == 0)
                rc = out_append(c, "\r\n", 2);
        }
    }
    if (rc == 0)
        rc = out_append(c, "\r\n", 2);
    return rc;
}

static int h1_send(mica_http_resp_t *resp, const char *content_type, const void *body, size_t len)
{
    mica__http_conn_t *c = resp->req->proto;
    size_t start = c->out.len;
    bool no_body = resp->status == 204 || resp->status == 304;
    int rc = put_head(c, resp, content_type, FRAME_LENGTH, len, NULL, 0);
    if (rc == 0 && len && !no_body && !c->head_only)
        rc = out_append(c, body, len);
    if (rc != 0) {
        c->out.len = start; /* drop the partial response; the caller maps rc */
        return rc;
    }
    resp->bytes_out += c->out.len - start;
    return 0;
}

/* Sends the head of a response in parts: chunked on HTTP/1.1, close-delimited on 1.0. */
static int h1_stream_head(mica__http_conn_t *c, mica_http_resp_t *resp)
{
    size_t start = c->out.len;
    c->chunked_out = c->version_minor == 1;
    int rc = put_head(c, resp, resp->content_type, c->chunked_out ? FRAME_CHUNKED : FRAME_CLOSE,
                      0, NULL, 0);
    if (rc != 0) {
        c->out.len = start;
        return rc;
    }
    resp->bytes_out += c->out.len - start;
    resp->sent = true;
    return 0;
}

static int h1_write(mica_http_resp_t *resp, const void *p, size_t n)
{
    mica__http_conn_t *c = resp->req->proto;
    int rc;
    if (!resp->sent && (rc = h1_stream_head(c, resp)) != 0)
        return rc;
    bool no_body = resp->status == 204 || resp->status == 304 || c->head_only;
    if (n && !no_body) {
        size_t start = c->out.len;
        if (c->chunked_out) {
            char size[24];
            int k = snprintf(size, sizeof(size), "%zx\r\n", n);
            rc = out_append(c, size, (size_t)k);
        } else {
            rc = 0;
        }
        if (rc == 0)
            rc = out_append(c, p, n);
        if (rc == 0 && c->chunked_out)
            rc = out_append(c, "\r\n", 2);
        if (rc != 0) {
            c->out.len = start;
            return rc;
        }
        resp->bytes_out += c->out.len - start;
    }
    /* A part goes out now: the next may be long in coming. */
    if (conn_flush(c) != 0) {
        c->close = true;
        mica__http_req_cancel(resp->req);
        return MICA_ECANCELED;
    }
    return 0;
}

/* Whether a TE field value lists "trailers" (RFC 9110 §10.1.4). */
static bool te_trailers(const mica_http_req_t *req)
{
    const char *te = mica_http_req_header(req, "te");
    for (const char *p = te; p && (p = strcasestr(p, "trailers")); p += 8)
        if ((p == te || p[-1] == ' ' || p[-1] == ',') && (!p[8] || p[8] == ',' || p[8] == ' ' ||
                                                          p[8] == ';'))
            return true;
    return false;
}

static int h1_end(mica_http_resp_t *resp)
{
    mica__http_conn_t *c = resp->req->proto;
    if (!resp->sent) { /* nothing written: one head, trailers among its fields */
        size_t start = c->out.len;
        int rc = put_head(c, resp, resp->content_type, FRAME_LENGTH, 0, resp->trailers,
                          resp->ntrailers);
        if (rc != 0) {
            c->out.len = start;
            return rc;
        }
        resp->bytes_out += c->out.len - start;
        resp->sent = true;
        return 0;
    }
    if (!c->chunked_out || resp->status == 204 || resp->status == 304 || c->head_only)
        return 0;
    size_t start = c->out.len;
    int rc = out_append(c, "0\r\n", 3);
    bool trailers = resp->ntrailers && c->version_minor == 1 && te_trailers(resp->req);
    for (size_t i = 0; trailers && i < resp->ntrailers && rc == 0; i++) {
        const mica__http_field_t *f = &resp->trailers[i];
        rc = out_append(c, f->name, f->name_len);
        if (rc == 0)
            rc = out_append(c, ": ", 2);
        if (rc == 0)
            rc = out_append(c, f->value, f->value_len);
        if (rc == 0)
            rc = out_append(c, "\r\n", 2);
    }
    if (rc == 0)
        rc = out_append(c, "\r\n", 2);
    if (rc != 0) {
        c->out.len = start;
        c->close = true; /* the body cannot be terminated: the close ends it */
        return rc;
    }
    resp->bytes_out += c->out.len - start;
    return 0;
}

static void h1_abort(mica_http_resp_t *resp)
{
    mica__http_conn_t *c = resp->req->proto;
    c->close = true; /* a chunked body without its last chunk: the client sees the cut */
}

/* ---- streaming request bodies --------------------------------------------------------- */

/* Decodes the raw bytes buffered so far. 0 or MICA_EPROTO. */
static int body_decode(mica__http_conn_t *c)
{
    if (c->berr)
        return MICA_EPROTO;
    if (!c->bchunked) {
        size_t n = c->in.len - c->braw;
        if (n > c->bremaining)
            n = (size_t)c->bremaining;
        c->bend += n;
        c->braw += n;
        c->bremaining -= n;
        c->beof = c->bremaining == 0;
        return 0;
    }
    while (!c->beof && c->braw < c->in.len) {
        size_t len = c->in.len - c->braw, out = 0;
        int r = mica__http_chunked_decode(&c->bdec, c->in.data + c->braw, &len, &out);
        if (r < 0) {
            c->berr = true;
            return MICA_EPROTO;
        }
        memmove(c->in.data + c->bend, c->in.data + c->braw, out);
        c->bend += out;
        c->braw += len;
        c->beof = r == 1;
    }
    return 0;
}

static size_t stream_max(const mica_http_req_t *req)
{
    const mica__route_t *r = req->route_rc == 0 ? req->match.route : NULL;
    return r && r->max_buffer ? r->max_buffer : req->srv->o.max_body_bytes;
}

static int h1_body_wait_(mica_http_req_t *req, size_t want);

static int h1_body_wait(mica_http_req_t *req, size_t want, const char **data, size_t *len)
{
    mica__http_conn_t *c = req->proto;
    int rc = h1_body_wait_(req, want);
    *data = c->in.data + c->boff;
    *len = c->bend - c->boff;
    return rc;
}

static int h1_body_wait_(mica_http_req_t *req, size_t want)
{
    mica__http_conn_t *c = req->proto;
    mica_http_server_t *srv = c->w->srv;
    if (c->bcontinue) { /* the handler wants the body: invite it (RFC 9110 §10.1.1) */
        c->bcontinue = false;
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (c->braw == c->in.len &&
            (out_append(c, cont, sizeof(cont) - 1) != 0 || conn_flush(c) != 0))
            return MICA_ECANCELED;
    }
    for (;;) {
        if (body_decode(c) != 0)
            return MICA_EPROTO;
        if (c->bend - c->boff >= want)
            return 0;
        if (c->beof)
            return MICA_ECLOSED;
        if (want > stream_max(req))
            return MICA_ELIMIT;
        if (req->cancelled)
            return MICA_ECANCELED;
        if (c->boff > c->head_len) { /* compact: unread bytes right after the head */
            size_t keep = c->bend - c->boff, raw = c->in.len - c->braw;
            memmove(c->in.data + c->head_len, c->in.data + c->boff, keep);
            memmove(c->in.data + c->head_len + keep, c->in.data + c->braw, raw);
            c->boff = c->head_len;
            c->bend = c->braw = c->head_len + keep;
            c->in.len = c->braw + raw;
        }
        size_t have = c->bend - c->boff, room = want - have + READ_ROOM;
        if (c->in.cap - c->in.len < READ_ROOM) {
            int rc = in_reserve(c, room);
            if (rc != 0 && (rc != MICA_ELIMIT || c->in.cap == c->in.len))
                return rc;
        }
        int64_t deadline = mica_deadline_in(srv->o.body_timeout_ms);
        if (req->deadline_ms < deadline)
            deadline = req->deadline_ms;
        ssize_t n = conn_fill(c, req->ctx, deadline, false);
        if (n == 0 || (n < 0 && n != MICA_ETIMEDOUT && n != MICA_ECANCELED)) {
            c->close = true;
            mica__http_req_cancel(req); /* the client is gone */
            return MICA_ECANCELED;
        }
        if (n < 0)
            return req->ctx && mica_ctx_err(req->ctx) ? mica_ctx_err(req->ctx) : (int)n;
        req->bytes_in += (uint64_t)n;
    }
}

static void h1_body_consume(mica_http_req_t *req, size_t n)
{
    mica__http_conn_t *c = req->proto;
    c->boff += n <= c->bend - c->boff ? n : c->bend - c->boff;
}

static const mica__http_ops_t h1_ops = {
    .send = h1_send,
    .write = h1_write,
    .end = h1_end,
    .abort = h1_abort,
    .body_wait = h1_body_wait,
    .body_consume = h1_body_consume,
};

/* ---- reading a request ----------------------------------------------------------- */

/* Result of reading one request's head: the parser's length, or why not. */
enum { READ_EOF = -1, READ_QUIET = -2, READ_PARK = -3, READ_H2 = -4 };

/*
 * Buffers a complete head. Returns its length (> 0), READ_EOF / READ_QUIET
 * (close without answering), READ_PARK (idle between requests with the
 * socket drained: wait without a coroutine), or a negative HTTP status.
 */
static int read_head(mica__http_conn_t *c, int64_t *head_deadline)
{
    mica_http_server_t *srv = c->w->srv;
    for (;;) {
        if (c->in.len) {
            /* A new connection that opens with the HTTP/2 preface is h2c. */
            if (c->requests == 0 && c->in.data[0] == 'P') {
                size_t n = c->in.len < MICA__H2_PREFACE_LEN ? c->in.len : MICA__H2_PREFACE_LEN;
                if (memcmp(c->in.data, MICA__H2_PREFACE, n) == 0) {
                    if (n == MICA__H2_PREFACE_LEN)
                        return READ_H2;
                    goto more;
                }
            }
            int r = mica__http_parse_head(c->in.data, c->in.len, &srv->limits, c->head);
            if (r != 0)
                return r;
            if (c->in.len >= c->in.cap && in_reserve(c, c->in.cap) != 0)
                return -503;
        }
    more:
        if (mica__buf_len(&c->out) && conn_flush(c) != 0)
            return READ_QUIET;
        int64_t deadline;
        if (c->in.len == 0) {
            if (mica_worker_stopping())
                return READ_QUIET;
            if (c->requests > 0 && c->must_wait)
                return READ_PARK;
            c->idle = true;
            deadline = mica_deadline_in(srv->o.idle_timeout_ms);
            if (*head_deadline < deadline)
                deadline = *head_deadline; /* a new connection's first request */
        } else {
            deadline = *head_deadline;
        }
        ssize_t n = conn_fill(c, NULL, deadline, c->in.len == 0 && c->requests > 0);
        if (n == MICA_EAGAIN) { /* TLS found the socket drained between requests */
            c->idle = false;
            return READ_PARK;
        }
        if (c->idle) {
            c->idle = false;
            *head_deadline = mica_deadline_in(srv->o.header_timeout_ms);
            if (srv->nobs)
                c->start_ns = mica__http_now_ns(); /* observers time from the first byte */
        }
        if (n == 0)
            return READ_EOF;
        if (n == MICA_ETIMEDOUT)
            return c->in.len ? -408 : READ_QUIET;
        if (n < 0)
            return READ_QUIET;
    }
}

/*
 * Reads the whole body framed by c->head after a head of `head_len` bytes
 * (a buffered route). Returns 0 with req.body set and *consumed = bytes of
 * this request in c->in, or a negative HTTP status, or READ_EOF/READ_QUIET.
 */
static int read_body(mica__http_conn_t *c, size_t head_len, size_t *consumed)
{
    mica_http_server_t *srv = c->w->srv;
    mica__http_head_t *h = c->head;
    mica_http_req_t *req = &c->req;

    if (!h->chunked && h->content_length <= 0) {
        req->body = "";
        req->body_len = 0;
        *consumed = head_len;
        return 0;
    }
    if (h->content_length > 0 && (uint64_t)h->content_length > srv->o.max_body_bytes)
        return -413;
    size_t need = h->chunked ? 0 : head_len + (size_t)h->content_length;
    if (h->expect_continue && c->version_minor == 1 &&
        c->in.len < (h->chunked ? head_len + 1 : need)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (out_append(c, cont, sizeof(cont) - 1) != 0 || conn_flush(c) != 0)
            return READ_QUIET;
    }

    if (!h->chunked) {
        if (need > c->in.cap && in_reserve(c, need - c->in.len) != 0)
            return -503;
        while (c->in.len < need) {
            ssize_t n = conn_fill(c, NULL, mica_deadline_in(srv->o.body_timeout_ms), false);
            if (n == 0)
                return READ_EOF;
            if (n == MICA_ETIMEDOUT)
                return -408;
            if (n < 0)
                return READ_QUIET;
        }
        req->body = c->in.data + head_len;
        req->body_len = (size_t)h->content_length;
        *consumed = need;
        return 0;
    }

    /* Chunked: decode in place, decoded bytes packed right after the head. */
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    size_t body_end = head_len, raw = head_len;
    for (;;) {
        size_t len = c->in.len - raw, out = 0;
        int r = len ? mica__http_chunked_decode(&d, c->in.data + raw, &len, &out) : 0;
        if (r < 0)
            return -400;
        memmove(c->in.data + body_end, c->in.data + raw, out);
        body_end += out;
        raw += len;
        if (body_end - head_len > srv->o.max_body_bytes)
            return -413;
        if (r == 1)
            break;
        /* Everything raw was consumed: keep the buffer compact, then read more. */
        c->in.len = body_end;
        raw = body_end;
        if (c->in.cap - c->in.len < 1024) {
            int rc = in_reserve(c, c->in.cap);
            if (rc == MICA_ELIMIT && c->in.cap == c->in.len)
                return -413;
            if (rc != 0 && rc != MICA_ELIMIT)
                return -503;
        }
        ssize_t n = conn_fill(c, NULL, mica_deadline_in(srv->o.body_timeout_ms), false);
        if (n == 0)
            return READ_EOF;
        if (n == MICA_ETIMEDOUT)
            return -408;
        if (n < 0)
            return READ_QUIET;
    }
    /* Move what follows (pipelined requests) right after the decoded body. */
    size_t rest = c->in.len - raw;
    memmove(c->in.data + body_end, c->in.data + raw, rest);
    c->in.len = body_end + rest;
    req->body = c->in.data + head_len;
    req->body_len = body_end - head_len;
    *consumed = body_end;
    return 0;
}

/* NUL-terminates the head's strings in place (their delimiters are no longer needed). */
static void terminate_strings(mica__http_conn_t *c)
{
    mica__http_head_t *h = c->head;
    ((char *)h->method_str)[h->method_len] = '\0';
    ((char *)h->target)[h->target_len] = '\0';
    if (h->query)
        ((char *)h->path)[h->path_len] = '\0';
    for (size_t i = 0; i < h->num_headers; i++) {
        ((char *)h->headers[i].name)[h->headers[i].name_len] = '\0';
        ((char *)h->headers[i].value)[h->headers[i].value_len] = '\0';
    }
}

static const char *error_message(int status)
{
    switch (status) {
    case 400: return "malformed request";
    case 408: return "request timed out";
    case 413: return "request body too large";
    case 414: return "request target too long";
    case 431: return "request header fields too large";
    case 501: return "transfer coding not implemented";
    case 505: return "HTTP version not supported";
    default: return mica_http_status_reason(status);
    }
}

/* Sets req's method, path and query from the head (absolute-form routes on its path). */
static void set_target(mica__http_conn_t *c)
{
    mica__http_head_t *h = c->head;
    mica_http_req_t *req = &c->req;
    const char *path = h->path;
    size_t path_len = h->path_len;
    req->method = h->method_str;
    req->method_len = h->method_len;
    req->query = h->query;
    if (path_len && path[0] != '/') {
        /* absolute-form (RFC 9112 §3.2.2): route on its path. */
        if (path_len > 7 && (strncasecmp(path, "http://", 7) == 0 ||
                             strncasecmp(path, "https://", 8) == 0)) {
            const char *p = memchr(path + 8, '/', path_len - 8);
            path_len = p ? path_len - (size_t)(p - path) : 1;
            path = p ? p : "/";
        } else if (!(path_len == 1 && path[0] == '*' && h->method == MICA__HTTP_OPTIONS)) {
            req->path = path;
            req->path_len = path_len;
            req->route_rc = -400;
            return;
        }
    }
    req->path = path;
    req->path_len = path_len;
    mica__http_route(req);
}

/* Answers a request the server refuses by itself, observed like any other. */
static void refuse(mica__http_conn_t *c, int status)
{
    mica__http_gates_done(&c->req); /* admitted at the head, given up on with its body */
    c->close = true;
    mica__http_send_error(&c->resp, status, error_message(status));
    mica__http_observe(&c->req, &c->resp);
}

/* ---- the connection coroutine -------------------------------------------------------- */

/*
 * Parks an idle keep-alive connection: its coroutine ends and its buffers go
 * back to the pool; the next readable edge spawns the coroutine again.
 * Returns false when data is already there (keep going in this coroutine).
 */
static bool park(mica__http_conn_t *c)
{
    release_buffers(c);
    int rc = mica_net_on_readable(c->fd, mica__http_conn_main, c);
    if (rc == MICA_EAGAIN) {
        c->must_wait = false;
        return false;
    }
    if (rc != 0)
        return false; /* cannot arm: wait in this coroutine instead */
    c->parked = true;
    c->idle_since_ms = mica_now_ms();
    mica__list_push_back(&c->w->idle, &c->idle_link);
    return true;
}

void mica__http_conn_main(void *arg)
{
    mica__http_conn_t *c = arg;
    mica__http_worker_t *w = c->w;
    mica_http_server_t *srv = w->srv;
    mica__http_head_t head;
    c->head = &head;
    c->head_len = 0;
    if (c->parked) { /* woken by data (or a hang-up) on a parked connection */
        mica__list_remove(&c->idle_link);
        c->parked = false;
        c->must_wait = false;
    }
    int64_t head_deadline = mica_deadline_in(srv->o.header_timeout_ms);
    if (c->tls_pending) { /* the handshake counts against the first head's time */
        c->tls_pending = false;
        c->idle = true; /* no request yet: the drain may close it */
        bool h2 = false;
        int rc = mica__tls_accept(&c->tls, srv->tls, c->fd, head_deadline, &h2);
        c->idle = false;
        if (rc != 0) {
            mica__http_conn_close(c);
            return;
        }
        if (h2) {
            if (mica__http_buf_ready(w, &c->in) == 0)
                mica__h2_serve(c);
            mica__http_conn_close(c);
            return;
        }
    }

    for (;;) {
        if (!c->in.data && mica__http_buf_ready(w, &c->in) != 0) {
            mica__http_conn_close(c);
            return;
        }
        c->head_len = 0;
        if (srv->nobs)
            c->start_ns = mica__http_now_ns();
        int r = read_head(c, &head_deadline);
        if (r == READ_H2) {
            mica__h2_serve(c);
            mica__http_conn_close(c);
            return;
        }
        if (r == READ_PARK) {
            if (park(c))
                return;
            if (c->must_wait)
                c->requests = 0; /* could not arm: wait in this coroutine for once */
            continue;
        }
        if (r == READ_EOF || r == READ_QUIET) {
            conn_flush(c);
            mica__http_conn_close(c);
            return;
        }
        mica__http_req_init(&c->req, &c->resp, srv, &h1_ops, c, &c->arena);
        c->req.start_ns = c->start_ns;
        c->version_minor = r > 0 ? c->head->version_minor : 1;
        c->head_only = false;
        c->req.version = 10 + c->version_minor;
        c->req.fd = c->fd;
        c->req.sock = c->fd;
        c->req.peer = c->peer;
        c->req.tls_peer = c->tls.peer;
        if (r < 0) {
            c->req.bytes_in = c->in.len;
            refuse(c, -r);
            conn_linger_close(c);
            return;
        }
        size_t head_len = (size_t)r, consumed = 0;
        mica__http_head_t *h = c->head;
        mica_http_req_t *req = &c->req;
        c->close = !h->keep_alive;
        c->head_only = h->method == MICA__HTTP_HEAD;
        c->head_len = head_len;
        req->bytes_in = head_len;
        terminate_strings(c);
        req->headers = h->headers;
        req->nheaders = h->num_headers;

        /* An expectation other than 100-continue cannot be met (RFC 9110 §10.1.1). */
        if (!h->expect_continue && c->version_minor == 1 && mica_http_req_header(req, "expect")) {
            refuse(c, 417);
            conn_linger_close(c);
            return;
        }
        set_target(c);
        if (req->streaming && pin_head(c) != 0) {
            refuse(c, 503);
            conn_linger_close(c);
            return;
        }
        if (req->streaming) {
            c->boff = c->bend = c->braw = head_len;
            c->bchunked = h->chunked;
            c->bremaining = !h->chunked && h->content_length > 0 ? (uint64_t)h->content_length : 0;
            c->beof = !h->chunked && c->bremaining == 0;
            c->berr = false;
            c->bcontinue = h->expect_continue && c->version_minor == 1;
            c->chunked_out = false;
            if (h->chunked)
                mica__http_chunked_init(&c->bdec);
            req->body = "";
        } else {
            r = read_body(c, head_len, &consumed);
            if (r == READ_EOF || r == READ_QUIET) {
                mica__http_gates_done(req);
                mica__http_conn_close(c);
                return;
            }
            if (r < 0) {
                refuse(c, -r);
                conn_linger_close(c);
                return;
            }
            req->bytes_in = consumed;
        }
        MICA__HTTP_COUNT(&w->requests, 1);
        c->requests++;
        mica__http_serve(req, &c->resp);
        if (req->streaming) {
            body_decode(c); /* a small body may be all there, unread */
            if (!c->beof || c->berr)
                c->close = true; /* the rest of the body is still on the wire */
            consumed = c->braw;
        }
        mica__arena_reset(&c->arena);
        c->head_len = 0;

        /* Keep what follows this request (pipelining) at the front. */
        if (consumed > c->in.len)
            consumed = c->in.len;
        c->in.len -= consumed;
        if (c->in.len)
            memmove(c->in.data, c->in.data + consumed, c->in.len);
        if (c->in.cap > MICA__HTTP_BUF_BYTES * 4 && c->in.len <= MICA__HTTP_BUF_BYTES) {
            char *in = mica__http_buf_get(w);
            if (in) {
                memcpy(in, c->in.data, c->in.len);
                mica__free(c->in.data);
                c->in.data = in;
                c->in.cap = MICA__HTTP_BUF_BYTES;
            }
        }
        if (c->close || mica_worker_stopping()) {
            conn_linger_close(c);
            return;
        }
        if (mica__buf_len(&c->out) >= OUT_FLUSH_BYTES && conn_flush(c) != 0) {
            mica__http_conn_close(c);
            return;
        }
        head_deadline = mica_deadline_in(srv->o.header_timeout_ms);
    }
}

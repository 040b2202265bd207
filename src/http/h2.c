/* SPDX-License-Identifier: MIT */
/*
 * HTTP/2 (h2c, prior knowledge) on the HTTP/1.1 listeners, through nghttp2.
 *
 * The connection's coroutine owns the nghttp2 session and is the only one
 * that reads or writes the socket: it feeds what it reads to
 * nghttp2_session_mem_recv() and writes what nghttp2_session_mem_send()
 * produces. Each request stream runs its handler in a coroutine of its own,
 * through the same router and handler API as HTTP/1.1; a handler's response
 * is submitted to the session from that coroutine (same worker, so the
 * session is never used concurrently) and the connection coroutine, if it
 * is waiting to read, is nudged with mica_net_cancel() to flush it.
 *
 * A stream is freed when both its coroutine has finished and nghttp2 has
 * closed it, whichever comes last. A stream reset by the client cancels its
 * handler's ctx. Limits: SETTINGS advertise max concurrent streams and
 * header list size (nghttp2 refuses streams beyond them), request bodies
 * over max_body_bytes get 413, and a client resetting streams faster than
 * RESET_BUDGET per second (CVE-2023-44487, "rapid reset") gets GOAWAY
 * ENHANCE_YOUR_CALM. On worker shutdown the connection sends GOAWAY, lets
 * the streams in flight finish, then closes.
 */
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "http/internal.h"
#include "runtime/internal.h"
#include "mica/net.h"
#include "mica/sync.h"

#define MAX_STREAMS 128
#define RESET_BUDGET 200 /* client RST_STREAMs per second before GOAWAY */
#define WINDOW_BYTES (1 << 20)

typedef struct h2conn {
    mica__http_conn_t *c;
    mica_http_server_t *srv;
    nghttp2_session *sess;
    mica__h2_stream_t *streams; /* every stream not yet freed */
    mica_wg_t *running;         /* stream coroutines still running */
    bool reading;               /* the connection coroutine waits to read */
    bool goaway;
    int64_t reset_window_ms;
    int resets;
} h2conn_t;

struct mica__h2_stream {
    h2conn_t *hc;
    int32_t id;
    mica__h2_stream_t *prev, *next;
    mica__arena_t arena; /* header strings, response header values */
    mica__http_field_t headers[MICA__HTTP_MAX_HEADERS];
    size_t nheaders, head_bytes;
    const char *method, *path, *authority;
    size_t method_len, path_len;
    char *body;
    size_t body_len, body_cap;
    bool too_large, bad;
    bool running, closed;
    mica_http_req_t req;
    mica_http_resp_t resp;
    char *out; /* response body being sent */
    size_t out_len, out_off, out_cap;

    /* Streaming (gRPC) streams: the handler runs from the end of the headers
     * and reads the body as it arrives (body[in_off..body_len)). */
    bool grpc;          /* content-type application/grpc* */
    bool streaming;     /* served by srv->stream_fn */
    bool in_eof;        /* the client ended its side */
    size_t in_off;      /* bytes of body already taken by the reader */
    size_t unconsumed;  /* received bytes not yet returned to the stream window */
    bool out_started;   /* response headers submitted */
    bool out_eof;       /* the handler has finished writing */
    bool out_deferred;  /* the data provider is waiting for bytes */
    mica__http_field_t *trailers;
    size_t ntrailers;
    mica__coro_t *in_waiter, *out_waiter;
    uint64_t in_seq, out_seq;
};

/* ---- streams ------------------------------------------------------------------- */

/* Freed streams go to a LIFO pool of the worker's, shared by its
 * connections, so a burst of requests reuses the same few cache-hot streams
 * whichever connection they came on. */
#define MAX_SPARE 256               /* streams a worker keeps for reuse */
#define SPARE_BUF_BYTES (64 * 1024) /* larger body/out buffers are not kept */

/* A stream for `id`: a spare one (arena block and buffers kept, all else zeroed) or a new one. */
static mica__h2_stream_t *stream_new(h2conn_t *hc, int32_t id)
{
    mica__http_worker_t *w = hc->c->w;
    mica__h2_stream_t *s = w->h2_spare;
    if (s) {
        w->h2_spare = s->next;
        w->nh2_spare--;
        mica__arena_t arena = s->arena;
        char *body = s->body, *out = s->out;
        size_t body_cap = s->body_cap, out_cap = s->out_cap;
        memset(s, 0, offsetof(mica__h2_stream_t, headers));
        memset(&s->nheaders, 0, sizeof(*s) - offsetof(mica__h2_stream_t, nheaders));
        s->arena = arena;
        s->body = body;
        s->body_cap = body_cap;
        s->out = out;
        s->out_cap = out_cap;
    } else if (!(s = calloc(1, sizeof(*s)))) {
        return NULL;
    }
    s->hc = hc;
    s->id = id;
    s->next = hc->streams;
    if (hc->streams)
        hc->streams->prev = s;
    hc->streams = s;
    return s;
}

static void stream_destroy(mica__h2_stream_t *s)
{
    mica__arena_destroy(&s->arena);
    free(s->body);
    free(s->out);
    free(s);
}

static void stream_free(mica__h2_stream_t *s)
{
    h2conn_t *hc = s->hc;
    if (s->prev)
        s->prev->next = s->next;
    else
        hc->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    mica__http_worker_t *w = hc->c->w;
    if (w->nh2_spare >= MAX_SPARE || s->body_cap > SPARE_BUF_BYTES || s->out_cap > SPARE_BUF_BYTES) {
        stream_destroy(s);
        return;
    }
    mica__arena_reset(&s->arena);
    s->next = w->h2_spare;
    w->h2_spare = s;
    w->nh2_spare++;
}

void mica__h2_worker_free(mica__http_worker_t *w)
{
    while (w->h2_spare) {
        mica__h2_stream_t *s = w->h2_spare;
        w->h2_spare = s->next;
        stream_destroy(s);
    }
    w->nh2_spare = 0;
}

static char *arena_strndup(mica__arena_t *a, const uint8_t *p, size_t n)
{
    char *s = mica__arena_alloc(a, n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static void nudge(h2conn_t *hc)
{
    if (hc->reading)
        mica_net_cancel(hc->c->fd);
}

static void stream_main(void *arg)
{
    mica__h2_stream_t *s = arg;
    h2conn_t *hc = s->hc;
    mica_http_req_t *req = &s->req;
    mica_http_resp_t *resp = &s->resp;

    if (s->bad) {
        mica_http_resp_error(resp, 400, "malformed request");
    } else if (s->too_large) {
        mica_http_resp_error(resp, 413, "request body too large");
    } else {
        req->method = s->method;
        req->path = s->path;
        const char *q = memchr(s->path, '?', s->path_len);
        size_t path_len = s->path_len;
        if (q) {
            path_len = (size_t)(q - s->path);
            ((char *)s->path)[path_len] = '\0';
            req->query = q + 1;
        }
        req->headers = s->headers;
        req->nheaders = s->nheaders;
        req->body = s->body ? s->body : "";
        req->body_len = s->body_len;
        hc->c->w->requests++;
        mica__http_call(hc->srv, req, resp, s->method_len, path_len);
    }
    s->running = false;
    if (s->closed)
        stream_free(s);
    else
        nudge(hc);
    mica_wg_done(hc->running);
}

static void wake(mica__coro_t **w, uint64_t seq)
{
    if (*w) {
        mica__coro_t *co = *w;
        *w = NULL;
        mica__wake_any(co->loop, co, seq, 0);
    }
}

static ssize_t read_body(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *user)
{
    mica__h2_stream_t *s = src->ptr;
    size_t n = s->out_len - s->out_off;
    if (n > len)
        n = len;
    memcpy(buf, s->out + s->out_off, n);
    s->out_off += n;
    if (s->streaming) {
        if (s->out_off == s->out_len)
            s->out_off = s->out_len = 0;
        if (s->out_len - s->out_off < MICA__H2_OUT_LOW_WATER)
            wake(&s->out_waiter, s->out_seq);
        if (s->out_len == 0 && !s->out_eof) {
            if (n == 0) {
                s->out_deferred = true;
                return NGHTTP2_ERR_DEFERRED;
            }
            return (ssize_t)n;
        }
        if (s->out_len == 0 && s->out_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (s->ntrailers) {
                nghttp2_nv nva[MICA__HTTP_MAX_HEADERS];
                size_t k = 0;
                for (size_t i = 0; i < s->ntrailers && k < MICA__HTTP_MAX_HEADERS; i++)
                    nva[k++] = (nghttp2_nv){(uint8_t *)s->trailers[i].name,
                                            (uint8_t *)s->trailers[i].value,
                                            s->trailers[i].name_len, s->trailers[i].value_len,
                                            NGHTTP2_NV_FLAG_NONE};
                if (nghttp2_submit_trailer(sess, id, nva, k) == 0)
                    *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            }
        }
        return (ssize_t)n;
    }
    if (s->out_off == s->out_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static size_t dec(char *buf, size_t v)
{
    size_t n = mica__http_u64_dec(buf, v);
    buf[n] = '\0';
    return n;
}

static nghttp2_nv nv(const char *name, const char *value, size_t vlen)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), vlen,
                        NGHTTP2_NV_FLAG_NONE};
}

int mica__h2_respond(mica_http_resp_t *resp, int status, const char *content_type,
                     const void *body, size_t len)
{
    mica__h2_stream_t *s = resp->h2;
    h2conn_t *hc = s->hc;
    if (s->closed) { /* reset by the client: nothing to send, nothing to fail */
        resp->sent = true;
        return 0;
    }
    nghttp2_nv nva[64];
    size_t n = 0;
    char st[4], cl[24];
    dec(st, (size_t)status);
    nva[n++] = nv(":status", st, 3);
    bool no_body = status == 204 || status == 304;
    if (content_type && !no_body)
        nva[n++] = nv("content-type", content_type, strlen(content_type));
    if (!no_body)
        nva[n++] = nv("content-length", cl, dec(cl, len));
    /* Extra headers, kept as "Name: value\r\n" lines: lower-case names (RFC 9113 §8.2.1). */
    const char *p = resp->headers, *end = p ? p + resp->headers_len : NULL;
    while (p && p < end && n < 64) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!colon || !eol)
            break;
        char *name = mica__arena_alloc(&s->arena, (size_t)(colon - p) + 1);
        if (!name)
            return MICA_ENOMEM;
        for (size_t i = 0; i < (size_t)(colon - p); i++)
            name[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
        name[colon - p] = '\0';
        if (strcmp(name, "connection") != 0 && strcmp(name, "keep-alive") != 0 &&
            strcmp(name, "transfer-encoding") != 0) /* connection-specific: not in h2 */
            nva[n++] = nv(name, colon + 2, (size_t)(eol - colon - 2));
        p = eol + 2;
    }
    bool head = s->method_len == 4 && memcmp(s->method, "HEAD", 4) == 0;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    bool with_body = len && !no_body && !head;
    if (with_body) {
        if (len > s->out_cap) { /* a reused stream may have a buffer already */
            free(s->out);
            if (!(s->out = malloc(len))) {
                s->out_cap = 0;
                return MICA_ENOMEM;
            }
            s->out_cap = len;
        }
        memcpy(s->out, body, len);
        s->out_len = len;
    }
    int rv = nghttp2_submit_response(hc->sess, s->id, nva, n, with_body ? &prd : NULL);
    if (rv != 0)
        return rv == NGHTTP2_ERR_NOMEM ? MICA_ENOMEM : MICA_EPROTO;
    resp->sent = true;
    resp->status = status;
    return 0;
}

/* ---- nghttp2 callbacks ----------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *sess, const nghttp2_frame *f, void *user)
{
    h2conn_t *hc = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    mica__h2_stream_t *s = stream_new(hc, f->hd.stream_id);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* refuses this stream only */
    nghttp2_session_set_stream_user_data(sess, f->hd.stream_id, s);
    return 0;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    h2conn_t *hc = user;
    mica__h2_stream_t *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (!s || f->hd.type != NGHTTP2_HEADERS)
        return 0; /* trailers of a request: ignored */
    s->head_bytes += namelen + valuelen + 32; /* RFC 9113 §6.5.2 accounting */
    if (s->head_bytes > hc->srv->o.max_head_bytes)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    char *v = arena_strndup(&s->arena, value, valuelen);
    if (!v)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (namelen && name[0] == ':') {
        if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
            s->method = v;
            s->method_len = valuelen;
        } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
            s->path = v;
            s->path_len = valuelen;
        } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
            s->authority = v;
        }
        return 0;
    }
    if (s->nheaders >= hc->srv->o.max_headers)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (namelen == 12 && memcmp(name, "content-type", 12) == 0 && valuelen >= 16 &&
        memcmp(value, "application/grpc", 16) == 0 && (valuelen == 16 || value[16] == '+' ||
                                                          value[16] == ';'))
        s->grpc = true;
    char *n = arena_strndup(&s->arena, name, namelen);
    if (!n)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->headers[s->nheaders++] = (mica__http_field_t){n, namelen, v, valuelen};
    return 0;
}

/* Returns `n` received bytes of stream `id` to the peer's flow-control
 * windows (automatic WINDOW_UPDATE is off so that streaming readers can
 * hold back their stream's window). */
static void give_back(h2conn_t *hc, int32_t id, size_t n)
{
    if (n) {
        nghttp2_session_consume_connection(hc->sess, n);
        if (id)
            nghttp2_session_consume_stream(hc->sess, id, n);
    }
}

/* The connection window always flows; a streaming stream's own window is
 * returned while what it has buffered fits one message, so a reader that
 * stops reading stops its sender after one window. */
static void give_back_streaming(h2conn_t *hc, mica__h2_stream_t *s)
{
    size_t buffered = s->body_len - s->in_off;
    if (s->unconsumed && buffered <= hc->srv->stream_max_buffer) {
        nghttp2_session_consume_stream(hc->sess, s->id, s->unconsumed);
        s->unconsumed = 0;
    }
}

static int grow_body(mica__h2_stream_t *s, size_t need, size_t max)
{
    if (need <= s->body_cap)
        return 0;
    size_t cap = s->body_cap ? s->body_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (cap > max)
        cap = max;
    char *b = realloc(s->body, cap);
    if (!b)
        return MICA_ENOMEM;
    s->body = b;
    s->body_cap = cap;
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *user)
{
    h2conn_t *hc = user;
    mica__h2_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (s && s->streaming) {
        nghttp2_session_consume_connection(sess, len);
        if (s->in_off && s->in_off == s->body_len)
            s->in_off = s->body_len = 0; /* all taken: start over */
        if (s->in_off > s->body_cap / 2) { /* compact before growing */
            memmove(s->body, s->body + s->in_off, s->body_len - s->in_off);
            s->body_len -= s->in_off;
            s->in_off = 0;
        }
        size_t max = hc->srv->stream_max_buffer + WINDOW_BYTES;
        if (s->body_len + len > max || grow_body(s, s->body_len + len, max) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream */
        memcpy(s->body + s->body_len, data, len);
        s->body_len += len;
        s->unconsumed += len;
        give_back_streaming(hc, s);
        wake(&s->in_waiter, s->in_seq);
        return 0;
    }
    give_back(hc, id, len);
    if (!s || s->too_large)
        return 0;
    size_t max = hc->srv->o.max_body_bytes;
    if (len > max - s->body_len) {
        s->too_large = true; /* answered with 413 once the request ends */
        return 0;
    }
    if (grow_body(s, s->body_len + len, max) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    memcpy(s->body + s->body_len, data, len);
    s->body_len += len;
    return 0;
}

static void stream_fn_main(void *arg)
{
    mica__h2_stream_t *s = arg;
    h2conn_t *hc = s->hc;
    hc->c->w->requests++;
    s->req.method = s->method;
    s->req.path = s->path;
    s->req.headers = s->headers;
    s->req.nheaders = s->nheaders;
    s->req.deadline_ms = MICA_NO_DEADLINE;
    hc->srv->stream_fn(s, hc->srv->stream_arg);
    if (!s->out_eof) /* the layer above must finish; make sure the stream ends */
        mica__h2_out_finish(s, 500, NULL, 0);
    if (s->req.ctx) {
        mica_ctx_free(s->req.ctx);
        s->req.ctx = NULL;
    }
    s->running = false;
    if (s->closed)
        stream_free(s);
    else
        nudge(hc);
    mica_wg_done(hc->running);
}

static void dispatch(h2conn_t *hc, mica__h2_stream_t *s)
{
    if (s->running)
        return;
    if (!s->method || !s->path || s->path_len == 0)
        s->bad = true;
    s->req = (mica_http_req_t){.fd = -1, .arena = &s->arena, .tls_peer = hc->c->tls.peer};
    s->resp = (mica_http_resp_t){.h2 = s, .req = &s->req};
    s->running = true;
    s->streaming = s->grpc && !s->bad && hc->srv->stream_fn;
    mica_wg_add(hc->running, 1);
    if (mica_go(s->streaming ? stream_fn_main : stream_main, s) != 0) {
        s->running = false;
        s->streaming = false;
        mica_wg_done(hc->running);
        nghttp2_submit_rst_stream(hc->sess, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_REFUSED_STREAM);
    }
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *user)
{
    h2conn_t *hc = user;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        int64_t now = mica_now_ms();
        if (now - hc->reset_window_ms >= 1000) {
            hc->reset_window_ms = now;
            hc->resets = 0;
        }
        if (++hc->resets > RESET_BUDGET && !hc->goaway) {
            hc->goaway = true;
            nghttp2_submit_goaway(sess, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(sess),
                                  NGHTTP2_ENHANCE_YOUR_CALM, NULL, 0);
            mica__log_warn("h2: too many stream resets, sending GOAWAY");
        }
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    mica__h2_stream_t *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (!s)
        return 0;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    /* gRPC streams start at the end of their headers, others once complete. */
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST && s->grpc &&
        hc->srv->stream_fn)
        dispatch(hc, s);
    if (end && s->streaming) {
        s->in_eof = true;
        wake(&s->in_waiter, s->in_seq);
    } else if (end) {
        dispatch(hc, s);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t error_code, void *user)
{
    mica__h2_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(sess, id, NULL);
    s->closed = true;
    if (s->running) {
        if (s->req.ctx)
            mica_ctx_cancel(s->req.ctx); /* reset: the handler's work is moot */
        wake(&s->in_waiter, s->in_seq);
        wake(&s->out_waiter, s->out_seq);
    } else {
        stream_free(s);
    }
    return 0;
}

/* ---- streaming streams (the gRPC layer) ---------------------------------------- */

mica_http_req_t *mica__h2_req(mica__h2_stream_t *s)
{
    return &s->req;
}

static int wait_on(mica__coro_t **slot, uint64_t *seq, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__loop_t *loop = mica__loop_current();
    *seq = mica__wait_prepare(loop);
    *slot = loop->current;
    int rc = mica__wait_ctx(loop, ctx, deadline_ms, *seq);
    *slot = NULL;
    return rc;
}

int mica__h2_in_wait(mica__h2_stream_t *s, size_t want, mica_ctx_t *ctx, int64_t deadline_ms)
{
    for (;;) {
        if (s->body_len - s->in_off >= want)
            return 0;
        if (s->closed)
            return MICA_ECANCELED;
        if (s->in_eof)
            return MICA_ECLOSED;
        int rc = wait_on(&s->in_waiter, &s->in_seq, ctx, deadline_ms);
        if (rc != 0)
            return rc;
    }
}

const char *mica__h2_in_data(const mica__h2_stream_t *s, size_t *len)
{
    *len = s->body_len - s->in_off;
    return s->body ? s->body + s->in_off : "";
}

void mica__h2_in_consume(mica__h2_stream_t *s, size_t n)
{
    s->in_off += n;
    if (s->closed)
        return;
    size_t before = s->unconsumed;
    give_back_streaming(s->hc, s);
    if (s->unconsumed != before)
        nudge(s->hc); /* a WINDOW_UPDATE to send */
}

static void out_kick(mica__h2_stream_t *s)
{
    if (s->out_deferred) {
        s->out_deferred = false;
        nghttp2_session_resume_data(s->hc->sess, s->id);
    }
    nudge(s->hc);
}

char *mica__h2_out_reserve(mica__h2_stream_t *s, size_t n)
{
    if (s->out_off && s->out_off >= s->out_cap / 2) {
        memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
        s->out_len -= s->out_off;
        s->out_off = 0;
    }
    if (n > SIZE_MAX / 2 - s->out_len)
        return NULL;
    if (s->out_len + n > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 1024;
        while (cap < s->out_len + n)
            cap *= 2;
        char *b = realloc(s->out, cap);
        if (!b)
            return NULL;
        s->out = b;
        s->out_cap = cap;
    }
    return s->out + s->out_len;
}

int mica__h2_out_commit(mica__h2_stream_t *s, size_t n)
{
    if (s->closed || s->out_eof)
        return MICA_ECANCELED;
    s->out_len += n;
    out_kick(s);
    return 0;
}

int mica__h2_out_wait(mica__h2_stream_t *s, mica_ctx_t *ctx, int64_t deadline_ms)
{
    while (!s->closed && s->out_len - s->out_off > MICA__H2_OUT_HIGH_WATER) {
        int rc = wait_on(&s->out_waiter, &s->out_seq, ctx, deadline_ms);
        if (rc != 0)
            return rc;
    }
    return s->closed ? MICA_ECANCELED : 0;
}

static size_t fields_nv(nghttp2_nv *nva, size_t k, size_t max, const mica__http_field_t *f,
                        size_t n)
{
    for (size_t i = 0; i < n && k < max; i++)
        nva[k++] = (nghttp2_nv){(uint8_t *)f[i].name, (uint8_t *)f[i].value, f[i].name_len,
                                f[i].value_len, NGHTTP2_NV_FLAG_NONE};
    return k;
}

int mica__h2_out_headers(mica__h2_stream_t *s, int status, const mica__http_field_t *f, size_t n)
{
    if (s->closed)
        return MICA_ECANCELED;
    if (s->out_started)
        return MICA_EINVAL;
    nghttp2_nv nva[MICA__HTTP_MAX_HEADERS + 1];
    char st[4];
    dec(st, (size_t)status);
    nva[0] = nv(":status", st, 3);
    size_t k = fields_nv(nva, 1, MICA__HTTP_MAX_HEADERS + 1, f, n);
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    if (nghttp2_submit_response(s->hc->sess, s->id, nva, k, &prd) != 0)
        return MICA_ENOMEM;
    s->out_started = true;
    nudge(s->hc);
    return 0;
}

int mica__h2_out_finish(mica__h2_stream_t *s, int status, const mica__http_field_t *f, size_t n)
{
    if (s->out_eof)
        return MICA_EINVAL;
    s->out_eof = true;
    if (s->closed)
        return MICA_ECANCELED;
    if (!s->out_started) { /* one HEADERS frame that ends the stream */
        nghttp2_nv nva[MICA__HTTP_MAX_HEADERS + 1];
        char st[4];
        dec(st, (size_t)status);
        nva[0] = nv(":status", st, 3);
        size_t k = fields_nv(nva, 1, MICA__HTTP_MAX_HEADERS + 1, f, n);
        s->out_started = true;
        int rv = nghttp2_submit_response(s->hc->sess, s->id, nva, k, NULL);
        nudge(s->hc);
        return rv == 0 ? 0 : MICA_ENOMEM;
    }
    if (n) { /* copied: the data provider submits them after the last byte */
        if (n > MICA__HTTP_MAX_HEADERS)
            n = MICA__HTTP_MAX_HEADERS;
        s->trailers = mica__arena_alloc(&s->arena, n * sizeof(*f));
        if (!s->trailers)
            return MICA_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            char *name = arena_strndup(&s->arena, (const uint8_t *)f[i].name, f[i].name_len);
            char *value = arena_strndup(&s->arena, (const uint8_t *)f[i].value, f[i].value_len);
            if (!name || !value)
                return MICA_ENOMEM;
            s->trailers[i] = (mica__http_field_t){name, f[i].name_len, value, f[i].value_len};
        }
        s->ntrailers = n;
    }
    out_kick(s);
    return 0;
}

/* ---- the connection ---------------------------------------------------------- */

static int flush(h2conn_t *hc)
{
    mica__http_conn_t *c = hc->c;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(hc->sess, &data);
        if (n < 0)
            return MICA_EPROTO;
        if (n == 0)
            break;
        int rc = mica__http_out_append(c, data, (size_t)n);
        if (rc != 0)
            return rc;
        if (c->out_len >= 64 * 1024) {
            rc = mica__http_conn_write(c, c->out, c->out_len,
                                       mica_deadline_in(hc->srv->o.write_timeout_ms));
            c->out_len = 0;
            if (rc != 0)
                return rc;
        }
    }
    int rc = 0;
    if (c->out_len)
        rc = mica__http_conn_write(c, c->out, c->out_len,
                                   mica_deadline_in(hc->srv->o.write_timeout_ms));
    c->out_len = 0;
    return rc;
}

static int session_new(h2conn_t *hc)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return MICA_ENOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return MICA_ENOMEM;
    }
    nghttp2_option_set_max_outbound_ack(opt, 1000); /* PING/SETTINGS floods */
    nghttp2_option_set_no_auto_window_update(opt, 1); /* see give_back() */
    nghttp2_option_set_max_settings(opt, 32);
    int rv = nghttp2_session_server_new2(&hc->sess, cb, hc, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return MICA_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_BYTES},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)hc->srv->o.max_head_bytes},
    };
    if (nghttp2_submit_settings(hc->sess, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0)
        return MICA_ENOMEM;
    return 0;
}

void mica__h2_serve(mica__http_conn_t *c)
{
    h2conn_t hc = {.c = c, .srv = c->w->srv};
    if (mica_wg_new(&hc.running) != 0)
        return;
    if (session_new(&hc) != 0) {
        mica_wg_free(hc.running);
        return;
    }
    int64_t idle_deadline = mica_deadline_in(hc.srv->o.idle_timeout_ms);
    int spins = 0;
    bool drained = c->must_wait; /* the HTTP/1.1 reader may have left bytes unread */
    for (;;) {
        if (c->in_len) {
            ssize_t n = nghttp2_session_mem_recv(hc.sess, (const uint8_t *)c->in, c->in_len);
            c->in_len = 0;
            if (n < 0)
                break; /* a connection error: nghttp2 has queued GOAWAY, flush it below */
        }
        if (mica_worker_stopping() && !hc.goaway) {
            hc.goaway = true;
            nghttp2_submit_goaway(hc.sess, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(hc.sess),
                                  NGHTTP2_NO_ERROR, NULL, 0);
        }
        if (flush(&hc) != 0)
            goto out;
        bool busy = hc.streams != NULL;
        if (!nghttp2_session_want_read(hc.sess) && !nghttp2_session_want_write(hc.sess))
            break;
        if (hc.goaway && !busy)
            break;
        if (busy)
            idle_deadline = mica_deadline_in(hc.srv->o.idle_timeout_ms);
        int rc = 0;
        if (drained) { /* edge-triggered: wait only once a read came back short */
            hc.reading = true;
            c->idle = !busy; /* the drain may cancel an idle wait */
            rc = mica_net_wait(c->fd, MICA_NET_READABLE, NULL, busy ? MICA_NO_DEADLINE : idle_deadline);
            hc.reading = false;
            c->idle = false;
        }
        if (rc == MICA_ETIMEDOUT) {
            hc.goaway = true;
            nghttp2_submit_goaway(hc.sess, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(hc.sess),
                                  NGHTTP2_NO_ERROR, NULL, 0);
            continue;
        }
        if (rc == MICA_ECANCELED) {
            /* A stream has a response ready, or the worker is stopping. Past
             * the drain deadline every wait is cancelled: don't spin on it. */
            if (hc.goaway && ++spins > 64)
                goto out;
            continue;
        }
        spins = 0;
        if (rc != 0)
            goto out;
        ssize_t n = mica__http_conn_recv(c, c->in, c->in_cap,
                                         mica_deadline_in(hc.srv->o.write_timeout_ms));
        if (n == 0 || (n < 0 && n != MICA_EAGAIN))
            goto out;
        /* A short read drained the socket; TLS may still hold records. */
        drained = n == MICA_EAGAIN || (c->tls.ssl ? mica__tls_drained(&c->tls) : n < (ssize_t)c->in_cap);
        if (n > 0)
            c->in_len = (size_t)n;
    }
    flush(&hc);
out:
    /* Handlers still running lose their client: cancel them and wait. */
    for (mica__h2_stream_t *s = hc.streams; s; s = s->next) {
        s->closed = true;
        if (s->running && s->req.ctx)
            mica_ctx_cancel(s->req.ctx);
        wake(&s->in_waiter, s->in_seq);
        wake(&s->out_waiter, s->out_seq);
    }
    mica_wg_wait(hc.running, NULL);
    nghttp2_session_del(hc.sess);
    while (hc.streams)
        stream_free(hc.streams);
    mica_wg_free(hc.running);
}

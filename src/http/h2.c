/* SPDX-License-Identifier: MIT */
/*
 * HTTP/2 (h2c with prior knowledge, or ALPN h2 over TLS) on the HTTP/1.1
 * listeners, through nghttp2.
 *
 * The connection's coroutine owns the nghttp2 session and is the only one
 * that reads or writes the socket: it feeds what it reads to
 * nghttp2_session_mem_recv() and writes what nghttp2_session_mem_send()
 * produces. Each request stream is routed when its headers are in and runs
 * its handler in a coroutine of its own, through request.c like HTTP/1.1: a
 * streaming route (mica_http_route_stream) starts at once and reads the body
 * as DATA arrives, any other once the request is complete. Responses are
 * queued in the stream's capped output buffer and pulled by nghttp2's data
 * provider; a handler submits to the session from its coroutine (same
 * worker, so the session is never used concurrently) and nudges the
 * connection coroutine, if it is waiting to read, with mica_net_cancel().
 * Waits of a stream's coroutine (body, output room) park on the stream's
 * mica_event_t, bounded by the request's ctx and deadline.
 *
 * A stream is freed when both its coroutine has finished and nghttp2 has
 * closed it, whichever comes last. A stream reset by the client cancels its
 * request's ctx. Limits: SETTINGS advertise max concurrent streams and
 * header list size (nghttp2 refuses streams beyond them), request bodies
 * over max_body_bytes get 413, a streaming route's buffer is capped, and a
 * client resetting streams faster than RESET_BUDGET per second
 * (CVE-2023-44487, "rapid reset") gets GOAWAY ENHANCE_YOUR_CALM. On worker
 * shutdown the connection sends GOAWAY, lets the streams in flight finish,
 * then closes.
 *
 * Flow control is manual (docs/decisions.md): the connection window is
 * returned at once, a streaming stream's own window only while it buffers
 * at most its route's max_buffer_bytes, so a handler that reads slowly
 * slows down its own sender and nobody else.
 */
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "http/internal.h"
#include "mica/net.h"
#include "mica/sync.h"

#define MAX_STREAMS 128
#define RESET_BUDGET 200 /* client RST_STREAMs per second before GOAWAY */
#define WINDOW_BYTES (1 << 20)
#define MAX_NV (MICA__HTTP_RESP_MAX_FIELDS * 2 + 4)

typedef struct h2conn {
    mica__http_conn_t *c;
    mica_http_server_t *srv;
    nghttp2_session *sess;
    mica__list_t streams; /* every stream not yet freed */
    mica_wg_t *running;   /* stream coroutines still running */
    bool reading;         /* the connection coroutine waits to read */
    bool goaway;
    int64_t reset_window_ms;
    int resets;
} h2conn_t;

struct mica__h2_stream {
    h2conn_t *hc;
    int32_t id;
    mica__list_t link;   /* on hc->streams, or the worker's spares */
    mica__arena_t arena; /* header strings, response fields */
    mica__buf_t body;    /* request body: all of it, or (streaming) what is unread */
    mica__buf_t out;     /* response body bytes not yet taken by nghttp2 */
    mica__http_field_t headers[MICA__HTTP_MAX_HEADERS]; /* stream_new() keeps it unzeroed */
    size_t nheaders, head_bytes; /* nheaders must follow headers */
    const char *method, *path;
    size_t method_len, path_len;
    bool too_large, bad;
    bool routed, running, closed;
    bool served;       /* its coroutine has been started (at most once) */
    bool reset;        /* we reset it: the rest of its request was too much to drop */
    uint64_t dropped;  /* request bytes that came after its handler had returned */
    bool in_eof;       /* the client ended its side */
    size_t unconsumed; /* received bytes not yet returned to the stream window */
    bool out_started;  /* response headers submitted */
    bool out_eof;      /* the handler has finished writing */
    bool out_deferred; /* the data provider is waiting for bytes */
    bool in_waiting, out_waiting;
    mica_event_t in_ev, out_ev;
    mica_http_req_t req;
    mica_http_resp_t resp;
};

static const mica__http_ops_t h2_ops;

/* mica__buf_append() with the common case (room at the end) inline. */
static inline int buf_put(mica__buf_t *b, const void *p, size_t n)
{
    if (n == 0 || n > b->cap - b->len)
        return mica__buf_append(b, p, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- memory: nghttp2 allocates through mica's wrappers (fault injection) ---- */

static void *mem_malloc(size_t n, void *ud)
{
    return mica__malloc(n);
}

static void mem_free(void *p, void *ud)
{
    mica__free(p);
}

static void *mem_calloc(size_t n, size_t size, void *ud)
{
    return mica__calloc(n, size);
}

static void *mem_realloc(void *p, size_t n, void *ud)
{
    return mica__realloc(p, n);
}

static nghttp2_mem h2_mem = {NULL, mem_malloc, mem_free, mem_calloc, mem_realloc};

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
    mica__list_t *n = mica__list_pop_front(&w->h2_spare);
    mica__h2_stream_t *s;
    if (n) {
        s = mica__list_entry(n, mica__h2_stream_t, link);
        w->nh2_spare--;
        mica__arena_t arena = s->arena;
        mica__buf_t body = s->body, out = s->out;
        /* Everything but the header array (2 KiB, filled as headers come). */
        memset(s, 0, offsetof(mica__h2_stream_t, headers));
        memset(&s->nheaders, 0, sizeof(*s) - offsetof(mica__h2_stream_t, nheaders));
        s->arena = arena;
        s->body = (mica__buf_t){.data = body.data, .cap = body.cap};
        s->out = (mica__buf_t){.data = out.data, .cap = out.cap};
    } else if (!(s = mica__calloc(1, sizeof(*s)))) {
        return NULL;
    }
    s->hc = hc;
    s->id = id;
    s->out.max = MICA__HTTP_OUT_CAP_BYTES;
    s->body.max = hc->srv->o.max_body_bytes;
    mica__list_push_front(&hc->streams, &s->link);
    return s;
}

static void stream_destroy(mica__h2_stream_t *s)
{
    mica__arena_destroy(&s->arena);
    mica__buf_free(&s->body);
    mica__buf_free(&s->out);
    mica__free(s);
}

static void stream_free(mica__h2_stream_t *s)
{
    mica__http_gates_done(&s->req); /* routed but never served: reset, too large */
    mica__list_remove(&s->link);
    mica__http_worker_t *w = s->hc->c->w;
    if (w->nh2_spare >= MAX_SPARE || s->body.cap > SPARE_BUF_BYTES ||
        s->out.cap > SPARE_BUF_BYTES) {
        stream_destroy(s);
        return;
    }
    mica__arena_reset(&s->arena);
    mica__list_push_front(&w->h2_spare, &s->link);
    w->nh2_spare++;
}

void mica__h2_worker_free(mica__http_worker_t *w)
{
    mica__list_t *n;
    while ((n = mica__list_pop_front(&w->h2_spare)))
        stream_destroy(mica__list_entry(n, mica__h2_stream_t, link));
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

/* Wakes the stream's coroutine if it waits for body bytes or output room. */
static void wake(mica__h2_stream_t *s)
{
    if (s->in_waiting)
        mica_event_set(&s->in_ev);
    if (s->out_waiting)
        mica_event_set(&s->out_ev);
}

/* Waits on `ev` (flag `*waiting` up meanwhile) until `ready(s)`; bounded by the request. */
static int wait_until(mica__h2_stream_t *s, mica_event_t *ev, bool *waiting,
                      bool (*ready)(const mica__h2_stream_t *s, size_t arg), size_t arg)
{
    for (;;) {
        if (ready(s, arg) || s->closed)
            return 0;
        mica_event_reset(ev);
        *waiting = true;
        int rc = mica_event_wait(ev, s->req.ctx, s->req.deadline_ms);
        *waiting = false;
        if (rc != 0)
            return rc;
    }
}

/* ---- responses (the HTTP/2 operations) ---------------------------------------------- */

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

/*
 * Appends fields f[0..n) to nva (up to MAX_NV): names lower-cased (RFC 9113
 * §8.2.1; copied to the arena, only those `upper` marks), connection-specific
 * fields (`hop`) left out (§8.2.2). Returns the new count, or SIZE_MAX on
 * ENOMEM; *octets grows by what the fields weigh.
 */
static size_t put_fields(mica__h2_stream_t *s, nghttp2_nv *nva, size_t k,
                         const mica__http_field_t *f, size_t n, uint64_t upper, uint64_t hop,
                         uint64_t *octets)
{
    for (size_t i = 0; i < n && k < MAX_NV; i++) {
        uint64_t bit = (uint64_t)1 << i;
        if (hop & bit)
            continue;
        const char *name = f[i].name;
        if (upper & bit) {
            char *low = mica__arena_alloc(&s->arena, f[i].name_len + 1);
            if (!low)
                return SIZE_MAX;
            for (size_t m = 0; m <= f[i].name_len; m++)
                low[m] = (char)(name[m] >= 'A' && name[m] <= 'Z' ? name[m] + 32 : name[m]);
            name = low;
        }
        nva[k++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)f[i].value, f[i].name_len,
                                f[i].value_len, NGHTTP2_NV_FLAG_NONE};
        *octets += f[i].name_len + f[i].value_len;
    }
    return k;
}

static ssize_t provide(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                       uint32_t *flags, nghttp2_data_source *src, void *user)
{
    mica__h2_stream_t *s = src->ptr;
    size_t avail = mica__buf_len(&s->out), n = avail < len ? avail : len;
    memcpy(buf, mica__buf_data(&s->out), n);
    mica__buf_consume(&s->out, n);
    if (s->out_waiting && avail - n < MICA__HTTP_OUT_LOW_WATER)
        mica_event_set(&s->out_ev);
    if (avail - n)
        return (ssize_t)n;
    if (!s->out_eof) {
        if (n)
            return (ssize_t)n;
        s->out_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->resp.ntrailers) {
        nghttp2_nv nva[MAX_NV];
        uint64_t octets = 0;
        size_t k = put_fields(s, nva, 0, s->resp.trailers, s->resp.ntrailers,
                              s->resp.trailers_upper, s->resp.trailers_hop, &octets);
        if (k != SIZE_MAX && nghttp2_submit_trailer(sess, id, nva, k) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

/* Submits the response head (:status, content-type, [content-length], fields, `extra`). */
static int submit_head(mica__h2_stream_t *s, mica_http_resp_t *resp, const char *content_type,
                       bool length, size_t len, bool with_trailers, bool with_body)
{
    nghttp2_nv nva[MAX_NV];
    size_t n = 0;
    char st[4], cl[24];
    dec(st, (size_t)resp->status);
    nva[n++] = nv(":status", st, 3);
    uint64_t octets = 10;
    bool no_body = resp->status == 204 || resp->status == 304;
    if (content_type && !no_body) {
        nva[n++] = nv("content-type", content_type, strlen(content_type));
        octets += 12 + nva[n - 1].valuelen;
    }
    if (length && !no_body) {
        nva[n++] = nv("content-length", cl, dec(cl, len));
        octets += 14 + nva[n - 1].valuelen;
    }
    n = put_fields(s, nva, n, resp->fields, resp->nfields, resp->fields_upper, resp->fields_hop,
                   &octets);
    if (n != SIZE_MAX && with_trailers)
        n = put_fields(s, nva, n, resp->trailers, resp->ntrailers, resp->trailers_upper,
                       resp->trailers_hop, &octets);
    if (n == SIZE_MAX)
        return MICA_ENOMEM;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = provide};
    int rv = nghttp2_submit_response(s->hc->sess, s->id, nva, n, with_body ? &prd : NULL);
    if (rv != 0)
        return rv == NGHTTP2_ERR_NOMEM ? MICA_ENOMEM : MICA_EPROTO;
    s->out_started = true;
    resp->sent = true;
    resp->bytes_out += octets;
    nudge(s->hc);
    return 0;
}

static bool is_head(const mica__h2_stream_t *s)
{
    return s->method_len == 4 && memcmp(s->method, "HEAD", 4) == 0;
}

static int h2_send(mica_http_resp_t *resp, const char *content_type, const void *body, size_t len)
{
    mica__h2_stream_t *s = resp->req->proto;
    if (s->closed) /* reset by the client: nothing to send, nothing to fail */
        return 0;
    bool no_body = resp->status == 204 || resp->status == 304;
    bool with_body = len && !no_body && !is_head(s);
    if (with_body) {
        mica__buf_reset(&s->out);
        int rc = buf_put(&s->out, body, len);
        if (rc != 0)
            return rc;
    }
    s->out_eof = true;
    int rc = submit_head(s, resp, content_type, true, len, false, with_body);
    if (rc == 0 && with_body)
        resp->bytes_out += len;
    return rc;
}

static void out_kick(mica__h2_stream_t *s)
{
    if (s->out_deferred) {
        s->out_deferred = false;
        nghttp2_session_resume_data(s->hc->sess, s->id);
    }
    nudge(s->hc);
}

static bool out_room(const mica__h2_stream_t *s, size_t unused)
{
    return mica__buf_len(&s->out) <= MICA__HTTP_OUT_HIGH_WATER;
}

static int h2_write(mica_http_resp_t *resp, const void *p, size_t n)
{
    mica__h2_stream_t *s = resp->req->proto;
    if (s->closed)
        return MICA_ECANCELED;
    int rc;
    if (!s->out_started &&
        (rc = submit_head(s, resp, resp->content_type, false, 0, false, true)) != 0)
        return rc;
    bool no_body = resp->status == 204 || resp->status == 304 || is_head(s);
    if (n && !no_body) {
        if ((rc = buf_put(&s->out, p, n)) != 0)
            return rc;
        resp->bytes_out += n;
        out_kick(s);
    }
    if ((rc = wait_until(s, &s->out_ev, &s->out_waiting, out_room, 0)) != 0)
        return rc;
    return s->closed ? MICA_ECANCELED : 0;
}

static int h2_end(mica_http_resp_t *resp)
{
    mica__h2_stream_t *s = resp->req->proto;
    if (s->closed)
        return MICA_ECANCELED;
    s->out_eof = true;
    if (!s->out_started) /* trailers-only: one HEADERS frame that ends the stream */
        return submit_head(s, resp, resp->content_type, false, 0, true, false);
    for (size_t i = 0; i < resp->ntrailers; i++)
        resp->bytes_out += resp->trailers[i].name_len + resp->trailers[i].value_len;
    out_kick(s); /* the provider sends the trailers after the last byte */
    return 0;
}

static void h2_abort(mica_http_resp_t *resp)
{
    mica__h2_stream_t *s = resp->req->proto;
    if (!s->closed) {
        nghttp2_submit_rst_stream(s->hc->sess, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        nudge(s->hc);
    }
}

/* ---- request bodies ----------------------------------------------------------------- */

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

static size_t stream_max(const mica__h2_stream_t *s)
{
    const mica__route_t *r = s->req.route_rc == 0 ? s->req.match.route : &s->hc->srv->fallback;
    return r && r->max_buffer ? r->max_buffer : s->hc->srv->o.max_body_bytes;
}

/* The connection window always flows; a streaming stream's own window is
 * returned while what it has buffered fits its route's buffer, so a reader
 * that stops reading stops its sender after one window. */
static void give_back_streaming(mica__h2_stream_t *s)
{
    if (s->unconsumed && mica__buf_len(&s->body) <= stream_max(s)) {
        nghttp2_session_consume_stream(s->hc->sess, s->id, s->unconsumed);
        s->unconsumed = 0;
    }
}

static bool in_ready(const mica__h2_stream_t *s, size_t want)
{
    return mica__buf_len(&s->body) >= want || s->in_eof;
}

static int h2_body_wait(mica_http_req_t *req, size_t want, const char **data, size_t *len)
{
    mica__h2_stream_t *s = req->proto;
    int rc = 0;
    if (mica__buf_len(&s->body) < want) { /* else it is all there: the common case */
        if (want > stream_max(s) && !s->in_eof)
            rc = MICA_ELIMIT;
        else if ((rc = wait_until(s, &s->in_ev, &s->in_waiting, in_ready, want)) == 0 &&
                 mica__buf_len(&s->body) < want)
            rc = s->closed ? MICA_ECANCELED : MICA_ECLOSED;
    }
    *len = mica__buf_len(&s->body);
    *data = *len ? mica__buf_data(&s->body) : "";
    return rc;
}

static void h2_body_consume(mica_http_req_t *req, size_t n)
{
    mica__h2_stream_t *s = req->proto;
    size_t len = mica__buf_len(&s->body);
    mica__buf_consume(&s->body, n < len ? n : len);
    if (s->closed)
        return;
    size_t before = s->unconsumed;
    give_back_streaming(s);
    if (s->unconsumed != before)
        nudge(s->hc); /* a WINDOW_UPDATE to send */
}

static const mica__http_ops_t h2_ops = {
    .send = h2_send,
    .write = h2_write,
    .end = h2_end,
    .abort = h2_abort,
    .body_wait = h2_body_wait,
    .body_consume = h2_body_consume,
};

/* ---- request streams ------------------------------------------------------------------ */

static void stream_main(void *arg)
{
    mica__h2_stream_t *s = arg;
    h2conn_t *hc = s->hc;
    mica_http_req_t *req = &s->req;
    MICA__HTTP_COUNT(&hc->c->w->requests, 1);
    if (s->bad || s->too_large) {
        mica__http_send_error(&s->resp, s->bad ? 400 : 413,
                              s->bad ? "malformed request" : "request body too large");
        mica__http_observe(req, &s->resp);
    } else {
        if (!req->streaming) {
            req->body = mica__buf_len(&s->body) ? mica__buf_data(&s->body) : "";
            req->body_len = mica__buf_len(&s->body);
        }
        mica__http_serve(req, &s->resp);
    }
    if (!s->in_eof && !s->closed && s->req.streaming) {
        /* The handler returned before the request's end (a refusal at the head, an
         * early answer): what it left unread is dropped and its window given back, as
         * is whatever still comes (on_data), so the client can finish sending. */
        mica__buf_consume(&s->body, mica__buf_len(&s->body));
        if (s->unconsumed) {
            nghttp2_session_consume_stream(hc->sess, s->id, s->unconsumed);
            s->unconsumed = 0;
        }
    }
    s->running = false;
    if (s->closed)
        stream_free(s);
    else
        nudge(hc);
    mica_wg_done(hc->running);
}

/* Routes a stream whose headers are in; a streaming route's body buffer gets its cap. */
static void route(h2conn_t *hc, mica__h2_stream_t *s)
{
    s->routed = true;
    mica_http_req_t *req = &s->req;
    mica__http_req_init(req, &s->resp, hc->srv, &h2_ops, s, &s->arena);
    req->version = 20;
    req->sock = hc->c->fd;
    req->peer = hc->c->peer;
    req->tls_peer = hc->c->tls.peer;
    req->headers = s->headers;
    req->nheaders = s->nheaders;
    req->bytes_in = s->head_bytes;
    mica__http_clock_start(req);
    if (!s->method || !s->path || s->path_len == 0) {
        s->bad = true;
        return;
    }
    req->method = s->method;
    req->method_len = s->method_len;
    req->path = s->path;
    req->path_len = s->path_len;
    char *q = memchr(s->path, '?', s->path_len);
    if (q) {
        *q = '\0';
        req->path_len = (size_t)(q - s->path);
        req->query = q + 1;
    }
    mica__http_route(req);
    if (req->streaming)
        s->body.max = stream_max(s) + WINDOW_BYTES;
}

static void dispatch(h2conn_t *hc, mica__h2_stream_t *s)
{
    /* A streaming request is dispatched at its headers and again at its END_STREAM;
     * if its handler already answered and returned by then, it is not served twice. */
    if (s->running || s->served)
        return;
    s->served = true;
    if (!s->routed)
        route(hc, s);
    s->running = true;
    mica_wg_add(hc->running, 1);
    if (mica_go(stream_main, s) != 0) {
        s->running = s->served = false;
        mica_wg_done(hc->running);
        nghttp2_submit_rst_stream(hc->sess, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_REFUSED_STREAM);
    }
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
    if (!s || f->hd.type != NGHTTP2_HEADERS || s->routed)
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
        }
        return 0;
    }
    if (s->nheaders >= hc->srv->o.max_headers)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    char *n = arena_strndup(&s->arena, name, namelen);
    if (!n)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->headers[s->nheaders++] = (mica__http_field_t){n, namelen, v, valuelen};
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *user)
{
    h2conn_t *hc = user;
    mica__h2_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (s && s->served && !s->running && s->req.streaming) {
        /* Its handler has returned: the rest is dropped, the window given back (a client
         * must be able to finish a request that was answered early: RFC 9113 §8.1 lets
         * the server reset it instead, but curl 7.88 then fails the exchange). Past
         * max_body_bytes dropped, RST_STREAM(NO_ERROR) ends it. */
        give_back(hc, id, len);
        s->dropped += len;
        if (s->dropped > hc->srv->o.max_body_bytes && !s->reset) {
            s->reset = true;
            nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
        }
        return 0;
    }
    if (s && s->req.streaming) {
        nghttp2_session_consume_connection(sess, len);
        if (buf_put(&s->body, data, len) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream */
        s->req.bytes_in += len;
        s->unconsumed += len;
        give_back_streaming(s);
        if (s->in_waiting)
            mica_event_set(&s->in_ev);
        return 0;
    }
    give_back(hc, id, len);
    if (!s || s->too_large)
        return 0;
    s->req.bytes_in += len;
    if (len > hc->srv->o.max_body_bytes - mica__buf_len(&s->body)) {
        s->too_large = true; /* answered with 413 once the request ends */
        return 0;
    }
    if (buf_put(&s->body, data, len) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
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
    /* Streaming routes start at the end of their headers, others once complete. */
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        route(hc, s);
        if (s->req.streaming && !s->bad)
            dispatch(hc, s);
    }
    if (end) {
        s->in_eof = true;
        if (s->in_waiting)
            mica_event_set(&s->in_ev);
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
        mica__http_req_cancel(&s->req); /* reset: the handler's work is moot */
        wake(s);
    } else {
        stream_free(s);
    }
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
        int rc = mica__http_buf_ready(c->w, &c->out);
        if (rc == 0)
            rc = buf_put(&c->out, data, (size_t)n);
        if (rc != 0)
            return rc;
        if (mica__buf_len(&c->out) >= 64 * 1024) {
            rc = mica__http_conn_write(c, mica__buf_data(&c->out), mica__buf_len(&c->out),
                                       mica_deadline_in(hc->srv->o.write_timeout_ms));
            mica__buf_reset(&c->out);
            if (rc != 0)
                return rc;
        }
    }
    int rc = 0;
    if (mica__buf_len(&c->out))
        rc = mica__http_conn_write(c, mica__buf_data(&c->out), mica__buf_len(&c->out),
                                   mica_deadline_in(hc->srv->o.write_timeout_ms));
    mica__buf_reset(&c->out);
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
    /* Closed streams are kept only for RFC 7540 priorities, which we do not use. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    int rv = nghttp2_session_server_new3(&hc->sess, cb, hc, opt, &h2_mem);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return MICA_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_BYTES},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)hc->srv->o.max_head_bytes},
    };
    if (nghttp2_submit_settings(hc->sess, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0) {
        nghttp2_session_del(hc->sess); /* found by the fault-injection sweep */
        return MICA_ENOMEM;
    }
    return 0;
}

void mica__h2_serve(mica__http_conn_t *c)
{
    h2conn_t hc = {.c = c, .srv = c->w->srv};
    mica__list_init(&hc.streams);
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
        if (c->in.len) {
            ssize_t n = nghttp2_session_mem_recv(hc.sess, (const uint8_t *)c->in.data, c->in.len);
            c->in.len = 0;
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
        bool busy = !mica__list_empty(&hc.streams);
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
        ssize_t n = mica__http_conn_recv(c, c->in.data, c->in.cap,
                                         mica_deadline_in(hc.srv->o.write_timeout_ms));
        if (n == 0 || (n < 0 && n != MICA_EAGAIN))
            goto out;
        /* A short read drained the socket; TLS may still hold records. */
        drained = n == MICA_EAGAIN || (c->tls.ssl ? mica__tls_drained(&c->tls) : n < (ssize_t)c->in.cap);
        if (n > 0)
            c->in.len = (size_t)n;
    }
    flush(&hc);
out:
    /* Handlers still running lose their client: cancel them and wait. */
    mica__list_foreach(n, &hc.streams) {
        mica__h2_stream_t *s = mica__list_entry(n, mica__h2_stream_t, link);
        s->closed = true;
        if (s->running) {
            mica__http_req_cancel(&s->req);
            wake(s);
        }
    }
    mica_wg_wait(hc.running, NULL);
    nghttp2_session_del(hc.sess);
    mica__list_t *n;
    while ((n = mica__list_first(&hc.streams)))
        stream_free(mica__list_entry(n, mica__h2_stream_t, link));
    mica_wg_free(hc.running);
}

/* SPDX-License-Identifier: MIT */
/*
 * The gRPC client's HTTP/2 connections: one nghttp2 client session each,
 * on a socket owned by the connection's coroutine (conn_main), which feeds
 * what it reads to the session and writes what the session produces.
 * Calls are streams submitted from their own coroutines on the same worker;
 * they park on their stream's event and nudge the connection coroutine
 * (mica_net_cancel) when they have queued bytes.
 *
 * A connection belongs to an endpoint of one worker (client_pool.c). It is
 * opened by the first call that needs it; concurrent calls wait for that
 * attempt on its `connected` event. A connection that fails, receives
 * GOAWAY or is drained (its endpoint left the list) takes no new streams
 * and ends once its streams have. nghttp2 allocates through mica's
 * allocator (nghttp2_mem), so fault injection reaches inside the session.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "grpc/client.h"
#include "mica/net.h"

/* ---- nghttp2's allocator ------------------------------------------------------- */

static void *ng_malloc(size_t size, void *ud)
{
    return mica__malloc(size);
}

static void ng_free(void *ptr, void *ud)
{
    mica__free(ptr);
}

static void *ng_calloc(size_t n, size_t size, void *ud)
{
    return mica__calloc(n, size);
}

static void *ng_realloc(void *ptr, size_t size, void *ud)
{
    return mica__realloc(ptr, size);
}

static nghttp2_mem ng_mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};

/* ---- streams, as the connection sees them ----------------------------------------- */

void mica__grpc_conn_nudge(mica__grpc_conn_t *cn)
{
    if (cn->reading)
        mica_net_cancel(cn->fd);
}

void mica__grpc_stream_wake(mica_grpc_stream_t *st)
{
    if (st->waiting)
        mica_event_set(&st->ev);
}

void mica__grpc_conn_unref(mica__grpc_conn_t *cn)
{
    if (--cn->refs > 0)
        return;
    if (cn->sess)
        nghttp2_session_del(cn->sess);
    mica__grpc_ep_unref(cn->ep);
    mica__free(cn);
}

void mica__grpc_conn_drain(mica__grpc_conn_t *cn)
{
    cn->dead = true;
    if (cn->fd >= 0)
        mica__grpc_conn_nudge(cn); /* ends now if idle, else once its streams have */
}

/*
 * Finished streams go back to their worker, up to KEEP_STREAMS, with their
 * buffers and the arena's block, so that a call in steady state makes none
 * of the four allocations a stream starts with (the stream, its arena
 * block, its two buffers). Buffers grown past KEEP_BUF_BYTES are freed.
 */
#define KEEP_STREAMS 64
#define KEEP_BUF_BYTES (64 * 1024)

static void stream_destroy(mica_grpc_stream_t *st)
{
    mica__arena_destroy(&st->arena);
    mica__buf_free(&st->in);
    mica__buf_free(&st->out);
    mica__free(st);
}

mica_grpc_stream_t *mica__grpc_stream_new(mica__grpc_worker_t *w, size_t max_msg)
{
    mica__list_t *n = mica__list_pop_front(&w->free_streams);
    if (n) { /* zeroed when kept, but for its arena and buffers (same caps: same client) */
        w->nfree--;
        return mica__list_entry(n, mica_grpc_stream_t, link);
    }
    mica_grpc_stream_t *st = mica__calloc(1, sizeof(*st));
    if (st) {
        mica__buf_init(&st->in, max_msg + 5 + MICA__GRPC_WINDOW_BYTES);
        mica__buf_init(&st->out, MICA__GRPC_OUT_HIGH_WATER + max_msg + 5);
        mica__list_init(&st->link);
    }
    return st;
}

void mica__grpc_streams_free(mica__grpc_worker_t *w)
{
    mica__list_t *n;
    while ((n = mica__list_pop_front(&w->free_streams)))
        stream_destroy(mica__list_entry(n, mica_grpc_stream_t, link));
    w->nfree = 0;
}

void mica__grpc_stream_put(mica__grpc_worker_t *w, mica_grpc_stream_t *st)
{
    if (w->nfree >= KEEP_STREAMS || mica_worker_stopping()) {
        stream_destroy(st);
        return;
    }
    mica__arena_reset(&st->arena);
    mica__arena_t arena = st->arena;
    mica__buf_t in = st->in, out = st->out;
    if (in.cap > KEEP_BUF_BYTES)
        mica__buf_free(&in);
    if (out.cap > KEEP_BUF_BYTES)
        mica__buf_free(&out);
    mica__buf_reset(&in);
    mica__buf_reset(&out);
    memset(st, 0, sizeof(*st));
    st->arena = arena;
    st->in = in;
    st->out = out;
    mica__list_push_front(&w->free_streams, &st->link); /* LIFO: the warmest first */
    w->nfree++;
}

void mica__grpc_stream_free(mica_grpc_stream_t *st)
{
    mica__grpc_conn_t *cn = st->cn;
    mica__list_remove(&st->link);
    if (cn->sess && st->id > 0)
        nghttp2_session_set_stream_user_data(cn->sess, st->id, NULL);
    mica__grpc_stream_put(cn->ep->w, st);
    if (cn->nstreams == 0 && (cn->dead || mica_worker_stopping()))
        mica__grpc_conn_nudge(cn); /* conn_main may end now */
    mica__grpc_conn_unref(cn);
}

void mica__grpc_stream_abort(mica_grpc_stream_t *st, int code, const char *msg)
{
    if (!st->local_code) {
        st->local_code = code;
        st->local_message = msg;
    }
    if (!st->closed && st->id > 0 && !st->rst_queued) {
        st->rst_queued = true;
        nghttp2_submit_rst_stream(st->cn->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        mica__grpc_conn_nudge(st->cn);
    }
}

/* ---- nghttp2 callbacks ------------------------------------------------------------ */

static char *dup_n(mica__arena_t *a, const uint8_t *p, size_t n)
{
    char *s = mica__arena_alloc(a, n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (!st || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        st->http_status = (int)strtol((const char *)value, NULL, 10);
        return 0;
    }
    char *n = dup_n(&st->arena, name, namelen), *v = dup_n(&st->arena, value, valuelen);
    if (!n || !v)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (strcmp(n, "grpc-status") == 0)
        st->grpc_status = v;
    else if (strcmp(n, "grpc-message") == 0)
        st->grpc_message = v;
    else if (f->headers.cat == NGHTTP2_HCAT_HEADERS && st->ntrailers < MICA__GRPC_MAX_MD)
        st->trailers[st->ntrailers++] = (mica__grpc_field_t){n, v};
    else if (f->headers.cat == NGHTTP2_HCAT_RESPONSE && st->nheaders < MICA__GRPC_MAX_MD)
        st->headers[st->nheaders++] = (mica__grpc_field_t){n, v};
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *user)
{
    mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, id);
    if (!st || st->local_code)
        return 0;
    /* The buffer's cap (one message and a window) bounds what a server can
     * make us hold; a message past the limit is refused in recv before. */
    int rc = mica__buf_append(&st->in, data, len);
    if (rc != 0) {
        mica__grpc_stream_abort(st, MICA_GRPC_RESOURCE_EXHAUSTED,
                                rc == MICA_ELIMIT ? "response larger than the limit"
                                                  : "out of memory");
    }
    mica__grpc_stream_wake(st);
    return 0;
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *user)
{
    mica__grpc_conn_t *cn = user;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        cn->dead = true; /* streams past its last id are closed by nghttp2 */
        return 0;
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
        if (st) {
            st->remote_ended = true;
            mica__grpc_stream_wake(st);
        }
    }
    return 0;
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t code, void *user)
{
    mica__grpc_conn_t *cn = user;
    mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, id);
    if (!st)
        return 0;
    st->closed = true;
    st->rst_code = code;
    cn->nstreams--;
    if (st->orphan)
        mica__grpc_stream_free(st);
    else
        mica__grpc_stream_wake(st);
    return 0;
}

ssize_t mica__grpc_read_request(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                                uint32_t *flags, nghttp2_data_source *src, void *user)
{
    mica_grpc_stream_t *st = src->ptr;
    size_t n = mica__buf_len(&st->out);
    if (n > len)
        n = len;
    memcpy(buf, mica__buf_data(&st->out), n);
    mica__buf_consume(&st->out, n);
    if (mica__buf_len(&st->out) < MICA__GRPC_OUT_HIGH_WATER / 4)
        mica__grpc_stream_wake(st);
    if (mica__buf_len(&st->out) == 0 && st->out_eof)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (n == 0) {
        st->out_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* ---- the connection's coroutine ---------------------------------------------------- */

static int flush(mica__grpc_conn_t *cn)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(cn->sess, &data);
        if (n < 0)
            return MICA_EPROTO;
        if (n == 0)
            return 0;
        int64_t deadline = mica_deadline_in(cn->c->o.connect_timeout_ms);
        int rc = cn->tls ? mica_tls_write(cn->tls, data, (size_t)n, deadline)
                         : mica_net_write(cn->fd, data, (size_t)n, NULL, deadline);
        if (rc != 0)
            return rc;
    }
}

/* Reads what is there: > 0 bytes, 0 at EOF, MICA_EAGAIN when drained, or an error. */
static ssize_t conn_read(mica__grpc_conn_t *cn, uint8_t *buf, size_t len)
{
    if (cn->tls)
        return mica_tls_read(cn->tls, buf, len, mica_deadline_in(cn->c->o.connect_timeout_ms));
    for (;;) {
        ssize_t n = read(cn->fd, buf, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno; /* EAGAIN is MICA_EAGAIN */
    }
}

static void conn_main(void *arg)
{
    mica__grpc_conn_t *cn = arg;
    uint8_t buf[16384];
    for (;;) {
        if (flush(cn) != 0)
            break;
        if (!nghttp2_session_want_read(cn->sess) && !nghttp2_session_want_write(cn->sess))
            break;
        if (cn->nstreams == 0 && (cn->dead || mica_worker_stopping()))
            break;
        /* Woken by the socket, by a stream with bytes to send (nudge), or
         * by shutdown; the wait has no deadline of its own. */
        cn->reading = true;
        int rc = mica_net_wait(cn->fd, MICA_NET_READABLE, NULL, MICA_NO_DEADLINE);
        cn->reading = false;
        if (rc == MICA_ECANCELED)
            continue;
        if (rc != 0)
            break;
        ssize_t n;
        while ((n = conn_read(cn, buf, sizeof(buf))) > 0)
            if (nghttp2_session_mem_recv(cn->sess, buf, (size_t)n) < 0)
                goto out;
        if (n != MICA_EAGAIN)
            break;
    }
out:
    cn->dead = true;
    if (cn->slot && *cn->slot == cn)
        *cn->slot = NULL;
    if (cn->up) {
        cn->up = false;
        mica__grpc_ep_conn_down(cn->ep);
    }
    mica_tls_close(cn->tls);
    cn->tls = NULL;
    mica_net_close(cn->fd);
    cn->fd = -1;
    /* Calls still open lost their connection: UNAVAILABLE, unless their
     * response was complete. Their streams live until they finish, and the
     * session until the last of them (nghttp2 makes no more callbacks now
     * that nobody feeds it). */
    mica__list_foreach_safe(n, next, &cn->streams) {
        mica_grpc_stream_t *st = mica__list_entry(n, mica_grpc_stream_t, link);
        if (st->closed)
            continue;
        st->closed = true;
        cn->nstreams--;
        if (!st->local_code && !st->remote_ended) {
            st->local_code = MICA_GRPC_UNAVAILABLE;
            st->local_message = "connection lost";
        }
        if (st->orphan)
            mica__grpc_stream_free(st);
        else
            mica__grpc_stream_wake(st);
    }
    mica__grpc_conn_unref(cn);
}

static int session_new(mica__grpc_conn_t *cn)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return MICA_ENOMEM;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    int rv = nghttp2_session_client_new3(&cn->sess, cb, cn, NULL, &ng_mem);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return MICA_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, MICA__GRPC_WINDOW_BYTES},
    };
    if (nghttp2_submit_settings(cn->sess, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(cn->sess, NGHTTP2_FLAG_NONE, 0,
                                              4 * MICA__GRPC_WINDOW_BYTES) != 0)
        return MICA_ENOMEM;
    return 0;
}

/* The host part of "ip:port" / "[v6]:port" into buf (the TLS name of an endpoint). */
static const char *addr_host(const char *addr, char *buf, size_t size)
{
    const char *colon = strrchr(addr, ':');
    size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
    if (addr[0] == '[' && n >= 2) {
        addr++;
        n -= 2;
    }
    snprintf(buf, size, "%.*s", (int)n, addr);
    return buf;
}

/* Opens a connection into empty `slot` of `ep`: connect, TLS, session, coroutine. */
static int conn_open(mica__grpc_ep_t *ep, mica__grpc_conn_t **slot, int64_t deadline,
                     mica__grpc_conn_t **out)
{
    mica_grpc_client_t *c = ep->w->c;
    mica__grpc_conn_t *cn = mica__calloc(1, sizeof(*cn));
    if (!cn)
        return MICA_ENOMEM;
    cn->c = c;
    cn->ep = ep;
    ep->refs++;
    cn->slot = slot;
    cn->fd = -1;
    cn->refs = 1; /* the attempt, then conn_main */
    mica__list_init(&cn->streams);
    *slot = cn;
    if (ep->pub.state != MICA_ENDPOINT_READY)
        ep->pub.state = MICA_ENDPOINT_CONNECTING;
    int64_t limit = mica_deadline_in(c->o.connect_timeout_ms);
    bool call_bound = deadline < limit; /* the call's deadline ends the attempt first */
    if (call_bound)
        limit = deadline;
    /* No ctx: the connection serves other calls too, so one caller's
     * cancellation must not kill it; its deadline bounds the attempt. */
    int fd = mica_net_connect(ep->addr, NULL, limit);
    int rc = fd < 0 ? fd : 0;
    cn->fd = fd;
    if (rc == 0 && c->tls) {
        char host[64];
        const char *name = c->tls_name ? c->tls_name : addr_host(ep->addr, host, sizeof(host));
        rc = mica_tls_connect(c->tls, fd, name, limit, &cn->tls);
    }
    if (rc == 0 && (rc = session_new(cn)) == 0)
        rc = mica_go(conn_main, cn); /* takes over the attempt's reference */
    cn->connect_rc = rc;
    mica_event_set(&cn->connected);
    if (rc != 0) {
        if (fd >= 0)
            mica_net_close(fd);
        cn->fd = -1;
        cn->dead = true;
        if (*slot == cn)
            *slot = NULL;
        if (rc != MICA_ENOMEM && !(rc == MICA_ETIMEDOUT && call_bound))
            mica__grpc_ep_failed(ep, rc); /* the endpoint's fault, not the call's */
        else if (ep->pub.state == MICA_ENDPOINT_CONNECTING)
            ep->pub.state = ep->live ? MICA_ENDPOINT_READY : MICA_ENDPOINT_IDLE;
        mica__grpc_conn_unref(cn);
        return rc;
    }
    cn->up = true;
    mica__grpc_ep_conn_up(ep);
    cn->refs++;
    *out = cn;
    return 0;
}

int mica__grpc_conn_get(mica__grpc_ep_t *ep, mica_ctx_t *ctx, int64_t deadline_ms,
                        mica__grpc_conn_t **out)
{
    int per = ep->w->c->o.conns_per_worker;
    mica__grpc_conn_t **slot = &ep->conns[ep->rr++ % (unsigned)per];
    mica__grpc_conn_t *cn = *slot;
    if (cn && cn->dead)
        cn = *slot = NULL;
    if (!cn)
        return conn_open(ep, slot, deadline_ms, out);
    if (!mica_event_is_set(&cn->connected)) {
        cn->refs++; /* hold it while we wait for its attempt */
        int rc = mica_event_wait(&cn->connected, ctx, deadline_ms);
        if (rc == 0 && (cn->connect_rc != 0 || cn->dead))
            rc = cn->connect_rc ? cn->connect_rc : MICA_ECONNRESET;
        if (rc != 0) {
            mica__grpc_conn_unref(cn);
            return rc;
        }
        cn->refs--;
    }
    cn->refs++;
    *out = cn;
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * gRPC client on coroutines, through an nghttp2 client session per
 * connection.
 *
 * Each worker keeps up to conns_per_worker connections to the target, used
 * round robin and opened on first use (a connection that fails or receives
 * GOAWAY is dropped and reopened by the next call). A connection's coroutine
 * (conn_main) owns the socket: it feeds what it reads to the session and
 * writes what the session produces. Calls are streams submitted from their
 * own coroutines on the same worker; they wait on their stream, and nudge
 * the connection coroutine (mica_net_cancel) when they have queued bytes.
 *
 * A stream holds a reference on its connection until finish, so the session
 * outlives every stream that points into it.
 */
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/arena.h"
#include "common/log.h"
#include "grpc/internal.h"
#include "http/tls.h"
#include "mica/chan.h"
#include "mica/net.h"
#include "runtime/internal.h"

#define MAX_MD 16
#define OUT_HIGH_WATER (256 * 1024)
#define WINDOW_BYTES (1 << 20)

typedef struct conn conn_t;

struct mica_grpc_client {
    char *target;
    mica_grpc_client_opts_t o;
    struct ssl_ctx_st *tls; /* TLS connections when set */
    char *tls_name;         /* verified and sent as SNI */
    int nworkers;
    conn_t **conns; /* [worker * conns_per_worker + i] */
    unsigned *rr;   /* per worker: next connection to use */
};

struct conn {
    mica_grpc_client_t *c;
    conn_t **slot; /* where the client points at us, while we do */
    int fd;
    mica__tls_t tls; /* tls.ssl set on TLS connections */
    nghttp2_session *sess;
    mica_chan_t *connected; /* closed once the connection attempt ends */
    int connect_rc;
    bool dead;    /* no new streams */
    bool reading; /* conn_main waits for the socket */
    int refs;     /* conn_main + open streams */
    int nstreams; /* streams nghttp2 has not closed */
    mica_grpc_stream_t *streams; /* every stream not yet freed */
};

typedef struct field {
    char *name, *value;
} field_t;

struct mica_grpc_stream {
    conn_t *cn;
    int32_t id;
    const ProtobufCMethodDescriptor *md;
    mica_ctx_t *ctx;
    int64_t deadline_ms;
    mica__arena_t arena;
    size_t max_msg;

    /* response */
    int http_status;
    field_t headers[MAX_MD], trailers[MAX_MD];
    size_t nheaders, ntrailers;
    const char *grpc_status, *grpc_message;
    char *in;
    size_t in_len, in_off, in_cap;
    bool remote_ended; /* END_STREAM received */
    bool closed;       /* nghttp2 closed the stream */
    uint32_t rst_code;
    int local_code;    /* >0: how the client itself ended the call */
    const char *local_message;

    /* request */
    char *out;
    size_t out_len, out_off, out_cap;
    bool out_eof, out_deferred;

    mica__coro_t *waiter;
    uint64_t seq;
    bool orphan; /* finished by its caller, freed when nghttp2 closes it */
    mica_grpc_stream_t *prev, *next;
};

/* ---- helpers ------------------------------------------------------------------- */

static void nudge(conn_t *cn)
{
    if (cn->reading)
        mica_net_cancel(cn->fd);
}

static void wake(mica_grpc_stream_t *st)
{
    if (st->waiter) {
        mica__coro_t *co = st->waiter;
        st->waiter = NULL;
        mica__wake_any(co->loop, co, st->seq, 0);
    }
}

/* Waits for the stream to change; a ctx end or deadline ends the call. */
static int wait_stream(mica_grpc_stream_t *st)
{
    mica__loop_t *loop = mica__loop_current();
    st->seq = mica__wait_prepare(loop);
    st->waiter = loop->current;
    int rc = mica__wait_ctx(loop, st->ctx, st->deadline_ms, st->seq);
    st->waiter = NULL;
    return rc;
}

static void conn_unref(conn_t *cn)
{
    if (--cn->refs > 0)
        return;
    if (cn->sess)
        nghttp2_session_del(cn->sess);
    mica_chan_free(cn->connected);
    free(cn);
}

static void stream_free(mica_grpc_stream_t *st)
{
    conn_t *cn = st->cn;
    if (st->prev)
        st->prev->next = st->next;
    else
        cn->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    if (cn->sess && st->id > 0)
        nghttp2_session_set_stream_user_data(cn->sess, st->id, NULL);
    mica__arena_destroy(&st->arena);
    free(st->in);
    free(st->out);
    free(st);
    if (cn->nstreams == 0 && (cn->dead || mica_worker_stopping()))
        nudge(cn); /* conn_main may end now */
    conn_unref(cn);
}

/* Ends the call from this side: records why and resets the stream. */
static void abort_stream(mica_grpc_stream_t *st, int code, const char *msg)
{
    if (!st->local_code) {
        st->local_code = code;
        st->local_message = msg;
    }
    if (!st->closed && st->id > 0) {
        nghttp2_submit_rst_stream(st->cn->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        nudge(st->cn);
    }
}

static int ctx_code(int rc)
{
    return rc == MICA_ETIMEDOUT ? MICA_GRPC_DEADLINE_EXCEEDED : MICA_GRPC_CANCELLED;
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
    else if (f->headers.cat == NGHTTP2_HCAT_HEADERS && st->ntrailers < MAX_MD)
        st->trailers[st->ntrailers++] = (field_t){n, v};
    else if (f->headers.cat == NGHTTP2_HCAT_RESPONSE && st->nheaders < MAX_MD)
        st->headers[st->nheaders++] = (field_t){n, v};
    return 0;
}

static int on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *user)
{
    mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, id);
    if (!st || st->local_code)
        return 0;
    if (st->in_off == st->in_len)
        st->in_off = st->in_len = 0;
    size_t max = st->max_msg + 5 + WINDOW_BYTES;
    if (len > max - (st->in_len - st->in_off)) {
        abort_stream(st, MICA_GRPC_RESOURCE_EXHAUSTED, "response larger than the limit");
        wake(st);
        return 0;
    }
    if (st->in_off && st->in_len + len > st->in_cap) {
        memmove(st->in, st->in + st->in_off, st->in_len - st->in_off);
        st->in_len -= st->in_off;
        st->in_off = 0;
    }
    if (st->in_len + len > st->in_cap) {
        size_t cap = st->in_cap ? st->in_cap : 1024;
        while (cap < st->in_len + len)
            cap *= 2;
        char *b = realloc(st->in, cap);
        if (!b)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->in = b;
        st->in_cap = cap;
    }
    memcpy(st->in + st->in_len, data, len);
    st->in_len += len;
    wake(st);
    return 0;
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *user)
{
    conn_t *cn = user;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        cn->dead = true; /* streams past its last id are closed by nghttp2 */
        return 0;
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
        if (st) {
            st->remote_ended = true;
            wake(st);
        }
    }
    return 0;
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t code, void *user)
{
    conn_t *cn = user;
    mica_grpc_stream_t *st = nghttp2_session_get_stream_user_data(sess, id);
    if (!st)
        return 0;
    st->closed = true;
    st->rst_code = code;
    cn->nstreams--;
    if (st->orphan)
        stream_free(st);
    else
        wake(st);
    return 0;
}

static ssize_t read_request(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *user)
{
    mica_grpc_stream_t *st = src->ptr;
    size_t n = st->out_len - st->out_off;
    if (n > len)
        n = len;
    memcpy(buf, st->out + st->out_off, n);
    st->out_off += n;
    if (st->out_off == st->out_len)
        st->out_off = st->out_len = 0;
    if (st->out_len - st->out_off < OUT_HIGH_WATER / 4)
        wake(st);
    if (st->out_len == 0 && st->out_eof)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (n == 0) {
        st->out_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* ---- connections --------------------------------------------------------------- */

static int flush(conn_t *cn)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(cn->sess, &data);
        if (n < 0)
            return MICA_EPROTO;
        if (n == 0)
            return 0;
        int64_t deadline = mica_deadline_in(cn->c->o.connect_timeout_ms);
        int rc = cn->tls.ssl ? mica__tls_write(&cn->tls, data, (size_t)n, deadline)
                             : mica_net_write(cn->fd, data, (size_t)n, NULL, deadline);
        if (rc != 0)
            return rc;
    }
}

/* Reads what is there: > 0 bytes, 0 at EOF, MICA_EAGAIN when drained, or an error. */
static ssize_t conn_read(conn_t *cn, uint8_t *buf, size_t len)
{
    if (cn->tls.ssl)
        return mica__tls_read(&cn->tls, buf, len, mica_deadline_in(cn->c->o.connect_timeout_ms));
    for (;;) {
        ssize_t n = read(cn->fd, buf, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

static void conn_main(void *arg)
{
    conn_t *cn = arg;
    uint8_t buf[16384];
    for (;;) {
        if (flush(cn) != 0)
            break;
        if (!nghttp2_session_want_read(cn->sess) && !nghttp2_session_want_write(cn->sess))
            break;
        if (cn->nstreams == 0 && (cn->dead || mica_worker_stopping()))
            break;
        cn->reading = true;
        int rc = mica_net_wait(cn->fd, MICA_NET_READABLE, NULL, MICA_NO_DEADLINE);
        cn->reading = false;
        if (rc == MICA_ECANCELED)
            continue; /* a stream has bytes to send, or the worker is stopping */
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
    mica__tls_shutdown(&cn->tls);
    mica__tls_free(&cn->tls);
    mica_net_close(cn->fd);
    cn->fd = -1;
    /* Calls still open lost their connection: UNAVAILABLE, unless their
     * response was complete. Their streams live until they finish, and the
     * session until the last of them (nghttp2 makes no more callbacks now
     * that nobody feeds it). */
    mica_grpc_stream_t *next;
    for (mica_grpc_stream_t *st = cn->streams; st; st = next) {
        next = st->next;
        if (st->closed)
            continue;
        st->closed = true;
        cn->nstreams--;
        if (!st->local_code && !st->remote_ended) {
            st->local_code = MICA_GRPC_UNAVAILABLE;
            st->local_message = "connection lost";
        }
        if (st->orphan)
            stream_free(st);
        else
            wake(st);
    }
    conn_unref(cn);
}

static int session_new(conn_t *cn)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return MICA_ENOMEM;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    int rv = nghttp2_session_client_new(&cn->sess, cb, cn);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return MICA_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_BYTES},
    };
    if (nghttp2_submit_settings(cn->sess, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(cn->sess, NGHTTP2_FLAG_NONE, 0, 4 * WINDOW_BYTES) != 0)
        return MICA_ENOMEM;
    return 0;
}

/* Returns a live connection of this worker (connecting if needed) with a reference for the caller. */
static int get_conn(mica_grpc_client_t *c, mica_ctx_t *ctx, conn_t **out)
{
    int w = mica_worker_id();
    if (w < 0 || w >= c->nworkers)
        return MICA_EINVAL;
    int per = c->o.conns_per_worker;
    conn_t **slot = &c->conns[w * per + (int)(c->rr[w]++ % (unsigned)per)];
    conn_t *cn = *slot;
    if (cn && cn->dead)
        cn = *slot = NULL;
    if (!cn) {
        if (!(cn = calloc(1, sizeof(*cn))))
            return MICA_ENOMEM;
        cn->c = c;
        cn->slot = slot;
        cn->fd = -1;
        cn->refs = 1; /* the attempt, then conn_main */
        if (mica_chan_new(&cn->connected, 0, 0) != 0) {
            free(cn);
            return MICA_ENOMEM;
        }
        *slot = cn;
        int64_t deadline = mica_deadline_in(c->o.connect_timeout_ms);
        int64_t d = mica_ctx_deadline(ctx ? ctx : mica_ctx_background());
        int fd = mica_net_connect(c->target, NULL, d < deadline ? d : deadline);
        int rc = fd < 0 ? fd : 0;
        cn->fd = fd;
        if (rc == 0 && c->tls)
            rc = mica__tls_connect(&cn->tls, c->tls, fd, c->tls_name, d < deadline ? d : deadline);
        if (rc == 0 && (rc = session_new(cn)) == 0)
            rc = mica_go(conn_main, cn); /* takes over the attempt's reference */
        cn->connect_rc = rc;
        mica_chan_close(cn->connected);
        if (rc != 0) {
            mica__tls_free(&cn->tls);
            if (fd >= 0)
                mica_net_close(fd);
            cn->fd = -1;
            cn->dead = true;
            if (*slot == cn)
                *slot = NULL;
            conn_unref(cn);
            return rc;
        }
    } else {
        cn->refs++; /* hold it while we wait for its attempt */
        int rc = mica_chan_recv(cn->connected, ctx, NULL);
        if (rc != MICA_ECLOSED) {
            conn_unref(cn);
            return rc;
        }
        if (cn->connect_rc != 0 || cn->dead) {
            rc = cn->connect_rc ? cn->connect_rc : MICA_ECONNRESET;
            conn_unref(cn);
            return rc;
        }
        cn->refs--;
    }
    cn->refs++;
    *out = cn;
    return 0;
}

/* ---- the client -------------------------------------------------------------------- */

static void on_worker_stop(int worker, void *arg)
{
    mica_grpc_client_t *c = arg;
    for (int i = 0; i < c->o.conns_per_worker; i++) {
        conn_t *cn = c->conns[worker * c->o.conns_per_worker + i];
        if (cn && cn->fd >= 0)
            nudge(cn); /* idle connections close; busy ones once their calls end */
    }
}

int mica_grpc_client_new(mica_grpc_client_t **out, mica_runtime_t *rt, const char *target,
                         const mica_grpc_client_opts_t *opts)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!rt || !target || mica_net_parse_addr(target, &ss, &len) != 0)
        return MICA_EINVAL;
    mica_grpc_client_t *c = calloc(1, sizeof(*c));
    if (!c)
        return MICA_ENOMEM;
    if (opts)
        c->o = *opts;
    if (c->o.conns_per_worker <= 0)
        c->o.conns_per_worker = 2;
    if (c->o.connect_timeout_ms <= 0)
        c->o.connect_timeout_ms = 5000;
    if (!c->o.max_message_bytes)
        c->o.max_message_bytes = 4 << 20;
    c->nworkers = mica_runtime_workers(rt);
    c->target = strdup(target);
    if (c->o.tls_ca_file) {
        int rc = mica__tls_client_ctx_new(&c->tls, c->o.tls_ca_file, c->o.tls_cert_file,
                                          c->o.tls_key_file);
        if (rc != 0) {
            mica_grpc_client_free(c);
            return rc;
        }
        if (c->o.tls_server_name) {
            c->tls_name = strdup(c->o.tls_server_name);
        } else if (c->target) { /* "host:port" or "[v6]:port" */
            const char *colon = strrchr(c->target, ':');
            const char *host = c->target[0] == '[' ? c->target + 1 : c->target;
            size_t n = (size_t)(colon - host) - (c->target[0] == '[' ? 1 : 0);
            c->tls_name = strndup(host, n);
        }
        if (!c->tls_name) {
            mica_grpc_client_free(c);
            return MICA_ENOMEM;
        }
    }
    /* Not kept: the caller owns the strings. */
    c->o.tls_ca_file = c->o.tls_server_name = c->o.tls_cert_file = c->o.tls_key_file = NULL;
    c->conns = calloc((size_t)(c->nworkers * c->o.conns_per_worker), sizeof(*c->conns));
    c->rr = calloc((size_t)c->nworkers, sizeof(*c->rr));
    if (!c->target || !c->conns || !c->rr || mica_runtime_on_stop(rt, on_worker_stop, c) != 0) {
        mica_grpc_client_free(c);
        return MICA_ENOMEM;
    }
    *out = c;
    return 0;
}

void mica_grpc_client_free(mica_grpc_client_t *c)
{
    if (!c)
        return;
    free(c->target);
    free(c->tls_name);
    mica__tls_ctx_free(c->tls);
    free(c->conns);
    free(c->rr);
    free(c);
}

/* ---- calls ---------------------------------------------------------------------- */

static nghttp2_nv nv(const char *name, const char *value)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                        NGHTTP2_NV_FLAG_NONE};
}

int mica_grpc_stream_open(mica_grpc_client_t *c, mica_ctx_t *ctx,
                          const ProtobufCServiceDescriptor *service, const char *method,
                          const mica_grpc_md_t *md, size_t n, mica_grpc_stream_t **out)
{
    const ProtobufCMethodDescriptor *m = NULL;
    for (unsigned i = 0; service && method && i < service->n_methods; i++)
        if (strcmp(service->methods[i].name, method) == 0)
            m = &service->methods[i];
    if (!m)
        return MICA_ENOTFOUND;
    if (n > MAX_MD)
        return MICA_ELIMIT;
    int rc = ctx ? mica_ctx_err(ctx) : 0;
    if (rc != 0)
        return rc;
    conn_t *cn = NULL;
    if ((rc = get_conn(c, ctx, &cn)) != 0)
        return rc;
    mica_grpc_stream_t *st = calloc(1, sizeof(*st));
    if (!st) {
        conn_unref(cn);
        return MICA_ENOMEM;
    }
    st->cn = cn;
    st->md = m;
    st->ctx = ctx;
    st->deadline_ms = ctx ? mica_ctx_deadline(ctx) : MICA_NO_DEADLINE;
    st->max_msg = c->o.max_message_bytes;

    char path[256], timeout[24];
    snprintf(path, sizeof(path), "/%s/%s", service->name, method);
    nghttp2_nv nva[8 + MAX_MD];
    size_t k = 0;
    nva[k++] = nv(":method", "POST");
    nva[k++] = nv(":scheme", c->tls ? "https" : "http");
    nva[k++] = nv(":path", path);
    nva[k++] = nv(":authority", c->target);
    nva[k++] = nv("content-type", "application/grpc");
    nva[k++] = nv("te", "trailers");
    if (st->deadline_ms != MICA_NO_DEADLINE) {
        int64_t left = st->deadline_ms - mica_now_ms();
        snprintf(timeout, sizeof(timeout), "%lldm", (long long)(left > 0 ? left : 0));
        nva[k++] = nv("grpc-timeout", timeout);
    }
    for (size_t i = 0; i < n; i++)
        nva[k++] = nv(md[i].key, md[i].value);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_request};
    st->id = nghttp2_submit_request(cn->sess, NULL, nva, k, &prd, st);
    if (st->id < 0) {
        conn_unref(cn);
        free(st);
        return MICA_ENOMEM;
    }
    cn->nstreams++;
    st->next = cn->streams;
    if (cn->streams)
        cn->streams->prev = st;
    cn->streams = st;
    nudge(cn);
    *out = st;
    return 0;
}

int mica_grpc_stream_send(mica_grpc_stream_t *st, const ProtobufCMessage *msg)
{
    if (st->out_eof || !msg || msg->descriptor != st->md->input)
        return MICA_EINVAL;
    if (st->closed || st->local_code || st->remote_ended)
        return MICA_ECLOSED;
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > st->max_msg)
        return MICA_ELIMIT;
    if (st->out_len + 5 + n > st->out_cap) {
        size_t cap = st->out_cap ? st->out_cap : 1024;
        while (cap < st->out_len + 5 + n)
            cap *= 2;
        char *b = realloc(st->out, cap);
        if (!b)
            return MICA_ENOMEM;
        st->out = b;
        st->out_cap = cap;
    }
    uint8_t *p = (uint8_t *)st->out + st->out_len;
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    protobuf_c_message_pack(msg, p + 5);
    st->out_len += 5 + n;
    if (st->out_deferred) {
        st->out_deferred = false;
        nghttp2_session_resume_data(st->cn->sess, st->id);
    }
    nudge(st->cn);
    /* Flow control: wait while a lot is queued, unless the server has
     * answered already (then the rest is moot: its status is in finish). */
    while (st->out_len - st->out_off > OUT_HIGH_WATER && !st->closed && !st->remote_ended) {
        int rc = wait_stream(st);
        if (rc != 0) {
            abort_stream(st, ctx_code(rc), NULL);
            return rc;
        }
    }
    return st->closed || st->remote_ended ? MICA_ECLOSED : 0;
}

int mica_grpc_stream_close_send(mica_grpc_stream_t *st)
{
    if (st->closed)
        return MICA_ECLOSED;
    if (!st->out_eof) {
        st->out_eof = true;
        if (st->out_deferred) {
            st->out_deferred = false;
            nghttp2_session_resume_data(st->cn->sess, st->id);
        }
        nudge(st->cn);
    }
    return 0;
}

int mica_grpc_stream_recv(mica_grpc_stream_t *st, ProtobufCMessage **out)
{
    *out = NULL;
    for (;;) {
        if (st->local_code)
            return MICA_ECLOSED;
        size_t have = st->in_len - st->in_off;
        const uint8_t *p = (const uint8_t *)st->in + st->in_off;
        if (have >= 5) {
            size_t n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
            if (p[0] != 0) {
                abort_stream(st, MICA_GRPC_INTERNAL, "bad message flags from the server");
                return MICA_ECLOSED;
            }
            if (n > st->max_msg) {
                abort_stream(st, MICA_GRPC_RESOURCE_EXHAUSTED, "response larger than the limit");
                return MICA_ECLOSED;
            }
            if (have >= 5 + n) {
                *out = protobuf_c_message_unpack(st->md->output, NULL, n, p + 5);
                st->in_off += 5 + n;
                if (!*out) {
                    abort_stream(st, MICA_GRPC_INTERNAL, "undecodable response message");
                    return MICA_ECLOSED;
                }
                return 0;
            }
        }
        if (st->remote_ended || st->closed) {
            if (have && !st->local_code)
                st->local_code = MICA_GRPC_INTERNAL, st->local_message = "truncated response";
            return MICA_ECLOSED;
        }
        int rc = wait_stream(st);
        if (rc != 0) {
            abort_stream(st, ctx_code(rc), NULL);
            return MICA_ECLOSED;
        }
    }
}

static const char *find(const field_t *f, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(f[i].name, key) == 0)
            return f[i].value;
    return NULL;
}

const char *mica_grpc_stream_header(const mica_grpc_stream_t *st, const char *key)
{
    return find(st->headers, st->nheaders, key);
}

const char *mica_grpc_stream_trailer(const mica_grpc_stream_t *st, const char *key)
{
    return find(st->trailers, st->ntrailers, key);
}

/* grpc-message is percent-encoded: decode it into res. */
static void set_message(mica_grpc_result_t *res, const char *m)
{
    size_t k = 0;
    for (; m && *m && k + 1 < sizeof(res->message); m++) {
        unsigned hi, lo;
        if (m[0] == '%' && sscanf(m + 1, "%1x%1x", &hi, &lo) == 2) {
            res->message[k++] = (char)(hi << 4 | lo);
            m += 2;
        } else {
            res->message[k++] = *m;
        }
    }
    res->message[k] = '\0';
}

static int http_code(int status)
{
    switch (status) {
    case 400: return MICA_GRPC_INTERNAL;
    case 401: return MICA_GRPC_UNAUTHENTICATED;
    case 403: return MICA_GRPC_PERMISSION_DENIED;
    case 404: return MICA_GRPC_UNIMPLEMENTED;
    case 429: case 502: case 503: case 504: return MICA_GRPC_UNAVAILABLE;
    default: return MICA_GRPC_UNKNOWN;
    }
}

int mica_grpc_stream_finish(mica_grpc_stream_t *st, mica_grpc_result_t *res)
{
    mica_grpc_result_t local;
    if (!res)
        res = &local;
    if (!st->closed && !st->remote_ended) {
        abort_stream(st, MICA_GRPC_CANCELLED, "call abandoned before its end");
    } else if (!st->closed && st->out_len > st->out_off) {
        /* The server has answered while requests were still queued: they
         * would wait for window it will not give; reset (its status stands). */
        nghttp2_submit_rst_stream(st->cn->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        nudge(st->cn);
    } else if (!st->closed && !st->out_eof) {
        mica_grpc_stream_close_send(st);
    }
    /* The stream's data provider points at us: wait until nghttp2 is done
     * with it (a reset or the connection's end closes it promptly). */
    st->ctx = NULL; /* already honoured: this wait only bounds the close */
    st->deadline_ms = mica_deadline_in(st->cn->c->o.connect_timeout_ms);
    while (!st->closed && wait_stream(st) == 0)
        ;
    int code;
    const char *msg = NULL;
    if (st->local_code) {
        code = st->local_code;
        msg = st->local_message ? st->local_message
              : code == MICA_GRPC_DEADLINE_EXCEEDED ? "deadline exceeded"
                                                    : "cancelled";
    } else if (st->grpc_status) {
        code = (int)strtol(st->grpc_status, NULL, 10);
        msg = st->grpc_message;
    } else if (st->http_status && st->http_status != 200) {
        code = http_code(st->http_status);
        msg = "HTTP status without grpc-status";
    } else if (st->rst_code == NGHTTP2_REFUSED_STREAM) {
        code = MICA_GRPC_UNAVAILABLE;
        msg = "stream refused";
    } else if (st->rst_code == NGHTTP2_CANCEL) {
        code = MICA_GRPC_CANCELLED;
        msg = "stream reset by the server";
    } else {
        code = MICA_GRPC_INTERNAL;
        msg = "response without grpc-status";
    }
    res->code = code;
    set_message(res, msg);
    if (st->closed) {
        stream_free(st);
    } else {
        st->orphan = true; /* freed by on_stream_close or the connection's end */
        abort_stream(st, MICA_GRPC_CANCELLED, NULL);
    }
    return code;
}

int mica_grpc_unary(mica_grpc_client_t *c, mica_ctx_t *ctx,
                    const ProtobufCServiceDescriptor *service, const char *method,
                    const ProtobufCMessage *req, ProtobufCMessage **resp, mica_grpc_result_t *res)
{
    *resp = NULL;
    mica_grpc_stream_t *st;
    int rc = mica_grpc_stream_open(c, ctx, service, method, NULL, 0, &st);
    if (rc != 0) {
        int code = rc == MICA_ENOTFOUND   ? MICA_GRPC_UNIMPLEMENTED
                   : rc == MICA_ETIMEDOUT ? MICA_GRPC_DEADLINE_EXCEEDED
                   : rc == MICA_ECANCELED ? MICA_GRPC_CANCELLED
                                          : MICA_GRPC_UNAVAILABLE;
        if (res) {
            res->code = code;
            snprintf(res->message, sizeof(res->message), "%s", mica_strerror(rc));
        }
        return code;
    }
    ProtobufCMessage *out = NULL, *extra = NULL;
    if (mica_grpc_stream_send(st, req) == 0 && mica_grpc_stream_close_send(st) == 0 &&
        mica_grpc_stream_recv(st, &out) == 0 && mica_grpc_stream_recv(st, &extra) == 0) {
        protobuf_c_message_free_unpacked(extra, NULL);
        abort_stream(st, MICA_GRPC_INTERNAL, "more than one response to a unary call");
    }
    int code = mica_grpc_stream_finish(st, res);
    if (code == MICA_GRPC_OK && out)
        *resp = out;
    else if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    if (code == MICA_GRPC_OK && !out) {
        code = MICA_GRPC_INTERNAL;
        if (res) {
            res->code = code;
            snprintf(res->message, sizeof(res->message), "no response message");
        }
    }
    return code;
}

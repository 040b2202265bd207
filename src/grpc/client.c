/* SPDX-License-Identifier: MIT */
/*
 * gRPC client on coroutines: the public API. A call goes through the
 * client's interceptors (none: straight through, no cost), then the
 * transport: client_pool.c picks an endpoint and a connection on the
 * calling worker, and the call becomes a stream of that connection's
 * nghttp2 session (client_conn.c). Everything a call touches belongs to
 * its worker; the only shared state read per call is the resolver's
 * generation number (one atomic load of a line that changes when the
 * endpoint list does).
 *
 * A call's limit is the earlier of its ctx's deadline and its options'
 * deadline_ms: it goes out as grpc-timeout and bounds every wait of the
 * call here. A stream holds a reference on its connection until finish,
 * so the session outlives every stream that points into it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "grpc/client.h"
#include "mica/net.h"

#define MAX_INTERCEPTORS 16

/* ---- the client ------------------------------------------------------------------ */

/* "host:port" or "[v6]:port" -> a new string holding the host (NULL: ENOMEM or no port). */
static char *host_of(const char *hostport)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon)
        return NULL;
    const char *h = hostport;
    size_t n = (size_t)(colon - hostport);
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    return mica__strndup(h, n);
}

int mica_grpc_client_new(mica_grpc_client_t **out, mica_runtime_t *rt, const char *target,
                         const mica_grpc_client_opts_t *opts)
{
    if (!rt || !target)
        return MICA_EINVAL;
    mica_grpc_client_t *c = mica__calloc(1, sizeof(*c));
    if (!c)
        return MICA_ENOMEM;
    if (opts)
        c->o = *opts;
    if (c->o.conns_per_worker <= 0)
        c->o.conns_per_worker = 2;
    if (c->o.connect_timeout_ms <= 0)
        c->o.connect_timeout_ms = 5000;
    if (c->o.backoff_max_ms <= 0)
        c->o.backoff_max_ms = 30000;
    if (!c->o.max_message_bytes)
        c->o.max_message_bytes = 4 << 20;
    c->picker = c->o.picker ? c->o.picker : &mica_picker_round_robin;
    c->nworkers = mica_runtime_workers(rt);
    mica_resolver_opts_t ro = {.refresh_interval_ms = c->o.resolve_interval_ms};
    int rc = mica_resolver_new(&c->resolver, rt, target, &ro);
    if (rc != 0) {
        mica__free(c);
        return rc;
    }
    /* :authority and the TLS name: the target's host:port when it names one
     * host (dns, registered schemes), else each endpoint's own address. */
    const char *scheme = mica_resolver_scheme(c->resolver);
    const char *endpoint = mica_resolver_endpoint(c->resolver);
    const char *authority = mica_resolver_authority(c->resolver);
    if (authority && !(c->authority = mica__strdup(authority)))
        rc = MICA_ENOMEM;
    if (rc == 0 && c->o.tls_ca_file) {
        mica_tls_client_opts_t to = {.ca_file = c->o.tls_ca_file,
                                     .cert_file = c->o.tls_cert_file,
                                     .key_file = c->o.tls_key_file};
        rc = mica_tls_client_new(&c->tls, &to);
        if (rc == 0 && c->o.tls_server_name)
            rc = (c->tls_name = mica__strdup(c->o.tls_server_name)) ? 0 : MICA_ENOMEM;
        else if (rc == 0 && strcmp(scheme, "dns") == 0)
            rc = (c->tls_name = host_of(endpoint)) ? 0 : MICA_ENOMEM;
    }
    /* Not kept: the caller owns the strings. */
    c->o.tls_ca_file = c->o.tls_server_name = c->o.tls_cert_file = c->o.tls_key_file = NULL;
    if (rc == 0)
        rc = mica__grpc_workers_new(c);
    if (rc == 0)
        rc = mica_runtime_on_stop(rt, mica__grpc_worker_stop, c);
    if (rc != 0) {
        mica_grpc_client_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void mica_grpc_client_free(mica_grpc_client_t *c)
{
    if (!c)
        return;
    mica__grpc_workers_free(c);
    mica_resolver_free(c->resolver);
    mica__free(c->authority);
    mica__free(c->tls_name);
    mica_tls_client_free(c->tls);
    mica__free(c->icpt);
    mica__free(c);
}

int mica_grpc_client_intercept(mica_grpc_client_t *c, mica_grpc_client_interceptor_fn fn,
                               void *arg)
{
    if (!c || !fn)
        return MICA_EINVAL;
    if (atomic_load(&c->used))
        return MICA_EBUSY;
    if (c->nicpt == MAX_INTERCEPTORS)
        return MICA_ELIMIT;
    mica__grpc_interceptor_t *a = mica__realloc(c->icpt, (c->nicpt + 1) * sizeof(*a));
    if (!a)
        return MICA_ENOMEM;
    a[c->nicpt++] = (mica__grpc_interceptor_t){fn, arg};
    c->icpt = a;
    return 0;
}

mica_resolver_t *mica_grpc_client_resolver(mica_grpc_client_t *c)
{
    return c->resolver;
}

/* ---- opening a stream ---------------------------------------------------------------- */

static nghttp2_nv nv(const char *name, const char *value)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                        NGHTTP2_NV_FLAG_NONE};
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The call's limit: the earlier of the ctx's deadline and the options'. */
static int64_t call_deadline(const mica_grpc_call_info_t *call)
{
    int64_t d = call->ctx ? mica_ctx_deadline(call->ctx) : MICA_NO_DEADLINE;
    if (call->opts.deadline_ms > 0 && call->opts.deadline_ms < d)
        d = call->opts.deadline_ms;
    return d;
}

/* The transport's open: pick, connect, submit. Returns 0 or a MICA_E* code. */
static int open_stream(mica_grpc_call_info_t *call, mica_grpc_stream_t **out)
{
    mica_grpc_client_t *c = call->client;
    const mica_grpc_call_opts_t *o = &call->opts;
    if (o->nmd > MICA__GRPC_MAX_MD)
        return MICA_ELIMIT;
    int rc = call->ctx ? mica_ctx_err(call->ctx) : 0;
    if (rc != 0)
        return rc;
    int64_t deadline = call_deadline(call);
    if (deadline != MICA_NO_DEADLINE && deadline <= mica_now_ms())
        return MICA_ETIMEDOUT;
    mica_pick_info_t pi = {.method = call->path, .flags = o->flags, .policy = o->policy};
    mica__grpc_conn_t *cn = NULL;
    if ((rc = mica__grpc_pick(c, call->ctx, deadline, &pi, &cn)) != 0)
        return rc;
    mica_grpc_stream_t *st = mica__grpc_stream_new(cn->ep->w, c->o.max_message_bytes);
    if (!st) {
        cn->ep->pub.inflight--; /* never placed */
        mica__grpc_conn_unref(cn);
        return MICA_ENOMEM;
    }
    st->cn = cn;
    st->md = call->method;
    st->ctx = call->ctx;
    st->deadline_ms = deadline;
    st->max_msg = c->o.max_message_bytes;
    st->unary = !call->streaming;
    if (st->unary && (c->picker->flags & MICA_PICKER_MEASURES_LATENCY))
        st->started_ns = now_ns();

    char timeout[24];
    nghttp2_nv nva[8 + MICA__GRPC_MAX_MD];
    size_t k = 0;
    nva[k++] = nv(":method", "POST");
    nva[k++] = nv(":scheme", c->tls ? "https" : "http");
    nva[k++] = nv(":path", call->path);
    nva[k++] = nv(":authority", c->authority ? c->authority : cn->ep->addr);
    nva[k++] = nv("content-type", "application/grpc");
    nva[k++] = nv("te", "trailers");
    if (deadline != MICA_NO_DEADLINE) {
        int64_t left = deadline - mica_now_ms();
        snprintf(timeout, sizeof(timeout), "%lldm", (long long)(left > 0 ? left : 0));
        nva[k++] = nv("grpc-timeout", timeout);
    }
    for (size_t i = 0; i < o->nmd; i++)
        nva[k++] = nv(o->md[i].key, o->md[i].value);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = mica__grpc_read_request};
    st->id = nghttp2_submit_request(cn->sess, NULL, nva, k, &prd, st);
    if (st->id < 0) {
        rc = st->id == NGHTTP2_ERR_NOMEM ? MICA_ENOMEM : MICA_EINVAL; /* bad metadata */
        cn->ep->pub.inflight--;
        mica__grpc_stream_put(cn->ep->w, st);
        mica__grpc_conn_unref(cn);
        return rc;
    }
    cn->nstreams++;
    mica__list_push_back(&cn->streams, &st->link);
    mica__grpc_conn_nudge(cn);
    *out = st;
    return 0;
}

/* A status for an open that failed with MICA_E* `rc`, into res. */
static int open_failed(int rc, mica_grpc_result_t *res)
{
    int code = rc == MICA_ENOTFOUND   ? MICA_GRPC_UNIMPLEMENTED
               : rc == MICA_ETIMEDOUT ? MICA_GRPC_DEADLINE_EXCEEDED
               : rc == MICA_ECANCELED ? MICA_GRPC_CANCELLED
               : rc == MICA_ELIMIT    ? MICA_GRPC_RESOURCE_EXHAUSTED
               : rc == MICA_EINVAL    ? MICA_GRPC_INTERNAL
                                      : MICA_GRPC_UNAVAILABLE;
    res->code = code;
    snprintf(res->message, sizeof(res->message), "%s", mica_strerror(rc));
    res->retry_pushback_ms = -1;
    return code;
}

static int transport_unary(mica_grpc_call_info_t *call);

/* The end of the chain for streaming calls: open into call->stream. */
static int transport_open(mica_grpc_call_info_t *call)
{
    call->stream = NULL;
    int rc = open_stream(call, &call->stream);
    if (rc == 0) {
        call->res->code = MICA_GRPC_OK;
        call->res->message[0] = '\0';
        call->res->retry_pushback_ms = -1;
        return MICA_GRPC_OK;
    }
    call->_err = rc;
    return open_failed(rc, call->res);
}

/* next(): the following interceptor, or the transport. Re-entrant, for retries. */
static int call_next(mica_grpc_call_info_t *call)
{
    mica_grpc_client_t *c = call->client;
    int i = call->_pos;
    if ((size_t)i >= c->nicpt)
        return call->streaming ? transport_open(call) : transport_unary(call);
    /* What this interceptor changes (ctx, options: e.g. md pointing at its own
     * stack array) is put back when it returns, so an outer interceptor that
     * calls next() again (a retry) starts from what it passed itself. */
    mica_ctx_t *ctx = call->ctx;
    mica_grpc_call_opts_t opts = call->opts;
    call->_pos = i + 1;
    int code = c->icpt[i].fn(call, call_next, c->icpt[i].arg);
    call->_pos = i;
    call->ctx = ctx;
    call->opts = opts;
    return code;
}

static const ProtobufCMethodDescriptor *find_method(const ProtobufCServiceDescriptor *service,
                                                    const char *method)
{
    for (unsigned i = 0; service && method && i < service->n_methods; i++)
        if (strcmp(service->methods[i].name, method) == 0)
            return &service->methods[i];
    return NULL;
}

/* Fills what every call's info has; `path` is the caller's buffer. */
static int call_init(mica_grpc_call_info_t *call, mica_grpc_client_t *c, mica_ctx_t *ctx,
                     const ProtobufCServiceDescriptor *service, const char *method,
                     const mica_grpc_call_opts_t *opts, char *path, size_t path_size)
{
    const ProtobufCMethodDescriptor *m = find_method(service, method);
    if (!m)
        return MICA_ENOTFOUND;
    int n = snprintf(path, path_size, "/%s/%s", service->name, method);
    if (n < 0 || (size_t)n >= path_size)
        return MICA_ELIMIT;
    if (!atomic_load_explicit(&c->used, memory_order_relaxed))
        atomic_store(&c->used, true);
    *call = (mica_grpc_call_info_t){.client = c, .service = service, .method = m, .path = path,
                                    .ctx = ctx};
    if (opts)
        call->opts = *opts;
    return 0;
}

int mica_grpc_stream_open(mica_grpc_client_t *c, mica_ctx_t *ctx,
                          const ProtobufCServiceDescriptor *service, const char *method,
                          const mica_grpc_call_opts_t *opts, mica_grpc_stream_t **out)
{
    mica_grpc_call_info_t call;
    char path[256];
    int rc = call_init(&call, c, ctx, service, method, opts, path, sizeof(path));
    if (rc != 0)
        return rc;
    call.streaming = true;
    if (c->nicpt == 0)
        return open_stream(&call, out);
    mica_grpc_result_t res = {.retry_pushback_ms = -1};
    call.res = &res;
    int code = call_next(&call);
    if (code == MICA_GRPC_OK && call.stream) {
        *out = call.stream;
        return 0;
    }
    if (call.stream) /* an interceptor failed the call after opening it */
        mica_grpc_stream_finish(call.stream, NULL);
    return call._err ? call._err
                     : mica_err_from_grpc(code == MICA_GRPC_OK ? MICA_GRPC_INTERNAL : code);
}

/* ---- streams ------------------------------------------------------------------------- */

/* Waits for the stream to change, bounded by the call's ctx and deadline. */
static int wait_stream(mica_grpc_stream_t *st)
{
    st->waiting = true;
    mica_event_reset(&st->ev);
    int rc = mica_event_wait(&st->ev, st->ctx, st->deadline_ms);
    st->waiting = false;
    return rc;
}

static int ctx_code(int rc)
{
    return rc == MICA_ETIMEDOUT ? MICA_GRPC_DEADLINE_EXCEEDED : MICA_GRPC_CANCELLED;
}

static void resume_data(mica_grpc_stream_t *st)
{
    if (st->out_deferred) {
        st->out_deferred = false;
        nghttp2_session_resume_data(st->cn->sess, st->id);
    }
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
    int rc = 0;
    uint8_t *p = (uint8_t *)mica__buf_reserve(&st->out, 5 + n, &rc);
    if (!p)
        return rc; /* MICA_ENOMEM; never ELIMIT: the wait below keeps it under the cap */
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    protobuf_c_message_pack(msg, p + 5);
    mica__buf_commit(&st->out, 5 + n);
    resume_data(st);
    mica__grpc_conn_nudge(st->cn);
    /* Flow control: wait while a lot is queued, unless the server has
     * answered already (then the rest is moot: its status is in finish). */
    while (mica__buf_len(&st->out) > MICA__GRPC_OUT_HIGH_WATER && !st->closed &&
           !st->remote_ended) {
        if ((rc = wait_stream(st)) != 0) {
            mica__grpc_stream_abort(st, ctx_code(rc), NULL);
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
        resume_data(st);
        mica__grpc_conn_nudge(st->cn);
    }
    return 0;
}

static void *pb_alloc(void *data, size_t size)
{
    return mica__malloc(size);
}

static void pb_free(void *data, void *p)
{
    mica__free(p);
}

/* Responses are unpacked through mica's allocator (which frees with free(),
 * so callers free them with protobuf-c's default allocator). */
static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

int mica_grpc_stream_recv(mica_grpc_stream_t *st, ProtobufCMessage **out)
{
    *out = NULL;
    for (;;) {
        if (st->local_code)
            return MICA_ECLOSED;
        size_t have = mica__buf_len(&st->in);
        const uint8_t *p = (const uint8_t *)mica__buf_data(&st->in);
        if (have >= 5) {
            size_t n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
            if (p[0] != 0) {
                mica__grpc_stream_abort(st, MICA_GRPC_INTERNAL, "bad message flags from the server");
                return MICA_ECLOSED;
            }
            if (n > st->max_msg) {
                mica__grpc_stream_abort(st, MICA_GRPC_RESOURCE_EXHAUSTED,
                                        "response larger than the limit");
                return MICA_ECLOSED;
            }
            if (have >= 5 + n) {
                *out = protobuf_c_message_unpack(st->md->output, &pb_allocator, n, p + 5);
                mica__buf_consume(&st->in, 5 + n);
                if (!*out) {
                    mica__grpc_stream_abort(st, MICA_GRPC_INTERNAL, "undecodable response message");
                    return MICA_ECLOSED;
                }
                return 0;
            }
        }
        if (st->remote_ended || st->closed) {
            if (have && !st->local_code) {
                st->local_code = MICA_GRPC_INTERNAL;
                st->local_message = "truncated response";
            }
            return MICA_ECLOSED;
        }
        int rc = wait_stream(st);
        if (rc != 0) {
            mica__grpc_stream_abort(st, ctx_code(rc), NULL);
            return MICA_ECLOSED;
        }
    }
}

static const char *find(const mica__grpc_field_t *f, size_t n, const char *key)
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

int mica_grpc_stream_on_finish(mica_grpc_stream_t *st,
                               void (*fn)(const mica_grpc_result_t *res, void *arg), void *arg)
{
    if (!fn)
        return MICA_EINVAL;
    if (st->nobs == MICA__GRPC_MAX_OBSERVERS)
        return MICA_ELIMIT;
    st->obs[st->nobs++] = (mica__grpc_observer_t){fn, arg};
    return 0;
}

static int hexval(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

/* grpc-message is percent-encoded: decode it into res. */
static void set_message(mica_grpc_result_t *res, const char *m)
{
    size_t k = 0;
    for (; m && *m && k + 1 < sizeof(res->message); m++) {
        int hi, lo;
        if (m[0] == '%' && (hi = hexval(m[1])) >= 0 && (lo = hexval(m[2])) >= 0) {
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

/* gRFC A6's grpc-retry-pushback-ms, from the trailers (or the headers of a
 * trailers-only response): -1 absent, -2 not a non-negative integer. */
static int64_t pushback(const mica_grpc_stream_t *st)
{
    const char *v = find(st->trailers, st->ntrailers, "grpc-retry-pushback-ms");
    if (!v)
        v = find(st->headers, st->nheaders, "grpc-retry-pushback-ms");
    if (!v)
        return -1;
    char *end;
    errno = 0;
    long long ms = strtoll(v, &end, 10);
    return *v >= '0' && *v <= '9' && !*end && errno == 0 ? (int64_t)ms : -2;
}

int mica_grpc_stream_finish(mica_grpc_stream_t *st, mica_grpc_result_t *res)
{
    mica_grpc_result_t local;
    if (!res)
        res = &local;
    if (!st->closed && !st->remote_ended) {
        mica__grpc_stream_abort(st, MICA_GRPC_CANCELLED, "call abandoned before its end");
    } else if (!st->closed && mica__buf_len(&st->out)) {
        /* The server has answered while requests were still queued: they
         * would wait for window it will not give; reset (its status stands). */
        nghttp2_submit_rst_stream(st->cn->sess, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        mica__grpc_conn_nudge(st->cn);
    } else if (!st->closed && !st->out_eof) {
        mica_grpc_stream_close_send(st);
    }
    /* The stream's data provider points at us: wait until nghttp2 is done
     * with it (a reset or the connection's end closes it promptly). A call
     * that ended here (ctx, deadline, a local error) has its reset queued
     * and becomes an orphan below, freed when nghttp2 closes it: its caller
     * does not wait for the connection's coroutine to get round to it. */
    st->ctx = NULL; /* already honoured: this wait only bounds the close */
    st->deadline_ms = mica_deadline_in(st->cn->c->o.connect_timeout_ms);
    while (!st->closed && !st->local_code && wait_stream(st) == 0)
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
    res->retry_pushback_ms = st->local_code ? -1 : pushback(st);
    uint32_t latency_us = 0;
    if (st->started_ns) {
        int64_t us = (now_ns() - st->started_ns) / 1000;
        latency_us = us <= 0 ? 1 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    }
    mica__grpc_ep_done(st->cn->ep, code, latency_us);
    for (int i = 0; i < st->nobs; i++)
        st->obs[i].fn(res, st->obs[i].arg);
    if (st->closed) {
        mica__grpc_stream_free(st);
    } else {
        st->orphan = true; /* freed by on_stream_close or the connection's end */
        mica__grpc_stream_abort(st, MICA_GRPC_CANCELLED, NULL);
    }
    return code;
}

/* ---- unary calls ----------------------------------------------------------------------- */

/* The end of the chain for unary calls: one stream, one request, one response. */
static int transport_unary(mica_grpc_call_info_t *call)
{
    mica_grpc_result_t *res = call->res;
    *call->resp = NULL;
    mica_grpc_stream_t *st;
    int rc = open_stream(call, &st);
    if (rc != 0) {
        call->_err = rc;
        return open_failed(rc, res);
    }
    ProtobufCMessage *out = NULL, *extra = NULL;
    if (mica_grpc_stream_send(st, call->req) == 0 && mica_grpc_stream_close_send(st) == 0 &&
        mica_grpc_stream_recv(st, &out) == 0 && mica_grpc_stream_recv(st, &extra) == 0) {
        protobuf_c_message_free_unpacked(extra, NULL);
        mica__grpc_stream_abort(st, MICA_GRPC_INTERNAL, "more than one response to a unary call");
    }
    int code = mica_grpc_stream_finish(st, res);
    if (code == MICA_GRPC_OK && out)
        *call->resp = out;
    else if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    if (code == MICA_GRPC_OK && !out) {
        code = res->code = MICA_GRPC_INTERNAL;
        snprintf(res->message, sizeof(res->message), "no response message");
    }
    return code;
}

int mica_grpc_unary(mica_grpc_client_t *c, mica_ctx_t *ctx,
                    const ProtobufCServiceDescriptor *service, const char *method,
                    const mica_grpc_call_opts_t *opts, const ProtobufCMessage *req,
                    ProtobufCMessage **resp, mica_grpc_result_t *res)
{
    mica_grpc_result_t local;
    *resp = NULL;
    mica_grpc_call_info_t call;
    char path[256];
    int rc = call_init(&call, c, ctx, service, method, opts, path, sizeof(path));
    if (rc != 0)
        return open_failed(rc, res ? res : &local);
    call.req = req;
    call.resp = resp;
    call.res = res ? res : &local;
    call.res->retry_pushback_ms = -1; /* for interceptors that answer by themselves */
    int code = c->nicpt ? call_next(&call) : transport_unary(&call);
    if (code != MICA_GRPC_OK && *resp) { /* an interceptor's doing: keep the contract */
        protobuf_c_message_free_unpacked(*resp, NULL);
        *resp = NULL;
    }
    return code;
}

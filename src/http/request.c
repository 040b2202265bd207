/* SPDX-License-Identifier: MIT */
/*
 * Requests, whatever their protocol: routing, the middleware chain around
 * the handler, error mapping, the request ctx, observers, and the request
 * accessors handlers use.
 *
 * A protocol (conn.c, h2.c) parses a head into a mica_http_req_t, calls
 * mica__http_route() before reading the body (a streaming route starts at
 * once, others after the whole body), then mica__http_serve(). Serving runs
 * the chain: each middleware gets a mica_http_next_t whose mica_http_next()
 * calls the next one, and the last the "final" handler -- the route's, or
 * the server's own answer (404, 405, OPTIONS, 400 for a bad target), so
 * middlewares and observers see those too. With no middleware the final
 * handler is called directly: the chain costs one branch.
 *
 * The request ctx is made on first use (most handlers never ask, and a ctx
 * costs an allocation); values and earlier deadlines are children of it,
 * kept on a list in the arena and freed newest first when the request ends.
 * A value given before the ctx exists (a tracing middleware's span) waits
 * in the arena and becomes a child when the ctx is made, so a request whose
 * handler never asks for its ctx makes none at all.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/alloc.h"
#include "common/log.h"
#include "http/internal.h"
#include "mica/net.h"

struct mica__ctx_link {
    mica_ctx_t *ctx;
    mica__ctx_link_t *next;
};

struct mica__ctx_value {
    const void *key;
    void *value;
    mica__ctx_value_t *next;
};

struct mica_http_next {
    mica_http_req_t *req;
    mica_http_resp_t *resp;
    size_t i; /* the next middleware to run */
};

void mica__http_req_init(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_server_t *srv,
                         const mica__http_ops_t *ops, void *proto, mica__arena_t *arena)
{
    *req = (mica_http_req_t){.ops = ops, .proto = proto, .srv = srv, .fd = -1, .sock = -1,
                             .arena = arena,
                             .method = "", .path = "", .deadline_ms = MICA_NO_DEADLINE};
    *resp = (mica_http_resp_t){.req = req};
}

/* ---- routing and admission ----------------------------------------------------- */

/*
 * Runs the gates when the head is in. A refused request is served like a
 * streaming one -- at once, its body unread (HTTP/1.1 closes the connection
 * unless the whole body already came; HTTP/2 leaves the rest of the stream
 * unread) -- and answered by the refusing gate instead of the chain.
 */
static void admit(mica_http_req_t *req)
{
    mica_http_server_t *srv = req->srv;
    req->admit_ns = mica__http_now_ns();
    for (size_t i = 0; i < srv->ngates; i++) {
        int rc = srv->gates[i].ops->admit(req, req->admit_ns, srv->gates[i].arg);
        if (rc != 0) {
            req->refused = rc < 0 ? rc : MICA_EOVERLOAD;
            req->streaming = true;
            return;
        }
        req->gates_admitted++;
    }
}

void mica__http_gates_done(mica_http_req_t *req)
{
    unsigned n = req->gates_admitted;
    if (!n)
        return;
    req->gates_admitted = 0;
    const mica__http_gate_t *g = req->srv->gates;
    int64_t now = mica__http_now_ns();
    for (unsigned i = 0; i < n; i++)
        if (g[i].ops->done)
            g[i].ops->done(req, now, now - req->admit_ns, g[i].arg);
}

int mica_http_gate(mica_http_server_t *srv, const mica_http_gate_ops_t *ops, void *arg)
{
    if (!ops || !ops->admit || srv->fds)
        return MICA_EINVAL;
    if (srv->ngates == MICA__HTTP_MAX_GATES)
        return MICA_ELIMIT;
    srv->gates[srv->ngates++] = (mica__http_gate_t){ops, arg};
    return 0;
}

void mica__http_route(mica_http_req_t *req)
{
    mica_http_server_t *srv = req->srv;
    req->route_rc = mica__router_match(srv->router, req->method, req->method_len, req->path,
                                       req->path_len, &req->match);
    const mica__route_t *r = req->match.route;
    if (req->route_rc == -404 && srv->fallback.fn)
        r = &srv->fallback;
    req->streaming = r && r->stream && req->route_rc != -405;
    /* A stream may rightly last long (a gRPC watch, a feed): no deadline of
     * its own; its waits end with the client, and each HTTP/1.1 body read
     * with body_timeout_ms. */
    req->deadline_ms = req->streaming ? MICA_NO_DEADLINE
                                      : mica_deadline_in(srv->o.request_timeout_ms);
    if (srv->ngates)
        admit(req);
}

/* ---- serving ------------------------------------------------------------------- */

static int final_404(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_error(resp, 404, "not found");
}

static int final_405(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_http_resp_header(resp, "Allow", req->match.allow);
    if (req->method_len == 7 && memcmp(req->method, "OPTIONS", 7) == 0)
        return mica_http_resp_send(resp, 204, NULL, NULL, 0);
    return mica_http_resp_error(resp, 405, "method not allowed");
}

static int final_400(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica__http_send_error(resp, 400, "malformed request target");
}

/* The answer for a handler that returned `rc` without a complete response. */
static void settle(mica_http_req_t *req, mica_http_resp_t *resp, int rc)
{
    if (resp->started && !resp->sent && rc != 0) /* nothing went out: answer the error */
        resp->started = resp->ended = false;
    if (resp->started) { /* a response in parts: end it, or cut it off on error */
        if (!resp->ended) {
            resp->ended = true;
            if (rc == 0 && req->ops->end(resp) == 0)
                return;
            req->ops->abort(resp);
        }
        return;
    }
    if (resp->sent)
        return;
    if (rc == 0) {
        mica__log_error("handler returned without a response", "path", req->path);
        rc = MICA_EPROTO;
    }
    if (mica__http_send_error(resp, mica_err_http_status(rc), mica_strerror(rc)) != 0) {
        resp->nfields = 0;
        mica_http_resp_send(resp, 500, NULL, NULL, 0);
    }
}

static mica_http_handler_fn final_of(const mica_http_req_t *req, void **arg)
{
    *arg = NULL;
    switch (req->route_rc) {
    case 0:
        *arg = req->match.route->arg;
        return req->match.route->fn;
    case -405:
        return final_405;
    case -400:
        return final_400;
    default:
        if (req->srv->fallback.fn) {
            *arg = req->srv->fallback.arg;
            return req->srv->fallback.fn;
        }
        return final_404;
    }
}

int mica_http_next(mica_http_next_t *next)
{
    mica_http_req_t *req = next->req;
    mica_http_server_t *srv = req->srv;
    if (next->i == SIZE_MAX)
        return MICA_EINVAL; /* the handler has run already */
    if (next->i < srv->nmw) {
        const mica__http_mw_t *mw = &srv->mw[next->i++];
        int rc = mw->fn(req, next->resp, next, mw->arg);
        settle(req, next->resp, rc); /* a short-circuit's error, answered for those outside */
        return rc;
    }
    next->i = SIZE_MAX;
    void *arg;
    mica_http_handler_fn fn = final_of(req, &arg);
    int rc = fn(req, next->resp, arg);
    settle(req, next->resp, rc); /* outer middlewares see the mapped status */
    return rc;
}

void mica__http_serve(mica_http_req_t *req, mica_http_resp_t *resp)
{
    mica_http_server_t *srv = req->srv;
    int rc;
    if (req->refused) {
        const mica__http_gate_t *g = &srv->gates[req->gates_admitted];
        rc = g->ops->refuse ? g->ops->refuse(req, resp, req->refused, g->arg) : req->refused;
    } else if (srv->nmw == 0) {
        void *arg;
        mica_http_handler_fn fn = final_of(req, &arg);
        rc = fn(req, resp, arg);
    } else {
        mica_http_next_t next = {req, resp, 0};
        rc = mica_http_next(&next);
    }
    settle(req, resp, rc);
    mica__http_gates_done(req);
    mica__http_observe(req, resp); /* before the release: observers read ctx values */
    mica__http_req_release(req);
}

int mica__http_send_error(mica_http_resp_t *resp, int status, const char *msg)
{
    /* Fields stay: a middleware's (a request id, say) belong on errors too. */
    return mica_http_resp_error(resp, status, msg);
}

/* ---- middleware and observers --------------------------------------------------- */

int mica_http_use(mica_http_server_t *srv, mica_http_middleware_fn fn, void *arg)
{
    if (!fn || srv->fds)
        return MICA_EINVAL;
    mica__http_mw_t *mw = mica__realloc(srv->mw, (srv->nmw + 1) * sizeof(*mw));
    if (!mw)
        return MICA_ENOMEM;
    mw[srv->nmw++] = (mica__http_mw_t){fn, arg};
    srv->mw = mw;
    return 0;
}

int mica_http_observe(mica_http_server_t *srv, mica_http_observer_fn fn, void *arg)
{
    if (!fn || srv->fds)
        return MICA_EINVAL;
    mica__http_obs_t *o = mica__realloc(srv->obs, (srv->nobs + 1) * sizeof(*o));
    if (!o)
        return MICA_ENOMEM;
    o[srv->nobs++] = (mica__http_obs_t){fn, arg};
    srv->obs = o;
    return 0;
}

int64_t mica__http_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void mica__http_clock_start(mica_http_req_t *req)
{
    if (req->srv->nobs)
        req->start_ns = mica__http_now_ns();
}

void mica__http_observe(mica_http_req_t *req, mica_http_resp_t *resp)
{
    mica_http_server_t *srv = req->srv;
    if (!srv->nobs)
        return;
    int64_t start = req->start_ns ? req->start_ns : mica__http_now_ns();
    mica_http_completion_t c = {
        .method = req->method ? req->method : "",
        .route = req->route_rc == 0 && req->match.route ? req->match.route->pattern : NULL,
        .path = req->path ? req->path : "",
        .status = resp->sent ? resp->status : 0,
        .http_version = req->version,
        .bytes_in = req->bytes_in,
        .bytes_out = resp->bytes_out,
        .duration_us = (mica__http_now_ns() - start) / 1000,
        .req = req,
        .resp = resp,
    };
    for (size_t i = 0; i < srv->nobs; i++)
        srv->obs[i].fn(&c, srv->obs[i].arg);
}

/* ---- the request ctx ---------------------------------------------------------------- */

static int push_ctx(mica_http_req_t *req, mica_ctx_t *ctx)
{
    mica__ctx_link_t *l = mica__arena_alloc(req->arena, sizeof(*l));
    if (!l) {
        mica_ctx_free(ctx);
        return MICA_ENOMEM;
    }
    *l = (mica__ctx_link_t){ctx, req->ctxs};
    req->ctxs = l;
    req->ctx = ctx;
    return 0;
}

/* Makes the pending values children of the new ctx, oldest first. */
static int apply_values(mica_http_req_t *req, mica__ctx_value_t *v)
{
    if (!v)
        return 0;
    int rc = apply_values(req, v->next);
    mica_ctx_t *ctx;
    if (rc != 0 || mica_ctx_with_value(req->ctx, v->key, v->value, &ctx) != 0)
        return MICA_ENOMEM;
    return push_ctx(req, ctx);
}

mica_ctx_t *mica_http_req_ctx(mica_http_req_t *req)
{
    if (!req->ctx) {
        mica_ctx_t *ctx;
        if (mica_ctx_with_deadline(NULL, req->deadline_ms, &ctx) != 0 || push_ctx(req, ctx) != 0)
            return mica_ctx_background(); /* out of memory: run without a deadline */
        req->ctx_base = ctx;
        if (req->cancelled)
            mica_ctx_cancel(ctx);
        else if (req->fd >= 0) /* HTTP/2 streams are cancelled by their connection */
            mica_net_cancel_on_hup(req->fd, ctx);
        mica__ctx_value_t *v = req->values;
        req->values = NULL;
        apply_values(req, v); /* out of memory: the ctx lacks the newest values */
    }
    return req->ctx;
}

int mica_http_req_with_value(mica_http_req_t *req, const void *key, void *value)
{
    if (!req->ctx) { /* kept until the ctx is made */
        mica__ctx_value_t *v = mica__arena_alloc(req->arena, sizeof(*v));
        if (!v)
            return MICA_ENOMEM;
        *v = (mica__ctx_value_t){key, value, req->values};
        req->values = v;
        return 0;
    }
    mica_ctx_t *parent = req->ctx, *ctx;
    if (parent == mica_ctx_background() || mica_ctx_with_value(parent, key, value, &ctx) != 0)
        return MICA_ENOMEM;
    return push_ctx(req, ctx);
}

void *mica_http_req_value(mica_http_req_t *req, const void *key)
{
    if (req->ctx)
        return mica_ctx_value(req->ctx, key);
    for (const mica__ctx_value_t *v = req->values; v; v = v->next)
        if (v->key == key)
            return v->value;
    return NULL;
}

int mica_http_req_set_deadline(mica_http_req_t *req, int64_t deadline_ms)
{
    if (deadline_ms >= req->deadline_ms)
        return 0;
    req->deadline_ms = deadline_ms;
    if (!req->ctx)
        return 0; /* the ctx, when made, takes the new deadline */
    mica_ctx_t *ctx;
    if (mica_ctx_with_deadline(req->ctx, deadline_ms, &ctx) != 0)
        return MICA_ENOMEM;
    return push_ctx(req, ctx);
}

int64_t mica_http_req_deadline(const mica_http_req_t *req)
{
    return req->deadline_ms;
}

/* ---- deadlines across hops -------------------------------------------------------------- */

int mica_http_timeout_parse(const char *v, int64_t *timeout_ms)
{
    size_t n = v ? strlen(v) : 0, digits = n;
    int64_t unit_ns = 1000000; /* bare digits: milliseconds */
    if (n && (v[n - 1] < '0' || v[n - 1] > '9')) {
        digits = n - 1; /* gRPC's TimeoutValue TimeoutUnit (PROTOCOL-HTTP2) */
        switch (v[n - 1]) {
        case 'H': unit_ns = 3600 * INT64_C(1000000000); break;
        case 'M': unit_ns = 60 * INT64_C(1000000000); break;
        case 'S': unit_ns = INT64_C(1000000000); break;
        case 'm': unit_ns = 1000000; break;
        case 'u': unit_ns = 1000; break;
        case 'n': unit_ns = 1; break;
        default: return MICA_EINVAL;
        }
    }
    if (digits < 1 || digits > 8) /* 8 digits, as gRPC's: no overflow below */
        return MICA_EINVAL;
    int64_t x = 0;
    for (size_t i = 0; i < digits; i++) {
        if (v[i] < '0' || v[i] > '9')
            return MICA_EINVAL;
        x = x * 10 + (v[i] - '0');
    }
    /* Rounded up: a budget of 1 ns is not an expired one. */
    *timeout_ms = unit_ns >= 1000000 ? x * (unit_ns / 1000000) : (x * unit_ns + 999999) / 1000000;
    return 0;
}

int mica_http_timeout_header(mica_ctx_t *ctx, int64_t deadline_ms, char *buf, size_t size)
{
    int64_t d = ctx ? mica_ctx_deadline(ctx) : MICA_NO_DEADLINE;
    if (deadline_ms < d)
        d = deadline_ms;
    if (d == MICA_NO_DEADLINE)
        return MICA_ENOTFOUND;
    int64_t left = d - mica_now_ms();
    if (left <= 0)
        return MICA_ETIMEDOUT;
    int n = snprintf(buf, size, "%lld", (long long)left);
    return n < 0 || (size_t)n >= size ? MICA_ELIMIT : 0;
}

void mica__http_req_cancel(mica_http_req_t *req)
{
    req->cancelled = true;
    if (req->ctx_base)
        mica_ctx_cancel(req->ctx_base);
}

void mica__http_req_release(mica_http_req_t *req)
{
    req->values = NULL; /* in the arena */
    if (!req->ctxs)
        return;
    if (req->fd >= 0)
        mica_net_cancel_on_hup(req->fd, NULL);
    for (mica__ctx_link_t *l = req->ctxs; l; l = l->next)
        mica_ctx_free(l->ctx); /* newest first: children before their parents */
    req->ctxs = NULL;
    req->ctx = req->ctx_base = NULL;
}

/* ---- accessors ----------------------------------------------------------------------- */

const char *mica_http_req_tls_peer(const mica_http_req_t *req)
{
    return req->tls_peer;
}

size_t mica_http_req_header_count(const mica_http_req_t *req)
{
    return req->nheaders;
}

int mica_http_req_header_at(const mica_http_req_t *req, size_t i, const char **name,
                            const char **value)
{
    if (i >= req->nheaders)
        return MICA_EINVAL;
    *name = req->headers[i].name;
    *value = req->headers[i].value;
    return 0;
}

/* The peer of `fd` as text into buf. 0, MICA_ELIMIT or MICA_ENOTCONN. */
static int peer_of(int fd, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        return MICA_ENOTCONN;
    const void *a;
    int family = ss.ss_family;
    if (family == AF_INET6) { /* an IPv4 client of a dual-stack listener: a.b.c.d */
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        bool mapped = IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr);
        a = mapped ? (const void *)&s6->sin6_addr.s6_addr[12] : (const void *)&s6->sin6_addr;
        family = mapped ? AF_INET : AF_INET6;
    } else if (family == AF_INET) {
        a = &((struct sockaddr_in *)&ss)->sin_addr;
    } else {
        return MICA_ENOTCONN;
    }
    return inet_ntop(family, a, buf, (socklen_t)size) ? 0 : MICA_ELIMIT;
}

const char *mica_http_req_peer_addr(mica_http_req_t *req)
{
    if (!req->peer)
        return "";
    /* Asked once per connection: later requests read the connection's cache. */
    if (!req->peer[0] && peer_of(req->sock, req->peer, 48) != 0)
        req->peer[0] = '\0';
    return req->peer;
}

int mica_http_req_remote_addr(const mica_http_req_t *req, char *buf, size_t size)
{
    /* Asked once per connection: later requests copy the connection's cache. */
    if (req->peer && !req->peer[0] && peer_of(req->sock, req->peer, 48) != 0)
        req->peer[0] = '\0';
    if (req->peer && req->peer[0]) {
        size_t n = strlen(req->peer);
        if (n >= size)
            return MICA_ELIMIT;
        memcpy(buf, req->peer, n + 1);
        return 0;
    }
    return peer_of(req->sock, buf, size);
}

const char *mica_http_req_method(const mica_http_req_t *req)
{
    return req->method;
}

const char *mica_http_req_path(const mica_http_req_t *req)
{
    return req->path;
}

const char *mica_http_req_query(const mica_http_req_t *req)
{
    return req->query;
}

const char *mica_http_req_route(const mica_http_req_t *req)
{
    return req->route_rc == 0 && req->match.route ? req->match.route->pattern : NULL;
}

int mica_http_req_version(const mica_http_req_t *req)
{
    return req->version;
}

const char *mica_http_req_header(const mica_http_req_t *req, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == len && strncasecmp(req->headers[i].name, name, len) == 0)
            return req->headers[i].value;
    return NULL;
}

const char *mica_http_req_header_nth(const mica_http_req_t *req, const char *name, size_t n)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == len && strncasecmp(req->headers[i].name, name, len) == 0 &&
            n-- == 0)
            return req->headers[i].value;
    return NULL;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

const char *mica_http_req_param(const mica_http_req_t *req, const char *name)
{
    const mica__route_match_t *m = &req->match;
    for (size_t i = 0; i < m->nparams; i++) {
        if (strcmp(m->names[i], name) != 0)
            continue;
        if (req->params[i])
            return req->params[i];
        char *out = mica_http_req_alloc((mica_http_req_t *)req, m->value_lens[i] + 1);
        if (!out)
            return NULL;
        size_t n = 0;
        const char *v = m->values[i];
        for (size_t j = 0; j < m->value_lens[i]; j++) {
            int hi, lo;
            /* %00 stays literal: a NUL would silently cut the C string. */
            if (v[j] == '%' && j + 2 < m->value_lens[i] && (hi = hexval(v[j + 1])) >= 0 &&
                (lo = hexval(v[j + 2])) >= 0 && (hi || lo)) {
                out[n++] = (char)(hi * 16 + lo);
                j += 2;
            } else {
                out[n++] = v[j];
            }
        }
        out[n] = '\0';
        ((mica_http_req_t *)req)->params[i] = out;
        return out;
    }
    return NULL;
}

int mica_http_req_param_i64(const mica_http_req_t *req, const char *name, int64_t *out)
{
    const char *v = mica_http_req_param(req, name);
    if (!v)
        return MICA_ENOTFOUND;
    if (!*v || (*v != '-' && (*v < '0' || *v > '9')))
        return MICA_EINVAL;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end)
        return MICA_EINVAL;
    *out = n;
    return 0;
}

const char *mica_http_req_body(const mica_http_req_t *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body ? req->body : "";
}

void *mica_http_req_alloc(mica_http_req_t *req, size_t size)
{
    return mica__arena_alloc(req->arena, size);
}

/* ---- the body, as it arrives ------------------------------------------------------------ */

int mica_http_req_body_wait(mica_http_req_t *req, size_t want, const void **data, size_t *len)
{
    int rc = 0;
    const char *p;
    size_t n;
    if (req->streaming) {
        rc = req->ops->body_wait(req, want, &p, &n);
    } else { /* buffered: the whole body is there */
        p = (req->body ? req->body : "") + req->body_taken;
        n = req->body_len - req->body_taken;
        rc = n >= want ? 0 : MICA_ECLOSED;
    }
    *data = p;
    *len = n;
    return rc;
}

void mica_http_req_body_consume(mica_http_req_t *req, size_t n)
{
    if (req->streaming)
        req->ops->body_consume(req, n);
    else
        req->body_taken += n;
}

ssize_t mica_http_req_read(mica_http_req_t *req, void *buf, size_t len)
{
    const void *p;
    size_t n;
    int rc = mica_http_req_body_wait(req, 1, &p, &n);
    if (rc != 0 && rc != MICA_ECLOSED)
        return rc;
    if (n > len)
        n = len;
    memcpy(buf, p, n);
    mica_http_req_body_consume(req, n);
    return (ssize_t)n;
}

/* SPDX-License-Identifier: MIT */
/*
 * The instrumentation: a server span around every request of an HTTP
 * server (gRPC methods are its streaming routes, so they pass here too)
 * and a client span around every call of a gRPC client, with the context
 * carried in between by W3C traceparent/tracestate.
 *
 * Server side. The middleware reads the incoming context (exactly one
 * valid traceparent, else a new trace: two traceparent fields are as
 * invalid as a bad one; tracestate only with a valid traceparent, all its
 * fields joined as RFC 9110 §5.3 combines them), begins the span in the
 * request's arena -- so its ids outlive it for the request's observers and
 * access log -- and puts it in the request ctx under MICA_TRACE_SPAN_KEY.
 * After the handler it names the span and sets OpenTelemetry's semantic
 * conventions: for gRPC (content-type application/grpc) "pkg.Service/Method"
 * with rpc.system, rpc.service, rpc.method, rpc.grpc.status_code (from the
 * response's grpc-status trailer), an error for the codes the rpc
 * conventions call server errors; for HTTP "GET /users/{id}" with
 * http.request.method, http.route, url.path, http.response.status_code,
 * network.protocol.version, server.address/port (from Host), an error for 5xx.
 *
 * Client side. The interceptor begins a client span, child of the span in
 * the call's ctx (or a root, sampled by ratio), sends it as traceparent
 * (and the trace's tracestate) metadata, and ends it when the call ends:
 * after next() for unary calls, at the stream's finish for streaming ones.
 * Client spans count every non-OK code as an error.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "observe/trace_internal.h"

/* Splits "host:port" / "[v6]:port" and sets server.address and server.port. */
static void server_attrs(mica_span_t *sp, const char *hostport)
{
    if (!hostport || !*hostport || strchr(hostport, ','))
        return;
    const char *colon = strrchr(hostport, ':');
    const char *h = hostport;
    size_t hl = colon ? (size_t)(colon - hostport) : strlen(hostport);
    if (colon && strchr(colon, ']'))
        hl = strlen(hostport), colon = NULL; /* "[::1]" without a port */
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']')
        h++, hl -= 2;
    MICA__ATTR_STR(sp, "server.address", h, hl);
    if (colon) {
        long port = 0;
        const char *p = colon + 1;
        for (; *p >= '0' && *p <= '9' && port < 65536; p++)
            port = port * 10 + (*p - '0');
        if (*p == '\0' && p > colon + 1 && port > 0 && port < 65536)
            MICA__ATTR_INT(sp, "server.port", port);
    }
}

/* "/pkg.Service/Method" -> rpc.service, rpc.method and the span's name "pkg.Service/Method". */
static void rpc_attrs(mica_span_t *sp, const char *path)
{
    if (*path == '/')
        path++;
    const char *slash = strchr(path, '/');
    mica__span_name(sp, path, strlen(path), NULL, 0);
    MICA__ATTR_STR(sp, "rpc.system", "grpc", 4);
    if (slash) {
        MICA__ATTR_STR(sp, "rpc.service", path, (size_t)(slash - path));
        MICA__ATTR_STR(sp, "rpc.method", slash + 1, strlen(slash + 1));
    }
}

/* The gRPC codes OpenTelemetry's rpc conventions count as a server's errors. */
static bool grpc_server_error(int code)
{
    return code == MICA_GRPC_UNKNOWN || code == MICA_GRPC_DEADLINE_EXCEEDED ||
           code == MICA_GRPC_UNIMPLEMENTED || code == MICA_GRPC_INTERNAL ||
           code == MICA_GRPC_UNAVAILABLE || code == MICA_GRPC_DATA_LOSS;
}

static void set_error(mica_span_t *sp, const char *type, size_t len)
{
    MICA__ATTR_STR(sp, "error.type", type, len);
    if (sp->rec)
        sp->rec->status = MICA_SPAN_ERROR;
}

/*
 * The incoming context: a parent and the tracestate to propagate (in the
 * request's arena), or false for a new trace.
 */
static bool extract(mica_http_req_t *req, mica_span_context_t *parent, const char **state)
{
    const char *tp = mica_http_req_header_nth(req, "traceparent", 0);
    if (!tp || mica_http_req_header_nth(req, "traceparent", 1) ||
        mica_traceparent_parse(tp, strlen(tp), parent) != 0)
        return false;
    *state = NULL;
    const char *ts = mica_http_req_header_nth(req, "tracestate", 0);
    if (!ts)
        return true;
    char joined[4096];
    size_t len = 0;
    for (size_t i = 0; ts; ts = mica_http_req_header_nth(req, "tracestate", ++i)) {
        size_t n = strlen(ts);
        if (len + n + 1 > sizeof(joined))
            return true; /* more than 32 members could hold: invalid, dropped */
        if (i)
            joined[len++] = ',';
        memcpy(joined + len, ts, n);
        len += n;
    }
    char *out = mica_http_req_alloc(req, MICA_TRACESTATE_MAX_LEN + 1);
    if (out && mica_tracestate_parse(joined, len, out, MICA_TRACESTATE_MAX_LEN + 1) > 0)
        *state = out;
    return true;
}

static int server_mw(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next,
                     void *arg)
{
    mica_tracer_t *t = arg;
    mica_span_t *sp = mica_http_req_alloc(req, sizeof(*sp));
    if (!sp)
        return mica_http_next(next);
    mica_span_context_t parent;
    const char *state = NULL;
    bool remote = extract(req, &parent, &state);
    mica__span_begin(t, sp, remote ? &parent : NULL, remote, MICA_SPAN_SERVER, NULL);
    mica__span_tracestate(sp, state);
    if (mica_http_req_with_value(req, MICA_TRACE_SPAN_KEY, sp) != 0) {
        mica__span_finish(sp); /* no memory for the ctx: the request goes on untraced */
        return mica_http_next(next);
    }

    int rc = mica_http_next(next);

    if (!sp->rec)
        return rc;
    const char *ct = mica_http_req_header(req, "content-type");
    const char *route = mica_http_req_route(req);
    const char *method = mica_http_req_method(req);
    int status = mica_http_resp_status(resp);
    int code = ct && strncmp(ct, "application/grpc", 16) == 0 ? mica_grpc_resp_code(resp) : -1;
    if (code >= 0) {
        rpc_attrs(sp, mica_http_req_path(req));
        MICA__ATTR_INT(sp, "rpc.grpc.status_code", code);
        if (grpc_server_error(code)) {
            const char *name = mica_grpc_code_name(code);
            set_error(sp, name, strlen(name));
        }
    } else {
        mica__span_name(sp, method, strlen(method), route, route ? strlen(route) : 0);
        MICA__ATTR_STR(sp, "http.request.method", method, strlen(method));
        if (route)
            MICA__ATTR_STR(sp, "http.route", route, strlen(route));
        const char *path = mica_http_req_path(req);
        MICA__ATTR_STR(sp, "url.path", path, strlen(path));
        if (status)
            MICA__ATTR_INT(sp, "http.response.status_code", status);
        if (status >= 500 || status == 0) {
            char st[8];
            int n = status ? snprintf(st, sizeof(st), "%d", status) : 0;
            if (status)
                set_error(sp, st, (size_t)n);
            else
                set_error(sp, "_OTHER", 6); /* no response could be sent */
        }
        const char *ua = mica_http_req_header(req, "user-agent");
        if (ua)
            MICA__ATTR_STR(sp, "user_agent.original", ua, strlen(ua));
    }
    int v = mica_http_req_version(req);
    MICA__ATTR_STR(sp, "network.protocol.version",
                   v == 20   ? "2"
                   : v == 10 ? "1.0"
                             : "1.1",
                   v == 20 ? 1 : 3);
    server_attrs(sp, mica_http_req_header(req, "host"));
    mica__span_finish(sp);
    return rc;
}

int mica_trace_http_server(mica_tracer_t *t, mica_http_server_t *srv)
{
    if (!t || !srv)
        return MICA_EINVAL;
    return mica_http_use(srv, server_mw, t);
}

/* ---- gRPC client ----------------------------------------------------------------------- */

typedef struct client_span {
    mica_span_t sp;
} client_span_t;

static void client_end(mica_span_t *sp, int code)
{
    if (sp->rec) {
        MICA__ATTR_INT(sp, "rpc.grpc.status_code", code);
        if (code != MICA_GRPC_OK) {
            const char *name = mica_grpc_code_name(code);
            set_error(sp, name, strlen(name));
        }
    }
    mica__span_finish(sp);
}

static void stream_finished(const mica_grpc_result_t *res, void *arg)
{
    client_span_t *cs = arg;
    client_end(&cs->sp, res->code);
    mica__free(cs);
}

static int client_icpt(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    mica_tracer_t *t = arg;
    const mica_span_t *parent = mica_trace_span(call->ctx);
    /* Streaming calls end after this returns: their span is allocated. */
    client_span_t local, *cs = call->streaming ? mica__malloc(sizeof(*cs)) : &local;
    if (!cs)
        return next(call);
    mica_span_t *sp = &cs->sp;
    mica__span_begin(parent ? parent->tracer : t, sp, parent ? &parent->sc : NULL, false,
                     MICA_SPAN_CLIENT, NULL);
    mica__span_tracestate(sp, parent ? parent->tracestate : NULL);
    if (sp->rec) {
        rpc_attrs(sp, call->path);
        server_attrs(sp, mica_resolver_endpoint(mica_grpc_client_resolver(call->client)));
    }

    /* The caller's metadata plus ours, for the length of next(). */
    mica_grpc_md_t md[MICA_GRPC_MAX_METADATA];
    const mica_grpc_call_opts_t saved = call->opts;
    mica_trace_headers_t h;
    mica_trace_inject(sp, &h);
    size_t n = call->opts.nmd, extra = h.tracestate ? 2 : 1;
    if (n + extra <= MICA_GRPC_MAX_METADATA) {
        if (n)
            memcpy(md, call->opts.md, n * sizeof(md[0]));
        md[n++] = (mica_grpc_md_t){"traceparent", h.traceparent};
        if (h.tracestate)
            md[n++] = (mica_grpc_md_t){"tracestate", h.tracestate};
        call->opts.md = md;
        call->opts.nmd = n;
    }
    int code = next(call);
    call->opts = saved;

    if (call->streaming && code == MICA_GRPC_OK && call->stream &&
        mica_grpc_stream_on_finish(call->stream, stream_finished, cs) == 0)
        return code; /* ends with the stream */
    client_end(sp, code);
    if (cs != &local)
        mica__free(cs);
    return code;
}

int mica_trace_grpc_client(mica_tracer_t *t, mica_grpc_client_t *c)
{
    if (!t || !c)
        return MICA_EINVAL;
    return mica_grpc_client_intercept(c, client_icpt, t);
}

/* ---- the HTTP client: a client span per call, traceparent injected ------------------ */

static int http_client_icpt(mica_http_call_info_t *call, mica_http_client_next_fn next, void *arg)
{
    mica_tracer_t *t = arg;
    const mica_span_t *parent = mica_trace_span(call->ctx);
    mica_span_t sp;
    mica__span_begin(parent ? parent->tracer : t, &sp, parent ? &parent->sc : NULL, false,
                     MICA_SPAN_CLIENT, NULL);
    mica__span_tracestate(&sp, parent ? parent->tracestate : NULL);
    const char *method = call->req->method ? call->req->method : "GET";
    const char *path = call->req->path ? call->req->path : "/";
    if (sp.rec) {
        mica__span_name(&sp, method, strlen(method), NULL, 0);
        MICA__ATTR_STR(&sp, "http.request.method", method, strlen(method));
        const char *q = strchr(path, '?');
        MICA__ATTR_STR(&sp, "url.path", path, q ? (size_t)(q - path) : strlen(path));
    }

    /* The caller's headers plus ours, for the length of next() (the client
     * puts opts back when this returns). */
    mica_http_header_t hdrs[MICA_HTTP_MAX_REQUEST_HEADERS];
    mica_trace_headers_t h;
    mica_trace_inject(&sp, &h);
    size_t n = call->opts.nheaders, extra = h.tracestate ? 2 : 1;
    if (n + extra <= MICA_HTTP_MAX_REQUEST_HEADERS) {
        if (n)
            memcpy(hdrs, call->opts.headers, n * sizeof(hdrs[0]));
        hdrs[n++] = (mica_http_header_t){"traceparent", h.traceparent};
        if (h.tracestate)
            hdrs[n++] = (mica_http_header_t){"tracestate", h.tracestate};
        call->opts.headers = hdrs;
        call->opts.nheaders = n;
    }
    int rc = next(call);

    if (sp.rec) {
        const mica_http_result_t *res = call->res;
        if (res->endpoint[0])
            server_attrs(&sp, res->endpoint);
        if (res->status)
            MICA__ATTR_INT(&sp, "http.response.status_code", res->status);
        if (rc != 0) {
            const char *name = mica_err_name(rc);
            set_error(&sp, name, strlen(name));
        } else if (res->status >= 500) {
            char st[8];
            int k = snprintf(st, sizeof(st), "%d", res->status);
            set_error(&sp, st, (size_t)k);
        }
    }
    mica__span_finish(&sp); /* a streamed body's end is the caller's: the span ends at the head */
    return rc;
}

int mica_trace_http_client(mica_tracer_t *t, mica_http_client_t *c)
{
    if (!t || !c)
        return MICA_EINVAL;
    return mica_http_client_intercept(c, http_client_icpt, t);
}

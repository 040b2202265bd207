/* SPDX-License-Identifier: MIT */
/*
 * middleware: the seams around every handler, REST and gRPC alike.
 *
 *   - request_id, an HTTP middleware: takes the client's X-Request-Id (or
 *     makes one), puts it in the request's ctx for everything downstream
 *     and echoes it on the response -- errors and gRPC calls included;
 *   - require_token, an HTTP middleware that short-circuits: /admin/...
 *     without "Authorization: Bearer secret" is 401, the handler never runs;
 *   - access_log, a completion observer: one JSON line per request on
 *     stdout (method, route pattern, status, grpc-status, duration), the
 *     server's own 404/400 answers included;
 *   - grpc_auth, a gRPC server interceptor: rejects calls without the same
 *     token (UNAUTHENTICATED), and wraps the handler to add a trailer;
 *   - propagate, a gRPC *client* interceptor: every outgoing call made under
 *     a request's ctx carries the token and that request's id as metadata,
 *     so the callee's logs line up with the caller's.
 *
 *   GET /users/{id}           -> {"id":"7","request_id":"..."}
 *   GET /admin/stats          -> {"requests":N} (with the token)
 *   GET /greet/{name}         -> {"message":"Hello, <name>"}: a REST handler
 *                                calling SayHello through the gRPC client
 *   hello.Greeter/SayHello    -> "Hello, <name>" (with the token)
 *
 * Listens on $MICA_LISTEN (default :8080).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "greeter.pb-c.h"
#include "mica/grpc.h"
#include "mica/http.h"
#include "mica/runtime.h"

#define TOKEN "Bearer secret"

static const char request_id_key = 0; /* ctx keys compare by address, like Go's unexported types */
static atomic_ulong served;

/* ---- HTTP middleware -------------------------------------------------------------- */

static bool good_id(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++)
        if (!((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'a' && id[n] <= 'z') ||
              (id[n] >= 'A' && id[n] <= 'Z') || id[n] == '-' || id[n] == '_' || id[n] == '.'))
            return false;
    return n > 0 && n <= 64;
}

static int request_id(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next,
                      void *arg)
{
    const char *id = mica_http_req_header(req, "x-request-id");
    if (!id || !good_id(id)) { /* make one: worker id, time, a per-worker counter */
        static _Thread_local unsigned long seq;
        char *made = mica_http_req_alloc(req, 40);
        if (!made)
            return MICA_ENOMEM;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(made, 40, "%x%08lx%06lx", mica_worker_id(), (unsigned long)ts.tv_sec,
                 ++seq & 0xffffff);
        id = made;
    }
    int rc = mica_http_req_with_value(req, &request_id_key, (void *)id);
    if (rc == 0)
        rc = mica_http_resp_header(resp, "X-Request-Id", id);
    if (rc != 0)
        return rc;
    return mica_http_next(next);
}

static int require_token(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next,
                         void *arg)
{
    const char *auth = mica_http_req_header(req, "authorization");
    if (strncmp(mica_http_req_path(req), "/admin/", 7) == 0 && (!auth || strcmp(auth, TOKEN) != 0))
        return MICA_EUNAUTHENTICATED; /* 401 from the error table; the handler never runs */
    return mica_http_next(next);
}

/* ---- the access log: a completion observer ---------------------------------------- */

/* Writes s as a JSON string (quoted, escaped) into buf. */
static size_t json_str(char *buf, size_t size, const char *s)
{
    size_t n = 0;
    if (!s)
        return (size_t)snprintf(buf, size, "null");
    buf[n++] = '"';
    for (; *s && n + 8 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(buf + n, size - n, "\\%c", c);
        else if (c < 0x20)
            n += (size_t)snprintf(buf + n, size - n, "\\u%04x", c);
        else
            buf[n++] = (char)c;
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return n;
}

static void access_log(const mica_http_completion_t *c, void *arg)
{
    char method[32], route[160], path[300], id[80];
    json_str(method, sizeof(method), c->method);
    json_str(route, sizeof(route), c->route);
    json_str(path, sizeof(path), c->path);
    json_str(id, sizeof(id), mica_http_req_value(c->req, &request_id_key));
    int grpc = mica_grpc_resp_code(c->resp);
    char grpc_s[12] = "null";
    if (grpc >= 0)
        snprintf(grpc_s, sizeof(grpc_s), "%d", grpc);
    atomic_fetch_add(&served, 1);
    /* One fprintf per line: stdio locks the stream, so lines from workers never mix. */
    fprintf(stdout,
            "{\"method\":%s,\"route\":%s,\"path\":%s,\"status\":%d,\"grpc_status\":%s,"
            "\"http\":%d,\"request_id\":%s,\"duration_us\":%lld,\"bytes_in\":%llu,"
            "\"bytes_out\":%llu}\n",
            method, route, path, c->status, grpc_s, c->http_version, id,
            (long long)c->duration_us, (unsigned long long)c->bytes_in,
            (unsigned long long)c->bytes_out);
}

/* ---- gRPC: a service and an interceptor -------------------------------------------- */

static int say_hello(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const Hello__HelloRequest *req = (const Hello__HelloRequest *)in;
    if (!*req->name)
        return mica_grpc_status(call, MICA_GRPC_INVALID_ARGUMENT, "name is empty");
    char text[128];
    snprintf(text, sizeof(text), "Hello, %s", req->name);
    Hello__HelloReply out = HELLO__HELLO_REPLY__INIT;
    out.message = text;
    return mica_grpc_send(call, &out.base);
}

static int grpc_auth(mica_grpc_call_t *call, const ProtobufCMessage *req, mica_grpc_next_t *next,
                     void *arg)
{
    if (strncmp(mica_grpc_call_method(call), "/grpc.health.v1.Health/", 23) != 0) {
        const char *auth = mica_grpc_call_metadata(call, "authorization");
        if (!auth || strcmp(auth, TOKEN) != 0)
            return mica_grpc_status(call, MICA_GRPC_UNAUTHENTICATED, "missing or bad token");
    }
    /* The HTTP middleware ran first: the request id is in the call's ctx. */
    const char *id = mica_ctx_value(mica_grpc_call_ctx(call), &request_id_key);
    if (id)
        mica_grpc_call_trailer(call, "x-request-id", id);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int code = mica_grpc_next(next, req); /* the handler */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    char us[24];
    snprintf(us, sizeof(us), "%lld",
             (long long)(t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000);
    mica_grpc_call_trailer(call, "x-handler-us", us);
    return code;
}

/* ---- a gRPC client interceptor: metadata on every outgoing call --------------------- */

static int propagate(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    /* The caller's metadata first, then ours; the array lives until next() returns. */
    mica_grpc_md_t md[MICA_GRPC_MAX_METADATA];
    size_t n = 0;
    for (; n < call->opts.nmd && n < MICA_GRPC_MAX_METADATA - 2; n++)
        md[n] = call->opts.md[n];
    md[n++] = (mica_grpc_md_t){"authorization", TOKEN};
    const char *id = mica_ctx_value(call->ctx, &request_id_key);
    if (id)
        md[n++] = (mica_grpc_md_t){"x-request-id", id};
    call->opts.md = md;
    call->opts.nmd = n;
    return next(call);
}

/* ---- REST ------------------------------------------------------------------------- */

static int get_user(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    json_t *body = json_pack("{s:s, s:s}", "id", mica_http_req_param(req, "id"), "request_id",
                             (const char *)mica_http_req_value(req, &request_id_key));
    if (!body)
        return MICA_ENOMEM;
    int rc = mica_http_resp_json(resp, 200, body);
    json_decref(body);
    return rc;
}

/* A REST handler that is a gRPC client: the interceptor adds the token and request id. */
static int greet(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_grpc_client_t *client = *(mica_grpc_client_t **)arg; /* made after the routes */
    Hello__HelloRequest in = HELLO__HELLO_REQUEST__INIT;
    in.name = (char *)mica_http_req_param(req, "name");
    ProtobufCMessage *out = NULL;
    mica_grpc_result_t res;
    int code = mica_grpc_unary(client, mica_http_req_ctx(req), &hello__greeter__descriptor,
                               "SayHello", NULL, &in.base, &out, &res);
    if (code != MICA_GRPC_OK)
        return mica_http_resp_error(resp, mica_err_http_status(mica_err_from_grpc(code)),
                                    res.message);
    json_t *body = json_pack("{s:s}", "message", ((Hello__HelloReply *)out)->message);
    protobuf_c_message_free_unpacked(out, NULL);
    if (!body)
        return MICA_ENOMEM;
    int rc = mica_http_resp_json(resp, 200, body);
    json_decref(body);
    return rc;
}

static int stats(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    char body[64];
    snprintf(body, sizeof(body), "{\"requests\":%lu}", atomic_load(&served));
    return mica_http_resp_json_str(resp, 200, body);
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "middleware: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    mica_grpc_client_t *client = NULL;
    mica_http_server_opts_t opts = {0};
    int rc;
    if ((rc = mica_runtime_new(&rt, NULL)) != 0 ||
        (rc = mica_http_server_opts_from_env(&opts)) != 0 ||
        (rc = mica_http_server_new(&srv, &opts)) != 0 ||
        (rc = mica_grpc_server_new(&gs, srv, NULL)) != 0)
        return fail("setup", rc);
    if ((rc = mica_http_use(srv, request_id, NULL)) != 0 ||
        (rc = mica_http_use(srv, require_token, NULL)) != 0 ||
        (rc = mica_http_observe(srv, access_log, NULL)) != 0 ||
        (rc = mica_grpc_use(gs, grpc_auth, NULL)) != 0)
        return fail("seams", rc);
    if ((rc = mica_http_route(srv, "GET", "/users/{id}", get_user, NULL)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/admin/stats", stats, NULL)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/greet/{name}", greet, &client)) != 0 ||
        (rc = mica_grpc_register(gs, &hello__greeter__descriptor, "SayHello", MICA_GRPC_UNARY,
                                 say_hello, NULL)) != 0 ||
        (rc = mica_grpc_enable_health(gs)) != 0)
        return fail("routes", rc);
    const char *listen = getenv("MICA_LISTEN");
    if ((rc = mica_http_server_listen_list(srv, listen && *listen ? listen : ":8080")) != 0 ||
        (rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);
    /* The client calls this very server, on its first listener's port. */
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", mica_http_server_port(srv, 0));
    if ((rc = mica_grpc_client_new(&client, rt, target, NULL)) != 0 ||
        (rc = mica_grpc_client_intercept(client, propagate, NULL)) != 0)
        return fail("client", rc);
    rc = mica_runtime_run(rt);
    mica_grpc_client_free(client);
    mica_grpc_server_free(gs);
    mica_http_server_free(srv);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

/* SPDX-License-Identifier: MIT */
/*
 * A traced mica service between two peers, for tests/integration/test_trace.py:
 *
 *   GET /relay   calls mica.interop.Echo/Unary on $TRACE_ECHO_TARGET through a
 *                traced gRPC client and answers the echoed message (the
 *                peer's server puts the traceparent it received there),
 *                then "|" and the ids of this request's server span
 *   GET /health  {"status":"ok"}
 *   GET /stats   the tracer's counters as JSON
 *
 * Listens on $MICA_LISTEN; tracing as mica_trace_opts_from_env() reads it
 * ($MICA_OTLP_ENDPOINT, $MICA_TRACE_*). SIGTERM drains and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echo.pb-c.h"
#include "mica/grpc.h"
#include "mica/http.h"
#include "mica/runtime.h"
#include "mica/trace.h"

static mica_grpc_client_t *echo;
static mica_tracer_t *tracer;

static int relay(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_ctx_t *ctx = mica_http_req_ctx(req);
    Mica__Interop__EchoRequest in = MICA__INTEROP__ECHO_REQUEST__INIT;
    in.message = "relay";
    ProtobufCMessage *out = NULL;
    mica_grpc_result_t res;
    int code = mica_grpc_unary(echo, ctx, &mica__interop__echo__descriptor, "Unary", NULL, &in.base,
                               &out, &res);
    if (code != MICA_GRPC_OK)
        return mica_http_resp_error(resp, 502, res.message);
    mica_trace_ids_t ids;
    memset(&ids, 0, sizeof(ids));
    mica_trace_ids(ctx, &ids);
    char body[512];
    snprintf(body, sizeof(body), "%s|%s-%s", ((Mica__Interop__EchoResponse *)out)->message,
             ids.trace_id, ids.span_id);
    protobuf_c_message_free_unpacked(out, NULL);
    return mica_http_resp_text(resp, 200, body);
}

static int health(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_json_str(resp, 200, "{\"status\":\"ok\"}");
}

static int stats(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_trace_stats_t st;
    mica_trace_stats(tracer, &st);
    char body[512];
    snprintf(body, sizeof(body),
             "{\"started\":%llu,\"exported\":%llu,\"dropped\":%llu,\"queued\":%llu,"
             "\"exports\":%llu,\"failures\":%llu}",
             (unsigned long long)st.started, (unsigned long long)st.exported,
             (unsigned long long)st.dropped, (unsigned long long)st.queued,
             (unsigned long long)st.exports, (unsigned long long)st.failures);
    return mica_http_resp_json_str(resp, 200, body);
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "trace_service: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

int main(void)
{
    const char *listen = getenv("MICA_LISTEN"), *target = getenv("TRACE_ECHO_TARGET");
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    int rc;
    mica_trace_opts_t to = {0};
    if ((rc = mica_trace_opts_from_env(&to)) != 0 || (rc = mica_runtime_new(&rt, NULL)) != 0 ||
        (rc = mica_http_server_new(&srv, NULL)) != 0)
        return fail("setup", rc);
    if ((rc = mica_trace_enable(&tracer, rt, srv, &to)) != 0)
        return fail("tracing", rc);
    if ((rc = mica_grpc_client_new(&echo, rt, target ? target : "127.0.0.1:1", NULL)) != 0 ||
        (rc = mica_trace_grpc_client(tracer, echo)) != 0)
        return fail("client", rc);
    mica_http_route(srv, "GET", "/relay", relay, NULL);
    mica_http_route(srv, "GET", "/health", health, NULL);
    mica_http_route(srv, "GET", "/stats", stats, NULL);
    if ((rc = mica_http_server_listen_list(srv, listen ? listen : "127.0.0.1:0")) != 0 ||
        (rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);
    rc = mica_runtime_run(rt);
    mica_grpc_client_free(echo);
    mica_http_server_free(srv);
    mica_tracer_free(tracer);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

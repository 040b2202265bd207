/* SPDX-License-Identifier: MIT */
/*
 * The interop Echo service (tests/interop/proto/echo.proto) on mica: the
 * server that the grpc-go and grpc-js clients of tests/interop drive through
 * every case. Semantics are the .proto's comments, the same as the Go and JS
 * servers there.
 *
 * Listens on $MICA_LISTEN (default 127.0.0.1:50052), with the health service;
 * with $MICA_TLS_LISTEN, $MICA_TLS_CERT and $MICA_TLS_KEY also over TLS.
 * GET /stats tells how many Unary calls it served ("unary 42"), so that
 * client-side balancing can be checked from the servers' side.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echo.pb-c.h"
#include "mica/grpc.h"
#include "mica/runtime.h"

typedef Mica__Interop__EchoRequest echo_req_t;
typedef Mica__Interop__EchoResponse echo_resp_t;

static atomic_long unary_calls;

/* x-echo-in comes back as header x-echo-header and trailer x-echo-trailer. */
static void echo_metadata(mica_grpc_call_t *call)
{
    const char *v = mica_grpc_call_metadata(call, "x-echo-in");
    if (v) {
        mica_grpc_call_header(call, "x-echo-header", v);
        mica_grpc_call_trailer(call, "x-echo-trailer", v);
    }
}

static int fail_with(mica_grpc_call_t *call, const echo_req_t *req)
{
    return mica_grpc_status(call, req->status, "%s", req->status_message);
}

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const echo_req_t *req = (const echo_req_t *)in;
    atomic_fetch_add_explicit(&unary_calls, 1, memory_order_relaxed);
    echo_metadata(call);
    const char *peer = mica_grpc_call_tls_peer(call); /* mTLS: who called */
    if (peer)
        mica_grpc_call_header(call, "x-tls-peer", peer);
    int rc;
    if (req->delay_ms > 0 && (rc = mica_ctx_sleep(mica_grpc_call_ctx(call), req->delay_ms)) != 0)
        return rc;
    if (req->status)
        return fail_with(call, req);
    echo_resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = req->message;
    out.payload = req->payload;
    char *big = NULL;
    if (req->response_size > 0) {
        if (!(big = malloc((size_t)req->response_size)))
            return MICA_ENOMEM;
        memset(big, 'x', (size_t)req->response_size);
        out.payload = (ProtobufCBinaryData){(size_t)req->response_size, (uint8_t *)big};
    }
    rc = mica_grpc_send(call, &out.base);
    free(big);
    return rc;
}

/* GET /whoami: the client certificate's subject on an mTLS listener, else "none". */
static int whoami(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const char *peer = mica_http_req_tls_peer(req);
    return mica_http_resp_text(resp, 200, peer ? peer : "none");
}

/* GET /stats: the Unary calls served so far. */
static int stats(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    char text[32];
    snprintf(text, sizeof(text), "unary %ld", atomic_load(&unary_calls));
    return mica_http_resp_text(resp, 200, text);
}

static int server_stream(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const echo_req_t *req = (const echo_req_t *)in;
    echo_metadata(call);
    for (int i = 0; i < req->count; i++) {
        int rc;
        if (req->delay_ms > 0 &&
            (rc = mica_ctx_sleep(mica_grpc_call_ctx(call), req->delay_ms)) != 0)
            return rc;
        echo_resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
        out.message = req->message;
        out.index = i;
        if ((rc = mica_grpc_send(call, &out.base)) != 0)
            return rc;
    }
    return req->status ? fail_with(call, req) : MICA_GRPC_OK;
}

static int client_stream(mica_grpc_call_t *call, const ProtobufCMessage *unused, void *arg)
{
    echo_metadata(call);
    char joined[4096] = "";
    size_t len = 0, payload = 0;
    int count = 0, rc;
    ProtobufCMessage *in;
    while ((rc = mica_grpc_recv(call, &in)) == 0) {
        const echo_req_t *req = (const echo_req_t *)in;
        if (req->status) {
            rc = fail_with(call, req);
            protobuf_c_message_free_unpacked(in, NULL);
            return rc;
        }
        int n = snprintf(joined + len, sizeof(joined) - len, "%s%s", count ? "," : "",
                         req->message);
        if (n > 0 && (size_t)n < sizeof(joined) - len)
            len += (size_t)n;
        payload += req->payload.len;
        count++;
        protobuf_c_message_free_unpacked(in, NULL);
    }
    if (rc != MICA_ECLOSED)
        return rc;
    char total[24];
    snprintf(total, sizeof(total), "%zu", payload);
    echo_resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = joined;
    out.index = count;
    out.payload = (ProtobufCBinaryData){strlen(total), (uint8_t *)total};
    return mica_grpc_send(call, &out.base);
}

static int bidi(mica_grpc_call_t *call, const ProtobufCMessage *unused, void *arg)
{
    echo_metadata(call);
    ProtobufCMessage *in;
    int rc, i = 0;
    while ((rc = mica_grpc_recv(call, &in)) == 0) {
        const echo_req_t *req = (const echo_req_t *)in;
        if (req->status) {
            rc = fail_with(call, req);
            protobuf_c_message_free_unpacked(in, NULL);
            return rc;
        }
        echo_resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
        out.message = req->message;
        out.index = i++;
        rc = mica_grpc_send(call, &out.base);
        protobuf_c_message_free_unpacked(in, NULL);
        if (rc != 0)
            return rc;
    }
    return rc == MICA_ECLOSED ? MICA_GRPC_OK : rc;
}

int main(void)
{
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    mica_http_server_opts_t opts = {0};
    mica_grpc_server_opts_t gopts = {0};
    const ProtobufCServiceDescriptor *d = &mica__interop__echo__descriptor;
    int rc;
    if ((rc = mica_runtime_new(&rt, NULL)) != 0 || (rc = mica_http_server_opts_from_env(&opts)) != 0 ||
        (rc = mica_grpc_server_opts_from_env(&gopts)) != 0 ||
        (rc = mica_http_server_new(&srv, &opts)) != 0 ||
        (rc = mica_grpc_server_new(&gs, srv, &gopts)) != 0 ||
        (rc = mica_grpc_register(gs, d, "Unary", MICA_GRPC_UNARY, unary, NULL)) != 0 ||
        (rc = mica_grpc_register(gs, d, "ServerStream", MICA_GRPC_SERVER_STREAM, server_stream,
                                 NULL)) != 0 ||
        (rc = mica_grpc_register(gs, d, "ClientStream", MICA_GRPC_CLIENT_STREAM, client_stream,
                                 NULL)) != 0 ||
        (rc = mica_grpc_register(gs, d, "Bidi", MICA_GRPC_BIDI, bidi, NULL)) != 0 ||
        (rc = mica_grpc_enable_health(gs)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/whoami", whoami, NULL)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/stats", stats, NULL)) != 0) {
        fprintf(stderr, "echo_server: %s\n", mica_strerror(rc));
        return 1;
    }
    const char *listen = getenv("MICA_LISTEN");
    if ((rc = mica_http_server_listen_list(srv, listen && *listen ? listen : "127.0.0.1:50052")) != 0 ||
        (rc = mica_http_server_tls_from_env(srv)) != 0 || /* MICA_TLS_LISTEN, _CERT, _KEY */
        (rc = mica_http_server_attach(srv, rt)) != 0) {
        fprintf(stderr, "echo_server: listen: %s\n", mica_strerror(rc));
        return 1;
    }
    rc = mica_runtime_run(rt);
    mica_grpc_server_free(gs);
    mica_http_server_free(srv);
    mica_runtime_free(rt);
    if (rc != 0)
        fprintf(stderr, "echo_server: shutdown: %s\n", mica_strerror(rc));
    return rc == 0 ? 0 : 1;
}

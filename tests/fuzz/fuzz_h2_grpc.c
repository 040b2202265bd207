/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the HTTP/2 and gRPC server side: each input is the
 * byte stream a client sends after the connection preface, over a real
 * loopback connection to a mica server (one worker, running in a thread of
 * this process) that serves the interop Echo service (all four call kinds),
 * the health service and a REST route. The input is written, the client's
 * side shut down, and the answer read until the server closes; a hang shows
 * up as a libFuzzer timeout, a memory error as an ASan report.
 */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo.pb-c.h"
#include "mica/grpc.h"
#include "mica/runtime.h"

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define IO_LIMIT_MS 2000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int port;

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const Mica__Interop__EchoRequest *req = (const Mica__Interop__EchoRequest *)in;
    Mica__Interop__EchoResponse out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = req->message;
    mica_grpc_call_header(call, "x-h", req->message);
    return req->status ? mica_grpc_status(call, req->status, "%s", req->status_message)
                       : mica_grpc_send(call, &out.base);
}

static int server_stream(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const Mica__Interop__EchoRequest *req = (const Mica__Interop__EchoRequest *)in;
    Mica__Interop__EchoResponse out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    for (int i = 0; i < req->count && i < 8; i++) {
        out.index = i;
        int rc = mica_grpc_send(call, &out.base);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Client streaming and bidi: echo each request back, return what recv says. */
static int streaming(mica_grpc_call_t *call, const ProtobufCMessage *unused, void *arg)
{
    ProtobufCMessage *in;
    int rc;
    bool bidi = arg != NULL;
    while ((rc = mica_grpc_recv(call, &in)) == 0) {
        Mica__Interop__EchoResponse out = MICA__INTEROP__ECHO_RESPONSE__INIT;
        out.message = ((Mica__Interop__EchoRequest *)in)->message;
        if (bidi)
            rc = mica_grpc_send(call, &out.base);
        protobuf_c_message_free_unpacked(in, NULL);
        if (rc != 0)
            return rc;
    }
    if (rc != MICA_ECLOSED)
        return rc;
    Mica__Interop__EchoResponse out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    return bidi ? 0 : mica_grpc_send(call, &out.base);
}

static int rest(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    size_t len;
    const char *body = mica_http_req_body(req, &len);
    return mica_http_resp_send(resp, 200, "text/plain", body, len);
}

/* A streaming route: echoes the body in parts as it arrives, then a trailer. */
static int stream(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    char buf[4096];
    ssize_t n = 0;
    int rc = mica_http_resp_start(resp, 200, "application/octet-stream");
    while (rc == 0 && (n = mica_http_req_read(req, buf, sizeof(buf))) > 0)
        rc = mica_http_resp_write(resp, buf, (size_t)n);
    if (rc != 0)
        return rc;
    if (n < 0)
        return (int)n;
    mica_http_resp_trailer(resp, "x-done", "yes");
    return mica_http_resp_end(resp);
}

static void *serve(void *arg)
{
    mica_runtime_run(arg);
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    mica_http_server_opts_t ho = {.max_body_bytes = 64 * 1024, .idle_timeout_ms = IO_LIMIT_MS};
    mica_grpc_server_opts_t go = {.max_message_bytes = 64 * 1024};
    const ProtobufCServiceDescriptor *d = &mica__interop__echo__descriptor;
    if (mica_runtime_new(&rt, &ro) || mica_http_server_new(&srv, &ho) ||
        mica_grpc_server_new(&gs, srv, &go) ||
        mica_grpc_register(gs, d, "Unary", MICA_GRPC_UNARY, unary, NULL) ||
        mica_grpc_register(gs, d, "ServerStream", MICA_GRPC_SERVER_STREAM, server_stream, NULL) ||
        mica_grpc_register(gs, d, "ClientStream", MICA_GRPC_CLIENT_STREAM, streaming, NULL) ||
        mica_grpc_register(gs, d, "Bidi", MICA_GRPC_BIDI, streaming, (void *)1) ||
        mica_grpc_enable_health(gs) || mica_http_route(srv, "POST", "/echo", rest, NULL) ||
        mica_http_route_stream(srv, "POST", "/stream", 8192, stream, NULL) ||
        mica_http_server_listen(srv, "127.0.0.1:0") || mica_http_server_attach(srv, rt)) {
        fprintf(stderr, "fuzz_h2_grpc: server setup failed\n");
        abort();
    }
    port = mica_http_server_port(srv, 0);
    pthread_t t;
    if (port <= 0 || pthread_create(&t, NULL, serve, rt) != 0)
        abort();
    return 0;
}

/* Waits for `events` on fd until the deadline; false on timeout. */
static bool ready(int fd, short events, int64_t deadline)
{
    int64_t left = deadline - mica_now_ms();
    struct pollfd p = {.fd = fd, .events = events};
    return left > 0 && poll(&p, 1, (int)left) > 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int64_t deadline = mica_now_ms() + IO_LIMIT_MS;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 && !ready(fd, POLLOUT, deadline))
        goto out;
    /* The preface first, so that every input reaches the HTTP/2 session. */
    uint8_t *buf = malloc(sizeof(PREFACE) - 1 + size);
    if (!buf)
        goto out;
    memcpy(buf, PREFACE, sizeof(PREFACE) - 1);
    memcpy(buf + sizeof(PREFACE) - 1, data, size);
    size_t len = sizeof(PREFACE) - 1 + size, off = 0;
    char sink[65536];
    while (off < len && mica_now_ms() < deadline) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            while (recv(fd, sink, sizeof(sink), 0) > 0) /* the server may wait for us to read */
                ;
            ready(fd, POLLOUT | POLLIN, deadline);
        } else {
            break;
        }
    }
    free(buf);
    shutdown(fd, SHUT_WR);
    while (ready(fd, POLLIN, deadline)) {
        ssize_t n = recv(fd, sink, sizeof(sink), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            break;
    }
out:
    close(fd);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * A fault-injecting backend for the resilience tests: the interop Echo
 * service (gRPC Unary and ServerStream) and GET /echo (HTTP) on a service
 * port, whose behaviour a test switches at run time through a control port:
 *
 *   POST /fault?error=0.5&code=14&delay_ms=20&tail=0.05&tail_ms=300&hang=1&pushback_ms=100
 *        every parameter optional, unset ones back to 0 (healthy); error and
 *        tail are ratios; code the gRPC status of injected errors (UNAVAILABLE;
 *        HTTP gets 503); hang=1: answer nothing until the client gives up
 *   POST /reset   resets every connection to the service port (RST)
 *   POST /exit    exits at once (as a crash would)
 *   GET  /stats   {"calls":N,"failed":N,"hung":N}: what the service saw
 *
 * Exit and kill -9 are the test's: it restarts the server on the same port.
 * A Unary answer's message is this server's -name, so a client can tell who
 * served each call.
 *
 * Usage: fault_server -name b0 [-listen 127.0.0.1:0] [-control 127.0.0.1:0]
 *        [-workers 1]; prints "ports <service> <control>" once listening.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo.pb-c.h"
#include "mica/grpc.h"
#include "mica/runtime.h"

typedef Mica__Interop__EchoRequest echo_req_t;
typedef Mica__Interop__EchoResponse echo_resp_t;

static struct {
    atomic_int error_ppm, code, delay_ms, tail_ppm, tail_ms, hang, pushback_ms;
    atomic_long calls, failed, hung;
} F = {.pushback_ms = -1};

static const char *name = "backend";
static int service_port;

static double rnd(void)
{
    static _Thread_local uint64_t s;
    if (!s)
        s = (uint64_t)(uintptr_t)&s ^ (uint64_t)getpid() << 32 ^ 0x9E3779B97F4A7C15ull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) / 9007199254740992.0;
}

/* What to do with one call: 0 serve, a gRPC code to fail with, or <0 a ctx error (hang, cancel). */
static int fault(mica_ctx_t *ctx)
{
    atomic_fetch_add(&F.calls, 1);
    if (atomic_load(&F.hang)) {
        atomic_fetch_add(&F.hung, 1);
        return mica_ctx_done(ctx); /* until the client's deadline or reset */
    }
    int64_t sleep = atomic_load(&F.delay_ms);
    if (rnd() * 1e6 < atomic_load(&F.tail_ppm))
        sleep += atomic_load(&F.tail_ms);
    if (sleep > 0) {
        int rc = mica_ctx_sleep(ctx, sleep);
        if (rc != 0)
            return rc;
    }
    if (rnd() * 1e6 < atomic_load(&F.error_ppm)) {
        atomic_fetch_add(&F.failed, 1);
        int code = atomic_load(&F.code);
        return code ? code : MICA_GRPC_UNAVAILABLE;
    }
    return 0;
}

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    int rc = fault(mica_grpc_call_ctx(call));
    if (rc != 0) {
        int pb = atomic_load(&F.pushback_ms);
        char v[16];
        snprintf(v, sizeof(v), "%d", pb);
        if (rc > 0 && pb >= 0)
            mica_grpc_call_trailer(call, "grpc-retry-pushback-ms", v);
        return rc > 0 ? mica_grpc_status(call, rc, "injected by %s", name) : rc;
    }
    echo_resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = (char *)name;
    return mica_grpc_send(call, &out.base);
}

static int server_stream(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const echo_req_t *req = (const echo_req_t *)in;
    int rc = fault(mica_grpc_call_ctx(call));
    if (rc != 0)
        return rc;
    for (int i = 0; i < req->count; i++) {
        echo_resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
        out.message = (char *)name;
        out.index = i;
        if ((rc = mica_grpc_send(call, &out.base)) != 0)
            return rc;
    }
    return 0;
}

static int http_echo(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    int rc = fault(mica_http_req_ctx(req));
    if (rc > 0)
        return mica_http_resp_error(resp, 503, "injected");
    if (rc < 0)
        return rc;
    return mica_http_resp_text(resp, 200, name);
}

/* ---- control ---------------------------------------------------------------------- */

/* The value of `key` in query `q` ("a=1&b=2"), parsed as a number; def when absent. */
static double param(const char *q, const char *key, double def)
{
    size_t n = strlen(key);
    for (const char *p = q; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, key, n) == 0 && p[n] == '=')
            return strtod(p + n + 1, NULL);
    return def;
}

static int set_fault(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const char *q = mica_http_req_query(req);
    atomic_store(&F.error_ppm, (int)(param(q, "error", 0) * 1e6));
    atomic_store(&F.code, (int)param(q, "code", 0));
    atomic_store(&F.delay_ms, (int)param(q, "delay_ms", 0));
    atomic_store(&F.tail_ppm, (int)(param(q, "tail", 0) * 1e6));
    atomic_store(&F.tail_ms, (int)param(q, "tail_ms", 0));
    atomic_store(&F.pushback_ms, (int)param(q, "pushback_ms", -1));
    atomic_store(&F.hang, (int)param(q, "hang", 0));
    return mica_http_resp_text(resp, 200, "ok");
}

/* Every accepted connection to the service port gets an RST: SO_LINGER 0, then
 * shutdown (the server's own loop then sees the end and closes the fd). */
static int reset_conns(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int fd = (int)strtol(e->d_name, NULL, 10);
        struct sockaddr_in local, peer;
        socklen_t ll = sizeof(local), pl = sizeof(peer);
        if (e->d_name[0] == '.' || getsockname(fd, (struct sockaddr *)&local, &ll) != 0 ||
            local.sin_family != AF_INET || ntohs(local.sin_port) != service_port ||
            getpeername(fd, (struct sockaddr *)&peer, &pl) != 0)
            continue;
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        shutdown(fd, SHUT_RDWR);
        n++;
    }
    if (d)
        closedir(d);
    char text[32];
    snprintf(text, sizeof(text), "%d", n);
    return mica_http_resp_text(resp, 200, text);
}

static int do_exit(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    _exit(3);
}

static int stats(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    char json[128];
    snprintf(json, sizeof(json), "{\"calls\":%ld,\"failed\":%ld,\"hung\":%ld}",
             atomic_load(&F.calls), atomic_load(&F.failed), atomic_load(&F.hung));
    return mica_http_resp_json_str(resp, 200, json);
}

static mica_http_server_t *svc, *ctl;

static void announce(int worker, void *arg)
{
    if (worker != 0)
        return;
    service_port = mica_http_server_port(svc, 0);
    printf("ports %d %d\n", service_port, mica_http_server_port(ctl, 0));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:0", *control = "127.0.0.1:0";
    int workers = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "-name") == 0)
            name = argv[i + 1];
        else if (strcmp(argv[i], "-listen") == 0)
            listen = argv[i + 1];
        else if (strcmp(argv[i], "-control") == 0)
            control = argv[i + 1];
        else if (strcmp(argv[i], "-workers") == 0)
            workers = (int)strtol(argv[i + 1], NULL, 10);
    }
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = workers};
    mica_grpc_server_t *gs;
    const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;
    if (mica_runtime_new(&rt, &ro) != 0 || mica_http_server_new(&svc, NULL) != 0 ||
        mica_http_server_new(&ctl, NULL) != 0 || mica_grpc_server_new(&gs, svc, NULL) != 0 ||
        mica_grpc_register(gs, echo, "Unary", MICA_GRPC_UNARY, unary, NULL) != 0 ||
        mica_grpc_register(gs, echo, "ServerStream", MICA_GRPC_SERVER_STREAM, server_stream,
                           NULL) != 0 ||
        mica_http_route(svc, "GET", "/echo", http_echo, NULL) != 0 ||
        mica_http_route(ctl, "POST", "/fault", set_fault, NULL) != 0 ||
        mica_http_route(ctl, "POST", "/reset", reset_conns, NULL) != 0 ||
        mica_http_route(ctl, "POST", "/exit", do_exit, NULL) != 0 ||
        mica_http_route(ctl, "GET", "/stats", stats, NULL) != 0 ||
        mica_http_server_listen(svc, listen) != 0 || mica_http_server_listen(ctl, control) != 0 ||
        mica_http_server_attach(svc, rt) != 0 || mica_http_server_attach(ctl, rt) != 0 ||
        mica_runtime_on_start(rt, announce, NULL) != 0) {
        fprintf(stderr, "fault_server: cannot start\n");
        return 1;
    }
    int rc = mica_runtime_run(rt);
    mica_grpc_server_free(gs);
    mica_http_server_free(svc);
    mica_http_server_free(ctl);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : 1;
}

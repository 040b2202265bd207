/* SPDX-License-Identifier: MIT */
/*
 * A test server for streaming routes (tests/integration/test_stream.py):
 *
 *   POST /stream/echo   streams the body back in parts as it arrives, then a
 *                       trailer x-body-bytes (needs "TE: trailers" on HTTP/1.1)
 *   POST /stream/count  reads a body of any size (no max_body_bytes) -> its length
 *   POST /stream/hold   waits for more body than the client sends; logs how the
 *                       wait ended ("hold: <error name> at <unix ms>")
 *   GET  /socket/hold   reads a socket that never speaks, with the request's
 *                       ctx; logs the same way ("socket: ...")
 *   GET  /parts         "a", 50 ms, "b", then trailer x-done: yes
 *   POST /stream/late   takes method, path and x-probe first, then waits for
 *                       the whole body at once (the input buffer grows and
 *                       moves), then answers with the strings it took first
 *
 * Listens on $MICA_LISTEN (default 127.0.0.1:0), and $MICA_TLS_LISTEN as the
 * examples do; logs the bound ports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mica/http.h"
#include "mica/net.h"
#include "mica/runtime.h"

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void note(const char *what, int rc)
{
    fprintf(stderr, "%s: %s at %lld\n", what, rc ? mica_err_name(rc) : "OK", (long long)unix_ms());
    fflush(stderr);
}

static int echo(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    char buf[16384];
    size_t total = 0;
    int rc = mica_http_resp_start(resp, 200, "application/octet-stream");
    for (;;) {
        ssize_t n = mica_http_req_read(req, buf, sizeof(buf));
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        total += (size_t)n;
        if ((rc = mica_http_resp_write(resp, buf, (size_t)n)) != 0)
            return rc;
    }
    char v[24];
    snprintf(v, sizeof(v), "%zu", total);
    mica_http_resp_trailer(resp, "x-body-bytes", v);
    return mica_http_resp_end(resp);
}

static int count(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    size_t total = 0;
    for (;;) {
        const void *p;
        size_t len;
        int rc = mica_http_req_body_wait(req, 1, &p, &len);
        if (rc == MICA_ECLOSED)
            break;
        if (rc != 0)
            return rc;
        total += len;
        mica_http_req_body_consume(req, len);
    }
    char out[64];
    snprintf(out, sizeof(out), "{\"bytes\":%zu}", total);
    return mica_http_resp_json_str(resp, 200, out);
}

/* Strings taken before the body is read must stay valid until the request ends. */
static int late(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const char *method = mica_http_req_method(req), *path = mica_http_req_path(req);
    const char *probe = mica_http_req_header(req, "x-probe");
    const char *len_s = mica_http_req_header(req, "content-length");
    size_t want = len_s ? (size_t)strtoull(len_s, NULL, 10) : 0;
    const void *p;
    size_t len = 0;
    int rc = want ? mica_http_req_body_wait(req, want, &p, &len) : 0;
    if (rc != 0)
        return rc;
    char out[512];
    snprintf(out, sizeof(out), "{\"method\":\"%s\",\"path\":\"%s\",\"probe\":\"%s\",\"bytes\":%zu}",
             method, path, probe ? probe : "", len);
    return mica_http_resp_json_str(resp, 200, out);
}

static int hold(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const void *p;
    size_t len;
    int rc = mica_http_req_body_wait(req, 60000, &p, &len);
    note("hold", rc);
    return rc ? rc : mica_http_resp_text(resp, 200, "all there");
}

static int socket_hold(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    int lfd = mica_net_listen("127.0.0.1:0", 1, 0);
    if (lfd < 0)
        return lfd;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char addr[64];
    getsockname(lfd, (struct sockaddr *)&ss, &sl);
    mica_net_format_addr((struct sockaddr *)&ss, addr, sizeof(addr));
    int fd = mica_net_connect(addr, mica_http_req_ctx(req), mica_deadline_in(1000));
    if (fd < 0) {
        mica_net_close(lfd);
        return fd;
    }
    char b[16];
    ssize_t n = mica_net_read(fd, b, sizeof(b), mica_http_req_ctx(req), MICA_NO_DEADLINE);
    note("socket", n < 0 ? (int)n : 0);
    mica_net_close(fd);
    mica_net_close(lfd);
    return n < 0 ? (int)n : mica_http_resp_text(resp, 200, "read");
}

static int parts(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    int rc = mica_http_resp_start(resp, 200, "text/plain");
    if (rc == 0)
        rc = mica_http_resp_write(resp, "a", 1);
    if (rc == 0)
        rc = mica_ctx_sleep(mica_http_req_ctx(req), 50);
    if (rc == 0)
        rc = mica_http_resp_write(resp, "b", 1);
    if (rc == 0)
        rc = mica_http_resp_trailer(resp, "x-done", "yes");
    return rc ? rc : mica_http_resp_end(resp);
}

int main(void)
{
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_http_server_opts_t opts = {0};
    int rc;
    if ((rc = mica_runtime_new(&rt, NULL)) != 0 ||
        (rc = mica_http_server_opts_from_env(&opts)) != 0 ||
        (rc = mica_http_server_new(&srv, &opts)) != 0 ||
        (rc = mica_http_route_stream(srv, "POST", "/stream/echo", 65536, echo, NULL)) != 0 ||
        (rc = mica_http_route_stream(srv, "POST", "/stream/count", 65536, count, NULL)) != 0 ||
        (rc = mica_http_route_stream(srv, "POST", "/stream/late", 65536, late, NULL)) != 0 ||
        (rc = mica_http_route_stream(srv, "POST", "/stream/hold", 65536, hold, NULL)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/socket/hold", socket_hold, NULL)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/parts", parts, NULL)) != 0) {
        fprintf(stderr, "stream_server: %s\n", mica_strerror(rc));
        return 1;
    }
    const char *listen = getenv("MICA_LISTEN");
    if ((rc = mica_http_server_listen_list(srv, listen && *listen ? listen : "127.0.0.1:0")) != 0 ||
        (rc = mica_http_server_tls_from_env(srv)) != 0 ||
        (rc = mica_http_server_attach(srv, rt)) != 0) {
        fprintf(stderr, "stream_server: listen: %s\n", mica_strerror(rc));
        return 1;
    }
    rc = mica_runtime_run(rt);
    mica_http_server_free(srv);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : 1;
}

/* SPDX-License-Identifier: MIT */
/*
 * Fixtures for the HTTP client's tests: an in-process mica server with a
 * few routes, and scripted raw servers (coroutines on the same runtime)
 * that answer each request on a connection with bytes the test chose --
 * malformed, split, stalled or closed -- and count what they received.
 */
#ifndef MICA_TEST_CLIENT_FX_H
#define MICA_TEST_CLIENT_FX_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../runtime/helpers.h"
#include "mica/http.h"
#include "mica/http_client.h"
#include "mica/net.h"

/* helpers.h's EXPECT_EQ evaluates twice; calls with effects must run once. */
static inline int expect_eq1(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b) expect_eq1((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

/* ---- the mica upstream ------------------------------------------------------------- */

struct upstream {
    mica_http_server_t *srv;
    char addr[64];
    int calls;
    int fail_first; /* answer 503 to this many /hello calls first */
    char last_header[128]; /* x-test of the last request */
};

static int up_hello(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct upstream *u = arg;
    u->calls++;
    const char *h = mica_http_req_header(req, "x-test");
    snprintf(u->last_header, sizeof(u->last_header), "%s", h ? h : "");
    if (u->fail_first > 0) {
        u->fail_first--;
        return mica_http_resp_text(resp, 503, "later");
    }
    return mica_http_resp_text(resp, 200, "hi");
}

static int up_echo(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    size_t len;
    const char *body = mica_http_req_body(req, &len);
    return mica_http_resp_send(resp, 200, "application/octet-stream", body, len);
}

static int up_slow(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const char *q = mica_http_req_query(req);
    int rc = mica_ctx_sleep(mica_http_req_ctx(req), q ? strtol(q, NULL, 10) : 100);
    if (rc != 0)
        return rc;
    return mica_http_resp_text(resp, 200, "slept");
}

/* 64 chunks of 1000 bytes ('a' + i % 26), chunked on the wire. */
static int up_stream(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    char buf[1000];
    mica_http_resp_start(resp, 200, "text/plain");
    for (int i = 0; i < 64; i++) {
        memset(buf, 'a' + i % 26, sizeof(buf));
        int rc = mica_http_resp_write(resp, buf, sizeof(buf));
        if (rc != 0)
            return rc;
    }
    return mica_http_resp_end(resp);
}

static inline void upstream_start(struct upstream *u, mica_runtime_t *rt, bool tls, const char *cert,
                           const char *key)
{
    mica_http_server_opts_t so = {.max_body_bytes = 4 << 20};
    assert_int_equal(mica_http_server_new(&u->srv, &so), 0);
    assert_int_equal(mica_http_route(u->srv, "GET", "/hello", up_hello, u), 0);
    assert_int_equal(mica_http_route(u->srv, "POST", "/echo", up_echo, u), 0);
    assert_int_equal(mica_http_route(u->srv, "GET", "/slow", up_slow, u), 0);
    assert_int_equal(mica_http_route(u->srv, "GET", "/stream", up_stream, u), 0);
    if (tls) {
        assert_int_equal(mica_http_server_listen(u->srv, "127.0.0.1:0"), 0);
        assert_int_equal(mica_http_server_tls(u->srv, cert, key), 0);
        assert_int_equal(mica_http_server_listen_tls(u->srv, "127.0.0.1:0"), 0);
    } else {
        assert_int_equal(mica_http_server_listen(u->srv, "127.0.0.1:0"), 0);
    }
    assert_int_equal(mica_http_server_attach(u->srv, rt), 0);
    snprintf(u->addr, sizeof(u->addr), "127.0.0.1:%d", mica_http_server_port(u->srv, tls ? 1 : 0));
}

/* ---- scripted raw servers ---------------------------------------------------------- */

#define RAW_MAX_STEPS 4

/* What a raw server does with the n-th request of a connection. */
struct raw_step {
    const char *bytes; /* written in one go, or in pieces of `piece` bytes */
    size_t len;        /* 0: strlen(bytes) */
    size_t piece;      /* > 0: write in pieces of this size, with a pause after each */
    int pause_ms;
    bool close_after;  /* close the connection after writing */
    bool close_silently; /* read the request, then close without answering */
    int stall_ms;      /* after writing, keep the connection open this long, then close */
};

struct raw_server {
    int fd;
    char addr[64];
    struct raw_step steps[RAW_MAX_STEPS];
    int nsteps;
    int close_idle_after_ms; /* > 0: after the last step, close the idle connection this late */
    int requests; /* request heads received, all connections */
    int conns;
    bool stop;
};

/* Reads one request head (and a Content-Length body) from fd. 1, 0 at EOF, < 0. */
static inline int raw_read_request(int fd, int64_t deadline)
{
    char buf[8192];
    size_t have = 0;
    for (;;) {
        ssize_t n = mica_net_read(fd, buf + have, sizeof(buf) - 1 - have, NULL, deadline);
        if (n <= 0)
            return n == 0 ? 0 : (int)n;
        have += (size_t)n;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        const char *cl = strcasestr(buf, "content-length:");
        size_t want = (size_t)(end + 4 - buf) + (cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0);
        while (have < want) {
            n = mica_net_read(fd, buf + have, sizeof(buf) - 1 - have, NULL, deadline);
            if (n <= 0)
                return n == 0 ? 0 : (int)n;
            have += (size_t)n;
        }
        return 1;
    }
}

struct raw_conn {
    struct raw_server *s;
    int fd;
};

static void raw_conn_main(void *arg)
{
    struct raw_conn *rc = arg;
    struct raw_server *s = rc->s;
    int fd = rc->fd;
    free(rc);
    for (int i = 0; i < s->nsteps; i++) {
        if (raw_read_request(fd, mica_deadline_in(5000)) != 1)
            goto out;
        s->requests++;
        const struct raw_step *st = &s->steps[i];
        if (st->close_silently)
            goto out;
        size_t len = st->len ? st->len : strlen(st->bytes);
        size_t piece = st->piece ? st->piece : len;
        for (size_t off = 0; off < len; off += piece) {
            size_t n = len - off < piece ? len - off : piece;
            if (mica_net_write(fd, st->bytes + off, n, NULL, mica_deadline_in(5000)) != 0)
                goto out;
            if (st->piece && st->pause_ms)
                mica_sleep_ms(st->pause_ms);
        }
        if (st->stall_ms) {
            mica_sleep_ms(st->stall_ms);
            goto out;
        }
        if (st->close_after)
            goto out;
    }
    if (s->close_idle_after_ms > 0)
        mica_sleep_ms(s->close_idle_after_ms);
    else /* wait for the client to go (or more requests than scripted: close) */
        raw_read_request(fd, mica_deadline_in(3000));
out:
    mica_net_close(fd);
}

static void raw_accept_main(void *arg)
{
    struct raw_server *s = arg;
    while (!s->stop) {
        int c = mica_net_accept(s->fd, NULL, mica_deadline_in(100));
        if (c == MICA_ETIMEDOUT)
            continue;
        if (c < 0)
            break;
        s->conns++;
        struct raw_conn *rc = malloc(sizeof(*rc));
        rc->s = s;
        rc->fd = c;
        if (mica_go(raw_conn_main, rc) != 0) {
            free(rc);
            mica_net_close(c);
        }
    }
    mica_net_close(s->fd);
}

/* Opens `s`'s listening socket (on the main thread, before the runtime runs). */
static inline void raw_listen(struct raw_server *s)
{
    s->fd = mica_net_listen("127.0.0.1:0", 64, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    getsockname(s->fd, (struct sockaddr *)&sa, &len);
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%d", ntohs(sa.sin_port));
}

/* Serves `s` (its steps filled in), from a coroutine; s->stop ends it. */
static inline void raw_serve(struct raw_server *s)
{
    s->stop = false;
    mica_go(raw_accept_main, s);
}

/* Runs body(arg) in a coroutine on worker 0 of rt, stops rt after it, frees rt. */
static inline void run_body(mica_runtime_t *rt, void (*body)(void *), void *arg)
{
    struct run_once ro = {.rt = rt, .body = body, .arg = arg};
    mica_runtime_on_start(rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(rt), 0);
}

static inline mica_runtime_t *new_runtime(void)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    return rt;
}

/* A loopback port nobody listens on (bound, then closed). */
static inline void dead_addr(char *buf, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(buf, size, "127.0.0.1:%d", ntohs(sa.sin_port));
    close(fd);
}

#endif

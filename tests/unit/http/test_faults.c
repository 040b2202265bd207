/* SPDX-License-Identifier: MIT */
/*
 * Fault injection (curl's torture mode, SQLite's OOM tests): the Nth
 * allocation fails, for every N a request makes, and each failure must
 * become an error status or a closed connection -- never a hang, a crash
 * or a leak (the ASan build checks leaks) -- and the server must serve the
 * next request. (a) the HTTP/1.1 parser and a chunked request, (b) an HTTP/2
 * connection with three streams. tests/unit/grpc/test_faults.c does a gRPC
 * unary call.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../runtime/helpers.h"
#include "common/alloc.h"
#include "mica/http.h"
#include "wire.h"

#define SWEEP_MAX 400 /* a scenario makes far fewer allocations; a bound all the same */

struct fx {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    char addr[64];
    long swept;
    int outcomes[4]; /* 200, 4xx/5xx, closed, other */
};

static int echo(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    size_t len;
    const char *body = mica_http_req_body(req, &len);
    mica_http_resp_header(resp, "X-Echo", "yes");
    return mica_http_resp_send(resp, 200, "text/plain", body, len);
}

static int ok(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_json_str(resp, 200, "{\"ok\":true}");
}

static bool serves(struct fx *f)
{
    static const char req[] = "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    char out[2048];
    ssize_t n = wire_exchange(f->addr, req, sizeof(req) - 1, out, sizeof(out), 2000);
    return n > 0 && strncmp(out, "HTTP/1.1 200 ", 13) == 0 && strstr(out, "{\"ok\":true}");
}

static void note(struct fx *f, const char *out, ssize_t n)
{
    if (n == 0)
        f->outcomes[2]++;
    else if (strncmp(out, "HTTP/1.1 200 ", 13) == 0)
        f->outcomes[0]++;
    else if (strncmp(out, "HTTP/1.1 4", 10) == 0 || strncmp(out, "HTTP/1.1 5", 10) == 0)
        f->outcomes[1]++;
    else
        f->outcomes[3]++;
}

/* A chunked POST of 12,000 bytes, echoed: the input and output buffers grow past the pool's. */
static void scenario_http1(struct fx *f)
{
    static char req[16384], out[32768];
    int n = snprintf(req, sizeof(req), "POST /echo?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                       "Transfer-Encoding: chunked\r\nX-Long: 0123456789\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        n += snprintf(req + n, sizeof(req) - (size_t)n, "fa0\r\n");
        memset(req + n, 'a' + i, 4000);
        n += 4000;
        n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
    }
    n += snprintf(req + n, sizeof(req) - (size_t)n, "0\r\n\r\n");
    ssize_t got = wire_exchange(f->addr, req, (size_t)n, out, sizeof(out), 3000);
    if (!EXPECT(got >= 0)) /* a hang is the one outcome not allowed */
        return;
    note(f, out, got);
    if (got > 0 && strncmp(out, "HTTP/1.1 200 ", 13) == 0)
        EXPECT(strstr(out, "Content-Length: 12000\r\n") != NULL);
}

static void scenario_h2(struct fx *f)
{
    char buf[1024], *p = buf, block[256];
    memcpy(p, WIRE_PREFACE, 24);
    p += 24;
    wire_frame(&p, 4, 0, 0, NULL, 0); /* SETTINGS */
    for (uint32_t id = 1; id <= 5; id += 2) {
        size_t n = wire_hpack(block, ":method", id == 3 ? "POST" : "GET");
        n += wire_hpack(block + n, ":scheme", "http");
        n += wire_hpack(block + n, ":path", id == 3 ? "/echo" : "/ok");
        n += wire_hpack(block + n, ":authority", "t");
        wire_frame(&p, 1, id == 3 ? 4 : 5, id, block, n); /* HEADERS, END_HEADERS (+END_STREAM) */
        if (id == 3)
            wire_frame(&p, 0, 1, id, "body!", 5); /* DATA, END_STREAM */
    }
    int64_t deadline = mica_deadline_in(3000);
    int fd = mica_net_connect(f->addr, NULL, deadline);
    if (!EXPECT(fd >= 0))
        return;
    mica_net_write(fd, buf, (size_t)(p - buf), NULL, deadline);
    bool found = false;
    int ended = wire_h2_read(fd, 3, deadline, "body!", 5, &found);
    EXPECT(ended != MICA_ETIMEDOUT);
    f->outcomes[ended == 3 ? (found ? 0 : 1) : 2]++;
    mica_net_close(fd);
}

/* Sweeps n = 1, 2, ... until the scenario makes fewer than n allocations. */
static void sweep(struct fx *f, void (*scenario)(struct fx *f))
{
    if (!EXPECT(serves(f)))
        return;
    for (long n = 1; n <= SWEEP_MAX; n++) {
        mica__alloc_fail_nth(n);
        scenario(f);
        mica_sleep_ms(2); /* let the server's coroutines finish with the connection */
        long made = mica__alloc_count();
        mica__alloc_fail_nth(0);
        if (!EXPECT(serves(f)))
            return;
        f->swept = n;
        if (made < n)
            break; /* the scenario ran clean: every allocation in it has failed once */
    }
}

struct run {
    struct fx *f;
    void (*scenario)(struct fx *f);
};

static void client(int worker, void *arg)
{
    struct run *r = arg;
    sweep(r->f, r->scenario);
    mica_runtime_stop(r->f->rt);
}

static void run_sweep(struct fx *f, void (*scenario)(struct fx *f))
{
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
    assert_int_equal(mica_runtime_new(&f->rt, &ro), 0);
    assert_int_equal(mica_http_server_new(&f->srv, NULL), 0);
    assert_int_equal(mica_http_route(f->srv, "POST", "/echo", echo, NULL), 0);
    assert_int_equal(mica_http_route(f->srv, "GET", "/ok", ok, NULL), 0);
    assert_int_equal(mica_http_server_listen(f->srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(f->srv, f->rt), 0);
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", mica_http_server_port(f->srv, 0));
    struct run r = {f, scenario};
    mica_runtime_on_start(f->rt, client, &r);
    assert_int_equal(mica_runtime_run(f->rt), 0);
    mica_http_server_free(f->srv);
    mica_runtime_free(f->rt);
    expect_no_failure();
    print_message("swept %ld allocations: %d ok, %d error statuses, %d closed, %d other\n",
                  f->swept, f->outcomes[0], f->outcomes[1], f->outcomes[2], f->outcomes[3]);
    assert_true(f->swept >= 3);         /* the sweep reached the server's allocations */
    assert_int_equal(f->outcomes[3], 0); /* nothing but a status or a close */
}

static void test_each_failed_allocation_of_an_http1_request_is_a_status_or_a_close(void **state)
{
    struct fx f = {0};
    run_sweep(&f, scenario_http1);
}

static void test_each_failed_allocation_of_an_h2_connection_is_a_status_or_a_close(void **state)
{
    struct fx f = {0};
    run_sweep(&f, scenario_h2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_failed_allocation_of_an_http1_request_is_a_status_or_a_close),
        cmocka_unit_test(test_each_failed_allocation_of_an_h2_connection_is_a_status_or_a_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * Server in-process, driven over real loopback sockets by coroutines of the
 * same runtime: the handler's ctx ends at the request timeout (504) and is
 * cancelled when the client disconnects.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mica/http.h"
#include "mica/net.h"
#include "mica/runtime.h"

struct fixture {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    char addr[64];
    int handler_rc;
    int handler_runs;
    char reply[1024];
};

static int sleepy(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct fixture *f = arg;
    f->handler_runs++;
    f->handler_rc = mica_ctx_sleep(mica_http_req_ctx(req), 2000);
    if (f->handler_rc != 0)
        return f->handler_rc;
    return mica_http_resp_text(resp, 200, "slept");
}

static void start(struct fixture *f, int request_timeout_ms, mica_worker_cb client)
{
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
    assert_int_equal(mica_runtime_new(&f->rt, &ro), 0);
    mica_http_server_opts_t so = {.request_timeout_ms = request_timeout_ms};
    assert_int_equal(mica_http_server_new(&f->srv, &so), 0);
    assert_int_equal(mica_http_route(f->srv, "GET", "/sleep", sleepy, f), 0);
    assert_int_equal(mica_http_server_listen(f->srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(f->srv, f->rt), 0);
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", mica_http_server_port(f->srv, 0));
    mica_runtime_on_start(f->rt, client, f);
    assert_int_equal(mica_runtime_run(f->rt), 0);
    mica_http_server_free(f->srv);
    mica_runtime_free(f->rt);
}

static const char req_sleep[] = "GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n";

static void timeout_client(int worker, void *arg)
{
    struct fixture *f = arg;
    int fd = mica_net_connect(f->addr, NULL, mica_deadline_in(1000));
    assert_true(fd >= 0);
    assert_int_equal(mica_net_write(fd, req_sleep, sizeof(req_sleep) - 1, NULL, mica_deadline_in(1000)), 0);
    ssize_t n = mica_net_read(fd, f->reply, sizeof(f->reply) - 1, NULL, mica_deadline_in(3000));
    assert_true(n > 0);
    f->reply[n] = '\0';
    mica_net_close(fd);
    mica_runtime_stop(f->rt);
}

static void test_handler_ctx_ends_at_the_request_timeout_with_504(void **state)
{
    struct fixture f = {0};
    start(&f, 50, timeout_client);
    assert_int_equal(f.handler_rc, MICA_ETIMEDOUT);
    assert_memory_equal(f.reply, "HTTP/1.1 504 Gateway Timeout\r\n", 30);
}

static void hangup_client(int worker, void *arg)
{
    struct fixture *f = arg;
    int fd = mica_net_connect(f->addr, NULL, mica_deadline_in(1000));
    assert_true(fd >= 0);
    assert_int_equal(mica_net_write(fd, req_sleep, sizeof(req_sleep) - 1, NULL, mica_deadline_in(1000)), 0);
    mica_sleep_ms(50); /* the handler is now sleeping on its ctx */
    int64_t t0 = mica_now_ms();
    mica_net_close(fd);
    while (f->handler_rc == 0 && mica_now_ms() - t0 < 1500)
        mica_sleep_ms(5);
    mica_runtime_stop(f->rt);
}

static void test_handler_ctx_is_cancelled_when_the_client_disconnects(void **state)
{
    struct fixture f = {0};
    start(&f, 10000, hangup_client);
    assert_int_equal(f.handler_runs, 1);
    assert_int_equal(f.handler_rc, MICA_ECANCELED);
}

/* Regression: a parked connection's peer closes (its edge schedules a
 * spawn) and the drain closes the parked connection in the same loop
 * iteration; the pending spawn must be dropped, not run on freed memory. */
static int ok(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_text(resp, 200, "ok");
}

static void close_then_stop_client(int worker, void *arg)
{
    struct fixture *f = arg;
    static const char req_ok[] = "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n";
    int fd = mica_net_connect(f->addr, NULL, mica_deadline_in(1000));
    assert_true(fd >= 0);
    assert_int_equal(mica_net_write(fd, req_ok, sizeof(req_ok) - 1, NULL, mica_deadline_in(1000)), 0);
    assert_true(mica_net_read(fd, f->reply, sizeof(f->reply), NULL, mica_deadline_in(1000)) > 0);
    mica_sleep_ms(2); /* the server parks the idle connection */
    mica_net_close(fd);
    mica_runtime_stop(f->rt);
    /* Block the worker (deliberately, in a test) until the main thread has
     * relayed the stop: the hang-up edge and the stop then arrive in one
     * epoll batch, the order that exposed the bug. */
    usleep(30000);
}

static void test_drain_closing_a_parked_connection_with_a_pending_spawn_is_safe(void **state)
{
    for (int i = 0; i < 30; i++) {
        struct fixture f = {0};
        mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
        assert_int_equal(mica_runtime_new(&f.rt, &ro), 0);
        assert_int_equal(mica_http_server_new(&f.srv, NULL), 0);
        assert_int_equal(mica_http_route(f.srv, "GET", "/ok", ok, NULL), 0);
        assert_int_equal(mica_http_server_listen(f.srv, "127.0.0.1:0"), 0);
        assert_int_equal(mica_http_server_attach(f.srv, f.rt), 0);
        snprintf(f.addr, sizeof(f.addr), "127.0.0.1:%d", mica_http_server_port(f.srv, 0));
        mica_runtime_on_start(f.rt, close_then_stop_client, &f);
        assert_int_equal(mica_runtime_run(f.rt), 0);
        assert_memory_equal(f.reply, "HTTP/1.1 200 OK\r\n", 17);
        mica_http_server_free(f.srv);
        mica_runtime_free(f.rt);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handler_ctx_ends_at_the_request_timeout_with_504),
        cmocka_unit_test(test_handler_ctx_is_cancelled_when_the_client_disconnects),
        cmocka_unit_test(test_drain_closing_a_parked_connection_with_a_pending_spawn_is_safe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

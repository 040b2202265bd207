/* SPDX-License-Identifier: MIT */
/*
 * include/mica/observe.h in one process: requests through an instrumented
 * server land in the default registry by route pattern; the admin listener
 * answers /metrics, /readyz and ready checks; log lines carry the service
 * and a ctx's trace ids and go out through the writer thread; a full log
 * output drops lines without stalling a worker.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "mica/cache.h"
#include "mica/ctx.h"
#include "mica/http.h"
#include "mica/log.h"
#include "mica/metrics.h"
#include "mica/observe.h"

static struct {
    mica_runtime_t *rt;
    mica_observe_t *obs;
    char addr[64], admin[64];
    int check_rc;
} fx;

static int hello(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_text(resp, 200, "hi");
}

static double metric(const char *text, const char *line_prefix)
{
    const char *p = strstr(text, line_prefix);
    return p ? strtod(p + strlen(line_prefix), NULL) : -1;
}

static char reply[65536];

static ssize_t get(const char *addr, const char *path)
{
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                     path);
    return wire_exchange(addr, req, (size_t)n, reply, sizeof(reply), 5000);
}

static int check(mica_ctx_t *ctx, void *arg)
{
    return fx.check_rc;
}

static void client(int worker, void *arg)
{
    if (worker != 0)
        return;
    for (int i = 0; i < 3; i++)
        EXPECT(get(fx.addr, "/items/42") > 0 && strstr(reply, "200 OK"));
    EXPECT(get(fx.addr, "/items/7") > 0);
    EXPECT(get(fx.addr, "/nowhere") > 0 && strstr(reply, "404"));
    EXPECT(get(fx.admin, "/readyz") > 0 && strstr(reply, "200 OK"));
    fx.check_rc = MICA_EUNAVAILABLE;
    EXPECT(get(fx.admin, "/readyz") > 0 && strstr(reply, "503") && strstr(reply, "check db"));
    fx.check_rc = 0;
    EXPECT(get(fx.admin, "/healthz") > 0 && strstr(reply, "200 OK"));
    EXPECT(get(fx.admin, "/metrics") > 0);
    const char *body = strstr(reply, "\r\n\r\n");
    EXPECT(body && strstr(reply, "text/plain; version=0.0.4"));
    if (body) {
        EXPECT_EQ(metric(body, "http_server_request_duration_seconds_count{http_request_method="
                               "\"GET\",http_route=\"/items/{id}\",http_response_status_code="
                               "\"200\"} "),
                  4);
        EXPECT_EQ(metric(body, "http_server_request_duration_seconds_count{http_request_method="
                               "\"GET\",http_route=\"unmatched\",http_response_status_code="
                               "\"404\"} "),
                  1);
        EXPECT(strstr(body, "mica_runtime_coroutines{worker=\"1\"}"));
        EXPECT(!strstr(body, "/items/42")); /* never the raw path */
    }
    mica_runtime_stop(fx.rt);
}

static void test_requests_are_measured_by_route_and_the_admin_listener_serves(void **state)
{
    mica_runtime_opts_t ro = {.workers = 2, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&fx.rt, &ro), 0);
    mica_http_server_t *srv;
    assert_int_equal(mica_http_server_new(&srv, NULL), 0);
    assert_int_equal(mica_http_route(srv, "GET", "/items/{id}", hello, NULL), 0);
    assert_int_equal(mica_http_server_listen(srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_observe_http_server(srv), 0);
    assert_int_equal(mica_observe_http_server(srv), MICA_EINVAL); /* once */
    assert_int_equal(mica_http_server_attach(srv, fx.rt), 0);
    snprintf(fx.addr, sizeof(fx.addr), "127.0.0.1:%d", mica_http_server_port(srv, 0));
    mica_observe_opts_t oo = {.admin_listen = "127.0.0.1:0", .service = "unit"};
    assert_int_equal(mica_observe_enable(&fx.obs, fx.rt, &oo), 0);
    mica_observe_t *again;
    assert_int_equal(mica_observe_enable(&again, fx.rt, &oo), MICA_EBUSY);
    assert_int_equal(mica_observe_ready_check(fx.obs, "db", check, NULL), 0);
    snprintf(fx.admin, sizeof(fx.admin), "127.0.0.1:%d", mica_observe_admin_port(fx.obs));
    assert_int_equal(mica_runtime_on_start(fx.rt, client, NULL), 0);
    assert_int_equal(mica_runtime_run(fx.rt), 0);
    expect_no_failure();
    mica_observe_free(fx.obs);
    mica_http_server_free(srv);
    mica_runtime_free(fx.rt);
}

/* ---- logs ------------------------------------------------------------------------------ */

static const char span_key = 0;

static bool trace_ids(mica_ctx_t *ctx, char trace_id[33], char span_id[17], void *arg)
{
    const char *span = mica_ctx_value(ctx, &span_key);
    if (!span)
        return false;
    snprintf(trace_id, 33, "%032x", 0xabc);
    snprintf(span_id, 17, "%s", span);
    return true;
}

static void test_lines_carry_the_service_and_a_ctx_s_trace_ids(void **state)
{
    char buf[MICA_LOG_LINE_MAX + 1];
    mica_ctx_t *ctx;
    assert_int_equal(mica_ctx_with_value(NULL, &span_key, "00f067aa0ba902b7", &ctx), 0);
    assert_int_equal(mica_log_set_service("billing"), 0);
    assert_int_equal(mica_log_set_service("bad\"name"), MICA_EINVAL);
    mica_log_field_t f[] = {MICA_LOG_INT("n", 3)};
    size_t n = mica_log_format(buf, sizeof(buf), ctx, MICA_LOG_WARN, "hi", f, 1);
    assert_true(n > 0 && strstr(buf, "\"level\":\"warn\",\"service\":\"billing\",\"msg\":\"hi\","
                                     "\"n\":3}"));
    assert_null(strstr(buf, "trace_id")); /* no tracing layer yet */
    mica_log_set_trace(trace_ids, NULL);
    assert_true(mica_log_has_trace());
    n = mica_log_format(buf, sizeof(buf), ctx, MICA_LOG_INFO, "hi", NULL, 0);
    assert_non_null(strstr(buf, "\"msg\":\"hi\",\"trace_id\":\"00000000000000000000000000000abc\","
                                "\"span_id\":\"00f067aa0ba902b7\"}"));
    n = mica_log_format(buf, sizeof(buf), NULL, MICA_LOG_INFO, "no ctx", NULL, 0);
    assert_null(strstr(buf, "trace_id"));
    assert_int_equal(mica_log_format(buf, 10, NULL, MICA_LOG_INFO, "too small", NULL, 0), 0);
    mica_log_set_trace(NULL, NULL);
    mica_log_set_service(NULL);
    mica_ctx_free(ctx);
}

/* A log file that stands for a full disk: a pipe nobody reads, as stdout. */
static int full_pipe[2];

static void flood(int worker, void *arg)
{
    int64_t t0 = mica_now_ms();
    for (int i = 0; i < 20000; i++)
        mica_log_info("flood", "i", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    EXPECT(mica_now_ms() - t0 < 5000); /* never waited for the pipe */
    if (worker == 0)
        mica_runtime_stop(arg);
}

static void test_a_stuck_log_output_drops_and_counts_lines_without_blocking(void **state)
{
    assert_int_equal(pipe(full_pipe), 0);
    fcntl(full_pipe[1], F_SETPIPE_SZ, 4096);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", full_pipe[1]);
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = 2, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&rt, &ro), 0);
    mica_observe_t *obs;
    mica_observe_opts_t oo = {.admin_listen = "off", .log_file = path, .log_queue_bytes = 16384};
    assert_int_equal(mica_observe_enable(&obs, rt, &oo), 0);
    assert_int_equal(mica_runtime_on_start(rt, flood, rt), 0);
    assert_int_equal(mica_runtime_run(rt), 0);
    expect_no_failure();
    char *t;
    size_t len;
    assert_int_equal(mica_metrics_write(NULL, &t, &len), 0);
    double dropped = metric(t, "\nmica_log_dropped_lines_total ");
    mica_metrics_text_free(t);
    assert_true(dropped > 10000);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    mica_observe_free(obs); /* returns though nobody ever reads: the writer gives up */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 4);
    mica_runtime_free(rt);
    close(full_pipe[0]);
    close(full_pipe[1]);
}

static void test_a_cache_s_counters_are_exported_until_it_is_freed(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &ro), 0);
    mica_cache_backend_t be;
    assert_int_equal(mica_cache_backend_lru(&be, rt, 10, 1 << 16), 0);
    mica_cache_t *c;
    assert_int_equal(mica_cache_new(&c, rt, be, NULL), 0);
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    assert_int_equal(mica_cache_export_metrics(c, reg, ""), MICA_EINVAL);
    assert_int_equal(mica_cache_export_metrics(c, reg, "users"), 0);
    char *t;
    size_t len;
    assert_int_equal(mica_metrics_write(reg, &t, &len), 0);
    assert_non_null(strstr(t, "# TYPE mica_cache_hits_total counter\n"
                              "mica_cache_hits_total{cache=\"users\"} 0\n"));
    mica_metrics_text_free(t);
    mica_cache_free(c);
    assert_int_equal(mica_metrics_write(reg, &t, &len), 0);
    assert_null(strstr(t, "mica_cache_hits_total"));
    mica_metrics_text_free(t);
    mica_metrics_free(reg);
    mica_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_are_measured_by_route_and_the_admin_listener_serves),
        cmocka_unit_test(test_lines_carry_the_service_and_a_ctx_s_trace_ids),
        cmocka_unit_test(test_a_stuck_log_output_drops_and_counts_lines_without_blocking),
        cmocka_unit_test(test_a_cache_s_counters_are_exported_until_it_is_freed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * The HTTP adapter on loopback: a mica server whose routes fail on demand
 * and mica's HTTP client with the policies attached. Idempotent requests
 * are retried over 503s and refused connections, a POST only when flagged,
 * a streamed body never; Retry-After is the server's pushback; the budget
 * and the breaker refuse what they must.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../runtime/helpers.h"
#include "mica/http_client.h"
#include "mica/resilience.h"

struct fx {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    char live[64], dead[64];
    atomic_int calls;      /* requests /flaky saw */
    atomic_int fail_first; /* answer 503 to this many first */
    const char *retry_after;
    mica_http_client_t *c;
    mica_resilience_t *res;
    mica_resilience_stats_t st;
    void (*body)(struct fx *);
};

static int flaky(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct fx *f = arg;
    atomic_fetch_add(&f->calls, 1);
    if (atomic_load(&f->fail_first) > 0) {
        atomic_fetch_sub(&f->fail_first, 1);
        if (f->retry_after)
            mica_http_resp_header(resp, "Retry-After", f->retry_after);
        return mica_http_resp_text(resp, 503, "not now");
    }
    return mica_http_resp_text(resp, 200, "ok");
}

static int broken(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct fx *f = arg;
    atomic_fetch_add(&f->calls, 1);
    return mica_http_resp_text(resp, 500, "broken");
}

static void body_main(void *arg)
{
    struct fx *f = arg;
    f->body(f);
    mica_runtime_stop(f->rt);
}

static void start(int worker, void *arg)
{
    if (worker == 0 && mica_go(body_main, arg) != 0)
        fail_msg("spawn");
}

/* Runs f->body in a coroutine with a client of `target` ("live", "dead,live") and the policies. */
static void run(struct fx *f, const char *which, const mica_resilience_opts_t *ro,
                void (*body)(struct fx *))
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    f->rt = rt;
    assert_int_equal(mica_http_server_new(&f->srv, NULL), 0);
    assert_int_equal(mica_http_route(f->srv, "GET", "/flaky", flaky, f), 0);
    assert_int_equal(mica_http_route(f->srv, "POST", "/flaky", flaky, f), 0);
    assert_int_equal(mica_http_route(f->srv, "GET", "/broken", broken, f), 0);
    assert_int_equal(mica_http_server_listen(f->srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(f->srv, rt), 0);
    snprintf(f->live, sizeof(f->live), "127.0.0.1:%d", mica_http_server_port(f->srv, 0));
    /* a port nobody listens on: bound, then closed */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    snprintf(f->dead, sizeof(f->dead), "127.0.0.1:%d", ntohs(sa.sin_port));
    char target[160];
    if (strcmp(which, "live") == 0)
        snprintf(target, sizeof(target), "http://%s", f->live);
    else if (strcmp(which, "dead") == 0)
        snprintf(target, sizeof(target), "http://%s", f->dead);
    else
        snprintf(target, sizeof(target), "static:///%s,%s", f->dead, f->live);
    assert_int_equal(mica_http_client_new(&f->c, rt, target, NULL), 0);
    assert_int_equal(mica_resilience_new(&f->res, rt, ro), 0);
    assert_int_equal(mica_resilience_http_attach(f->res, f->c, NULL), 0);
    assert_int_equal(mica_resilience_http_attach(f->res, f->c, NULL), MICA_EBUSY);
    f->body = body;
    mica_runtime_on_start(rt, start, f);
    assert_int_equal(mica_runtime_run(rt), 0);
    mica_resilience_stats(f->res, &f->st);
    mica_http_client_free(f->c);
    mica_resilience_free(f->res);
    mica_http_server_free(f->srv);
    mica_runtime_free(rt);
    expect_no_failure();
}

/* One call: its status (0: none) and error. */
static int call(struct fx *f, const char *method, const char *path, uint32_t flags, int *err)
{
    static const char body[] = "{}";
    mica_http_request_t req = {.method = method, .path = path};
    if (strcmp(method, "POST") == 0) {
        req.body = body;
        req.body_len = 2;
    }
    mica_http_call_opts_t o = {.flags = flags, .deadline_ms = mica_deadline_in(5000)};
    mica_http_response_t *r = NULL;
    *err = mica_http_client_do(f->c, NULL, &req, &o, &r, NULL);
    int st = r ? mica_http_response_status(r) : 0;
    mica_http_response_free(r);
    return st;
}

/* Retries only: the breaker would (rightly) start refusing a service answering this many 503s. */
static const mica_resilience_opts_t fast = {.retry = {.initial_backoff_ms = 5},
                                            .breaker = {.kind = MICA_BREAKER_NONE}};
static const mica_resilience_opts_t with_breaker = {.retry = {.initial_backoff_ms = 5}};

static void retries_body(struct fx *f)
{
    int err;
    atomic_store(&f->fail_first, 2); /* two 503s, then 200: within 3 attempts */
    EXPECT_EQ(call(f, "GET", "/flaky", 0, &err), 200);
    EXPECT_EQ(atomic_load(&f->calls), 3);
    atomic_store(&f->calls, 0);
    atomic_store(&f->fail_first, 1); /* a POST is not repeated unless flagged */
    EXPECT_EQ(call(f, "POST", "/flaky", 0, &err), 503);
    EXPECT_EQ(atomic_load(&f->calls), 1);
    atomic_store(&f->calls, 0);
    atomic_store(&f->fail_first, 1);
    EXPECT_EQ(call(f, "POST", "/flaky", MICA_CALL_IDEMPOTENT, &err), 200);
    EXPECT_EQ(atomic_load(&f->calls), 2);
    atomic_store(&f->calls, 0);
    atomic_store(&f->fail_first, 1); /* the caller said never */
    EXPECT_EQ(call(f, "GET", "/flaky", MICA_CALL_NO_RETRY, &err), 503);
    EXPECT_EQ(atomic_load(&f->calls), 1);
    atomic_store(&f->calls, 0);
    atomic_store(&f->fail_first, 5); /* more failures than attempts: the last 503 comes back */
    EXPECT_EQ(call(f, "GET", "/flaky", 0, &err), 503);
    EXPECT_EQ(err, 0);
    EXPECT_EQ(atomic_load(&f->calls), 3);
    atomic_store(&f->fail_first, 0);
    atomic_store(&f->calls, 0);
    EXPECT_EQ(call(f, "GET", "/broken", 0, &err), 500); /* a 500 is not retryable */
    EXPECT_EQ(atomic_load(&f->calls), 1);
}

static void test_idempotent_requests_are_retried_over_503s_and_a_post_only_when_flagged(void **s)
{
    static struct fx f;
    memset(&f, 0, sizeof(f));
    run(&f, "live", &fast, retries_body);
    assert_int_equal(f.st.retries, 2 + 1 + 2);
    assert_int_equal(f.st.rejected, 0);
}

static void refused_body(struct fx *f)
{
    int err;
    for (int i = 0; i < 10; i++) /* round robin over a dead and a live endpoint */
        EXPECT_EQ(call(f, "GET", "/flaky", 0, &err), 200);
    EXPECT_EQ(atomic_load(&f->calls), 10);
}

static void test_a_refused_endpoint_fails_no_call_among_live_ones(void **s)
{
    static struct fx f;
    memset(&f, 0, sizeof(f));
    run(&f, "dead,live", &fast, refused_body);
    print_message("%llu retries for 10 calls\n", (unsigned long long)f.st.retries);
}

static void dead_body(struct fx *f)
{
    int err;
    EXPECT_EQ(call(f, "GET", "/flaky", 0, &err), 0);
    EXPECT(err != 0);
    EXPECT_EQ(call(f, "POST", "/flaky", 0, &err), 0);
    EXPECT(err != 0);
}

static void test_no_response_is_retried_for_an_idempotent_request_only(void **s)
{
    static struct fx f;
    memset(&f, 0, sizeof(f));
    run(&f, "dead", &fast, dead_body);
    assert_int_equal(f.st.retries, 2); /* the GET's: 3 attempts; the POST's none */
}

static void pushback_body(struct fx *f)
{
    int err;
    f->retry_after = "1";
    atomic_store(&f->fail_first, 1);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f, "GET", "/flaky", 0, &err), 200);
    int64_t took = mica_now_ms() - t0;
    EXPECT(took >= 1000); /* the server asked for a second; the backoff alone is ~5 ms */
    EXPECT(took < 4000);
}

static void test_retry_after_is_the_servers_pushback(void **s)
{
    static struct fx f;
    memset(&f, 0, sizeof(f));
    run(&f, "live", &fast, pushback_body);
    assert_int_equal(f.st.pushbacks, 1);
}

static void breaker_body(struct fx *f)
{
    int err, refused = 0;
    for (int i = 0; i < 400; i++) {
        int st = call(f, "GET", "/broken", MICA_CALL_NO_RETRY, &err);
        refused += err == MICA_EUNAVAILABLE && st == 0;
    }
    print_message("%d of 400 calls to an always-500 route refused by the breaker, %d sent\n",
                  refused, atomic_load(&f->calls));
    EXPECT(refused > 100);
    EXPECT_EQ(refused + atomic_load(&f->calls), 400);
}

static void test_the_breaker_refuses_calls_to_a_failing_service(void **s)
{
    static struct fx f;
    memset(&f, 0, sizeof(f));
    run(&f, "live", &with_breaker, breaker_body);
    assert_true(f.st.rejected > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idempotent_requests_are_retried_over_503s_and_a_post_only_when_flagged),
        cmocka_unit_test(test_a_refused_endpoint_fails_no_call_among_live_ones),
        cmocka_unit_test(test_no_response_is_retried_for_an_idempotent_request_only),
        cmocka_unit_test(test_retry_after_is_the_servers_pushback),
        cmocka_unit_test(test_the_breaker_refuses_calls_to_a_failing_service),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * Deadlines across hops (src/resilience/deadline.c and the X-Request-Timeout
 * helpers of include/mica/http.h): a caller's budget shrinks by each hop's
 * time from A to B to C, over gRPC and from an HTTP request's
 * X-Request-Timeout; requests already out of time are refused before their
 * handler; the helpers an HTTP client uses to send the budget.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "echo.pb-c.h"
#include "mica/limit.h"

static inline int expect_eq1(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b) expect_eq1((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

typedef Mica__Interop__EchoRequest req_t;
typedef Mica__Interop__EchoResponse resp_t;
static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

#define HOP_MS 50 /* each hop's own time before it calls the next */

/* One service of the chain: records the budget it was given, waits, calls the next. */
struct hop {
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    mica_grpc_client_t *next; /* NULL: the last hop */
    char addr[64];
    int64_t left_ms; /* the budget this hop saw when the call arrived (-1: none) */
    atomic_int calls;
};

struct chain {
    mica_runtime_t *rt;
    struct hop h[3]; /* A, B, C */
    mica_grpc_client_t *client;
    int64_t http_left_ms;
    int64_t seen[3]; /* the budgets A, B, C saw on the first call */
    atomic_int http_calls;
};

static int64_t left(mica_ctx_t *ctx)
{
    int64_t d = mica_ctx_deadline(ctx);
    return d == MICA_NO_DEADLINE ? -1 : d - mica_now_ms();
}

/* Calls the next hop under `ctx`: the rest of the budget goes out as grpc-timeout. */
static int forward(mica_grpc_client_t *next, mica_ctx_t *ctx, char *msg, size_t size)
{
    req_t req = MICA__INTEROP__ECHO_REQUEST__INIT;
    req.message = "relay";
    ProtobufCMessage *out = NULL;
    int code = mica_grpc_unary(next, ctx, echo, "Unary", NULL, &req.base, &out, NULL);
    if (code == MICA_GRPC_OK)
        snprintf(msg, size, "%s", ((resp_t *)out)->message);
    protobuf_c_message_free_unpacked(out, NULL);
    return code;
}

static int relay(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    struct hop *h = arg;
    atomic_fetch_add(&h->calls, 1);
    mica_ctx_t *ctx = mica_grpc_call_ctx(call);
    h->left_ms = left(ctx);
    char msg[64] = "last";
    if (h->next) {
        int rc = mica_ctx_sleep(ctx, HOP_MS);
        if (rc != 0)
            return rc;
        int code = forward(h->next, ctx, msg, sizeof(msg));
        if (code != MICA_GRPC_OK)
            return code;
    }
    resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = msg;
    return mica_grpc_send(call, &out.base);
}

/* HTTP on A: its budget from X-Request-Timeout, then on to B over gRPC. */
static int chain_http(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct chain *c = arg;
    atomic_fetch_add(&c->http_calls, 1);
    mica_ctx_t *ctx = mica_http_req_ctx(req);
    c->http_left_ms = left(ctx);
    int rc = mica_ctx_sleep(ctx, HOP_MS);
    if (rc != 0)
        return rc;
    char msg[64];
    int code = forward(c->h[0].next, ctx, msg, sizeof(msg));
    return code == MICA_GRPC_OK ? mica_http_resp_text(resp, 200, msg)
                                : mica_http_resp_error(resp, 502, mica_grpc_code_name(code));
}

static int echo_body(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct chain *c = arg;
    atomic_fetch_add(&c->http_calls, 1);
    c->http_left_ms = left(mica_http_req_ctx(req));
    size_t len;
    const char *body = mica_http_req_body(req, &len);
    return mica_http_resp_send(resp, 200, "text/plain", body, len);
}

static void chain_start(struct chain *c)
{
    memset(c, 0, sizeof(*c));
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&c->rt, &ro), 0);
    for (int i = 0; i < 3; i++) {
        struct hop *h = &c->h[i];
        assert_int_equal(mica_http_server_new(&h->srv, NULL), 0);
        assert_int_equal(mica_grpc_server_new(&h->gs, h->srv, NULL), 0);
        assert_int_equal(mica_deadline_http(h->srv), 0);
        assert_int_equal(mica_deadline_grpc(h->gs), 0);
        assert_int_equal(mica_grpc_register(h->gs, echo, "Unary", MICA_GRPC_UNARY, relay, h), 0);
        assert_int_equal(mica_http_server_listen(h->srv, "127.0.0.1:0"), 0);
    }
    assert_int_equal(mica_http_route(c->h[0].srv, "GET", "/chain", chain_http, c), 0);
    assert_int_equal(mica_http_route(c->h[0].srv, "POST", "/echo", echo_body, c), 0);
    for (int i = 0; i < 3; i++) {
        struct hop *h = &c->h[i];
        assert_int_equal(mica_http_server_attach(h->srv, c->rt), 0);
        snprintf(h->addr, sizeof(h->addr), "127.0.0.1:%d", mica_http_server_port(h->srv, 0));
    }
    for (int i = 0; i < 2; i++) /* A -> B -> C */
        assert_int_equal(mica_grpc_client_new(&c->h[i].next, c->rt, c->h[i + 1].addr, NULL), 0);
    assert_int_equal(mica_grpc_client_new(&c->client, c->rt, c->h[0].addr, NULL), 0);
}

static void chain_run(struct chain *c, void (*body)(void *))
{
    struct run_once ro = {.rt = c->rt, .body = body, .arg = c};
    mica_runtime_on_start(c->rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(c->rt), 0);
    mica_grpc_client_free(c->client);
    for (int i = 0; i < 3; i++) {
        mica_grpc_client_free(c->h[i].next);
        mica_grpc_server_free(c->h[i].gs);
        mica_http_server_free(c->h[i].srv);
    }
    mica_runtime_free(c->rt);
    expect_no_failure();
}

/* ---- across two hops ------------------------------------------------------------------------ */

static void grpc_chain_body(void *arg)
{
    struct chain *c = arg;
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 2000, &ctx);
    char msg[64] = "";
    EXPECT_EQ(forward(c->client, ctx, msg, sizeof(msg)), MICA_GRPC_OK);
    EXPECT(strcmp(msg, "last") == 0);
    mica_ctx_free(ctx);
    for (int i = 0; i < 3; i++)
        c->seen[i] = c->h[i].left_ms;
    /* A budget smaller than the chain needs: C is never reached, A answers in time. */
    mica_ctx_with_timeout(NULL, 80, &ctx);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(forward(c->client, ctx, msg, sizeof(msg)), MICA_GRPC_DEADLINE_EXCEEDED);
    EXPECT(mica_now_ms() - t0 < 1000);
    mica_ctx_free(ctx);
    EXPECT_EQ(atomic_load(&c->h[2].calls), 1);
    mica_runtime_stop(c->rt);
}

static void test_grpc_budget_shrinks_from_a_to_b_to_c(void **state)
{
    struct chain c;
    chain_start(&c);
    chain_run(&c, grpc_chain_body);
    int64_t a = c.seen[0], b = c.seen[1], cc = c.seen[2];
    print_message("budget seen by A %lld ms, B %lld ms, C %lld ms (each hop takes %d ms)\n",
                  (long long)a, (long long)b, (long long)cc, HOP_MS);
    assert_true(a > 1500 && a <= 2000);
    assert_true(b <= a - HOP_MS + 1 && b > a - 500); /* +1: whole ms on the wire */
    assert_true(cc <= b - HOP_MS + 1 && cc > b - 500);
}

static int status_of(const char *resp)
{
    int status = 0;
    if (strncmp(resp, "HTTP/1.1 ", 9) == 0)
        for (int i = 9; i < 12 && resp[i] >= '0' && resp[i] <= '9'; i++)
            status = status * 10 + (resp[i] - '0');
    return status;
}

static int get(struct chain *c, const char *extra, char *out, size_t cap)
{
    char req[256];
    int n = snprintf(req, sizeof(req),
                     "GET /chain HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n", extra);
    if (wire_exchange(c->h[0].addr, req, (size_t)n, out, cap, 5000) < 12)
        return -1;
    return status_of(out);
}

static void http_chain_body(void *arg)
{
    struct chain *c = arg;
    char out[2048];
    EXPECT_EQ(get(c, "X-Request-Timeout: 800\r\n", out, sizeof(out)), 200);
    EXPECT(strstr(out, "\r\n\r\nlast") != NULL);
    mica_runtime_stop(c->rt);
}

static void test_http_request_timeout_becomes_the_budget_of_the_grpc_hops(void **state)
{
    struct chain c;
    chain_start(&c);
    chain_run(&c, http_chain_body);
    int64_t a = c.http_left_ms, b = c.h[1].left_ms, cc = c.h[2].left_ms;
    print_message("X-Request-Timeout 800: A %lld ms, B %lld ms, C %lld ms\n", (long long)a,
                  (long long)b, (long long)cc);
    assert_true(a > 500 && a <= 800);
    assert_true(b <= a - HOP_MS + 1 && b > a - 400);
    assert_true(cc <= b - HOP_MS + 1 && cc > b - 400);
    mica_deadline_stats_t st;
    mica_deadline_stats(&st);
    assert_true(st.propagated >= 3); /* A's X-Request-Timeout, B's and C's grpc-timeout */
}

/* ---- refused before the handler -------------------------------------------------------------- */

/* Sends a head, waits `pause_ms`, sends `body`, and reads the answer. Returns the status. */
static int slow_post(const char *addr, const char *head, int pause_ms, const char *body, char *out,
                     size_t cap)
{
    int64_t deadline = mica_deadline_in(5000);
    int fd = mica_net_connect(addr, NULL, deadline);
    if (fd < 0)
        return fd;
    mica_net_write(fd, head, strlen(head), NULL, deadline);
    mica_sleep_ms(pause_ms);
    mica_net_write(fd, body, strlen(body), NULL, deadline);
    size_t total = 0;
    ssize_t n;
    while ((n = mica_net_read(fd, out + total, cap - 1 - total, NULL, deadline)) > 0)
        total += (size_t)n;
    out[total] = '\0';
    mica_net_close(fd);
    return status_of(out);
}

static void refuse_body(void *arg)
{
    struct chain *c = arg;
    char out[2048];
    mica_deadline_stats_t before, after;
    mica_deadline_stats(&before);
    EXPECT_EQ(get(c, "X-Request-Timeout: 0\r\n", out, sizeof(out)), 504);
    EXPECT(strstr(out, "deadline exceeded") != NULL);
    EXPECT_EQ(get(c, "X-Request-Timeout: soon\r\n", out, sizeof(out)), 400);
    EXPECT_EQ(atomic_load(&c->http_calls), 0);
    /* The budget runs out while the body is on its way: no handler. */
    const char *head = "POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: 100\r\n"
                       "Content-Length: 5\r\nConnection: close\r\n\r\n";
    EXPECT_EQ(slow_post(c->h[0].addr, head, 300, "hello", out, sizeof(out)), 504);
    EXPECT_EQ(atomic_load(&c->http_calls), 0);
    /* In time, it is served with that budget (grpc-timeout is for gRPC calls only). */
    head = "POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: 3000\r\ngrpc-timeout: 1m\r\n"
           "Content-Length: 5\r\nConnection: close\r\n\r\n";
    EXPECT_EQ(slow_post(c->h[0].addr, head, 10, "hello", out, sizeof(out)), 200);
    EXPECT(strstr(out, "\r\n\r\nhello") != NULL);
    EXPECT(c->http_left_ms > 2000 && c->http_left_ms <= 3000);
    EXPECT_EQ(atomic_load(&c->http_calls), 1);
    mica_deadline_stats(&after);
    EXPECT_EQ(after.expired - before.expired, 2);
    EXPECT_EQ(after.malformed - before.malformed, 1);
    EXPECT_EQ(after.propagated - before.propagated, 3);
    mica_runtime_stop(c->rt);
}

static void test_requests_out_of_time_are_refused_without_their_handler(void **state)
{
    struct chain c;
    chain_start(&c);
    chain_run(&c, refuse_body);
}

/* ---- the helpers an HTTP client sends X-Request-Timeout with ---------------------------------- */

static void helpers_body(void *arg)
{
    char buf[32];
    EXPECT_EQ(mica_http_timeout_header(NULL, MICA_NO_DEADLINE, buf, sizeof(buf)), MICA_ENOTFOUND);
    EXPECT_EQ(mica_http_timeout_header(NULL, mica_now_ms() - 1, buf, sizeof(buf)),
              MICA_ETIMEDOUT);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 700, &ctx);
    EXPECT_EQ(mica_http_timeout_header(ctx, MICA_NO_DEADLINE, buf, sizeof(buf)), 0);
    EXPECT(strcmp(buf, "700") == 0 || strcmp(buf, "699") == 0);
    EXPECT_EQ(mica_http_timeout_header(ctx, mica_deadline_in(300), buf, sizeof(buf)), 0);
    EXPECT(strcmp(buf, "300") == 0 || strcmp(buf, "299") == 0); /* the earlier one */
    EXPECT_EQ(mica_http_timeout_header(ctx, MICA_NO_DEADLINE, buf, 2), MICA_ELIMIT);
    mica_ctx_free(ctx);
}

static void test_timeout_header_helpers(void **state)
{
    int64_t ms;
    assert_int_equal(mica_http_timeout_parse("250", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(mica_http_timeout_parse("250m", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(mica_http_timeout_parse("2S", &ms), 0);
    assert_int_equal(ms, 2000);
    assert_int_equal(mica_http_timeout_parse("1M", &ms), 0);
    assert_int_equal(ms, 60000);
    assert_int_equal(mica_http_timeout_parse("1H", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(mica_http_timeout_parse("1500u", &ms), 0);
    assert_int_equal(ms, 2); /* rounded up */
    assert_int_equal(mica_http_timeout_parse("1n", &ms), 0);
    assert_int_equal(ms, 1);
    assert_int_equal(mica_http_timeout_parse("0", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(mica_http_timeout_parse("99999999S", &ms), 0);
    const char *bad[] = {"", "m", "123456789", "12x", "-5", "1.5S", " 5", "5 ", NULL};
    for (int i = 0; bad[i]; i++)
        assert_int_equal(mica_http_timeout_parse(bad[i], &ms), MICA_EINVAL);
    assert_int_equal(mica_http_timeout_parse(NULL, &ms), MICA_EINVAL);
    assert_int_equal(run_in_coroutine(1, helpers_body, NULL), 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grpc_budget_shrinks_from_a_to_b_to_c),
        cmocka_unit_test(test_http_request_timeout_becomes_the_budget_of_the_grpc_hops),
        cmocka_unit_test(test_requests_out_of_time_are_refused_without_their_handler),
        cmocka_unit_test(test_timeout_header_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

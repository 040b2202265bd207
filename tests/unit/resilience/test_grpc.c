/* SPDX-License-Identifier: MIT */
/*
 * The resilience interceptor on a real gRPC client against in-process Echo
 * servers (tests/interop/proto): retries (codes, attempts, flags, pushback,
 * per-try timeouts), the retry budget under concurrency, the per-method
 * breaker with and without a fallback, hedging, streams, and the ring-hash
 * key taken from metadata. Each backend counts the calls it served, so
 * attempts are checked on the servers' side.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "../runtime/helpers.h"
#include "common/alloc.h"
#include "echo.pb-c.h"
#include "mica/balancer.h"
#include "mica/grpc.h"
#include "mica/resilience.h"

typedef Mica__Interop__EchoRequest req_t;
typedef Mica__Interop__EchoResponse resp_t;
#define REQ_INIT MICA__INTEROP__ECHO_REQUEST__INIT
static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

/* ---- backends ---------------------------------------------------------------------- */

#define NB 3

struct backend {
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    char addr[64];
    atomic_int calls;
    atomic_int fail_first; /* answer `code` to this many calls first */
    atomic_int code;       /* ... (UNAVAILABLE unless set) */
    atomic_int slow_first; /* sleep delay_ms in this many calls first */
    atomic_int delay_ms;
    atomic_int cancelled; /* calls whose sleep the client cancelled */
    const char *pushback; /* grpc-retry-pushback-ms sent with failures */
};

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    struct backend *b = arg;
    const req_t *req = (const req_t *)in;
    atomic_fetch_add(&b->calls, 1);
    if (atomic_load(&b->slow_first) > 0) {
        atomic_fetch_sub(&b->slow_first, 1);
        int rc = mica_ctx_sleep(mica_grpc_call_ctx(call), atomic_load(&b->delay_ms));
        if (rc != 0) {
            atomic_fetch_add(&b->cancelled, 1);
            return rc;
        }
    }
    if (atomic_load(&b->fail_first) > 0) {
        atomic_fetch_sub(&b->fail_first, 1);
        if (b->pushback)
            mica_grpc_call_trailer(call, "grpc-retry-pushback-ms", b->pushback);
        int code = atomic_load(&b->code);
        return mica_grpc_status(call, code ? code : MICA_GRPC_UNAVAILABLE, "injected");
    }
    if (req->delay_ms > 0) {
        int rc = mica_ctx_sleep(mica_grpc_call_ctx(call), req->delay_ms);
        if (rc != 0)
            return rc;
    }
    if (req->status)
        return mica_grpc_status(call, req->status, "asked for");
    resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = req->message;
    return mica_grpc_send(call, &out.base);
}

static int server_stream(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const req_t *req = (const req_t *)in;
    atomic_fetch_add(&((struct backend *)arg)->calls, 1);
    for (int i = 0; i < req->count; i++) {
        resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
        int rc = mica_grpc_send(call, &out.base);
        if (rc != 0)
            return rc;
    }
    return req->status;
}

struct fx {
    mica_runtime_t *rt;
    struct backend b[NB];
    mica_grpc_client_t *c;
    mica_resilience_t *res;
    mica_balancer_t *lb;
    mica_resilience_grpc_opts_t gopts;
};

static void fx_start(struct fx *f, int workers)
{
    memset(f, 0, sizeof(*f));
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&f->rt, &o), 0);
    for (int i = 0; i < NB; i++) {
        struct backend *b = &f->b[i];
        assert_int_equal(mica_http_server_new(&b->srv, NULL), 0);
        assert_int_equal(mica_grpc_server_new(&b->gs, b->srv, NULL), 0);
        assert_int_equal(mica_grpc_register(b->gs, echo, "Unary", MICA_GRPC_UNARY, unary, b), 0);
        assert_int_equal(mica_grpc_register(b->gs, echo, "ServerStream", MICA_GRPC_SERVER_STREAM,
                                            server_stream, b),
                         0);
        assert_int_equal(mica_http_server_listen(b->srv, "127.0.0.1:0"), 0);
        assert_int_equal(mica_http_server_attach(b->srv, f->rt), 0);
        snprintf(b->addr, sizeof(b->addr), "127.0.0.1:%d", mica_http_server_port(b->srv, 0));
    }
}

/* A client of the first `nb` backends with the policies `ro` (NULL: defaults). */
static void fx_client(struct fx *f, int nb, const mica_resilience_opts_t *ro,
                      const mica_picker_ops_t *picker)
{
    char target[256] = "static:///";
    for (int i = 0; i < nb; i++) {
        size_t n = strlen(target);
        snprintf(target + n, sizeof(target) - n, "%s%s", i ? "," : "", f->b[i].addr);
    }
    mica_grpc_client_opts_t co = {.conns_per_worker = 1};
    if (picker) {
        mica_balancer_opts_t bo = {.breaker.kind = MICA_BREAKER_NONE};
        assert_int_equal(mica_balancer_new(&f->lb, f->rt, &bo), 0);
        co.picker = picker;
        co.picker_conf = f->lb;
    }
    assert_int_equal(mica_grpc_client_new(&f->c, f->rt, target, &co), 0);
    assert_int_equal(mica_resilience_new(&f->res, f->rt, ro), 0);
    assert_int_equal(mica_resilience_grpc_attach(f->res, f->c, &f->gopts), 0);
    assert_int_equal(mica_resilience_grpc_attach(f->res, f->c, NULL), MICA_EBUSY);
}

static void fx_run(struct fx *f, void (*body)(void *))
{
    struct run_once ro = {.rt = f->rt, .body = body, .arg = f};
    mica_runtime_on_start(f->rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(f->rt), 0);
    mica_grpc_client_free(f->c);
    mica_resilience_free(f->res);
    mica_balancer_free(f->lb);
    for (int i = 0; i < NB; i++) {
        mica_grpc_server_free(f->b[i].gs);
        mica_http_server_free(f->b[i].srv);
    }
    mica_runtime_free(f->rt);
    expect_no_failure();
}

/* One unary Echo call; returns its code. */
static int call(struct fx *f, const mica_grpc_call_opts_t *o, int delay_ms, mica_grpc_result_t *res)
{
    req_t req = REQ_INIT;
    req.message = "hi";
    req.delay_ms = delay_ms;
    ProtobufCMessage *out = NULL;
    mica_grpc_result_t local;
    int code = mica_grpc_unary(f->c, NULL, echo, "Unary", o, &req.base, &out, res ? res : &local);
    if (code == MICA_GRPC_OK)
        EXPECT(out && strcmp(((resp_t *)out)->message, "hi") == 0);
    else
        EXPECT(out == NULL);
    protobuf_c_message_free_unpacked(out, NULL);
    return code;
}

static mica_resilience_stats_t stats(struct fx *f)
{
    mica_resilience_stats_t st;
    mica_resilience_stats(f->res, &st);
    return st;
}

/* ---- retries ------------------------------------------------------------------------- */

/* Retries alone (the per-method throttle would step in after a few failures). */
static const mica_resilience_opts_t no_breaker = {.breaker.kind = MICA_BREAKER_NONE};

static void retry_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    atomic_store(&b->fail_first, 2);
    EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(atomic_load(&b->calls), 3);
    EXPECT_EQ(stats(f).retries, 2);

    /* Attempts stop at max_attempts (3 by default). */
    atomic_store(&b->calls, 0);
    atomic_store(&b->fail_first, 10);
    mica_grpc_result_t res;
    EXPECT_EQ(call(f, NULL, 0, &res), MICA_GRPC_UNAVAILABLE);
    EXPECT(strcmp(res.message, "injected") == 0);
    EXPECT_EQ(atomic_load(&b->calls), 3);

    /* A code not in retry_codes is not retried. */
    atomic_store(&b->calls, 0);
    atomic_store(&b->fail_first, 1);
    atomic_store(&b->code, MICA_GRPC_INVALID_ARGUMENT);
    EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_INVALID_ARGUMENT);
    EXPECT_EQ(atomic_load(&b->calls), 1);
    atomic_store(&b->code, 0);

    /* MICA_CALL_NO_RETRY */
    atomic_store(&b->calls, 0);
    atomic_store(&b->fail_first, 1);
    mica_grpc_call_opts_t o = {.flags = MICA_CALL_NO_RETRY};
    EXPECT_EQ(call(f, &o, 0, NULL), MICA_GRPC_UNAVAILABLE);
    EXPECT_EQ(atomic_load(&b->calls), 1);

    /* A call's own policy: 5 attempts. */
    atomic_store(&b->calls, 0);
    atomic_store(&b->fail_first, 4);
    mica_retry_policy_t five = {.max_attempts = 5, .initial_backoff_ms = 10};
    mica_call_policy_t cp = {.retry = &five};
    o = (mica_grpc_call_opts_t){.flags = MICA_CALL_POLICY, .policy = &cp};
    EXPECT_EQ(call(f, &o, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(atomic_load(&b->calls), 5);
    atomic_store(&b->fail_first, 0);
}

static void test_unavailable_is_retried_up_to_max_attempts(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    fx_client(&f, 1, &no_breaker, NULL);
    fx_run(&f, retry_body);
}

static void idempotent_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    atomic_store(&b->fail_first, 1);
    EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_UNAVAILABLE); /* not marked: no retry */
    EXPECT_EQ(atomic_load(&b->calls), 1);
    atomic_store(&b->fail_first, 1);
    mica_grpc_call_opts_t o = {.flags = MICA_CALL_IDEMPOTENT};
    EXPECT_EQ(call(f, &o, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(atomic_load(&b->calls), 3);
}

static void test_idempotent_only_retries_only_marked_calls(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    f.gopts.idempotent_only = true;
    fx_client(&f, 1, &no_breaker, NULL);
    fx_run(&f, idempotent_body);
}

static void pushback_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    b->pushback = "300";
    atomic_store(&b->fail_first, 1);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    int64_t took = mica_now_ms() - t0;
    EXPECT(took >= 290 && took < 3000); /* waited the server's 300 ms, not 0..100 */
    EXPECT_EQ(atomic_load(&b->calls), 2);
    /* A negative pushback: do not retry. */
    b->pushback = "-1";
    atomic_store(&b->fail_first, 1);
    mica_grpc_result_t res;
    EXPECT_EQ(call(f, NULL, 0, &res), MICA_GRPC_UNAVAILABLE);
    EXPECT_EQ(res.retry_pushback_ms, MICA_RETRY_PUSHBACK_STOP);
    EXPECT_EQ(atomic_load(&b->calls), 3);
    EXPECT_EQ(stats(f).pushbacks, 2);
    b->pushback = NULL;
}

static void test_the_servers_pushback_sets_the_delay_or_stops_retries(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    fx_client(&f, 1, &no_breaker, NULL);
    fx_run(&f, pushback_body);
}

static void per_try_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    atomic_store(&b->slow_first, 1);
    atomic_store(&b->delay_ms, 3000);
    mica_grpc_call_opts_t o = {.deadline_ms = mica_deadline_in(2500)};
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f, &o, 0, NULL), MICA_GRPC_OK); /* the first try gave up at 300 ms */
    EXPECT(mica_now_ms() - t0 < 2000);
    EXPECT_EQ(atomic_load(&b->calls), 2);
}

static void test_a_per_try_timeout_retries_inside_the_calls_deadline(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    mica_resilience_opts_t ro = {.retry = {.per_try_timeout_ms = 300}};
    fx_client(&f, 1, &ro, NULL);
    fx_run(&f, per_try_body);
}

/* ---- the retry budget ------------------------------------------------------------------ */

struct crowd {
    struct fx *f;
    mica_wg_t *wg;
    int calls;
};

static void crowd_caller(void *arg)
{
    struct crowd *c = arg;
    for (int i = 0; i < c->calls; i++)
        call(c->f, NULL, 5, NULL);
    mica_wg_done(c->wg);
}

static void budget_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    atomic_store(&b->fail_first, 1000000); /* a dead backend */
    enum { COROS = 40, CALLS = 10 };
    struct crowd c = {.f = f, .calls = CALLS};
    mica_wg_new(&c.wg);
    mica_wg_add(c.wg, COROS);
    for (int i = 0; i < COROS; i++)
        mica_go(crowd_caller, &c);
    EXPECT_EQ(mica_wg_wait(c.wg, NULL), 0);
    mica_wg_free(c.wg);
    mica_resilience_stats_t st = stats(f);
    int served = atomic_load(&b->calls);
    print_message("budget: %d calls, %d attempts, %llu retries, %llu refused, peak %u\n",
                  COROS * CALLS, served, (unsigned long long)st.retries,
                  (unsigned long long)st.budget_exhausted, st.peak_retries);
    /* 20 % of 40 in flight: at most 8 retries at once; without the budget 5x the calls. */
    EXPECT(st.peak_retries <= 8);
    EXPECT(st.budget_exhausted > 0);
    EXPECT(served < COROS * CALLS * 2);
    EXPECT_EQ(served, COROS * CALLS + (int)st.retries);
}

static void test_the_retry_budget_keeps_retries_under_a_fifth_of_calls_in_flight(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    mica_resilience_opts_t ro = {.retry = {.max_attempts = 5, .initial_backoff_ms = 1},
                                 .breaker.kind = MICA_BREAKER_NONE};
    fx_client(&f, 1, &ro, NULL);
    fx_run(&f, budget_body);
}

/* ---- breakers and fallbacks ---------------------------------------------------------------- */

static void breaker_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    atomic_store(&b->fail_first, 1000000);
    int fast = 0, rejected_msg = 0;
    for (int i = 0; i < 200; i++) {
        mica_grpc_result_t res;
        int64_t t0 = mica_now_ms();
        int code = call(f, NULL, 0, &res);
        EXPECT(code == MICA_GRPC_UNAVAILABLE || code == MICA_GRPC_OK);
        if (strcmp(res.message, "circuit breaker is open") == 0) {
            rejected_msg++;
            fast += mica_now_ms() - t0 <= 1;
        }
    }
    int served = atomic_load(&b->calls);
    print_message("breaker: %d of 200 reached the server, %d refused\n", served, rejected_msg);
    EXPECT(served < 60); /* 20 to open it, then nothing until open_ms */
    EXPECT(rejected_msg >= 150);
    EXPECT_EQ(fast, rejected_msg);
    mica_breaker_stats_t bs;
    EXPECT_EQ(mica_resilience_breaker_stats(f->res, "/mica.interop.Echo/Unary", &bs), 0);
    EXPECT_EQ(bs.state, MICA_BREAKER_OPEN);
    EXPECT_EQ(bs.opens, 1);
    EXPECT_EQ(bs.rejections, (uint64_t)rejected_msg);
    EXPECT_EQ(stats(f).rejected, (uint64_t)rejected_msg);
    EXPECT_EQ(mica_resilience_breaker_stats(f->res, "/nope", &bs), MICA_ENOTFOUND);
    /* After open_ms (300 ms here) it probes and closes once the backend answers. */
    atomic_store(&b->fail_first, 0);
    mica_sleep_ms(350);
    for (int i = 0; i < 10; i++)
        EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(mica_resilience_breaker_stats(f->res, "/mica.interop.Echo/Unary", &bs), 0);
    EXPECT_EQ(bs.state, MICA_BREAKER_CLOSED);
}

static void test_an_open_breaker_fails_calls_fast_then_closes_after_probes(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    mica_resilience_opts_t ro = {.breaker = {.kind = MICA_BREAKER_CLASSIC, .open_ms = 300},
                                 .retry.max_attempts = 1};
    fx_client(&f, 1, &ro, NULL);
    fx_run(&f, breaker_body);
}

/* Answers "hi" (a message the caller frees with protobuf_c_message_free_unpacked()). */
static int fallback(mica_grpc_call_info_t *call, int code, void *arg)
{
    resp_t *out = malloc(sizeof(*out));
    mica__interop__echo_response__init(out);
    out->message = strdup("hi");
    *call->resp = &out->base;
    call->res->code = MICA_GRPC_OK;
    snprintf(call->res->message, sizeof(call->res->message), "fallback after %d", code);
    atomic_fetch_add((atomic_int *)arg, 1);
    return MICA_GRPC_OK;
}

static atomic_int fallbacks;

static void fallback_body(void *arg)
{
    struct fx *f = arg;
    atomic_store(&f->b[0].fail_first, 1000000);
    for (int i = 0; i < 100; i++)
        EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(atomic_load(&fallbacks), 100);
    EXPECT_EQ(stats(f).fallbacks, 100);
    EXPECT(stats(f).rejected > 0);
}

static void test_a_fallback_answers_refused_and_failed_calls(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    f.gopts.fallback = fallback;
    f.gopts.fallback_arg = &fallbacks;
    mica_resilience_opts_t ro = {.retry.max_attempts = 1};
    fx_client(&f, 1, &ro, NULL);
    fx_run(&f, fallback_body);
}

/* ---- hedging --------------------------------------------------------------------------- */

static void hedge_body(void *arg)
{
    struct fx *f = arg;
    /* The first backend (round robin's first pick) takes 2 s: the hedge after 50 ms wins. */
    atomic_store(&f->b[0].slow_first, 1);
    atomic_store(&f->b[0].delay_ms, 2000);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    int64_t took = mica_now_ms() - t0;
    print_message("hedged call: %lld ms\n", (long long)took);
    EXPECT(took >= 45 && took < 1000);
    mica_resilience_stats_t st = stats(f);
    EXPECT_EQ(st.hedges, 1);
    EXPECT_EQ(st.hedge_wins, 1);
    /* The loser was cancelled: its backend saw the reset. */
    mica_sleep_ms(100);
    EXPECT_EQ(atomic_load(&f->b[0].cancelled), 1);
    /* Fast calls: no hedge goes out. */
    for (int i = 0; i < 20; i++)
        EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(stats(f).hedges, 1);
    /* A non-fatal failure sends the next attempt at once (no 50 ms wait). */
    atomic_store(&f->b[0].fail_first, 1);
    atomic_store(&f->b[1].fail_first, 1);
    t0 = mica_now_ms();
    EXPECT_EQ(call(f, NULL, 0, NULL), MICA_GRPC_OK);
    EXPECT(mica_now_ms() - t0 < 45);
    /* A fatal code wins at once. */
    mica_grpc_result_t res;
    req_t req = REQ_INIT;
    req.message = "hi";
    req.status = MICA_GRPC_NOT_FOUND;
    ProtobufCMessage *out;
    EXPECT_EQ(mica_grpc_unary(f->c, NULL, echo, "Unary", NULL, &req.base, &out, &res),
              MICA_GRPC_NOT_FOUND);
}

static void test_hedging_answers_from_the_fast_backend_and_cancels_the_slow_one(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    mica_resilience_opts_t ro = {.hedge = {.max_attempts = 3, .delay_ms = 50}};
    fx_client(&f, NB, &ro, &mica_balancer_round_robin);
    fx_run(&f, hedge_body);
}

/* ---- streams and the ring-hash key ----------------------------------------------------- */

static void stream_body(void *arg)
{
    struct fx *f = arg;
    mica_grpc_stream_t *st;
    if (!EXPECT_EQ(mica_grpc_stream_open(f->c, NULL, echo, "ServerStream", NULL, &st), 0))
        return;
    req_t req = REQ_INIT;
    req.count = 2;
    req.status = MICA_GRPC_INTERNAL;
    EXPECT_EQ(mica_grpc_stream_send(st, &req.base), 0);
    EXPECT_EQ(mica_grpc_stream_close_send(st), 0);
    ProtobufCMessage *m;
    while (mica_grpc_stream_recv(st, &m) == 0)
        protobuf_c_message_free_unpacked(m, NULL);
    EXPECT_EQ(mica_grpc_stream_finish(st, NULL), MICA_GRPC_INTERNAL);
    mica_breaker_stats_t bs;
    EXPECT_EQ(mica_resilience_breaker_stats(f->res, "/mica.interop.Echo/ServerStream", &bs), 0);
    EXPECT_EQ(bs.calls, 1);
    EXPECT_EQ(bs.failures, 1);
    EXPECT_EQ(atomic_load(&f->b[0].calls), 1); /* not retried after it began */
}

static void test_a_streams_end_reaches_the_breaker_and_is_never_retried(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    fx_client(&f, 1, NULL, NULL);
    fx_run(&f, stream_body);
}

static void hash_body(void *arg)
{
    struct fx *f = arg;
    for (int user = 0; user < 30; user++) {
        char id[16];
        snprintf(id, sizeof(id), "u%d", user);
        mica_grpc_md_t md[] = {{"x-user", id}};
        mica_grpc_call_opts_t o = {.md = md, .nmd = 1};
        int before[NB];
        for (int i = 0; i < NB; i++)
            before[i] = atomic_load(&f->b[i].calls);
        for (int k = 0; k < 5; k++)
            EXPECT_EQ(call(f, &o, 0, NULL), MICA_GRPC_OK);
        int hit = 0;
        for (int i = 0; i < NB; i++)
            hit += atomic_load(&f->b[i].calls) - before[i] == 5;
        EXPECT_EQ(hit, 1); /* all five on one backend */
    }
    for (int i = 0; i < NB; i++)
        EXPECT(atomic_load(&f->b[i].calls) > 0);
}

static void test_a_metadata_key_pins_calls_to_one_backend(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    f.gopts.hash_metadata = "x-user";
    fx_client(&f, NB, NULL, &mica_balancer_ring_hash);
    fx_run(&f, hash_body);
}

/* ---- two workers, a reader on another thread ---------------------------------------- */

struct workers {
    struct fx *f;
    mica_wg_t *wg;
    atomic_bool done;
    atomic_int ok;
};

static void worker_caller(void *arg)
{
    struct workers *w = arg;
    for (int i = 0; i < 200; i++)
        if (call(w->f, NULL, 0, NULL) == MICA_GRPC_OK)
            atomic_fetch_add(&w->ok, 1);
    mica_wg_done(w->wg);
}

static void *stats_reader(void *arg)
{
    struct workers *w = arg;
    uint64_t last = 0;
    while (!atomic_load(&w->done)) {
        mica_resilience_stats_t st;
        mica_resilience_stats(w->f->res, &st);
        EXPECT(st.calls >= last); /* counters only grow */
        last = st.calls;
        mica_breaker_stats_t bs;
        mica_resilience_breaker_stats(w->f->res, "/mica.interop.Echo/Unary", &bs);
        mica_balancer_endpoint_stats_t es;
        mica_balancer_endpoint_stats(w->f->lb, w->f->b[0].addr, &es);
    }
    return NULL;
}

static void workers_body(void *arg)
{
    struct fx *f = arg;
    struct workers w = {.f = f};
    pthread_t th;
    EXPECT_EQ(pthread_create(&th, NULL, stats_reader, &w), 0);
    mica_wg_new(&w.wg);
    mica_wg_add(w.wg, 4);
    for (int i = 0; i < 4; i++)
        mica_go_on(i % 2, worker_caller, &w);
    EXPECT_EQ(mica_wg_wait(w.wg, NULL), 0);
    mica_wg_free(w.wg);
    atomic_store(&w.done, true);
    pthread_join(th, NULL);
    EXPECT_EQ(atomic_load(&w.ok), 800);
    mica_resilience_stats_t st;
    mica_resilience_stats(f->res, &st);
    EXPECT_EQ(st.calls, 800);
    mica_breaker_stats_t bs;
    EXPECT_EQ(mica_resilience_breaker_stats(f->res, "/mica.interop.Echo/Unary", &bs), 0);
    /* one breaker per worker, summed: every attempt, so a call retried (a slow
     * valgrind run timed one out) counts twice */
    EXPECT_EQ(bs.calls, 800 + st.retries);
    uint64_t picks = 0;
    for (int i = 0; i < NB; i++) {
        mica_balancer_endpoint_stats_t es;
        EXPECT_EQ(mica_balancer_endpoint_stats(f->lb, f->b[i].addr, &es), 0);
        picks += es.picks;
    }
    EXPECT_EQ(picks, 800 + st.retries);
}

static void test_policies_are_per_worker_and_their_numbers_readable_from_any_thread(void **state)
{
    struct fx f;
    fx_start(&f, 2);
    fx_client(&f, NB, NULL, &mica_balancer_p2c);
    fx_run(&f, workers_body);
}

/* ---- allocation failures ----------------------------------------------------------- */

/* An Echo server in a child process, so that injected failures hit the client only. */
static pid_t server_child(char *addr, size_t size)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        mica_runtime_t *rt;
        mica_runtime_opts_t o = {.workers = 1, .drain_timeout_ms = 1000};
        struct backend b = {0};
        if (mica_runtime_new(&rt, &o) != 0 || mica_http_server_new(&b.srv, NULL) != 0 ||
            mica_grpc_server_new(&b.gs, b.srv, NULL) != 0 ||
            mica_grpc_register(b.gs, echo, "Unary", MICA_GRPC_UNARY, unary, &b) != 0 ||
            mica_grpc_register(b.gs, echo, "ServerStream", MICA_GRPC_SERVER_STREAM, server_stream,
                               &b) != 0 ||
            mica_http_server_listen(b.srv, "127.0.0.1:0") != 0 ||
            mica_http_server_attach(b.srv, rt) != 0)
            _exit(1);
        int port = mica_http_server_port(b.srv, 0);
        if (write(p[1], &port, sizeof(port)) != sizeof(port))
            _exit(1);
        close(p[1]);
        int rc = mica_runtime_run(rt);
        mica_grpc_server_free(b.gs);
        mica_http_server_free(b.srv);
        mica_runtime_free(rt);
        _exit(rc == 0 ? 0 : 1);
    }
    close(p[1]);
    int port = 0;
    assert_int_equal(read(p[0], &port, sizeof(port)), sizeof(port));
    close(p[0]);
    snprintf(addr, size, "127.0.0.1:%d", port);
    return pid;
}

struct oom_case {
    struct fx f;
    long nth, used;
    int code;
};

/* A keyed unary call and a stream: the first calls make every lazy object
 * (picker state, entries, ring, breakers, the stream watch). */
static int first_calls(struct fx *f)
{
    mica_grpc_md_t md[] = {{"x-user", "u1"}};
    mica_grpc_call_opts_t o = {.md = md, .nmd = 1};
    int code = call(f, &o, 0, NULL);
    mica_grpc_stream_t *st;
    if (mica_grpc_stream_open(f->c, NULL, echo, "ServerStream", NULL, &st) == 0) {
        req_t req = REQ_INIT;
        req.count = 1;
        mica_grpc_stream_send(st, &req.base);
        mica_grpc_stream_close_send(st);
        ProtobufCMessage *m;
        while (mica_grpc_stream_recv(st, &m) == 0)
            protobuf_c_message_free_unpacked(m, NULL);
        mica_grpc_stream_finish(st, NULL);
    }
    return code;
}

static void oom_body(void *arg)
{
    struct oom_case *k = arg;
    mica__alloc_fail_nth(k->nth);
    k->code = first_calls(&k->f);
    k->used = mica__alloc_count();
    mica__alloc_fail_nth(0);
    EXPECT_EQ(first_calls(&k->f), MICA_GRPC_OK); /* usable afterwards */
}

static void test_allocation_failures_leave_the_policies_working(void **state)
{
    char addr[64];
    pid_t pid = server_child(addr, sizeof(addr));
    int failed = 0;
    long nth;
    for (nth = 1;; nth++) {
        struct oom_case k = {.nth = nth};
        struct run_once ro = {.body = oom_body, .arg = &k};
        mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
        assert_int_equal(mica_runtime_new(&ro.rt, &o), 0);
        k.f.rt = ro.rt;
        char target[128];
        snprintf(target, sizeof(target), "static:///%s", addr);
        mica_balancer_opts_t bo = {.breaker.kind = MICA_BREAKER_CLASSIC};
        assert_int_equal(mica_balancer_new(&k.f.lb, ro.rt, &bo), 0);
        mica_grpc_client_opts_t co = {.picker = &mica_balancer_ring_hash, .picker_conf = k.f.lb};
        assert_int_equal(mica_grpc_client_new(&k.f.c, ro.rt, target, &co), 0);
        assert_int_equal(mica_resilience_new(&k.f.res, ro.rt, NULL), 0);
        mica_resilience_grpc_opts_t go = {.hash_metadata = "x-user"};
        assert_int_equal(mica_resilience_grpc_attach(k.f.res, k.f.c, &go), 0);
        mica_runtime_on_start(ro.rt, run_once_start, &ro);
        mica_runtime_run(ro.rt); /* a failed spawn may leave work to cancel: any result */
        mica_grpc_client_free(k.f.c);
        mica_resilience_free(k.f.res);
        mica_balancer_free(k.f.lb);
        mica_runtime_free(ro.rt);
        expect_no_failure();
        failed += k.code != MICA_GRPC_OK;
        if (k.used < nth) /* the calls made fewer allocations: all were covered */
            break;
        assert_true(nth < 3000);
    }
    print_message("%ld allocations failed in turn: %d calls failed, none crashed or leaked\n",
                  nth - 1, failed);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unavailable_is_retried_up_to_max_attempts),
        cmocka_unit_test(test_idempotent_only_retries_only_marked_calls),
        cmocka_unit_test(test_the_servers_pushback_sets_the_delay_or_stops_retries),
        cmocka_unit_test(test_a_per_try_timeout_retries_inside_the_calls_deadline),
        cmocka_unit_test(test_the_retry_budget_keeps_retries_under_a_fifth_of_calls_in_flight),
        cmocka_unit_test(test_an_open_breaker_fails_calls_fast_then_closes_after_probes),
        cmocka_unit_test(test_a_fallback_answers_refused_and_failed_calls),
        cmocka_unit_test(test_hedging_answers_from_the_fast_backend_and_cancels_the_slow_one),
        cmocka_unit_test(test_a_streams_end_reaches_the_breaker_and_is_never_retried),
        cmocka_unit_test(test_a_metadata_key_pins_calls_to_one_backend),
        cmocka_unit_test(test_policies_are_per_worker_and_their_numbers_readable_from_any_thread),
        cmocka_unit_test(test_allocation_failures_leave_the_policies_working),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * Adaptive load shedding (src/resilience/shed.c): a simulated server at 3x
 * its capacity keeps its goodput and a bounded latency; nothing is refused
 * below the CPU threshold or with one request in flight; the CPU demand
 * estimate follows a busy and an idle worker; and the HTTP gate answers 503
 * (gRPC: UNAVAILABLE) at the head, without reading the body.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "echo.pb-c.h"
#include "mica/chan.h"
#include "mica/config.h"
#include "mica/limit.h"
#include "mica/sync.h"
#include "resilience/limit_internal.h"

static inline int expect_eq1(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b) expect_eq1((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

static mica_shed_t *shedder(int forced_cpu_permille)
{
    mica_shed_t *sh;
    assert_int_equal(mica_shed_new(&sh, NULL), 0);
    mica__shed_force_cpu(sh, forced_cpu_permille);
    return sh;
}

/* ---- a simulated server: one "CPU" serving units of svc_ms each ------------------------------- */

#define SVC_MS 2
#define MAX_LAT 100000

struct unit {
    int64_t token;   /* from mica_shed_allow; -1 without shedding */
    int64_t arrived; /* ms */
};

struct sim {
    mica_shed_t *sh; /* NULL: admit everything */
    mica_chan_t *queue;
    int64_t measure_from, end; /* ms */
    int64_t offered, shed, done_measured;
    int64_t lat[MAX_LAT];
    int nlat;
    mica_wg_t *wg;
};

/*
 * Serves one unit per SVC_MS on an absolute schedule, so the capacity is
 * 1000 / SVC_MS per second whatever a timer's lateness -- but a moment with
 * nothing queued is lost for good, as an idle CPU's is, and so is a stall.
 */
static void processor(void *arg)
{
    struct sim *s = arg;
    struct unit u;
    int64_t free_at = mica_now_ms();
    for (;;) {
        if (mica_chan_try_recv(s->queue, &u) != 0) { /* nothing queued: idle until more */
            if (mica_chan_recv(s->queue, NULL, &u) != 0)
                break;
            if (free_at < mica_now_ms())
                free_at = mica_now_ms();
        }
        int64_t now = mica_now_ms();
        /* A late timer's time is made up, a stall's is not: a descheduled CPU does no
         * work either, queue or not. */
        if (free_at < now - SVC_MS)
            free_at = now - SVC_MS;
        free_at += SVC_MS;
        if (now < s->end && free_at > now)
            mica_sleep_ms(free_at - now); /* the work (after the end: drain at once) */
        now = mica_now_ms();
        if (s->sh)
            mica_shed_done(s->sh, u.token);
        if (now >= s->measure_from && now < s->end) { /* completed within the span */
            s->done_measured++;
            if (s->nlat < MAX_LAT)
                s->lat[s->nlat++] = now - u.arrived;
        }
    }
    mica_wg_done(s->wg);
}

/* Offers `per_tick` units every SVC_MS until s->end; admitted ones queue for the processor. */
static void arrivals(struct sim *s, int per_tick)
{
    while (mica_now_ms() < s->end) {
        for (int i = 0; i < per_tick; i++) {
            struct unit u = {.token = -1, .arrived = mica_now_ms()};
            s->offered++;
            if (s->sh && mica_shed_allow(s->sh, &u.token) != 0) {
                s->shed++;
                continue;
            }
            mica_chan_send(s->queue, NULL, &u);
        }
        mica_sleep_ms(SVC_MS);
    }
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Runs one phase: `per_tick` units offered per service time for `ms`, measured after `warm_ms`. */
static void phase(struct sim *s, mica_shed_t *sh, int per_tick, int warm_ms, int ms)
{
    s->sh = sh;
    s->offered = s->shed = s->done_measured = 0;
    s->nlat = 0;
    s->measure_from = mica_now_ms() + warm_ms;
    s->end = mica_now_ms() + ms;
    mica_chan_new(&s->queue, sizeof(struct unit), 1 << 16);
    mica_wg_new(&s->wg);
    mica_wg_add(s->wg, 1);
    mica_go(processor, s);
    arrivals(s, per_tick);
    mica_chan_close(s->queue);
    mica_wg_wait(s->wg, NULL); /* the backlog drains (counted only if done before the end) */
    mica_wg_free(s->wg);
    mica_chan_free(s->queue);
    qsort(s->lat, (size_t)s->nlat, sizeof(s->lat[0]), cmp64);
}

struct goodput {
    double capacity, goodput, shed_share;
    int64_t p99, p99_unshed;
    mica_shed_stats_t st;
};

static void goodput_body(void *arg)
{
    struct goodput *g = arg;
    struct sim *s = calloc(1, sizeof(*s));
    /* 1x: keep the processor busy (2 per tick: always a queue), nothing shed. */
    phase(s, NULL, 2, 500, 1500);
    g->capacity = (double)s->done_measured / 1.0;
    /* 3x without shedding: the queue, and the latency, grow without bound. */
    phase(s, NULL, 3, 0, 1500);
    g->p99_unshed = s->nlat ? s->lat[s->nlat * 99 / 100] : -1;
    /* 3x with shedding (CPU forced to "saturated"); measured after 1.5 s. */
    mica_shed_t *sh = shedder(1000);
    phase(s, sh, 3, 1500, 3500);
    g->goodput = (double)s->done_measured / 2.0;
    g->p99 = s->nlat ? s->lat[s->nlat * 99 / 100] : -1;
    g->shed_share = (double)s->shed / (double)s->offered;
    mica_shed_stats(sh, &g->st);
    mica_shed_free(sh);
    free(s);
}

static void test_shedding_keeps_goodput_and_bounds_latency_at_3x_capacity(void **state)
{
    struct goodput g = {0};
    assert_int_equal(run_in_coroutine(1, goodput_body, &g), 0);
    expect_no_failure();
    print_message("capacity %.0f/s; at 3x: goodput %.0f/s (%.1f %%), p99 %lld ms, %.0f %% shed; "
                  "unshed p99 %lld ms; limit %llu, min RT %lld us\n",
                  g.capacity, g.goodput, 100 * g.goodput / g.capacity, (long long)g.p99,
                  100 * g.shed_share, (long long)g.p99_unshed, (unsigned long long)g.st.limit,
                  (long long)g.st.min_rt_us);
    assert_true(g.goodput >= 0.9 * g.capacity);
    assert_true(g.shed_share > 0.5);                 /* ~2/3 of 3x must go */
    assert_true(g.p99 >= 0 && g.p99 < 20 * SVC_MS); /* a short queue, not a growing one */
    assert_true(g.p99_unshed > 4 * g.p99);
    assert_int_equal(g.st.inflight, 0);
    assert_int_equal(g.st.episodes, 1);
    assert_true(g.st.limit >= 1);
}

/* ---- no refusals below the threshold, or with one request in flight ----------------------------- */

struct calm {
    mica_shed_t *sh;
    mica_wg_t *wg;
    atomic_int refused;
};

static void slow_unit(void *arg)
{
    struct calm *c = arg;
    int64_t token;
    if (mica_shed_allow(c->sh, &token) != 0) {
        atomic_fetch_add(&c->refused, 1);
    } else {
        mica_sleep_ms(20);
        mica_shed_done(c->sh, token);
    }
    mica_wg_done(c->wg);
}

static void calm_body(void *arg)
{
    struct calm *c = arg;
    mica_wg_new(&c->wg);
    for (int round = 0; round < 15; round++) { /* 100 in flight at a time, for 300+ ms */
        mica_wg_add(c->wg, 100);
        for (int i = 0; i < 100; i++)
            mica_go(slow_unit, c);
        mica_wg_wait(c->wg, NULL);
    }
    mica_wg_free(c->wg);
}

static void test_no_refusal_below_the_cpu_threshold(void **state)
{
    struct calm c = {.sh = shedder(500)}; /* 50 %: not saturated, however many in flight */
    assert_int_equal(run_in_coroutine(1, calm_body, &c), 0);
    expect_no_failure();
    mica_shed_stats_t st;
    mica_shed_stats(c.sh, &st);
    assert_int_equal(atomic_load(&c.refused), 0);
    assert_int_equal(st.shed, 0);
    assert_int_equal(st.admitted, 1500);
    assert_false(st.shedding);
    mica_shed_free(c.sh);
}

/* ---- the CPU demand estimate ------------------------------------------------------------------ */

struct cpu {
    mica_shed_t *sh;
    int busy_pct, idle_pct;
    int refused;
};

static void cpu_body(void *arg)
{
    struct cpu *c = arg;
    mica_shed_stats_t st;
    int64_t end = mica__mono_ns() + 800 * INT64_C(1000000), token;
    while (mica__mono_ns() < end) { /* a spinning worker, one unit at a time */
        if (mica_shed_allow(c->sh, &token) != 0)
            c->refused++;
        else
            mica_shed_done(c->sh, token);
    }
    mica_shed_stats(c->sh, &st);
    c->busy_pct = st.cpu_pct;
    for (int i = 0; i < 8; i++) { /* then an idle one */
        mica_sleep_ms(150);
        if (mica_shed_allow(c->sh, &token) == 0)
            mica_shed_done(c->sh, token);
    }
    mica_shed_stats(c->sh, &st);
    c->idle_pct = st.cpu_pct;
}

static void test_cpu_demand_follows_a_busy_then_an_idle_worker(void **state)
{
    struct cpu c = {.sh = shedder(-1)}; /* measured */
    assert_int_equal(run_in_coroutine(1, cpu_body, &c), 0);
    expect_no_failure();
    print_message("CPU demand: busy %d %%, idle %d %%\n", c.busy_pct, c.idle_pct);
    assert_true(c.busy_pct >= 90);
    assert_true(c.idle_pct < 50);
    assert_int_equal(c.refused, 0); /* one in flight at a time is never refused */
    mica_shed_free(c.sh);
}

/* ---- the gate: 503 and UNAVAILABLE at the head, the body unread ------------------------------------ */

typedef Mica__Interop__EchoRequest req_t;
typedef Mica__Interop__EchoResponse resp_t;
static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

struct gate {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    mica_grpc_client_t *c;
    mica_shed_t *sh;
    char addr[64];
    mica_event_t release;
    atomic_int handled, held;
    mica_wg_t *wg;
};

static int fast(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct gate *g = arg;
    atomic_fetch_add(&g->handled, 1);
    return mica_http_resp_text(resp, 200, "ok");
}

static int hold(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct gate *g = arg;
    atomic_fetch_add(&g->handled, 1);
    atomic_fetch_add(&g->held, 1);
    mica_event_wait(&g->release, NULL, mica_deadline_in(10000));
    return mica_http_resp_text(resp, 200, "released");
}

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    struct gate *g = arg;
    atomic_fetch_add(&g->handled, 1);
    resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = "hi";
    return mica_grpc_send(call, &out.base);
}

static int status_of(const char *resp)
{
    int status = 0;
    if (strncmp(resp, "HTTP/1.1 ", 9) == 0)
        for (int i = 9; i < 12 && resp[i] >= '0' && resp[i] <= '9'; i++)
            status = status * 10 + (resp[i] - '0');
    return status;
}

static int request(struct gate *g, const char *head, char *out, size_t cap)
{
    if (wire_exchange(g->addr, head, strlen(head), out, cap, 5000) < 12)
        return -1;
    return status_of(out);
}

static void holder(void *arg)
{
    struct gate *g = arg;
    char out[1024];
    EXPECT_EQ(request(g, "GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", out,
                      sizeof(out)),
              200);
    mica_wg_done(g->wg);
}

static void gate_body(void *arg)
{
    struct gate *g = arg;
    char out[2048];
    const char *get_fast = "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    /* A few quick requests, then a new bucket: an estimate (limit 1) exists. */
    for (int i = 0; i < 5; i++)
        EXPECT_EQ(request(g, get_fast, out, sizeof(out)), 200);
    mica_sleep_ms(250);
    /* Two requests held in flight: the limit (1) and the floor (1) are exceeded. */
    mica_wg_new(&g->wg);
    mica_wg_add(g->wg, 2);
    mica_go(holder, g);
    mica_go(holder, g);
    for (int i = 0; i < 200 && atomic_load(&g->held) < 2; i++)
        mica_sleep_ms(5);
    EXPECT_EQ(atomic_load(&g->held), 2);
    /* A POST whose 100000-byte body never comes: answered at once, then closed. */
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(request(g, "POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", out,
                      sizeof(out)),
              503);
    EXPECT(mica_now_ms() - t0 < 1000);
    EXPECT(strstr(out, "server overloaded") != NULL);
    /* A gRPC call: UNAVAILABLE, in gRPC's own terms. */
    req_t req = MICA__INTEROP__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    mica_grpc_result_t res;
    EXPECT_EQ(mica_grpc_unary(g->c, NULL, echo, "Unary", NULL, &req.base, &resp, &res),
              MICA_GRPC_UNAVAILABLE);
    EXPECT(strstr(res.message, "server overloaded") != NULL);
    protobuf_c_message_free_unpacked(resp, NULL);
    mica_shed_stats_t st;
    mica_shed_stats(g->sh, &st);
    EXPECT_EQ(st.shed, 2);
    EXPECT(st.shedding);
    EXPECT_EQ(st.inflight, 2);
    EXPECT_EQ(st.limit, 1);
    mica_event_set(&g->release);
    mica_wg_wait(g->wg, NULL);
    mica_wg_free(g->wg);
    EXPECT_EQ(atomic_load(&g->handled), 5 + 2);
    mica_runtime_stop(g->rt);
}

static void test_gate_answers_503_and_unavailable_at_the_head(void **state)
{
    struct gate g = {0};
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&g.rt, &ro), 0);
    assert_int_equal(mica_http_server_new(&g.srv, NULL), 0);
    assert_int_equal(mica_grpc_server_new(&g.gs, g.srv, NULL), 0);
    g.sh = shedder(1000);
    assert_int_equal(mica_shed_attach(g.sh, g.srv), 0);
    assert_int_equal(mica_http_route(g.srv, "GET", "/fast", fast, &g), 0);
    assert_int_equal(mica_http_route(g.srv, "POST", "/fast", fast, &g), 0);
    assert_int_equal(mica_http_route(g.srv, "GET", "/hold", hold, &g), 0);
    assert_int_equal(mica_grpc_register(g.gs, echo, "Unary", MICA_GRPC_UNARY, unary, &g), 0);
    assert_int_equal(mica_http_server_listen(g.srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(g.srv, g.rt), 0);
    snprintf(g.addr, sizeof(g.addr), "127.0.0.1:%d", mica_http_server_port(g.srv, 0));
    assert_int_equal(mica_grpc_client_new(&g.c, g.rt, g.addr, NULL), 0);
    struct run_once ro2 = {.rt = g.rt, .body = gate_body, .arg = &g};
    mica_runtime_on_start(g.rt, run_once_start, &ro2);
    assert_int_equal(mica_runtime_run(g.rt), 0);
    mica_grpc_client_free(g.c);
    mica_grpc_server_free(g.gs);
    mica_http_server_free(g.srv);
    mica_runtime_free(g.rt);
    expect_no_failure();
    mica_shed_stats_t st;
    mica_shed_stats(g.sh, &st);
    assert_int_equal(st.inflight, 0); /* every admitted request was seen to its end */
    mica_shed_free(g.sh);
}

static void test_shed_settings(void **state)
{
    mica_shed_t *sh;
    assert_int_equal(mica_shed_new(&sh, &(mica_shed_opts_t){.cpu_threshold_pct = 101}),
                     MICA_EINVAL);
    assert_int_equal(mica_shed_new(&sh, &(mica_shed_opts_t){.window_ms = 100}), MICA_EINVAL);
    setenv("MICA_SHED", "off", 1);
    setenv("MICA_SHED_CPU_PCT", "80", 1);
    mica_shed_opts_t o = {0};
    assert_int_equal(mica_shed_opts_from_env(&o), 0);
    assert_true(o.disabled);
    assert_int_equal(o.cpu_threshold_pct, 80);
    setenv("MICA_SHED", "maybe", 1);
    assert_int_equal(mica_shed_opts_from_env(&(mica_shed_opts_t){0}), MICA_EINVAL);
    unsetenv("MICA_SHED");
    unsetenv("MICA_SHED_CPU_PCT");
    /* A value the caller set wins over the variable; -1 (no queue) is a value. */
    setenv("MICA_SHED_QUEUE_MS", "-1", 1);
    setenv("MICA_SHED_WINDOW_MS", "2s", 1);
    mica_shed_opts_t mine = {.window_ms = 3000};
    assert_int_equal(mica_shed_opts_from_env(&mine), 0);
    assert_false(mine.disabled);
    assert_int_equal(mine.queue_ms, -1);
    assert_int_equal(mine.window_ms, 3000);
    unsetenv("MICA_SHED_WINDOW_MS");
    setenv("MICA_SHED_QUEUE_MS", "-2", 1);
    assert_int_equal(mica_shed_opts_from_env(&(mica_shed_opts_t){0}), MICA_EINVAL);
    unsetenv("MICA_SHED_QUEUE_MS");

    /* In an app's config table: flags over variables over defaults. */
    setenv("MICA_SHED_COOL_OFF_MS", "250ms", 1);
    mica_shed_opts_t fo = {0};
    bool on = true;
    mica_setting_t set[MICA_SHED_SETTINGS];
    size_t n = mica_shed_settings(&fo, &on, set, MICA_SHED_SETTINGS);
    assert_int_equal(n, MICA_SHED_SETTINGS);
    char *argv[] = {"app", "--shed=off", "--shed-cpu-pct", "75", NULL};
    mica_config_t *cfg;
    assert_int_equal(mica_config_load(&cfg, set, n, 4, argv), 0);
    assert_false(on);
    assert_int_equal(fo.cpu_threshold_pct, 75);
    assert_int_equal(fo.cool_off_ms, 250);
    assert_int_equal(fo.window_ms, 5000);
    assert_int_equal(fo.queue_ms, 5);
    mica_config_free(cfg);
    char *bad[] = {"app", "--shed-cpu-pct=0", NULL};
    assert_int_equal(mica_config_load(&cfg, set, n, 2, bad), MICA_EINVAL);
    unsetenv("MICA_SHED_COOL_OFF_MS");
    /* Disabled: attaching installs nothing, allowing admits everything. */
    assert_int_equal(mica_shed_new(&sh, &o), 0);
    mica_http_server_t *srv;
    assert_int_equal(mica_http_server_new(&srv, NULL), 0);
    assert_int_equal(mica_shed_attach(sh, srv), 0);
    int64_t token;
    assert_int_equal(mica_shed_allow(sh, &token), 0);
    assert_int_equal(token, -1);
    mica_shed_done(sh, token);
    mica_http_server_free(srv);
    mica_shed_free(sh);
    mica_shed_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shedding_keeps_goodput_and_bounds_latency_at_3x_capacity),
        cmocka_unit_test(test_no_refusal_below_the_cpu_threshold),
        cmocka_unit_test(test_cpu_demand_follows_a_busy_then_an_idle_worker),
        cmocka_unit_test(test_gate_answers_503_and_unavailable_at_the_head),
        cmocka_unit_test(test_shed_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

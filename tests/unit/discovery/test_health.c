/* SPDX-License-Identifier: MIT */
/*
 * Endpoint health (include/mica/health.h) against real mica servers on
 * loopback, in one runtime: active HTTP, gRPC (grpc.health.v1) and TCP
 * checks take an endpoint out after `fall` failures and bring it back after
 * `rise` passes, and a client using mica_picker_failover stops calling it;
 * outlier ejection from gateway errors reported through the picker's done(),
 * with its growing ejection time, max_ejection_pct and the panic threshold;
 * zone preference and spill-over; allocation failures.
 *
 * Intervals are tens of ms. Timing bounds are strict from below (what the
 * settings guarantee) and generous from above (a loaded 2-core machine);
 * measured figures are printed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "disc_helpers.h"
#include "health.pb-c.h"
#include "mica/grpc.h"
#include "mica/health.h"
#include "mica/http.h"
#include "mica/http_client.h"
#include "mica/metrics.h"

/* ---- backends: HTTP /health and /work, grpc.health.v1 Check ------------------------- */

#define NB 3

struct backend {
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    char addr[64];
    atomic_int status;  /* /health answers this (200 unless set) */
    atomic_int serving; /* Check answers this ServingStatus (SERVING unless set) */
    atomic_int work;    /* /work calls */
    atomic_int work_status; /* /work answers this (200 unless set) */
};

static int health_get(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    (void)req;
    struct backend *b = arg;
    int st = atomic_load(&b->status);
    return mica_http_resp_text(resp, st ? st : 200, st && st != 200 ? "sick" : "ok");
}

static int work_get(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    (void)req;
    struct backend *b = arg;
    atomic_fetch_add(&b->work, 1);
    int st = atomic_load(&b->work_status);
    return mica_http_resp_text(resp, st ? st : 200, "done");
}

static int check(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    (void)in;
    struct backend *b = arg;
    Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    int s = atomic_load(&b->serving);
    out.status = s ? s : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    return mica_grpc_send(call, &out.base);
}

struct fx {
    mica_runtime_t *rt;
    struct backend b[NB];
    mica_health_t *h;
    mica_http_client_t *c;
    mica_failover_conf_t fo;
    char target[256];
};

static void fx_start_n(struct fx *f, int workers)
{
    memset(f, 0, sizeof(*f));
    assert_non_null(f->rt = disc_runtime(workers));
    snprintf(f->target, sizeof(f->target), "static:///");
    for (int i = 0; i < NB; i++) {
        struct backend *b = &f->b[i];
        assert_int_equal(mica_http_server_new(&b->srv, NULL), 0);
        assert_int_equal(mica_grpc_server_new(&b->gs, b->srv, NULL), 0);
        assert_int_equal(mica_grpc_register(b->gs, &grpc__health__v1__health__descriptor, "Check",
                                            MICA_GRPC_UNARY, check, b),
                         0);
        assert_int_equal(mica_http_route(b->srv, "GET", "/health", health_get, b), 0);
        assert_int_equal(mica_http_route(b->srv, "GET", "/work", work_get, b), 0);
        assert_int_equal(mica_http_server_listen(b->srv, "127.0.0.1:0"), 0);
        assert_int_equal(mica_http_server_attach(b->srv, f->rt), 0);
        snprintf(b->addr, sizeof(b->addr), "127.0.0.1:%d", mica_http_server_port(b->srv, 0));
        size_t n = strlen(f->target);
        snprintf(f->target + n, sizeof(f->target) - n, "%s%s", i ? "," : "", b->addr);
    }
}

static void fx_start(struct fx *f)
{
    fx_start_n(f, 1);
}

/* The health of the backends, checked as `o` says, and an HTTP client routing around it. */
static void fx_health(struct fx *f, const mica_health_opts_t *o)
{
    assert_int_equal(mica_health_new(&f->h, f->rt, f->target, o), 0);
    f->fo = (mica_failover_conf_t){.health = f->h};
    mica_http_client_opts_t co = {.picker = &mica_picker_failover, .picker_conf = &f->fo};
    assert_int_equal(mica_http_client_new(&f->c, f->rt, f->target, &co), 0);
}

static void fx_run(struct fx *f, void (*body)(void *))
{
    assert_int_equal(disc_run(f->rt, body, f), 0);
    mica_http_client_free(f->c);
    mica_health_free(f->h);
    for (int i = 0; i < NB; i++) {
        mica_grpc_server_free(f->b[i].gs);
        mica_http_server_free(f->b[i].srv);
    }
    mica_runtime_free(f->rt);
    expect_no_failure();
}

static bool ep_down(mica_health_t *h, const char *addr)
{
    mica_health_endpoint_t e;
    mica_health_endpoint(h, addr, &e);
    return e.down;
}

/* Polls until endpoint `addr`'s active verdict is `down`, at most `limit_ms`. Returns ms waited. */
static int64_t wait_down(mica_health_t *h, const char *addr, bool down, int64_t limit_ms)
{
    int64_t t0 = wall_ms();
    while (ep_down(h, addr) != down && wall_ms() - t0 < limit_ms)
        mica_sleep_ms(2);
    return wall_ms() - t0;
}

/* Waits until every endpoint passed a check since `base` checks were counted. */
static void wait_checks(mica_health_t *h, uint64_t n)
{
    mica_health_stats_t s;
    int64_t t0 = wall_ms();
    do {
        mica_sleep_ms(5);
        mica_health_stats(h, &s);
    } while (s.checks < n && wall_ms() - t0 < slack_ms(5000));
    EXPECT(s.checks >= n);
}

/* ---- active checks --------------------------------------------------------------------- */

#define IV 30   /* interval_ms */
#define JIT 10  /* jitter_pct */
#define FALL 3
#define RISE 2

/*
 * From the first failing check to the verdict, fall checks run: fall - 1
 * intervals at least, each at least IV x (1 - jitter). Likewise rise - 1 on
 * the way back. Upper bounds: fall (rise) intervals plus scheduling slack.
 */
static const int64_t min_out_ms = (FALL - 1) * IV * (100 - JIT) / 100;
static const int64_t min_back_ms = (RISE - 1) * IV * (100 - JIT) / 100;

static void http_body(void *arg)
{
    struct fx *f = arg;
    const char *sick = f->b[1].addr;
    wait_checks(f->h, 2 * NB);
    EXPECT(!ep_down(f->h, sick));
    atomic_store(&f->b[1].status, 503);
    int64_t out = wait_down(f->h, sick, true, slack_ms(5000));
    print_message("http 503: out after %lld ms (interval %d x fall %d = %d ms)\n",
                  (long long)out, IV, FALL, IV * FALL);
    if (!EXPECT(ep_down(f->h, sick)))
        return;
    EXPECT(out >= min_out_ms);
    EXPECT(out <= slack_ms(IV * FALL + 2000));
    EXPECT(!ep_down(f->h, f->b[0].addr));

    /* the client's failover picker no longer sends it calls */
    int before = atomic_load(&f->b[1].work);
    for (int i = 0; i < 30; i++) {
        mica_http_response_t *r = NULL;
        EXPECT_EQ(mica_http_client_get(f->c, NULL, "/work", NULL, &r), 0);
        mica_http_response_free(r);
    }
    EXPECT_EQ(atomic_load(&f->b[1].work), before);
    EXPECT(atomic_load(&f->b[0].work) > 0 && atomic_load(&f->b[2].work) > 0);

    atomic_store(&f->b[1].status, 200);
    int64_t back = wait_down(f->h, sick, false, slack_ms(5000));
    print_message("http 200 again: back after %lld ms (interval %d x rise %d = %d ms)\n",
                  (long long)back, IV, RISE, IV * RISE);
    EXPECT(!ep_down(f->h, sick));
    EXPECT(back >= min_back_ms);
    EXPECT(back <= slack_ms(IV * RISE + 2000));
    int w = atomic_load(&f->b[1].work);
    for (int i = 0; i < 30; i++) {
        mica_http_response_t *r = NULL;
        EXPECT_EQ(mica_http_client_get(f->c, NULL, "/work", NULL, &r), 0);
        mica_http_response_free(r);
    }
    EXPECT(atomic_load(&f->b[1].work) > w); /* called again */

    mica_health_stats_t s;
    mica_health_stats(f->h, &s);
    EXPECT_EQ(s.endpoints, NB);
    EXPECT_EQ(s.marked_down, 1);
    EXPECT_EQ(s.marked_up, 1);
    EXPECT_EQ(s.down, 0);
    EXPECT(s.check_failures >= FALL);
}

static void test_http_check_503_takes_an_endpoint_out_within_fall_and_rise_brings_it_back(
    void **state)
{
    (void)state;
    struct fx f;
    fx_start(&f);
    mica_health_opts_t o = {.kind = MICA_HEALTH_HTTP, .interval_ms = IV, .timeout_ms = 500,
                            .jitter_pct = JIT, .rise = RISE, .fall = FALL};
    fx_health(&f, &o);
    fx_run(&f, http_body);
}

static void grpc_body(void *arg)
{
    struct fx *f = arg;
    const char *sick = f->b[2].addr;
    wait_checks(f->h, 2 * NB);
    EXPECT(!ep_down(f->h, sick));
    atomic_store(&f->b[2].serving,
                 GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    int64_t out = wait_down(f->h, sick, true, slack_ms(5000));
    print_message("grpc NOT_SERVING: out after %lld ms\n", (long long)out);
    EXPECT(ep_down(f->h, sick));
    EXPECT(out >= min_out_ms);
    EXPECT(out <= slack_ms(IV * FALL + 2000));
    atomic_store(&f->b[2].serving, 0);
    int64_t back = wait_down(f->h, sick, false, slack_ms(5000));
    print_message("grpc SERVING again: back after %lld ms\n", (long long)back);
    EXPECT(!ep_down(f->h, sick));
    EXPECT(back >= min_back_ms);
    mica_health_stats_t s;
    mica_health_stats(f->h, &s);
    EXPECT_EQ(s.marked_down, 1);
    EXPECT_EQ(s.marked_up, 1);
}

static void test_grpc_check_not_serving_takes_an_endpoint_out_and_serving_brings_it_back(
    void **state)
{
    (void)state;
    struct fx f;
    fx_start(&f);
    mica_health_opts_t o = {.kind = MICA_HEALTH_GRPC, .interval_ms = IV, .timeout_ms = 500,
                            .jitter_pct = JIT, .rise = RISE, .fall = FALL};
    fx_health(&f, &o);
    fx_run(&f, grpc_body);
}

/* A listening socket made by hand: the kernel completes connects into its backlog. */
static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 64) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

struct tcp_fx {
    mica_runtime_t *rt;
    mica_health_t *h;
    char live[64], dead[64];
    int live_fd, dead_port;
};

static void tcp_body(void *arg)
{
    struct tcp_fx *t = arg;
    int64_t out = wait_down(t->h, t->dead, true, slack_ms(5000));
    print_message("tcp refused: out after %lld ms from the start\n", (long long)out);
    EXPECT(ep_down(t->h, t->dead));
    EXPECT(!ep_down(t->h, t->live));
    int fd = listen_on(t->dead_port); /* now it accepts */
    if (!EXPECT(fd >= 0))
        return;
    int64_t back = wait_down(t->h, t->dead, false, slack_ms(5000));
    print_message("tcp listening: back after %lld ms\n", (long long)back);
    EXPECT(!ep_down(t->h, t->dead));
    EXPECT(back >= min_back_ms);
    close(fd);
}

static void test_tcp_check_takes_out_a_refusing_endpoint_and_returns_it_once_it_listens(
    void **state)
{
    (void)state;
    struct tcp_fx t = {0};
    assert_non_null(t.rt = disc_runtime(1));
    int lp = free_port();
    t.live_fd = listen_on(lp);
    assert_true(t.live_fd >= 0);
    t.dead_port = free_port();
    assert_true(t.dead_port > 0 && t.dead_port != lp);
    snprintf(t.live, sizeof(t.live), "127.0.0.1:%d", lp);
    snprintf(t.dead, sizeof(t.dead), "127.0.0.1:%d", t.dead_port);
    char target[160];
    snprintf(target, sizeof(target), "static:///%s,%s", t.live, t.dead);
    mica_health_opts_t o = {.kind = MICA_HEALTH_TCP, .interval_ms = IV, .timeout_ms = 500,
                            .jitter_pct = JIT, .rise = RISE, .fall = FALL};
    assert_int_equal(mica_health_new(&t.h, t.rt, target, &o), 0);
    assert_int_equal(disc_run(t.rt, tcp_body, &t), 0);
    mica_health_stats_t s;
    mica_health_stats(t.h, &s);
    assert_int_equal(s.marked_down, 1);
    assert_int_equal(s.marked_up, 1);
    mica_health_free(t.h);
    mica_runtime_free(t.rt);
    close(t.live_fd);
    expect_no_failure();
}

/* ---- passive ejection from real calls, on two workers ------------------------------------ */

struct caller {
    struct fx *f;
    mica_event_t done;
    int calls, ok503, ok200;
};

/* 60 calls of /work; counts what came back. */
static void make_calls(void *arg)
{
    struct caller *c = arg;
    for (int i = 0; i < c->calls; i++) {
        mica_http_response_t *r = NULL;
        if (mica_http_client_get(c->f->c, NULL, "/work", NULL, &r) == 0) {
            if (mica_http_response_status(r) == 503)
                c->ok503++;
            else
                c->ok200++;
        }
        mica_http_response_free(r);
    }
    mica_event_set(&c->done);
}

static void passive_body(void *arg)
{
    struct fx *f = arg;
    mica_health_stats_t s;
    int64_t t0 = wall_ms();
    do { /* the health follows the list (ejections count listed endpoints only) */
        mica_sleep_ms(1);
        mica_health_stats(f->h, &s);
    } while (s.endpoints < NB && wall_ms() - t0 < slack_ms(5000));
    atomic_store(&f->b[1].work_status, 503);
    /* calls from both workers at once: their gateway errors add up on one counter */
    struct caller w0 = {.f = f, .calls = 60}, w1 = {.f = f, .calls = 60};
    if (!EXPECT_EQ(mica_go_on(1, make_calls, &w1), 0))
        return;
    make_calls(&w0);
    EXPECT_EQ(mica_event_wait(&w1.done, NULL, mica_deadline_in(slack_ms(10000))), 0);
    mica_health_endpoint_t e;
    mica_health_endpoint(f->h, f->b[1].addr, &e);
    int on1 = atomic_load(&f->b[1].work);
    print_message("passive: %d calls on the 503 backend (of 120) before its ejection; "
                  "503s seen: %d + %d\n",
                  on1, w0.ok503, w1.ok503);
    EXPECT(e.ejected);
    EXPECT_EQ(e.times_ejected, 1);
    /* 5 in a row eject it; calls already placed on other workers may add a few */
    EXPECT(on1 >= 5 && on1 <= 5 + 2 * 2);
    EXPECT_EQ(w0.ok503 + w1.ok503, on1);
    /* after the ejection no call reaches it */
    struct caller w2 = {.f = f, .calls = 30};
    make_calls(&w2);
    EXPECT_EQ(atomic_load(&f->b[1].work), on1);
    EXPECT_EQ(w2.ok503, 0);
    mica_health_stats(f->h, &s);
    EXPECT_EQ(s.ejections, 1);
    EXPECT_EQ(s.ejected, 1);
}

static void test_real_calls_answering_503_eject_their_endpoint_across_workers(void **state)
{
    (void)state;
    struct fx f;
    fx_start_n(&f, 2);
    mica_health_opts_t o = {.base_ejection_ms = 60000}; /* passive only */
    fx_health(&f, &o);
    fx_run(&f, passive_body);
}

/* ---- the picker on a hand-made table, verdicts from passive ejection ------------------- */

#define MAXN 40

/* A client's endpoint table, as the picker sees it. */
struct table {
    mica_endpoint_t ep[MAXN];
    mica_picker_endpoint_t pe[MAXN];
    mica_picker_endpoint_t *view[MAXN];
    char addr[MAXN][48];
    size_t n;
    void *st;
};

static void table_init(struct table *t, const mica_failover_conf_t *conf, size_t n,
                       const char *const *zones)
{
    memset(t, 0, sizeof(*t));
    t->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(t->addr[i], sizeof(t->addr[i]), "10.0.0.%zu:50051", i + 1);
        t->ep[i] = (mica_endpoint_t){.addr = t->addr[i], .zone = zones ? zones[i] : NULL};
        t->pe[i] = (mica_picker_endpoint_t){.ep = &t->ep[i], .state = MICA_ENDPOINT_READY};
        t->view[i] = &t->pe[i];
    }
    EXPECT_EQ(mica_picker_failover.create(&t->st, conf), 0);
    mica_picker_failover.update(t->st, t->view, n);
}

static int pick(struct table *t)
{
    return mica_picker_failover.pick(t->st, t->view, t->n, NULL);
}

static void done(struct table *t, size_t i, int code)
{
    mica_picker_failover.done(t->st, t->view[i], code, 100);
}

static void gateway_errors(struct table *t, size_t i, int n)
{
    for (int k = 0; k < n; k++)
        done(t, i, 14 /* UNAVAILABLE */);
}

static void table_free(struct table *t)
{
    mica_picker_failover.destroy(t->st);
}

/* static:///<the table's n addresses> */
static void table_target(char *buf, size_t size, size_t n)
{
    snprintf(buf, size, "static:///");
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, size - len, "%s10.0.0.%zu:50051", i ? "," : "", i + 1);
    }
}

struct pfx {
    mica_runtime_t *rt;
    mica_health_t *h;
    size_t n;
};

static void pfx_new(struct pfx *p, size_t n, const mica_health_opts_t *o)
{
    memset(p, 0, sizeof(*p));
    p->n = n;
    assert_non_null(p->rt = disc_runtime(1));
    char target[MAXN * 24];
    table_target(target, sizeof(target), n);
    assert_int_equal(mica_health_new(&p->h, p->rt, target, o), 0);
}

static void pfx_run(struct pfx *p, void (*body)(void *))
{
    assert_int_equal(disc_run(p->rt, body, p), 0);
    mica_health_free(p->h);
    mica_runtime_free(p->rt);
    expect_no_failure();
}

/* Waits until the health follows the target's list. */
static void wait_listed(struct pfx *p)
{
    mica_health_stats_t s;
    int64_t t0 = wall_ms();
    do {
        mica_sleep_ms(1);
        mica_health_stats(p->h, &s);
    } while (s.endpoints < p->n && wall_ms() - t0 < slack_ms(5000));
    EXPECT_EQ(s.endpoints, p->n);
}

static mica_health_endpoint_t ep_of(struct pfx *p, struct table *t, size_t i)
{
    mica_health_endpoint_t e;
    mica_health_endpoint(p->h, t->addr[i], &e);
    return e;
}

/* How many of `k` picks chose endpoint i. */
static int picks_of(struct table *t, size_t i, int k)
{
    int c = 0;
    for (int j = 0; j < k; j++)
        c += pick(t) == (int)i;
    return c;
}

#define BASE 100 /* base_ejection_ms */

static void ejection_body(void *arg)
{
    struct pfx *p = arg;
    wait_listed(p);
    struct table t;
    mica_failover_conf_t conf = {.health = p->h};
    table_init(&t, &conf, p->n, NULL);

    /* 4 gateway errors, then a success: the count starts over */
    gateway_errors(&t, 0, 4);
    done(&t, 0, 0);
    gateway_errors(&t, 0, 4);
    EXPECT(!ep_of(p, &t, 0).ejected);
    done(&t, 0, 2 /* UNKNOWN: not a gateway error, and it resets the count too */);
    gateway_errors(&t, 0, 4);
    EXPECT(!ep_of(p, &t, 0).ejected);
    gateway_errors(&t, 0, 1); /* the 5th in a row */
    mica_health_endpoint_t e = ep_of(p, &t, 0);
    EXPECT(e.ejected);
    EXPECT_EQ(e.times_ejected, 1);
    int64_t t0 = wall_ms();
    EXPECT_EQ(picks_of(&t, 0, 200), 0);

    while (ep_of(p, &t, 0).ejected && wall_ms() - t0 < slack_ms(5000))
        mica_sleep_ms(2);
    int64_t first = wall_ms() - t0;
    EXPECT(!ep_of(p, &t, 0).ejected);
    EXPECT(picks_of(&t, 0, 200) > 0);

    /* ejected again at once: twice as long */
    gateway_errors(&t, 0, 5);
    e = ep_of(p, &t, 0);
    EXPECT(e.ejected);
    EXPECT_EQ(e.times_ejected, 2);
    t0 = wall_ms();
    while (ep_of(p, &t, 0).ejected && wall_ms() - t0 < slack_ms(5000))
        mica_sleep_ms(2);
    int64_t second = wall_ms() - t0;
    print_message("ejections: 1st %lld ms (base %d), 2nd %lld ms (2 x base)\n", (long long)first,
                  BASE, (long long)second);
    EXPECT(first >= BASE * 9 / 10 && first <= slack_ms(BASE + 2000));
    EXPECT(second >= 2 * BASE * 9 / 10 && second <= slack_ms(2 * BASE + 2000));
    EXPECT(second > first);

    mica_health_stats_t s;
    mica_health_stats(p->h, &s);
    EXPECT_EQ(s.ejections, 2);
    EXPECT_EQ(s.returns, 2);
    EXPECT_EQ(s.ejected, 0);
    table_free(&t);
}

static void test_five_gateway_errors_eject_an_endpoint_for_longer_each_time(void **state)
{
    (void)state;
    struct pfx p;
    mica_health_opts_t o = {.base_ejection_ms = BASE, .max_ejection_pct = 50};
    pfx_new(&p, 4, &o);
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    assert_int_equal(mica_health_export_metrics(p.h, reg, "users"), 0);
    assert_int_equal(mica_health_export_metrics(p.h, reg, "users"), MICA_EINVAL);
    assert_int_equal(disc_run(p.rt, ejection_body, &p), 0);
    expect_no_failure();
    /* what a scrape shows once the runtime stopped */
    char *text;
    size_t len;
    assert_int_equal(mica_metrics_write(reg, &text, &len), 0);
    assert_non_null(strstr(text, "mica_health_ejections_total{target=\"users\"} 2\n"));
    assert_non_null(strstr(text, "mica_health_returns_total{target=\"users\"} 2\n"));
    assert_non_null(strstr(text, "mica_health_endpoints{target=\"users\"} 4\n"));
    assert_non_null(strstr(
        text, "mica_health_endpoint_healthy{target=\"users\",endpoint=\"10.0.0.1:50051\"} 1\n"));
    mica_metrics_text_free(text);
    mica_health_free(p.h); /* removes its collector */
    assert_int_equal(mica_metrics_write(reg, &text, &len), 0);
    assert_null(strstr(text, "mica_health_"));
    mica_metrics_text_free(text);
    mica_metrics_free(reg);
    mica_runtime_free(p.rt);
}

static void max_pct_body(void *arg)
{
    struct pfx *p = arg;
    wait_listed(p);
    struct table t;
    mica_failover_conf_t conf = {.health = p->h};
    table_init(&t, &conf, p->n, NULL);
    /* 20 endpoints x 10 %: two at once */
    for (size_t i = 0; i < 3; i++)
        gateway_errors(&t, i, 5);
    EXPECT(ep_of(p, &t, 0).ejected);
    EXPECT(ep_of(p, &t, 1).ejected);
    EXPECT(!ep_of(p, &t, 2).ejected);
    mica_health_stats_t s;
    mica_health_stats(p->h, &s);
    EXPECT_EQ(s.ejections, 2);
    EXPECT_EQ(s.ejections_refused, 1);
    EXPECT_EQ(s.ejected, 2);
    EXPECT(picks_of(&t, 2, 200) > 0);
    EXPECT_EQ(picks_of(&t, 0, 200) + picks_of(&t, 1, 200), 0);
    table_free(&t);
}

static void test_max_ejection_pct_bounds_the_endpoints_ejected_at_once(void **state)
{
    (void)state;
    struct pfx p;
    mica_health_opts_t o = {.base_ejection_ms = 60000};
    pfx_new(&p, 20, &o);
    pfx_run(&p, max_pct_body);
}

static void one_body(void *arg)
{
    struct pfx *p = arg;
    wait_listed(p);
    struct table t;
    mica_failover_conf_t conf = {.health = p->h};
    table_init(&t, &conf, p->n, NULL);
    gateway_errors(&t, 1, 5); /* 3 x 10 % rounds to 0: one is allowed anyway */
    gateway_errors(&t, 2, 5);
    EXPECT(ep_of(p, &t, 1).ejected);
    EXPECT(!ep_of(p, &t, 2).ejected);
    table_free(&t);
}

static void test_one_endpoint_may_be_ejected_even_when_the_percentage_rounds_to_none(void **state)
{
    (void)state;
    struct pfx p;
    mica_health_opts_t o = {.base_ejection_ms = 60000};
    pfx_new(&p, 3, &o);
    pfx_run(&p, one_body);
}

static void panic_body(void *arg)
{
    struct pfx *p = arg;
    wait_listed(p);
    struct table t;
    mica_failover_conf_t conf = {.health = p->h};
    table_init(&t, &conf, p->n, NULL);
    gateway_errors(&t, 0, 5);
    gateway_errors(&t, 1, 5);
    /* 2 of 4 healthy: 50 %, not below the threshold: the ejected are skipped */
    int c[4] = {0};
    for (int i = 0; i < 400; i++)
        c[pick(&t)]++;
    EXPECT_EQ(c[0] + c[1], 0);
    EXPECT_EQ(c[2], 200);
    mica_health_stats_t s;
    mica_health_stats(p->h, &s);
    EXPECT_EQ(s.panics, 0);
    /* 1 of 4: panic, every endpoint takes calls again */
    gateway_errors(&t, 2, 5);
    EXPECT(ep_of(p, &t, 2).ejected);
    memset(c, 0, sizeof(c));
    for (int i = 0; i < 400; i++)
        c[pick(&t)]++;
    print_message("panic: picks %d %d %d %d\n", c[0], c[1], c[2], c[3]);
    for (int i = 0; i < 4; i++)
        EXPECT_EQ(c[i], 100);
    mica_health_stats(p->h, &s);
    EXPECT_EQ(s.panics, 1);
    table_free(&t);
}

static void test_below_the_panic_threshold_every_endpoint_is_used(void **state)
{
    (void)state;
    struct pfx p;
    mica_health_opts_t o = {.base_ejection_ms = 60000, .max_ejection_pct = 100};
    pfx_new(&p, 4, &o);
    pfx_run(&p, panic_body);
}

/* ---- zones ------------------------------------------------------------------------------ */

static const char *const zones10[10] = {"a", "a", "a", "a", "a", "b", "b", "b", "b", "b"};

static void zone_body(void *arg)
{
    struct pfx *p = arg;
    wait_listed(p);
    struct table t;
    mica_failover_conf_t conf = {.health = p->h, .zone = "a"};
    table_init(&t, &conf, p->n, zones10);
    int local = 0;
    for (int i = 0; i < 1000; i++)
        local += pick(&t) < 5;
    EXPECT_EQ(local, 1000); /* all healthy: the caller's zone only */

    /* 3 of 5 healthy locally: 60 % x 1.4 = 84 % stays, 16 % spills to zone b */
    gateway_errors(&t, 0, 5);
    gateway_errors(&t, 1, 5);
    int c[10] = {0};
    const int k = 20000;
    for (int i = 0; i < k; i++)
        c[pick(&t)]++;
    local = c[2] + c[3] + c[4];
    print_message("zones: 3/5 healthy in a: %.1f %% stay local (84 expected)\n",
                  100.0 * local / k);
    EXPECT_EQ(c[0] + c[1], 0);
    EXPECT(local > k * 80 / 100 && local < k * 88 / 100);
    for (int i = 5; i < 10; i++)
        EXPECT(c[i] > 0);

    /* the whole zone out: everything to b (5 of 10 healthy: not below the panic threshold) */
    for (size_t i = 2; i < 5; i++)
        gateway_errors(&t, i, 5);
    local = 0;
    for (int i = 0; i < 1000; i++)
        local += pick(&t) < 5;
    EXPECT_EQ(local, 0);
    table_free(&t);

    /* no zone of its own: round robin over every healthy endpoint */
    mica_failover_conf_t anywhere = {.health = p->h};
    table_init(&t, &anywhere, p->n, zones10);
    memset(c, 0, sizeof(c));
    for (int i = 0; i < 500; i++)
        c[pick(&t)]++;
    for (int i = 5; i < 10; i++)
        EXPECT_EQ(c[i], 100);
    table_free(&t);
}

static void test_the_callers_zone_is_preferred_and_spills_over_as_it_loses_endpoints(void **state)
{
    (void)state;
    struct pfx p;
    mica_health_opts_t o = {.base_ejection_ms = 60000, .max_ejection_pct = 100};
    pfx_new(&p, 10, &o);
    pfx_run(&p, zone_body);
}

static void test_zones_alone_without_health(void **state)
{
    (void)state;
    struct table t;
    mica_failover_conf_t conf = {.zone = "b"};
    table_init(&t, &conf, 10, zones10);
    for (int i = 0; i < 100; i++)
        assert_true(pick(&t) >= 5);
    /* an endpoint the client backs off from is skipped */
    t.pe[5].state = MICA_ENDPOINT_FAILING;
    t.pe[5].failing_until_ms = mica_now_ms() + 60000;
    for (int i = 0; i < 100; i++)
        assert_true(pick(&t) > 5);
    table_free(&t);
    expect_no_failure();
}

/* ---- options and allocation failures ------------------------------------------------------ */

static void test_bad_options_and_targets_are_einval(void **state)
{
    (void)state;
    mica_runtime_t *rt = disc_runtime(1);
    assert_non_null(rt);
    mica_health_t *h = NULL;
    mica_health_opts_t o = {.rise = -3};
    assert_int_equal(mica_health_new(&h, rt, "static:///127.0.0.1:1", &o), MICA_EINVAL);
    o = (mica_health_opts_t){.max_ejection_pct = 101};
    assert_int_equal(mica_health_new(&h, rt, "static:///127.0.0.1:1", &o), MICA_EINVAL);
    o = (mica_health_opts_t){.kind = MICA_HEALTH_HTTP, .http_path = "health"};
    assert_int_equal(mica_health_new(&h, rt, "static:///127.0.0.1:1", &o), MICA_EINVAL);
    assert_int_equal(mica_health_new(&h, rt, "nosuch:///x", NULL), MICA_EINVAL);
    assert_null(h);
    setenv("MICA_HEALTH_FALL", "7", 1);
    setenv("MICA_HEALTH_INTERVAL_MS", "abc", 1);
    o = (mica_health_opts_t){0};
    assert_int_equal(mica_health_opts_from_env(&o), MICA_EINVAL);
    setenv("MICA_HEALTH_INTERVAL_MS", "250", 1);
    o = (mica_health_opts_t){.rise = 4};
    assert_int_equal(mica_health_opts_from_env(&o), 0);
    assert_int_equal(o.fall, 7);
    assert_int_equal(o.interval_ms, 250);
    assert_int_equal(o.rise, 4);
    unsetenv("MICA_HEALTH_FALL");
    unsetenv("MICA_HEALTH_INTERVAL_MS");
    mica_runtime_free(rt);
}

static void test_allocation_failures_are_clean_enomem(void **state)
{
    (void)state;
    static const mica_health_kind_t kinds[] = {MICA_HEALTH_NONE, MICA_HEALTH_HTTP,
                                               MICA_HEALTH_GRPC};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        int failed = 0;
        for (long nth = 1; nth < 2000; nth++) {
            mica_runtime_t *rt = disc_runtime(1);
            assert_non_null(rt);
            mica_health_t *h = NULL;
            mica_health_opts_t o = {.kind = kinds[k]};
            mica_health_opts_t copy = o;
            mica__alloc_count();
            mica__alloc_fail_nth(nth);
            int rc = mica_health_new(&h, rt, "static:///127.0.0.1:1,127.0.0.1:2", &copy);
            long made = mica__alloc_count();
            mica__alloc_fail_nth(0);
            mica_health_free(h);
            mica_runtime_free(rt);
            if (rc == 0 && made < nth)
                break; /* every allocation of mica_health_new() was failed once */
            if (rc != 0) {
                assert_int_equal(rc, MICA_ENOMEM);
                failed++;
            }
        }
        print_message("alloc failures (kind %d): %d clean ENOMEM\n", (int)kinds[k], failed);
        assert_true(failed > 0);
    }
    /* the picker's own: create fails cleanly, an update without memory still picks */
    void *st = NULL;
    mica__alloc_fail_nth(1);
    assert_int_equal(mica_picker_failover.create(&st, NULL), MICA_ENOMEM);
    mica__alloc_fail_nth(0);
    struct table t;
    mica__alloc_fail_nth(2); /* create succeeds, the update's tier arrays fail */
    table_init(&t, NULL, 3, NULL);
    mica__alloc_fail_nth(0);
    int c[3] = {0};
    for (int i = 0; i < 30; i++)
        c[pick(&t)]++;
    assert_int_equal(c[0], 10);
    assert_int_equal(c[1], 10);
    table_free(&t);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_http_check_503_takes_an_endpoint_out_within_fall_and_rise_brings_it_back),
        cmocka_unit_test(
            test_grpc_check_not_serving_takes_an_endpoint_out_and_serving_brings_it_back),
        cmocka_unit_test(
            test_tcp_check_takes_out_a_refusing_endpoint_and_returns_it_once_it_listens),
        cmocka_unit_test(test_real_calls_answering_503_eject_their_endpoint_across_workers),
        cmocka_unit_test(test_five_gateway_errors_eject_an_endpoint_for_longer_each_time),
        cmocka_unit_test(test_max_ejection_pct_bounds_the_endpoints_ejected_at_once),
        cmocka_unit_test(test_one_endpoint_may_be_ejected_even_when_the_percentage_rounds_to_none),
        cmocka_unit_test(test_below_the_panic_threshold_every_endpoint_is_used),
        cmocka_unit_test(test_the_callers_zone_is_preferred_and_spills_over_as_it_loses_endpoints),
        cmocka_unit_test(test_zones_alone_without_health),
        cmocka_unit_test(test_bad_options_and_targets_are_einval),
        cmocka_unit_test(test_allocation_failures_are_clean_enomem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

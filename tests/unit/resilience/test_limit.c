/* SPDX-License-Identifier: MIT */
/*
 * The rate limiters (src/resilience/limit_table.c): each algorithm's
 * admissions and retry times on a simulated clock, their accuracy over 5 s
 * at 1,000/s and 15,000/s (simulated, then in real time with two workers
 * sharing one key), the key table's eviction, and the limiter at the
 * server's edge: HTTP middleware (429, Retry-After) and gRPC interceptors
 * (RESOURCE_EXHAUSTED, grpc-retry-pushback-ms), keyed by IP, principal and
 * route.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "echo.pb-c.h"
#include "mica/limit.h"
#include "mica/sync.h"
#include "common/alloc.h"
#include "resilience/limit_internal.h"

/* helpers.h's EXPECT_EQ evaluates its arguments twice; requests must run once. */
static inline int expect_eq1(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b) expect_eq1((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

#define MS INT64_C(1000000)
#define SEC INT64_C(1000000000)

static const mica_limit_algo_t algos[] = {MICA_LIMIT_TOKEN_BUCKET, MICA_LIMIT_GCRA,
                                          MICA_LIMIT_SLIDING_WINDOW};
static const char *const algo_names[] = {"token bucket", "GCRA", "sliding window"};

static mica_limiter_t *limiter(mica_limit_algo_t algo, double rate, double burst)
{
    mica_limiter_t *l;
    mica_limiter_opts_t o = {.algo = algo, .rate = rate, .burst = burst};
    assert_int_equal(mica_limiter_new(&l, &o), 0);
    return l;
}

static int take(mica_limiter_t *l, const char *key, int64_t now, int64_t *retry_us)
{
    return mica_limiter_take_at(l, key, strlen(key), 1, now, retry_us);
}

/* ---- each algorithm's decisions -------------------------------------------------------- */

static void test_bucket_and_gcra_admit_the_burst_then_the_rate_and_say_when(void **state)
{
    for (int a = 0; a < 2; a++) {
        mica_limiter_t *l = limiter(algos[a], 10, 3); /* 10/s: one every 100 ms; 3 at once */
        int64_t retry = -1;
        for (int i = 0; i < 3; i++)
            assert_int_equal(take(l, "k", 0, NULL), 0);
        assert_int_equal(take(l, "k", 0, &retry), MICA_EOVERLOAD);
        assert_int_equal(retry, 100000); /* the next token, in µs */
        assert_int_equal(take(l, "k", 99 * MS, NULL), MICA_EOVERLOAD);
        assert_int_equal(take(l, "k", 100 * MS, NULL), 0);
        assert_int_equal(take(l, "k", 100 * MS, NULL), MICA_EOVERLOAD);
        /* Ten idle seconds refill the burst, not more. */
        for (int i = 0; i < 3; i++)
            assert_int_equal(take(l, "k", 10 * SEC, NULL), 0);
        assert_int_equal(take(l, "k", 10 * SEC, NULL), MICA_EOVERLOAD);
        /* Another key has its own budget; n beyond the burst never fits. */
        assert_int_equal(take(l, "other", 10 * SEC, NULL), 0);
        assert_int_equal(mica_limiter_take_at(l, "k", 1, 4, 20 * SEC, NULL), MICA_EINVAL);
        assert_int_equal(mica_limiter_take_at(l, "k", 1, 0, 20 * SEC, NULL), MICA_EINVAL);
        assert_int_equal(mica_limiter_take_at(l, "k", 1, 3, 20 * SEC, NULL), 0);
        mica_limiter_stats_t st;
        mica_limiter_stats(l, &st);
        assert_int_equal(st.admitted, 3 + 1 + 3 + 1 + 1);
        assert_int_equal(st.limited, 4);
        mica_limiter_free(l);
    }
}

static void test_sliding_window_weighs_the_previous_window(void **state)
{
    mica_limiter_t *l = limiter(MICA_LIMIT_SLIDING_WINDOW, 10, 0); /* 10 per 1 s window */
    for (int i = 0; i < 10; i++)
        assert_int_equal(take(l, "k", 100 * MS, NULL), 0);
    int64_t retry;
    assert_int_equal(take(l, "k", 100 * MS, &retry), MICA_EOVERLOAD);
    assert_true(retry > 900000 && retry <= 1000000); /* this window is full until it ends */
    /* Halfway through the next window the previous one weighs 10 * 0.5 = 5. */
    int ok = 0;
    for (int i = 0; i < 10; i++)
        ok += take(l, "k", 1500 * MS, NULL) == 0;
    assert_int_equal(ok, 5);
    /* Two windows later nothing counts. */
    ok = 0;
    for (int i = 0; i < 20; i++)
        ok += take(l, "k", 3100 * MS, NULL) == 0;
    assert_int_equal(ok, 10);
    mica_limiter_free(l);
}

/* The approximation's worst case: the previous window's requests all at its end. */
static void test_sliding_window_admits_at_most_twice_the_limit_in_a_window_span(void **state)
{
    mica_limiter_t *l = limiter(MICA_LIMIT_SLIDING_WINDOW, 100, 0);
    int64_t times[1000];
    int n = 0;
    for (int i = 0; i < 150; i++) /* a burst at the end of window 0 */
        if (take(l, "k", 999 * MS, NULL) == 0)
            times[n++] = 999 * MS;
    for (int64_t t = 1000 * MS; t < 3000 * MS; t += MS) /* then one request every ms */
        if (take(l, "k", t, NULL) == 0)
            times[n++] = t;
    int worst = 0;
    for (int i = 0; i < n; i++) {
        int c = 0;
        for (int j = i; j < n && times[j] < times[i] + SEC; j++)
            c++;
        if (c > worst)
            worst = c;
    }
    print_message("sliding window, worst 1 s span: %d for a limit of 100\n", worst);
    assert_true(worst > 100 && worst <= 200);
    mica_limiter_free(l);
}

static void test_limiter_refuses_bad_settings(void **state)
{
    mica_limiter_t *l;
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){.rate = 0}), MICA_EINVAL);
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){.rate = 2e9}), MICA_EINVAL);
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){.rate = 10, .burst = 0.5}),
                     MICA_EINVAL);
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){.rate = 10, .burst = 3e6}),
                     MICA_EINVAL);
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){
                                              .algo = MICA_LIMIT_SLIDING_WINDOW, .rate = 0.4,
                                              .window_ms = 1000}),
                     MICA_EINVAL); /* 0.5 per window */
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){.algo = 7, .rate = 1}),
                     MICA_EINVAL);
    assert_int_equal(mica_limiter_new(&l, &(mica_limiter_opts_t){.rate = 1}), 0);
    mica_limiter_free(l);
    mica_limiter_free(NULL);
}

/* ---- accuracy ---------------------------------------------------------------------------- */

/* Admitted in [1 s, 6 s) of a simulated flood at twice `rate`, evenly or in random bursts. */
static int64_t simulate(mica_limit_algo_t algo, double rate, bool bursty)
{
    mica_limiter_t *l = limiter(algo, rate, 0);
    int64_t admitted = 0;
    uint64_t x = 88172645463325252ull;
    int64_t step = (int64_t)(SEC / (2 * rate)), t = 0;
    while (t < 6 * SEC) {
        int burst = 1;
        if (bursty) { /* xorshift: 0..4 requests at once, at most 4 steps apart */
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            burst = (int)(x % 5);
            t += step * (int64_t)(x >> 8 & 3);
        } else {
            t += step;
        }
        for (int i = 0; i < burst; i++)
            if (take(l, "client", t, NULL) == 0 && t >= SEC && t < 6 * SEC)
                admitted++;
    }
    mica_limiter_free(l);
    return admitted;
}

static void test_rate_is_within_one_percent_at_1000_and_15000_per_second(void **state)
{
    const double rates[] = {1000, 15000};
    for (int a = 0; a < 3; a++)
        for (int r = 0; r < 2; r++)
            for (int bursty = 0; bursty < 2; bursty++) {
                int64_t want = (int64_t)(rates[r] * 5), got = simulate(algos[a], rates[r], bursty);
                double err = (double)(got - want) / (double)want;
                print_message("%-14s %5.0f/s %s: %lld admitted in 5 s (%+.3f %%)\n",
                              algo_names[a], rates[r], bursty ? "bursty" : "even  ",
                              (long long)got, err * 100);
                assert_true(err > -0.01 && err < 0.01);
            }
}

/*
 * Two workers flood six limiters (3 algorithms x 2 rates) on one key each, in
 * real time. The rate is measured between two refusals at least 5 s apart:
 * admitted (the limiter's own count) over elapsed time. A refusal means the
 * budget was spent at that instant, so the measure does not depend on when
 * this busy machine happened to stall the workers (a snapshot at an arbitrary
 * time would count whatever budget a stall had left unspent).
 */
#define NLIM 6
#define WARM_NS (1500 * MS)
#define SPAN_NS (5 * SEC)
#define RUN_NS (SPAN_NS + 200 * MS)

struct snap {
    int64_t t;        /* CLOCK_MONOTONIC ns; 0: none */
    uint64_t admitted; /* the limiter's admitted count just after a refusal at t */
};

struct flood {
    mica_limiter_t *l[NLIM];
    double rate[NLIM];
    int64_t made[NLIM]; /* when each limiter was made: its windows start there */
    int64_t t1;         /* measuring starts here (CLOCK_MONOTONIC) */
    struct snap first[2][NLIM], last[2][NLIM]; /* per worker */
    _Atomic int64_t tried[NLIM];
    atomic_bool offered[RUN_NS / MS]; /* per ms: did anyone ask? */
    mica_wg_t *wg;
};

static void flood_worker(void *arg)
{
    struct flood *f = arg;
    int w = mica_worker_id();
    int64_t tried[NLIM] = {0};
    for (uint64_t i = 0;; i++) {
        int k = (int)(i % NLIM);
        int64_t t = mica__mono_ns();
        if (t >= f->t1 + RUN_NS)
            break;
        int rc = mica_limiter_take(f->l[k], "client", 6, 1, NULL);
        if (t < f->t1)
            continue;
        tried[k]++;
        int64_t ms = (t - f->t1) / MS;
        if (!atomic_load_explicit(&f->offered[ms], memory_order_relaxed))
            atomic_store_explicit(&f->offered[ms], true, memory_order_relaxed);
        struct snap *first = &f->first[w][k], *last = &f->last[w][k];
        if (rc == MICA_EOVERLOAD && (!first->t || t - last->t >= MS)) {
            mica_limiter_stats_t st;
            mica_limiter_stats(f->l[k], &st);
            int64_t at = mica__mono_ns();
            if (!first->t)
                *first = (struct snap){at, st.admitted};
            *last = (struct snap){at, st.admitted};
        }
        if ((i & 1023) == 0)
            mica_yield(); /* let the other coroutines of this worker run */
    }
    for (int k = 0; k < NLIM; k++)
        atomic_fetch_add(&f->tried[k], tried[k]);
    mica_wg_done(f->wg);
}

static void flood_body(void *arg)
{
    struct flood *f = arg;
    mica_wg_new(&f->wg);
    mica_wg_add(f->wg, 2);
    mica_go_on(0, flood_worker, f);
    mica_go_on(1, flood_worker, f);
    mica_wg_wait(f->wg, NULL);
    mica_wg_free(f->wg);
}

static void test_rate_is_within_one_percent_in_real_time_shared_by_two_workers(void **state)
{
    struct flood f = {0};
    for (int k = 0; k < NLIM; k++) {
        f.rate[k] = k % 2 ? 15000 : 1000;
        f.l[k] = limiter(algos[k / 2], f.rate[k], 0);
        f.made[k] = mica__mono_ns();
    }
    f.t1 = mica__mono_ns() + WARM_NS; /* after the burst (and the first window) is spent */
    assert_int_equal(run_in_coroutine(2, flood_body, &f), 0);
    expect_no_failure();
    int64_t idle_ms = 0; /* milliseconds in which both workers were off the CPU */
    for (int64_t ms = 0; ms < RUN_NS / MS; ms++)
        idle_ms += !atomic_load(&f.offered[ms]);
    print_message("both workers descheduled for %lld ms of %lld\n", (long long)idle_ms,
                  (long long)(RUN_NS / MS));
    for (int k = 0; k < NLIM; k++) {
        struct snap a = f.first[0][k], b = f.last[0][k];
        if (!a.t || (f.first[1][k].t && f.first[1][k].t < a.t))
            a = f.first[1][k];
        if (f.last[1][k].t > b.t)
            b = f.last[1][k];
        int64_t tried = atomic_load(&f.tried[k]);
        double secs = (double)(b.t - a.t) / SEC, got = (double)(b.admitted - a.admitted) / secs;
        double err = (got - f.rate[k]) / f.rate[k];
        print_message("%-14s %5.0f/s, 2 workers: %.1f admitted/s over %.2f s (%+.3f %%), "
                      "%lld asked\n", algo_names[k / 2], f.rate[k], got, secs, err * 100,
                      (long long)tried);
        if (tried < 2 * f.rate[k] * 5 || secs < 5) { /* a machine (or valgrind) too slow */
            print_message("  (not flooded for 5 s: accuracy not checked)\n");
            continue;
        }
        /* A bucket's burst (1 s here) carries budget over a stall. A window's budget is
         * lost when nobody asks in its last moments: allow what the stalls right before
         * each window's end may cost (1 ms of budget per idle ms). */
        double slack = 0;
        if (algos[k / 2] == MICA_LIMIT_SLIDING_WINDOW) {
            int64_t tail = 0;
            for (int64_t e = f.made[k] + SEC; e < b.t; e += SEC)
                for (int64_t ms = (e - f.t1) / MS - 1;
                     e > a.t && ms >= 0 && !atomic_load(&f.offered[ms]); ms--)
                    tail++;
            slack = (double)(tail + 2) / 1000 / secs;
            print_message("  idle right before window ends: %lld ms\n", (long long)tail);
        }
        assert_true(err > -0.01 - slack && err < 0.01);
        mica_limiter_free(f.l[k]);
        f.l[k] = NULL;
    }
    for (int k = 0; k < NLIM; k++)
        mica_limiter_free(f.l[k]);
}

/* ---- the key table -------------------------------------------------------------------------- */

static void test_key_table_forgets_whole_budgets_first_and_counts_lossy_evictions(void **state)
{
    mica_limiter_t *l;
    mica_limiter_opts_t o = {.algo = MICA_LIMIT_GCRA, .rate = 1, .burst = 1, .max_keys = 4};
    assert_int_equal(mica_limiter_new(&l, &o), 0); /* one set of 4 slots */
    char key[16];
    for (int i = 0; i < 4; i++) { /* four keys spend their budget at t = 0 */
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(take(l, key, 0, NULL), 0);
    }
    mica_limiter_stats_t st;
    assert_int_equal(take(l, "k4", 0, NULL), 0); /* a fifth: someone's spent budget is lost */
    mica_limiter_stats(l, &st);
    assert_int_equal(st.evicted, 1);
    /* New keys 2 s apart: every budget is whole again by then, forgetting costs nothing. */
    for (int i = 5; i < 50; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(take(l, key, 2 * SEC * i, NULL), 0);
    }
    mica_limiter_stats(l, &st);
    assert_int_equal(st.evicted, 1);
    /* A key being refused keeps its slot (and its spent budget) while new keys come. */
    int64_t t = 200 * SEC;
    assert_int_equal(take(l, "hot", t, NULL), 0);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "new%d", i);
        assert_int_equal(take(l, key, t + i * MS, NULL), 0);
        assert_int_equal(take(l, "hot", t + i * MS, NULL), MICA_EOVERLOAD);
    }
    mica_limiter_free(l);
}

static void test_many_keys_in_a_small_table_each_get_a_budget(void **state)
{
    mica_limiter_t *l;
    mica_limiter_opts_t o = {.algo = MICA_LIMIT_TOKEN_BUCKET, .rate = 5, .burst = 2,
                             .max_keys = 64};
    assert_int_equal(mica_limiter_new(&l, &o), 0);
    char key[16];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "10.0.%d.%d", i / 256, i % 256);
        assert_int_equal(take(l, key, (int64_t)i * SEC, NULL), 0); /* new or whole: admitted */
    }
    mica_limiter_stats_t st;
    mica_limiter_stats(l, &st);
    assert_int_equal(st.admitted, 10000);
    assert_int_equal(st.evicted, 0); /* each was whole again a second later */
    mica_limiter_free(l);
}

/* ---- at the server's edge: HTTP middleware and gRPC interceptors ------------------------------ */

typedef Mica__Interop__EchoRequest req_t;
typedef Mica__Interop__EchoResponse resp_t;
static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

static const char principal_key; /* the auth middleware's ctx key */

struct edge {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    mica_grpc_client_t *c;
    mica_limiter_t *by_user, *by_method;
    char addr[64];
    atomic_int handled;
};

static int hello(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct edge *e = arg;
    atomic_fetch_add(&e->handled, 1);
    return mica_http_resp_text(resp, 200, "hello");
}

/* A stand-in for authentication: the principal is the x-user header. */
static int auth(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next, void *arg)
{
    const char *user = mica_http_req_header(req, "x-user");
    if (user && mica_http_req_with_value(req, &principal_key, (void *)user) != 0)
        return MICA_ENOMEM;
    return mica_http_next(next);
}

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    struct edge *e = arg;
    atomic_fetch_add(&e->handled, 1);
    resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = ((const req_t *)in)->message;
    return mica_grpc_send(call, &out.base);
}

static int atoi_status(const char *resp)
{
    int status = 0;
    if (strncmp(resp, "HTTP/1.1 ", 9) == 0)
        for (int i = 9; i < 12 && resp[i] >= '0' && resp[i] <= '9'; i++)
            status = status * 10 + (resp[i] - '0');
    return status;
}

static int get(struct edge *e, const char *path, const char *extra, char *out, size_t cap)
{
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n",
                     path, extra);
    if (wire_exchange(e->addr, req, (size_t)n, out, cap, 5000) < 12)
        return -1;
    return atoi_status(out);
}

static int unary_call(struct edge *e, const char *method, mica_grpc_result_t *res, char *pushback,
                      size_t pbsize)
{
    req_t req = MICA__INTEROP__ECHO_REQUEST__INIT;
    req.message = "hi";
    mica_grpc_stream_t *st;
    int rc = mica_grpc_stream_open(e->c, NULL, echo, method, NULL, &st);
    if (rc != 0)
        return -1;
    mica_grpc_stream_send(st, &req.base);
    mica_grpc_stream_close_send(st);
    ProtobufCMessage *out;
    while (mica_grpc_stream_recv(st, &out) == 0)
        protobuf_c_message_free_unpacked(out, NULL);
    const char *pb = mica_grpc_stream_trailer(st, "grpc-retry-pushback-ms");
    if (!pb) /* a trailers-only response: the client files its fields as headers */
        pb = mica_grpc_stream_header(st, "grpc-retry-pushback-ms");
    snprintf(pushback, pbsize, "%s", pb ? pb : "");
    return mica_grpc_stream_finish(st, res);
}

static void edge_body(void *arg)
{
    struct edge *e = arg;
    char out[2048], pb[24];
    mica_grpc_result_t res;
    /* Every request passes the HTTP rule (per principal, else per IP: 2 at once); gRPC
     * calls then the interceptor (per method: 1 per second). */
    EXPECT_EQ(unary_call(e, "Unary", &res, pb, sizeof(pb)), MICA_GRPC_OK);
    EXPECT_EQ(unary_call(e, "Unary", &res, pb, sizeof(pb)), MICA_GRPC_RESOURCE_EXHAUSTED);
    EXPECT(strstr(res.message, "rate limit exceeded (per route): retry in ") != NULL);

    /* The IP's two are spent: 429 and Retry-After; a gRPC call gets its own status. */
    EXPECT_EQ(get(e, "/hello", "", out, sizeof(out)), 429);
    EXPECT(strstr(out, "\r\nRetry-After: ") != NULL);
    EXPECT(strstr(out, "rate limit exceeded (per ip)") != NULL);
    EXPECT_EQ(unary_call(e, "Unary", &res, pb, sizeof(pb)), MICA_GRPC_RESOURCE_EXHAUSTED);
    EXPECT(strstr(res.message, "(per ip)") != NULL);
    EXPECT(pb[0] >= '0' && pb[0] <= '9'); /* grpc-retry-pushback-ms, from the middleware */

    /* Principals have budgets of their own. */
    EXPECT_EQ(get(e, "/hello", "x-user: alice\r\n", out, sizeof(out)), 200);
    EXPECT_EQ(get(e, "/hello", "x-user: alice\r\n", out, sizeof(out)), 200);
    EXPECT_EQ(get(e, "/hello", "x-user: alice\r\n", out, sizeof(out)), 429);
    EXPECT(strstr(out, "(per principal)") != NULL);
    EXPECT_EQ(get(e, "/hello", "x-user: bob\r\n", out, sizeof(out)), 200);
    EXPECT_EQ(atomic_load(&e->handled), 4);
    mica_runtime_stop(e->rt);
}

static void test_middleware_and_interceptor_refuse_with_429_and_resource_exhausted(void **state)
{
    struct edge e = {0};
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&e.rt, &ro), 0);
    assert_int_equal(mica_http_server_new(&e.srv, NULL), 0);
    assert_int_equal(mica_grpc_server_new(&e.gs, e.srv, NULL), 0);
    e.by_user = limiter(MICA_LIMIT_TOKEN_BUCKET, 0.01, 2);
    e.by_method = limiter(MICA_LIMIT_SLIDING_WINDOW, 1, 0);
    assert_int_equal(mica_http_use(e.srv, auth, NULL), 0);
    assert_int_equal(mica_limit_http(e.srv, e.by_user, MICA_LIMIT_BY_PRINCIPAL, NULL),
                     MICA_EINVAL); /* a principal needs its ctx key */
    /* Per principal; anonymous requests fall back to their IP in that rule. */
    assert_int_equal(mica_limit_http(e.srv, e.by_user, MICA_LIMIT_BY_PRINCIPAL, &principal_key), 0);
    assert_int_equal(mica_limit_grpc(e.gs, e.by_method, MICA_LIMIT_BY_ROUTE, NULL), 0);
    assert_int_equal(mica_http_route(e.srv, "GET", "/hello", hello, &e), 0);
    assert_int_equal(mica_grpc_register(e.gs, echo, "Unary", MICA_GRPC_UNARY, unary, &e), 0);
    assert_int_equal(mica_http_server_listen(e.srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(e.srv, e.rt), 0);
    snprintf(e.addr, sizeof(e.addr), "127.0.0.1:%d", mica_http_server_port(e.srv, 0));
    assert_int_equal(mica_grpc_client_new(&e.c, e.rt, e.addr, NULL), 0);
    struct run_once ro2 = {.rt = e.rt, .body = edge_body, .arg = &e};
    mica_runtime_on_start(e.rt, run_once_start, &ro2);
    assert_int_equal(mica_runtime_run(e.rt), 0);
    mica_grpc_client_free(e.c);
    mica_grpc_server_free(e.gs);
    mica_http_server_free(e.srv);
    mica_runtime_free(e.rt);
    expect_no_failure();
    mica_limiter_stats_t st;
    mica_limiter_stats(e.by_user, &st);
    assert_int_equal(st.limited_by[MICA_LIMIT_BY_PRINCIPAL], 1);
    assert_int_equal(st.limited_by[MICA_LIMIT_BY_IP], 2); /* anonymous: HTTP and gRPC */
    mica_limiter_stats(e.by_method, &st);
    assert_int_equal(st.limited_by[MICA_LIMIT_BY_ROUTE], 1);
    mica_limiter_free(e.by_user);
    mica_limiter_free(e.by_method);
}

/* ---- allocation failures ---------------------------------------------------------------------- */

static void shed_alloc_body(void *arg)
{
    mica_shed_t *sh = arg;
    int64_t token;
    mica__alloc_fail_nth(1); /* this worker's state cannot be made: it never sheds */
    EXPECT_EQ(mica_shed_allow(sh, &token), 0);
    mica__alloc_fail_nth(0);
    EXPECT_EQ(token, -1);
    mica_shed_done(sh, token);
    EXPECT_EQ(mica_shed_allow(sh, &token), 0);
    EXPECT_EQ(token, -1);
}

static void test_allocation_failures_are_clean_errors(void **state)
{
    mica_limiter_opts_t o = {.rate = 10};
    int failed = 0;
    for (long n = 1;; n++) { /* every allocation of mica_limiter_new, failing in turn */
        mica_limiter_t *l = NULL;
        mica__alloc_count();
        mica__alloc_fail_nth(n);
        int rc = mica_limiter_new(&l, &o);
        mica__alloc_fail_nth(0);
        if (rc == 0) {
            mica_http_server_t *srv;
            assert_int_equal(mica_http_server_new(&srv, NULL), 0);
            mica__alloc_fail_nth(1); /* the rule's memory */
            assert_int_equal(mica_limit_http(srv, l, MICA_LIMIT_BY_IP, NULL), MICA_ENOMEM);
            mica__alloc_fail_nth(0);
            mica_http_server_free(srv);
            mica_limiter_free(l);
            break;
        }
        assert_int_equal(rc, MICA_ENOMEM);
        failed++;
    }
    assert_true(failed >= 3); /* the limiter, its table, its counters */
    mica_shed_t *sh;
    mica__alloc_fail_nth(1);
    assert_int_equal(mica_shed_new(&sh, NULL), MICA_ENOMEM);
    mica__alloc_fail_nth(0);
    assert_int_equal(mica_shed_new(&sh, NULL), 0);
    assert_int_equal(run_in_coroutine(1, shed_alloc_body, sh), 0);
    expect_no_failure();
    mica_shed_free(sh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_and_gcra_admit_the_burst_then_the_rate_and_say_when),
        cmocka_unit_test(test_sliding_window_weighs_the_previous_window),
        cmocka_unit_test(test_sliding_window_admits_at_most_twice_the_limit_in_a_window_span),
        cmocka_unit_test(test_limiter_refuses_bad_settings),
        cmocka_unit_test(test_rate_is_within_one_percent_at_1000_and_15000_per_second),
        cmocka_unit_test(test_rate_is_within_one_percent_in_real_time_shared_by_two_workers),
        cmocka_unit_test(test_key_table_forgets_whole_budgets_first_and_counts_lossy_evictions),
        cmocka_unit_test(test_many_keys_in_a_small_table_each_get_a_budget),
        cmocka_unit_test(test_middleware_and_interceptor_refuse_with_429_and_resource_exhausted),
        cmocka_unit_test(test_allocation_failures_are_clean_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

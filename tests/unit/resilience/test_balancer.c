/* SPDX-License-Identifier: MIT */
/*
 * The balancers through the picker seam, on endpoint tables made by hand
 * (what a client passes them): each spreads calls as it promises, skips
 * endpoints backing off or refused by their breaker, and reports its
 * numbers. Counters are read from another thread in the last test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../runtime/helpers.h"
#include "mica/balancer.h"

#define MAXN 16

/* A client's endpoint table, as the picker sees it. */
struct table {
    mica_endpoint_t ep[MAXN];
    mica_picker_endpoint_t pe[MAXN];
    mica_picker_endpoint_t *view[MAXN];
    char addr[MAXN][48];
    size_t n;
    const mica_picker_ops_t *ops;
    void *st;
};

static void table_init(struct table *t, const mica_picker_ops_t *ops, const void *conf, size_t n,
                       const uint32_t *weights)
{
    memset(t, 0, sizeof(*t));
    t->n = n;
    t->ops = ops;
    for (size_t i = 0; i < n; i++) {
        snprintf(t->addr[i], sizeof(t->addr[i]), "10.0.0.%zu:50051", i + 1);
        t->ep[i] = (mica_endpoint_t){.addr = t->addr[i], .weight = weights ? weights[i] : 0};
        t->pe[i] = (mica_picker_endpoint_t){.ep = &t->ep[i], .state = MICA_ENDPOINT_READY};
        t->view[i] = &t->pe[i];
    }
    assert_int_equal(ops->create(&t->st, conf), 0);
    ops->update(t->st, t->view, n);
}

/* Drops endpoint `k` from the table, as a resolver update would (picker_ptr kept). */
static void table_remove(struct table *t, size_t k)
{
    for (size_t i = k; i + 1 < t->n; i++)
        t->view[i] = t->view[i + 1];
    t->n--;
    t->ops->update(t->st, t->view, t->n);
}

/* A pick and, unless keep, the call's end with `code` after `latency_us`. */
static int call(struct table *t, const mica_pick_info_t *info, int code, uint32_t latency_us,
                bool keep)
{
    int i = t->ops->pick(t->st, t->view, t->n, info);
    if (i < 0 || !mica_picker_endpoint_usable(t->view[i], mica_now_ms()))
        return i;
    t->view[i]->inflight++;
    if (!keep) {
        t->view[i]->inflight--;
        t->ops->done(t->st, t->view[i], code, latency_us);
    }
    return i;
}

static int index_of(struct table *t, const mica_picker_endpoint_t *e)
{
    return (int)(e - t->pe);
}

static void table_free(struct table *t)
{
    t->ops->destroy(t->st);
}

/* ---- round robin, weighted, least request, random ------------------------------------ */

static void test_round_robin_spreads_evenly_and_skips_an_endpoint_backing_off(void **state)
{
    struct table t;
    table_init(&t, &mica_balancer_round_robin, NULL, 3, NULL);
    int count[3] = {0};
    for (int i = 0; i < 300; i++)
        count[call(&t, NULL, 0, 100, false)]++;
    assert_int_equal(count[0], 100);
    assert_int_equal(count[1], 100);
    assert_int_equal(count[2], 100);
    t.pe[1].state = MICA_ENDPOINT_FAILING;
    t.pe[1].failing_until_ms = mica_now_ms() + 60000;
    for (int i = 0; i < 100; i++)
        assert_int_not_equal(call(&t, NULL, 0, 100, false), 1);
    t.pe[0].state = t.pe[2].state = MICA_ENDPOINT_FAILING;
    t.pe[0].failing_until_ms = t.pe[2].failing_until_ms = mica_now_ms() + 60000;
    int i = call(&t, NULL, 0, 100, false); /* all backing off: one anyway, the client fails it */
    assert_true(i >= 0 && i < 3);
    table_free(&t);
}

static void test_weighted_round_robin_is_smooth_and_exact(void **state)
{
    struct table t;
    uint32_t w[3] = {5, 1, 1};
    table_init(&t, &mica_balancer_weighted, NULL, 3, w);
    char seq[8] = {0};
    for (int i = 0; i < 7; i++)
        seq[i] = (char)('a' + call(&t, NULL, 0, 100, false));
    assert_string_equal(seq, "aabacaa"); /* nginx's sequence for 5,1,1 */
    table_free(&t);

    uint32_t w2[3] = {1, 2, 3};
    table_init(&t, &mica_balancer_weighted, NULL, 3, w2);
    int count[3] = {0};
    for (int i = 0; i < 6000; i++)
        count[call(&t, NULL, 0, 100, false)]++;
    assert_int_equal(count[0], 1000);
    assert_int_equal(count[1], 2000);
    assert_int_equal(count[2], 3000);
    /* the middle one backs off: the others share in proportion, 1:3 */
    t.pe[1].state = MICA_ENDPOINT_FAILING;
    t.pe[1].failing_until_ms = mica_now_ms() + 60000;
    memset(count, 0, sizeof(count));
    for (int i = 0; i < 4000; i++)
        count[call(&t, NULL, 0, 100, false)]++;
    assert_int_equal(count[1], 0);
    assert_true(count[0] >= 990 && count[0] <= 1010);
    table_free(&t);
}

static void test_least_request_takes_the_fewest_in_flight_and_rotates_ties(void **state)
{
    struct table t;
    table_init(&t, &mica_balancer_least_request, NULL, 3, NULL);
    t.pe[0].inflight = 5;
    t.pe[2].inflight = 3;
    for (int i = 0; i < 3; i++) /* 1 rises to 3 */
        assert_int_equal(call(&t, NULL, 0, 100, true), 1);
    int i = call(&t, NULL, 0, 100, true); /* 1 and 2 tie at 3 */
    assert_true(i == 1 || i == 2);
    t.pe[0].inflight = t.pe[1].inflight = t.pe[2].inflight = 0;
    int count[3] = {0};
    for (int k = 0; k < 300; k++)
        count[call(&t, NULL, 0, 100, false)]++;
    assert_int_equal(count[0], 100);
    assert_int_equal(count[1], 100);
    table_free(&t);

    uint32_t w[2] = {1, 3}; /* per unit of weight: 3 calls on the second weigh as 1 on the first */
    table_init(&t, &mica_balancer_least_request, NULL, 2, w);
    int in[2] = {0};
    for (int k = 0; k < 400; k++)
        in[call(&t, NULL, 0, 100, true)]++;
    assert_true(in[0] >= 95 && in[0] <= 105);
    table_free(&t);
}

static void test_random_spreads_within_five_percent(void **state)
{
    struct table t;
    table_init(&t, &mica_balancer_random, NULL, 3, NULL);
    int count[3] = {0};
    for (int i = 0; i < 30000; i++)
        count[call(&t, NULL, 0, 100, false)]++;
    for (int i = 0; i < 3; i++)
        assert_true(count[i] > 9500 && count[i] < 10500);
    table_free(&t);
}

/* ---- power of two choices ------------------------------------------------------------- */

static void test_p2c_moves_calls_away_from_a_slow_endpoint_and_still_samples_it(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &ro), 0);
    mica_balancer_t *lb;
    mica_balancer_opts_t o = {.p2c_decay_ms = 50, .breaker.kind = MICA_BREAKER_NONE};
    assert_int_equal(mica_balancer_new(&lb, rt, &o), 0);
    struct table t;
    table_init(&t, &mica_balancer_p2c, lb, 3, NULL);
    int count[3] = {0};
    for (int i = 0; i < 3000; i++) {
        int k = t.ops->pick(t.st, t.view, t.n, NULL);
        count[k]++;
        t.ops->done(t.st, t.view[k], 0, k == 1 ? 50000 : 1000); /* 1 is 50x slower */
    }
    print_message("p2c: %d %d %d\n", count[0], count[1], count[2]);
    assert_true(count[1] < 3000 / 20); /* under 5 % */
    /* Once its estimate is stale, the slow one gets a call again (its estimate can heal). */
    usleep(70 * 1000);
    bool sampled = false;
    for (int i = 0; i < 60 && !sampled; i++)
        sampled = t.ops->pick(t.st, t.view, t.n, NULL) == 1;
    assert_true(sampled);
    /* Equal latency, one with a queue: it gets few of the new calls. */
    table_free(&t);
    table_init(&t, &mica_balancer_p2c, lb, 3, NULL);
    t.pe[0].inflight = 50;
    memset(count, 0, sizeof(count));
    for (int i = 0; i < 3000; i++) {
        int k = t.ops->pick(t.st, t.view, t.n, NULL);
        count[k]++;
        t.ops->done(t.st, t.view[k], 0, 1000);
    }
    assert_true(count[0] < 3000 / 20);
    table_free(&t);
    mica_balancer_free(lb);
    mica_runtime_free(rt);
}

/* ---- ring hash ------------------------------------------------------------------------- */

static mica_pick_info_t keyed(mica_call_policy_t *p, char *buf, size_t size, int key)
{
    snprintf(buf, size, "user-%d", key);
    *p = (mica_call_policy_t){.hash_key = buf};
    return (mica_pick_info_t){.flags = MICA_CALL_POLICY, .policy = p};
}

static void test_ring_hash_keeps_keys_and_moves_only_the_removed_endpoints(void **state)
{
    enum { KEYS = 10000, N = 3 };
    static int owner[KEYS];
    struct table t;
    table_init(&t, &mica_balancer_ring_hash, NULL, N, NULL);
    int count[N] = {0};
    for (int k = 0; k < KEYS; k++) {
        mica_call_policy_t p;
        char buf[32];
        mica_pick_info_t info = keyed(&p, buf, sizeof(buf), k);
        owner[k] = index_of(&t, t.view[call(&t, &info, 0, 100, false)]);
        count[owner[k]]++;
        for (int again = 0; again < 3; again++) /* the same key, the same endpoint */
            assert_int_equal(index_of(&t, t.view[call(&t, &info, 0, 100, false)]), owner[k]);
    }
    print_message("ring: %d %d %d\n", count[0], count[1], count[2]);
    for (int i = 0; i < N; i++)
        assert_true(count[i] > KEYS / N * 85 / 100 && count[i] < KEYS / N * 115 / 100);

    /* An endpoint backing off: its keys go elsewhere, every other key stays. */
    t.pe[1].state = MICA_ENDPOINT_FAILING;
    t.pe[1].failing_until_ms = mica_now_ms() + 60000;
    for (int k = 0; k < KEYS; k++) {
        mica_call_policy_t p;
        char buf[32];
        mica_pick_info_t info = keyed(&p, buf, sizeof(buf), k);
        int now = index_of(&t, t.view[call(&t, &info, 0, 100, false)]);
        assert_int_not_equal(now, 1);
        if (owner[k] != 1)
            assert_int_equal(now, owner[k]);
    }
    t.pe[1].state = MICA_ENDPOINT_READY;

    /* Removing endpoint 0 moves its keys (about 1/N) and none of the others. */
    table_remove(&t, 0);
    int moved = 0;
    for (int k = 0; k < KEYS; k++) {
        mica_call_policy_t p;
        char buf[32];
        mica_pick_info_t info = keyed(&p, buf, sizeof(buf), k);
        int now = index_of(&t, t.view[call(&t, &info, 0, 100, false)]);
        if (now != owner[k]) {
            moved++;
            assert_int_equal(owner[k], 0);
        }
    }
    print_message("ring: %d of %d keys moved\n", moved, KEYS);
    assert_int_equal(moved, count[0]);
    assert_true(moved <= KEYS / N + KEYS * 3 / 100);
    /* No key: any endpoint. */
    int seen[N] = {0};
    for (int i = 0; i < 300; i++)
        seen[index_of(&t, t.view[call(&t, NULL, 0, 100, false)])]++;
    assert_true(seen[1] > 50 && seen[2] > 50);
    table_free(&t);
}

/* ---- per-endpoint breakers and counters ------------------------------------------------ */

struct breaker_fx {
    mica_runtime_t *rt;
    mica_balancer_t *lb;
    atomic_int phase; /* 1: counted, read them; 2: read, finish */
};

static void breaker_body(void *arg)
{
    struct breaker_fx *f = arg;
    struct table t;
    table_init(&t, &mica_balancer_round_robin, f->lb, 3, NULL);
    /* Endpoint 0 fails everything: its breaker opens after 5 failures in a row. */
    int to0 = 0;
    for (int i = 0; i < 300; i++) {
        int k = t.ops->pick(t.st, t.view, t.n, NULL);
        to0 += k == 0;
        t.ops->done(t.st, t.view[k], k == 0 ? 14 /* UNAVAILABLE */ : 0, 1000);
    }
    EXPECT_EQ(to0, 5);
    mica_balancer_endpoint_stats_t st;
    EXPECT_EQ(mica_balancer_endpoint_stats(f->lb, "10.0.0.1:50051", &st), 0);
    EXPECT_EQ(st.picks, 5);
    EXPECT_EQ(st.failures, 5);
    EXPECT_EQ(st.breaker.state, MICA_BREAKER_OPEN);
    EXPECT(st.breaker.rejections >= 90);
    EXPECT_EQ(mica_balancer_endpoint_stats(f->lb, "10.9.9.9:1", &st), MICA_ENOTFOUND);
    /* Another thread reads the counters while this one keeps picking. */
    atomic_store(&f->phase, 1);
    while (atomic_load(&f->phase) != 2) {
        int k = t.ops->pick(t.st, t.view, t.n, NULL);
        t.ops->done(t.st, t.view[k], 0, 1000);
        mica_yield();
    }
    /* Every breaker open: no endpoint, the call fails at once. */
    for (int i = 0; i < 1000000; i++) {
        int k = t.ops->pick(t.st, t.view, t.n, NULL);
        if (k < 0)
            break;
        t.ops->done(t.st, t.view[k], 14, 1000);
    }
    EXPECT_EQ(t.ops->pick(t.st, t.view, t.n, NULL), -1);
    table_free(&t);
    mica_runtime_stop(f->rt);
}

static void *reader(void *arg)
{
    struct breaker_fx *f = arg;
    while (atomic_load(&f->phase) != 1)
        usleep(1000);
    for (int i = 0; i < 200; i++) {
        mica_balancer_endpoint_stats_t st;
        if (mica_balancer_endpoint_stats(f->lb, "10.0.0.2:50051", &st) == 0)
            EXPECT(st.picks >= 147);
    }
    atomic_store(&f->phase, 2);
    return NULL;
}

static void breaker_start(int worker, void *arg)
{
    breaker_body(arg);
}

static void test_an_endpoints_breaker_takes_it_out_and_counters_are_readable(void **state)
{
    struct breaker_fx f = {0};
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&f.rt, &ro), 0);
    mica_balancer_opts_t o = {.breaker.kind = MICA_BREAKER_CLASSIC};
    assert_int_equal(mica_balancer_new(&f.lb, f.rt, &o), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader, &f), 0);
    mica_runtime_on_start(f.rt, breaker_start, &f);
    assert_int_equal(mica_runtime_run(f.rt), 0);
    pthread_join(th, NULL);
    mica_balancer_free(f.lb);
    mica_runtime_free(f.rt);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin_spreads_evenly_and_skips_an_endpoint_backing_off),
        cmocka_unit_test(test_weighted_round_robin_is_smooth_and_exact),
        cmocka_unit_test(test_least_request_takes_the_fewest_in_flight_and_rotates_ties),
        cmocka_unit_test(test_random_spreads_within_five_percent),
        cmocka_unit_test(test_p2c_moves_calls_away_from_a_slow_endpoint_and_still_samples_it),
        cmocka_unit_test(test_ring_hash_keeps_keys_and_moves_only_the_removed_endpoints),
        cmocka_unit_test(test_an_endpoints_breaker_takes_it_out_and_counters_are_readable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

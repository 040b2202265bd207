/* SPDX-License-Identifier: MIT */
/* Cache-aside: singleflight, negative caching, TTL jitter, the LRU's bounds and expiry, and
 * the Redis backend against a real redis-server. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "expect.h"
#include "mica/cache.h"
#include "mica/sync.h"
#include "redis_server.h"

static struct redis_server srv;

static int setup(void **state)
{
    return redis_start(&srv);
}

static int teardown(void **state)
{
    redis_cleanup(&srv);
    return 0;
}

/* ---- a slow source ---------------------------------------------------------------- */

struct source {
    int loads;
    int sleep_ms;
    int fail; /* 0, or the error every load returns */
};

static int load(mica_ctx_t *ctx, const char *key, void *arg, mica_cache_value_t **out)
{
    struct source *s = arg;
    s->loads++;
    int rc = mica_ctx_sleep(ctx, s->sleep_ms);
    if (rc != 0)
        return rc;
    if (s->fail)
        return s->fail;
    if (strncmp(key, "missing", 7) == 0)
        return MICA_ENOTFOUND;
    char v[64];
    int n = snprintf(v, sizeof(v), "value of %s", key);
    return mica_cache_value_new(out, v, (size_t)n);
}

struct run {
    mica_cache_t *c;
    struct source src;
    mica_wg_t *wg;
    int ok, notfound, other;
    mica_ctx_t *ctx; /* for the callers, or NULL */
};

static void caller(void *arg)
{
    struct run *x = arg;
    mica_cache_value_t *v = NULL;
    int rc = mica_cache_get(x->c, x->ctx, "hot", load, &x->src, &v);
    if (rc == 0 && v && strcmp(v->data, "value of hot") == 0)
        x->ok++;
    else
        x->other++;
    mica_cache_value_unref(v);
    mica_wg_done(x->wg);
}

/* Runs body with a cache over `be` on worker 0. */
struct cache_run {
    mica_runtime_t *rt;
    mica_cache_t *c;
    mica_redis_t *r;
    void (*body)(struct cache_run *);
};

static void cache_run_start(int worker, void *arg)
{
    struct cache_run *cr = arg;
    if (worker == 0) {
        cr->body(cr);
        mica_runtime_stop(cr->rt);
    }
}

static int run_cache(bool redis, const mica_cache_opts_t *opts, void (*body)(struct cache_run *))
{
    struct cache_run cr = {.body = body};
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000,
                             .offload_threads = 1, .offload_queue = 4};
    if (mica_runtime_new(&cr.rt, &o) != 0)
        return -1;
    mica_cache_backend_t be;
    if (redis) {
        if (mica_redis_new(&cr.r, cr.rt, srv.url, NULL) != 0 ||
            mica_cache_backend_redis(&be, cr.r, "t:cache:") != 0)
            return -2;
    } else if (mica_cache_backend_lru(&be, cr.rt, 100, 1 << 20) != 0) {
        return -3;
    }
    if (mica_cache_new(&cr.c, cr.rt, be, opts) != 0)
        return -4;
    mica_runtime_on_start(cr.rt, cache_run_start, &cr);
    int rc = mica_runtime_run(cr.rt);
    mica_cache_free(cr.c);
    mica_redis_free(cr.r);
    mica_runtime_free(cr.rt);
    return rc;
}

static void thundering_herd(struct cache_run *cr)
{
    static struct run x;
    memset(&x, 0, sizeof(x));
    x.c = cr->c;
    x.src.sleep_ms = 50;
    if (cr->r)
        mica_cache_del(cr->c, NULL, "hot");
    mica_wg_new(&x.wg);
    mica_wg_add(x.wg, 1000);
    for (int i = 0; i < 1000; i++)
        mica_go(caller, &x);
    EXPECT_EQ(mica_wg_wait(x.wg, NULL), 0);
    mica_wg_free(x.wg);
    EXPECT_EQ(x.src.loads, 1); /* one loader for 1,000 concurrent misses */
    EXPECT_EQ(x.ok, 1000);
    mica_cache_stats_t st;
    mica_cache_stats(cr->c, &st);
    EXPECT_EQ(st.loads, 1);
    EXPECT_EQ(st.misses, 1000);
    EXPECT_EQ(st.shared, 999);
    /* Now it is cached: a hit, no load. */
    mica_cache_value_t *v = NULL;
    EXPECT_EQ(mica_cache_get(cr->c, NULL, "hot", load, &x.src, &v), 0);
    mica_cache_value_unref(v);
    EXPECT_EQ(x.src.loads, 1);
    mica_cache_stats(cr->c, &st);
    EXPECT_EQ(st.hits, 1);
}

static void test_1000_concurrent_misses_run_the_loader_once_lru(void **state)
{
    assert_int_equal(run_cache(false, NULL, thundering_herd), 0);
    expect_no_failure();
}

static void test_1000_concurrent_misses_run_the_loader_once_redis(void **state)
{
    assert_int_equal(run_cache(true, NULL, thundering_herd), 0);
    expect_no_failure();
}

/* Negative caching, load errors, invalidation, set. */
static void negative(struct cache_run *cr)
{
    struct source src = {0};
    mica_cache_value_t *v = NULL;
    if (cr->r) {
        mica_cache_del(cr->c, NULL, "missing:1");
        mica_cache_del(cr->c, NULL, "k");
        mica_cache_del(cr->c, NULL, "broken");
    }
    EXPECT_EQ(mica_cache_get(cr->c, NULL, "missing:1", load, &src, &v), MICA_ENOTFOUND);
    EXPECT_EQ(mica_cache_get(cr->c, NULL, "missing:1", load, &src, &v), MICA_ENOTFOUND);
    EXPECT_EQ(src.loads, 1); /* the second came from the cache */
    mica_cache_stats_t st;
    mica_cache_stats(cr->c, &st);
    EXPECT_EQ(st.negative_hits, 1);
    /* The negative entry expires after not_found_ttl_ms (100 here, ±5 %). */
    mica_sleep_ms(150);
    EXPECT_EQ(mica_cache_get(cr->c, NULL, "missing:1", load, &src, &v), MICA_ENOTFOUND);
    EXPECT_EQ(src.loads, 2);

    /* A load error is returned, never cached. */
    struct source bad = {.fail = MICA_EIO};
    EXPECT_EQ(mica_cache_get(cr->c, NULL, "broken", load, &bad, &v), MICA_EIO);
    EXPECT_EQ(mica_cache_get(cr->c, NULL, "broken", load, &bad, &v), MICA_EIO);
    EXPECT_EQ(bad.loads, 2);
    mica_cache_stats(cr->c, &st);
    EXPECT_EQ(st.load_errors, 2);

    /* set, then get without a load; del, then a load again. */
    EXPECT_EQ(mica_cache_set(cr->c, NULL, "k", "v\0w", 3), 0);
    if (EXPECT_EQ(mica_cache_get(cr->c, NULL, "k", load, &src, &v), 0)) {
        EXPECT(v->len == 3 && memcmp(v->data, "v\0w", 3) == 0);
        mica_cache_value_unref(v);
    }
    EXPECT_EQ(src.loads, 2);
    EXPECT_EQ(mica_cache_del(cr->c, NULL, "k"), 0);
    if (EXPECT_EQ(mica_cache_get(cr->c, NULL, "k", load, &src, &v), 0)) {
        EXPECT(strcmp(v->data, "value of k") == 0);
        mica_cache_value_unref(v);
    }
    EXPECT_EQ(src.loads, 3);
}

static void test_not_found_is_cached_errors_are_not_lru(void **state)
{
    mica_cache_opts_t o = {.not_found_ttl_ms = 100};
    assert_int_equal(run_cache(false, &o, negative), 0);
    expect_no_failure();
}

static void test_not_found_is_cached_errors_are_not_redis(void **state)
{
    mica_cache_opts_t o = {.not_found_ttl_ms = 100};
    assert_int_equal(run_cache(true, &o, negative), 0);
    expect_no_failure();
}

/* The loader's caller gives up: the waiters, whose ctx is live, load it themselves. */
static void abandoned(struct cache_run *cr)
{
    static struct run leader, followers;
    memset(&leader, 0, sizeof(leader));
    memset(&followers, 0, sizeof(followers));
    leader.c = followers.c = cr->c;
    leader.src.sleep_ms = followers.src.sleep_ms = 100;
    mica_ctx_with_timeout(NULL, 20, &leader.ctx);
    mica_wg_new(&leader.wg);
    mica_wg_add(leader.wg, 11);
    followers.wg = leader.wg;
    mica_go(caller, &leader);
    for (int i = 0; i < 10; i++)
        mica_go(caller, &followers);
    EXPECT_EQ(mica_wg_wait(leader.wg, NULL), 0);
    mica_wg_free(leader.wg);
    mica_ctx_free(leader.ctx);
    EXPECT_EQ(leader.other, 1); /* timed out */
    EXPECT_EQ(followers.ok, 10);
    EXPECT_EQ(followers.src.loads, 1); /* one of them took over, once */
}

static void test_waiters_take_over_when_the_loading_caller_gives_up(void **state)
{
    assert_int_equal(run_cache(false, NULL, abandoned), 0);
    expect_no_failure();
}

/* ---- the LRU: bounds, expiry; TTL jitter --------------------------------------------- */

struct lru_case {
    mica_cache_backend_t be;
    int64_t ttls[200];
    int nttl;
};

static void lru_body(void *arg)
{
    struct lru_case *c = arg;
    const mica_cache_backend_ops_t *ops = c->be.ops;
    void *self = c->be.self;
    mica_cache_value_t *v, *got;
    char key[16];
    mica_cache_value_new(&v, "0123456789", 10);
    for (int i = 0; i < 10; i++) { /* max 8 entries: the two oldest go */
        snprintf(key, sizeof(key), "k%d", i);
        EXPECT_EQ(ops->set(self, NULL, key, v, 60000), 0);
    }
    EXPECT_EQ(ops->get(self, NULL, "k0", &got), MICA_ENOTFOUND);
    EXPECT_EQ(ops->get(self, NULL, "k1", &got), MICA_ENOTFOUND);
    EXPECT_EQ(ops->get(self, NULL, "k2", &got), 0); /* k2 is now the most recent */
    mica_cache_value_unref(got);
    EXPECT_EQ(ops->set(self, NULL, "k10", v, 60000), 0);
    EXPECT_EQ(ops->get(self, NULL, "k3", &got), MICA_ENOTFOUND); /* k3 was the oldest */
    EXPECT_EQ(ops->get(self, NULL, "k2", &got), 0);
    mica_cache_value_unref(got);
    /* Bytes: one big value evicts what it must. */
    mica_cache_value_t *big;
    char blob[700] = {0};
    mica_cache_value_new(&big, blob, sizeof(blob));
    EXPECT_EQ(ops->set(self, NULL, "big", big, 60000), 0);
    EXPECT_EQ(ops->get(self, NULL, "big", &got), 0);
    mica_cache_value_unref(got);
    EXPECT_EQ(ops->get(self, NULL, "k4", &got), MICA_ENOTFOUND);
    mica_cache_value_t *huge;
    char hblob[2000] = {0};
    mica_cache_value_new(&huge, hblob, sizeof(hblob));
    EXPECT_EQ(ops->set(self, NULL, "huge", huge, 60000), MICA_ELIMIT);
    mica_cache_value_unref(huge);
    mica_cache_value_unref(big);
    /* Expiry. */
    EXPECT_EQ(ops->set(self, NULL, "short", v, 30), 0);
    EXPECT_EQ(ops->get(self, NULL, "short", &got), 0);
    mica_cache_value_unref(got);
    mica_sleep_ms(50);
    EXPECT_EQ(ops->get(self, NULL, "short", &got), MICA_ENOTFOUND);
    /* A cached "not found". */
    EXPECT_EQ(ops->set(self, NULL, "neg", NULL, 60000), 0);
    got = v;
    EXPECT_EQ(ops->get(self, NULL, "neg", &got), 0);
    EXPECT(got == NULL);
    mica_cache_value_unref(v);
}

static void test_lru_evicts_by_entries_and_bytes_and_expires(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    struct lru_case c = {0};
    assert_int_equal(mica_cache_backend_lru(&c.be, rt, 8, 1500), 0);
    mica_runtime_free(rt);
    assert_int_equal(run_in_coroutine(1, lru_body, &c), 0);
    c.be.ops->free(c.be.self);
    expect_no_failure();
}

/* A backend that records the TTLs it is given. */
static int rec_get(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t **out)
{
    return MICA_ENOTFOUND;
}

static int rec_set(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t *val,
                   int64_t ttl_ms)
{
    struct lru_case *c = self;
    if (c->nttl < 200)
        c->ttls[c->nttl++] = ttl_ms;
    return 0;
}

static int rec_del(void *self, mica_ctx_t *ctx, const char *key)
{
    return 0;
}

static void rec_free(void *self)
{
}

static const mica_cache_backend_ops_t rec_ops = {"rec", rec_get, rec_set, rec_del, rec_free};

static struct lru_case jitter_case;

static void jitter_body(struct cache_run *cr)
{
    for (int i = 0; i < 200; i++)
        mica_cache_set(cr->c, NULL, "k", "v", 1);
}

static void test_ttls_are_spread_by_the_jitter(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    struct cache_run cr = {.rt = rt, .body = jitter_body};
    mica_cache_opts_t co = {.ttl_ms = 10000, .ttl_jitter = 0.05};
    assert_int_equal(mica_cache_new(&cr.c, rt, (mica_cache_backend_t){&rec_ops, &jitter_case}, &co),
                     0);
    mica_runtime_on_start(rt, cache_run_start, &cr);
    assert_int_equal(mica_runtime_run(rt), 0);
    mica_cache_free(cr.c);
    mica_runtime_free(rt);
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < jitter_case.nttl; i++) {
        assert_true(jitter_case.ttls[i] >= 9500 && jitter_case.ttls[i] <= 10500);
        lo = jitter_case.ttls[i] < lo ? jitter_case.ttls[i] : lo;
        hi = jitter_case.ttls[i] > hi ? jitter_case.ttls[i] : hi;
    }
    assert_int_equal(jitter_case.nttl, 200);
    assert_true(hi - lo > 600); /* spread over most of the ±5 % */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_1000_concurrent_misses_run_the_loader_once_lru),
        cmocka_unit_test(test_1000_concurrent_misses_run_the_loader_once_redis),
        cmocka_unit_test(test_not_found_is_cached_errors_are_not_lru),
        cmocka_unit_test(test_not_found_is_cached_errors_are_not_redis),
        cmocka_unit_test(test_waiters_take_over_when_the_loading_caller_gives_up),
        cmocka_unit_test(test_lru_evicts_by_entries_and_bytes_and_expires),
        cmocka_unit_test(test_ttls_are_spread_by_the_jitter),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

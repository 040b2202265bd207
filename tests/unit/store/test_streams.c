/* SPDX-License-Identifier: MIT */
/* Streams and consumer groups against a real redis-server: XADD, XREADGROUP (blocking
 * with the ctx), XACK, XAUTOCLAIM, and the consumer loop's at-least-once delivery. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "expect.h"
#include "mica/redis.h"
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

static void basics_body(mica_redis_t *r, void *arg)
{
    mica_redis_del(r, NULL, "s1", NULL);
    EXPECT_EQ(mica_redis_xgroup_create(r, NULL, "s1", "g", "0"), 0);
    EXPECT_EQ(mica_redis_xgroup_create(r, NULL, "s1", "g", "0"), 0); /* exists: fine */
    mica_redis_field_t f[] = {{"name", "ann", 3}, {"blob", "\0\1\2", 3}};
    char id[64] = "";
    EXPECT_EQ(mica_redis_xadd(r, NULL, "s1", f, 2, 1000, id, sizeof(id)), 0);
    EXPECT(strchr(id, '-') != NULL);
    mica_redis_reply_t *rep = NULL;
    if (EXPECT_EQ(mica_redis_xreadgroup(r, NULL, "s1", "g", "c1", 10, -1, ">", &rep), 0)) {
        const mica_redis_reply_t *e = mica_redis_xentries(rep);
        EXPECT(e && e->len == 1);
        if (e && e->len == 1) {
            EXPECT(strcmp(e->element[0]->element[0]->str, id) == 0);
            const mica_redis_reply_t *fv = e->element[0]->element[1];
            EXPECT_EQ(fv->len, 4);
            EXPECT(strcmp(fv->element[0]->str, "name") == 0);
            EXPECT(fv->element[3]->len == 3 && memcmp(fv->element[3]->str, "\0\1\2", 3) == 0);
        }
        mica_redis_reply_free(rep);
    }
    /* Nothing new: a blocking read ends by its BLOCK or the ctx, whichever is first. */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 150, &ctx);
    int64_t t0 = mica_now_ms();
    int rc = mica_redis_xreadgroup(r, ctx, "s1", "g", "c1", 10, 5000, ">", &rep);
    EXPECT(rc == MICA_ENOTFOUND || rc == MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 1000);
    mica_ctx_free(ctx);
    /* Pending for c1 until acked; XAUTOCLAIM hands it to c2 once idle long enough. */
    mica_sleep_ms(60);
    if (EXPECT_EQ(mica_redis_xautoclaim(r, NULL, "s1", "g", "c2", 50, "0-0", 10, &rep), 0)) {
        const mica_redis_reply_t *e = mica_redis_xentries(rep);
        EXPECT(e && e->len == 1 && strcmp(e->element[0]->element[0]->str, id) == 0);
        mica_redis_reply_free(rep);
    }
    int64_t acked = 0;
    EXPECT_EQ(mica_redis_xack(r, NULL, "s1", "g", id, &acked), 0);
    EXPECT_EQ(acked, 1);
    EXPECT_EQ(mica_redis_xack(r, NULL, "s1", "g", id, &acked), 0);
    EXPECT_EQ(acked, 0);
}

static void test_xadd_xreadgroup_xack_xautoclaim(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, basics_body, NULL), 0);
    expect_no_failure();
}

/* ---- at-least-once ------------------------------------------------------------------- */

struct consume_case {
    mica_ctx_t *ctx;
    char seen[16][64];
    int nseen;
    int flaky_failures;
};

static int handler(mica_ctx_t *ctx, const char *id, const mica_redis_reply_t *fields, void *arg)
{
    struct consume_case *c = arg;
    const char *body = fields->len >= 2 ? fields->element[1]->str : "";
    if (strcmp(body, "flaky") == 0 && c->flaky_failures++ == 0)
        return -1; /* fail the first delivery: it stays pending and comes back */
    if (c->nseen < 16)
        snprintf(c->seen[c->nseen++], sizeof(c->seen[0]), "%s", body);
    if (c->nseen == 4)
        mica_ctx_cancel(c->ctx);
    return 0;
}

static void producer(void *arg)
{
    mica_redis_t *r = arg;
    mica_sleep_ms(100);
    mica_redis_field_t f[] = {{"body", "late", 4}};
    EXPECT_EQ(mica_redis_xadd(r, NULL, "s2", f, 1, 0, NULL, 0), 0);
}

static bool seen(struct consume_case *c, const char *body)
{
    for (int i = 0; i < c->nseen; i++)
        if (strcmp(c->seen[i], body) == 0)
            return true;
    return false;
}

static void alo_body(mica_redis_t *r, void *arg)
{
    mica_redis_del(r, NULL, "s2", NULL);
    EXPECT_EQ(mica_redis_xgroup_create(r, NULL, "s2", "workers", "0"), 0);
    mica_redis_field_t f1[] = {{"body", "orphan", 6}}, f2[] = {{"body", "fresh", 5}},
                       f3[] = {{"body", "flaky", 5}};
    EXPECT_EQ(mica_redis_xadd(r, NULL, "s2", f1, 1, 0, NULL, 0), 0);
    /* Consumer "dead" takes the first entry and dies before XACK. */
    mica_redis_reply_t *rep = NULL;
    EXPECT_EQ(mica_redis_xreadgroup(r, NULL, "s2", "workers", "dead", 1, -1, ">", &rep), 0);
    mica_redis_reply_free(rep);
    EXPECT_EQ(mica_redis_xadd(r, NULL, "s2", f2, 1, 0, NULL, 0), 0);
    EXPECT_EQ(mica_redis_xadd(r, NULL, "s2", f3, 1, 0, NULL, 0), 0);
    mica_go(producer, r);

    struct consume_case c = {0};
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10000, &ctx);
    c.ctx = ctx;
    mica_redis_consumer_opts_t o = {.stream = "s2", .group = "workers", .consumer = "alive",
                                    .block_ms = 50, .claim_idle_ms = 200, .claim_every_ms = 100};
    int rc = mica_redis_consume(r, ctx, &o, handler, &c);
    EXPECT_EQ(rc, MICA_ECANCELED); /* the handler cancelled once it had all four */
    mica_ctx_free(ctx);
    EXPECT_EQ(c.nseen, 4);
    EXPECT(seen(&c, "orphan")); /* reclaimed from the dead consumer by XAUTOCLAIM */
    EXPECT(seen(&c, "fresh"));
    EXPECT(seen(&c, "flaky")); /* failed once, redelivered */
    EXPECT(seen(&c, "late"));
    EXPECT_EQ(c.flaky_failures, 2);
    /* Everything acknowledged: nothing pending in the group. */
    if (EXPECT_EQ(mica_redis_cmdl(r, NULL, &rep, "XPENDING", "s2", "workers", NULL), 0))
        EXPECT_EQ(rep->element[0]->integer, 0);
    mica_redis_reply_free(rep);
    /* Bad options. */
    mica_redis_consumer_opts_t bad = {.stream = "s2"};
    EXPECT_EQ(mica_redis_consume(r, NULL, &bad, handler, &c), MICA_EINVAL);
}

static void test_consumer_loop_delivers_at_least_once(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, alo_body, NULL), 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xadd_xreadgroup_xack_xautoclaim),
        cmocka_unit_test(test_consumer_loop_delivers_at_least_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

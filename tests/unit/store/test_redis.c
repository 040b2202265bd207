/* SPDX-License-Identifier: MIT */
/* The Redis client against a real redis-server: commands, replies, pipelining, scripts,
 * leases, blocking commands, pub/sub. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "expect.h"
#include "mica/redis.h"
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

/* ---- URLs ----------------------------------------------------------------------- */

static void test_urls_parse_and_bad_ones_are_refused(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    const char *good[] = {"redis://127.0.0.1:6379", "redis://:secret@127.0.0.1:6380/3",
                          "redis://user:p%40ss@localhost/2", "127.0.0.1:6379",
                          "redis://[::1]:6379/0", "redis://localhost"};
    const char *bad[] = {"rediss://127.0.0.1:6379", "redis://example.com:6379",
                         "redis://127.0.0.1:6379/x", "redis://127.0.0.1:99999", "redis://"};
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++) {
        mica_redis_t *r = NULL;
        assert_int_equal(mica_redis_new(&r, rt, good[i], NULL), 0);
        mica_redis_free(r);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        mica_redis_t *r = NULL;
        assert_int_equal(mica_redis_new(&r, rt, bad[i], NULL), MICA_EINVAL);
    }
    mica_redis_opts_t bado = {.pipelines = 100};
    mica_redis_t *r = NULL;
    assert_int_equal(mica_redis_new(&r, rt, NULL, &bado), MICA_EINVAL);
    mica_runtime_free(rt);
}

/* MICA_REDIS_URL names the server when the URL is NULL; the password and db are used. */
static void env_body(mica_redis_t *r, void *arg)
{
    mica_redis_reply_t *rep = NULL;
    EXPECT_EQ(mica_redis_cmdl(r, NULL, &rep, "CLIENT", "INFO", NULL), 0);
    EXPECT(rep && strstr(rep->str, "db=5"));
    mica_redis_reply_free(rep);
}

static void test_url_from_environment_with_db(void **state)
{
    char url[96];
    snprintf(url, sizeof(url), "%s/5", srv.url);
    setenv("MICA_REDIS_URL", url, 1);
    assert_int_equal(run_with_redis(1, NULL, NULL, env_body, NULL), 0);
    unsetenv("MICA_REDIS_URL");
    expect_no_failure();
}

/* ---- commands -------------------------------------------------------------------- */

static void commands_body(mica_redis_t *r, void *arg)
{
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5000, &ctx);
    mica_redis_reply_t *v = NULL;
    int64_t n = 0;

    mica_redis_del(r, ctx, "t:k", NULL);
    EXPECT_EQ(mica_redis_get(r, ctx, "t:k", &v), MICA_ENOTFOUND); /* nil */
    EXPECT(v == NULL);
    EXPECT_EQ(mica_redis_set(r, ctx, "t:k", "hello", 5, 0, 0), 0);
    if (EXPECT_EQ(mica_redis_get(r, ctx, "t:k", &v), 0)) {
        EXPECT_EQ(v->type, MICA_REDIS_STRING);
        EXPECT_EQ(v->len, 5);
        EXPECT(memcmp(v->str, "hello", 6) == 0);
        mica_redis_reply_free(v);
    }
    EXPECT_EQ(mica_redis_set(r, ctx, "t:k", "x", 1, 0, MICA_REDIS_NX), MICA_EEXIST);
    EXPECT_EQ(mica_redis_set(r, ctx, "t:none", "x", 1, 0, MICA_REDIS_XX), MICA_ENOTFOUND);
    EXPECT_EQ(mica_redis_set(r, ctx, "t:ttl", "x", 1, 1500, 0), 0); /* PX */
    mica_redis_reply_t *rep = NULL;
    EXPECT_EQ(mica_redis_cmdl(r, ctx, &rep, "PTTL", "t:ttl", NULL), 0);
    EXPECT(rep && rep->type == MICA_REDIS_INTEGER && rep->integer > 1000 && rep->integer <= 1500);
    mica_redis_reply_free(rep);
    EXPECT_EQ(mica_redis_set(r, ctx, "t:ttl", "x", 1, 60000, 0), 0); /* EX */
    EXPECT_EQ(mica_redis_cmdl(r, ctx, &rep, "TTL", "t:ttl", NULL), 0);
    EXPECT(rep && rep->integer > 55 && rep->integer <= 60);
    mica_redis_reply_free(rep);
    EXPECT_EQ(mica_redis_expire(r, ctx, "t:ttl", 100000), 0);
    EXPECT_EQ(mica_redis_expire(r, ctx, "t:none", 1000), MICA_ENOTFOUND);

    /* Binary values: every byte value, NULs included, both ways. */
    char bin[512];
    for (int i = 0; i < 512; i++)
        bin[i] = (char)(i * 7);
    EXPECT_EQ(mica_redis_set(r, ctx, "t:bin", bin, sizeof(bin), 0, 0), 0);
    if (EXPECT_EQ(mica_redis_get(r, ctx, "t:bin", &v), 0)) {
        EXPECT_EQ(v->len, sizeof(bin));
        EXPECT(memcmp(v->str, bin, sizeof(bin)) == 0);
        mica_redis_reply_free(v);
    }
    /* Binary keys through argv. */
    const char *argv[] = {"SET", "t:\0key", "\r\n$3\r\n"};
    size_t lens[] = {3, 6, 7};
    EXPECT_EQ(mica_redis_cmd(r, ctx, 3, argv, lens, NULL), 0);
    const char *gargv[] = {"GET", "t:\0key"};
    size_t glens[] = {3, 6};
    EXPECT_EQ(mica_redis_cmd(r, ctx, 2, gargv, glens, &rep), 0);
    EXPECT(rep && rep->len == 7 && memcmp(rep->str, "\r\n$3\r\n", 7) == 0);
    mica_redis_reply_free(rep);

    /* 1 MiB, there and back. */
    size_t big = 1 << 20;
    char *blob = malloc(big);
    for (size_t i = 0; i < big; i++)
        blob[i] = (char)(i * 2654435761u >> 13);
    EXPECT_EQ(mica_redis_set(r, ctx, "t:big", blob, big, 0, 0), 0);
    if (EXPECT_EQ(mica_redis_get(r, ctx, "t:big", &v), 0)) {
        EXPECT_EQ(v->len, big);
        EXPECT(memcmp(v->str, blob, big) == 0);
        mica_redis_reply_free(v);
    }
    free(blob);

    /* Counters, and an error reply: MICA_EPROTO with the server's message. */
    mica_redis_del(r, ctx, "t:n", NULL);
    EXPECT_EQ(mica_redis_incr(r, ctx, "t:n", &n), 0);
    EXPECT_EQ(n, 1);
    EXPECT_EQ(mica_redis_incrby(r, ctx, "t:n", -11, &n), 0);
    EXPECT_EQ(n, -10);
    EXPECT_EQ(mica_redis_incr(r, ctx, "t:k", &n), MICA_EPROTO);
    EXPECT(strstr(mica_redis_errmsg(r), "not an integer") != NULL);
    EXPECT_EQ(mica_redis_cmdl(r, ctx, &rep, "LPUSH", "t:k", "x", NULL), MICA_EPROTO);
    EXPECT(rep && rep->type == MICA_REDIS_ERROR && strncmp(rep->str, "WRONGTYPE", 9) == 0);
    mica_redis_reply_free(rep);
    EXPECT_EQ(mica_redis_cmdl(r, ctx, &rep, "NOSUCHCOMMAND", NULL), MICA_EPROTO);
    mica_redis_reply_free(rep);
    EXPECT_EQ(mica_redis_del(r, ctx, "t:n", &n), 0);
    EXPECT_EQ(n, 1);
    EXPECT_EQ(mica_redis_del(r, ctx, "t:n", &n), 0);
    EXPECT_EQ(n, 0);

    /* Hashes. */
    mica_redis_del(r, ctx, "t:h", NULL);
    EXPECT_EQ(mica_redis_hset(r, ctx, "t:h", "a", "1", 1, &n), 0);
    EXPECT_EQ(n, 1);
    EXPECT_EQ(mica_redis_hset(r, ctx, "t:h", "a", "2", 1, &n), 0);
    EXPECT_EQ(n, 0);
    EXPECT_EQ(mica_redis_hset(r, ctx, "t:h", "b", "\0b", 2, NULL), 0);
    if (EXPECT_EQ(mica_redis_hget(r, ctx, "t:h", "a", &v), 0)) {
        EXPECT(strcmp(v->str, "2") == 0);
        mica_redis_reply_free(v);
    }
    EXPECT_EQ(mica_redis_hget(r, ctx, "t:h", "zz", &v), MICA_ENOTFOUND);
    if (EXPECT_EQ(mica_redis_hgetall(r, ctx, "t:h", &rep), 0)) {
        EXPECT_EQ(rep->len, 4);
        mica_redis_reply_free(rep);
    }
    if (EXPECT_EQ(mica_redis_hgetall(r, ctx, "t:nohash", &rep), 0)) {
        EXPECT_EQ(rep->len, 0);
        mica_redis_reply_free(rep);
    }

    /* MGET with a missing key in the middle: a NIL element. */
    const char *keys[] = {"t:k", "t:none", "t:bin"};
    if (EXPECT_EQ(mica_redis_mget(r, ctx, keys, 3, &rep), 0)) {
        EXPECT_EQ(rep->len, 3);
        EXPECT_EQ(rep->element[0]->type, MICA_REDIS_STRING);
        EXPECT_EQ(rep->element[1]->type, MICA_REDIS_NIL);
        EXPECT_EQ(rep->element[2]->len, 512);
        mica_redis_reply_free(rep);
    }
    /* Status, integer, nested arrays. */
    EXPECT_EQ(mica_redis_cmdl(r, ctx, &rep, "PING", NULL), 0);
    EXPECT(rep && rep->type == MICA_REDIS_STATUS && strcmp(rep->str, "PONG") == 0);
    mica_redis_reply_free(rep);
    EXPECT_EQ(mica_redis_cmdl(r, ctx, &rep, "COMMAND", "INFO", "GET", NULL), 0);
    EXPECT(rep && rep->type == MICA_REDIS_ARRAY && rep->element[0]->type == MICA_REDIS_ARRAY);
    mica_redis_reply_free(rep);
    /* Connection-state commands are refused on the shared connection. */
    EXPECT_EQ(mica_redis_cmdl(r, ctx, NULL, "MULTI", NULL), MICA_EINVAL);
    EXPECT_EQ(mica_redis_cmdl(r, ctx, NULL, "subscribe", "x", NULL), MICA_EINVAL);
    mica_ctx_free(ctx);
    /* A ctx that has already ended fails at once. */
    mica_ctx_with_timeout(NULL, 0, &ctx);
    EXPECT_EQ(mica_redis_get(r, ctx, "t:k", &v), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
}

static void test_commands_replies_binary_large_nil_and_errors(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, commands_body, NULL), 0);
    expect_no_failure();
}

/* ---- auto-pipelining -------------------------------------------------------------- */

#define NCORO 1000

struct pipe_case {
    mica_redis_t *r;
    mica_wg_t *wg;
    int ok;
};

struct pipe_arg {
    struct pipe_case *c;
    int i;
};

static void pipe_coro(void *arg)
{
    struct pipe_arg *a = arg;
    mica_redis_t *r = a->c->r;
    char key[32], val[64];
    snprintf(key, sizeof(key), "p:%d", a->i);
    int good = 1;
    for (int round = 0; round < 3 && good; round++) {
        int len = snprintf(val, sizeof(val), "value-%d-%d-%.*s", a->i, round, a->i % 20,
                           "xxxxxxxxxxxxxxxxxxxxxxx");
        good = EXPECT_EQ(mica_redis_set(r, NULL, key, val, (size_t)len, 0, 0), 0);
        mica_redis_reply_t *v = NULL;
        int64_t n = 0;
        good = good && EXPECT_EQ(mica_redis_get(r, NULL, key, &v), 0) &&
               EXPECT_EQ(v->len, len) && EXPECT(memcmp(v->str, val, (size_t)len) == 0);
        mica_redis_reply_free(v);
        good = good && EXPECT_EQ(mica_redis_incrby(r, NULL, "p:sum", a->i, &n), 0);
    }
    a->c->ok += good;
    mica_wg_done(a->c->wg);
}

static void pipeline_body(mica_redis_t *r, void *arg)
{
    struct pipe_case c = {.r = r};
    static struct pipe_arg args[NCORO];
    mica_redis_del(r, NULL, "p:sum", NULL);
    mica_redis_stats_t before, after;
    mica_redis_stats(r, &before);
    mica_wg_new(&c.wg);
    mica_wg_add(c.wg, NCORO);
    for (int i = 0; i < NCORO; i++) {
        args[i] = (struct pipe_arg){&c, i};
        EXPECT_EQ(mica_go(pipe_coro, &args[i]), 0);
    }
    EXPECT_EQ(mica_wg_wait(c.wg, NULL), 0);
    mica_wg_free(c.wg);
    EXPECT_EQ(c.ok, NCORO);
    mica_redis_stats(r, &after);
    uint64_t cmds = after.commands - before.commands, batches = after.batches - before.batches;
    EXPECT_EQ(cmds, 3 * 3 * NCORO);
    /* Pipelined: far fewer writes than commands (one per scheduler round, ideally). */
    EXPECT(batches * 20 < cmds);
    int64_t sum = 0;
    EXPECT_EQ(mica_redis_incrby(r, NULL, "p:sum", 0, &sum), 0);
    EXPECT_EQ(sum, 3LL * NCORO * (NCORO - 1) / 2);
}

static void test_1000_coroutines_pipelined_each_get_their_own_reply(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, pipeline_body, NULL), 0);
    expect_no_failure();
}

/* Two workers, two pipelines each: every worker has its own connections. */
static void two_workers_coro(void *arg)
{
    struct pipe_arg *a = arg;
    char key[32];
    snprintf(key, sizeof(key), "w:%d", a->i);
    int64_t n = 0;
    for (int k = 0; k < 50; k++)
        EXPECT_EQ(mica_redis_incr(a->c->r, NULL, key, &n), 0);
    EXPECT_EQ(n, 50);
    mica_wg_done(a->c->wg);
}

static void two_workers_body(mica_redis_t *r, void *arg)
{
    struct pipe_case c = {.r = r};
    static struct pipe_arg args[64];
    for (int i = 0; i < 64; i++) {
        char key[32];
        snprintf(key, sizeof(key), "w:%d", i);
        mica_redis_del(r, NULL, key, NULL);
    }
    mica_wg_new(&c.wg);
    mica_wg_add(c.wg, 64);
    for (int i = 0; i < 64; i++) {
        args[i] = (struct pipe_arg){&c, i};
        mica_go_on(i % 2, two_workers_coro, &args[i]);
    }
    EXPECT_EQ(mica_wg_wait(c.wg, NULL), 0);
    mica_wg_free(c.wg);
}

static void test_every_worker_pipelines_on_its_own_connections(void **state)
{
    mica_redis_opts_t o = {.pipelines = 2};
    assert_int_equal(run_with_redis(2, srv.url, &o, two_workers_body, NULL), 0);
    expect_no_failure();
}

/* ---- scripts ----------------------------------------------------------------------- */

static void scripts_body(mica_redis_t *r, void *arg)
{
    mica_redis_script_t *s;
    EXPECT_EQ(mica_redis_script_new(&s, "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}"), 0);
    EXPECT_EQ(strlen(mica_redis_script_sha(s)), 40);
    EXPECT_EQ(mica_redis_cmdl(r, NULL, NULL, "SCRIPT", "FLUSH", NULL), 0);
    const char *keys[] = {"k1"}, *args[] = {"a", "21"};
    mica_redis_reply_t *rep = NULL;
    for (int i = 0; i < 2; i++) { /* NOSCRIPT then EVAL; then EVALSHA finds it */
        if (EXPECT_EQ(mica_redis_eval(r, NULL, s, 1, keys, 2, args, &rep), 0)) {
            EXPECT_EQ(rep->len, 3);
            EXPECT(strcmp(rep->element[0]->str, "k1") == 0);
            EXPECT(strcmp(rep->element[1]->str, "a") == 0);
            EXPECT_EQ(rep->element[2]->integer, 42);
        }
        mica_redis_reply_free(rep);
    }
    const char *sha = mica_redis_script_sha(s);
    EXPECT_EQ(mica_redis_cmdl(r, NULL, &rep, "SCRIPT", "EXISTS", sha, NULL), 0);
    EXPECT(rep && rep->element[0]->integer == 1);
    mica_redis_reply_free(rep);
    mica_redis_script_free(s);
    /* A Lua error: MICA_EPROTO and the message. */
    EXPECT_EQ(mica_redis_script_new(&s, "return redis.call('INCR', KEYS[1])"), 0);
    mica_redis_set(r, NULL, "t:str", "abc", 3, 0, 0);
    const char *k2[] = {"t:str"};
    EXPECT_EQ(mica_redis_eval(r, NULL, s, 1, k2, 0, NULL, &rep), MICA_EPROTO);
    EXPECT(rep && rep->type == MICA_REDIS_ERROR);
    EXPECT(strstr(mica_redis_errmsg(r), "not an integer") != NULL);
    mica_redis_reply_free(rep);
    mica_redis_script_free(s);
}

static void test_scripts_evalsha_falls_back_to_eval_on_noscript(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, scripts_body, NULL), 0);
    expect_no_failure();
}

/* ---- blocking commands and leases ----------------------------------------------------- */

struct blocking_case {
    mica_redis_t *r;
    mica_event_t popped;
    int64_t pipelined_while_blocked;
};

static void blpop_coro(void *arg)
{
    struct blocking_case *c = arg;
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 3000, &ctx);
    mica_redis_reply_t *rep = NULL;
    EXPECT_EQ(mica_redis_cmdl(c->r, ctx, &rep, "BLPOP", "t:list", "0", NULL), 0);
    EXPECT(rep && rep->len == 2 && strcmp(rep->element[1]->str, "item") == 0);
    mica_redis_reply_free(rep);
    mica_ctx_free(ctx);
    mica_event_set(&c->popped);
}

static void blocking_body(mica_redis_t *r, void *arg)
{
    struct blocking_case c = {.r = r, .popped = MICA_EVENT_INIT};
    mica_redis_del(r, NULL, "t:list", NULL);
    mica_go(blpop_coro, &c);
    mica_sleep_ms(50);
    /* BLPOP holds a dedicated connection: the shared pipeline still flows. */
    for (int i = 0; i < 100; i++)
        EXPECT_EQ(mica_redis_cmdl(r, NULL, NULL, "PING", NULL), 0);
    EXPECT(!mica_event_is_set(&c.popped));
    EXPECT_EQ(mica_redis_cmdl(r, NULL, NULL, "RPUSH", "t:list", "item", NULL), 0);
    EXPECT_EQ(mica_event_wait(&c.popped, NULL, mica_deadline_in(3000)), 0);

    /* A blocking command is bounded by the ctx (the connection is then not reused). */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 100, &ctx);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_redis_cmdl(r, ctx, NULL, "BLPOP", "t:empty", "0", NULL), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 1000);
    mica_ctx_free(ctx);

    /* A transaction on a leased connection. */
    mica_redis_conn_t *cn;
    if (EXPECT_EQ(mica_redis_acquire(r, NULL, &cn), 0)) {
        const char *multi[] = {"MULTI"}, *set[] = {"SET", "t:tx", "1"}, *incr[] = {"INCR", "t:tx"},
                   *exec[] = {"EXEC"};
        mica_redis_reply_t *rep = NULL;
        EXPECT_EQ(mica_redis_conn_cmd(cn, NULL, 1, multi, NULL, NULL), 0);
        EXPECT_EQ(mica_redis_conn_cmd(cn, NULL, 3, set, NULL, &rep), 0);
        EXPECT(rep && rep->type == MICA_REDIS_STATUS && strcmp(rep->str, "QUEUED") == 0);
        mica_redis_reply_free(rep);
        EXPECT_EQ(mica_redis_conn_cmd(cn, NULL, 2, incr, NULL, NULL), 0);
        EXPECT_EQ(mica_redis_conn_cmd(cn, NULL, 1, exec, NULL, &rep), 0);
        EXPECT(rep && rep->len == 2 && rep->element[1]->integer == 2);
        mica_redis_reply_free(rep);
        mica_redis_release(cn);
    }
    /* The pool hands the idle connection back out, and caps how many are lent. */
    mica_redis_conn_t *held[8];
    for (int i = 0; i < 8; i++)
        EXPECT_EQ(mica_redis_acquire(r, NULL, &held[i]), 0);
    mica_ctx_with_timeout(NULL, 50, &ctx);
    mica_redis_conn_t *extra;
    EXPECT_EQ(mica_redis_acquire(r, ctx, &extra), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    for (int i = 0; i < 8; i++)
        mica_redis_release(held[i]);
}

static void test_blocking_commands_and_transactions_use_dedicated_connections(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, blocking_body, NULL), 0);
    expect_no_failure();
}

/* ---- pub/sub ------------------------------------------------------------------------ */

struct sub_case {
    mica_redis_t *r;
    int got;
    char last[64];
};

static void publisher(void *arg)
{
    struct sub_case *c = arg;
    mica_sleep_ms(30);
    for (int i = 0; i < 5; i++) {
        char m[16];
        int n = snprintf(m, sizeof(m), "m%d", i);
        int64_t receivers = 0;
        EXPECT_EQ(mica_redis_publish(c->r, NULL, i % 2 ? "news.b" : "news.a", m, (size_t)n,
                                     &receivers),
                  0);
    }
}

static int on_msg(const mica_redis_msg_t *m, void *arg)
{
    struct sub_case *c = arg;
    EXPECT(m->pattern && strcmp(m->pattern, "news.*") == 0);
    snprintf(c->last, sizeof(c->last), "%.*s", (int)m->len, m->data);
    return ++c->got == 5 ? 1 : 0;
}

static void pubsub_body(mica_redis_t *r, void *arg)
{
    struct sub_case c = {.r = r};
    mica_redis_sub_t *s;
    const char *chans[] = {"chan1", "chan2"};
    if (!EXPECT_EQ(mica_redis_subscribe(r, NULL, chans, 2, false, &s), 0))
        return;
    int64_t receivers = 0;
    EXPECT_EQ(mica_redis_publish(r, NULL, "chan2", "bin\0ary", 7, &receivers), 0);
    EXPECT_EQ(receivers, 1);
    mica_redis_msg_t m;
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 2000, &ctx);
    if (EXPECT_EQ(mica_redis_sub_next(s, ctx, &m), 0)) {
        EXPECT(strcmp(m.channel, "chan2") == 0);
        EXPECT(m.pattern == NULL);
        EXPECT(m.len == 7 && memcmp(m.data, "bin\0ary", 7) == 0);
    }
    mica_ctx_free(ctx);
    mica_ctx_with_timeout(NULL, 50, &ctx);
    EXPECT_EQ(mica_redis_sub_next(s, ctx, &m), MICA_ETIMEDOUT); /* nothing more */
    mica_ctx_free(ctx);
    mica_redis_sub_free(s);

    const char *pat[] = {"news.*"};
    if (!EXPECT_EQ(mica_redis_subscribe(r, NULL, pat, 1, true, &s), 0))
        return;
    mica_go(publisher, &c);
    mica_ctx_with_timeout(NULL, 3000, &ctx);
    EXPECT_EQ(mica_redis_sub_run(s, ctx, on_msg, &c), 1);
    EXPECT_EQ(c.got, 5);
    EXPECT(strcmp(c.last, "m4") == 0);
    mica_ctx_free(ctx);
    mica_redis_sub_free(s);
}

static void test_pubsub_subscribe_next_and_run_loop(void **state)
{
    assert_int_equal(run_with_redis(1, srv.url, NULL, pubsub_body, NULL), 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls_parse_and_bad_ones_are_refused),
        cmocka_unit_test(test_url_from_environment_with_db),
        cmocka_unit_test(test_commands_replies_binary_large_nil_and_errors),
        cmocka_unit_test(test_1000_coroutines_pipelined_each_get_their_own_reply),
        cmocka_unit_test(test_every_worker_pipelines_on_its_own_connections),
        cmocka_unit_test(test_scripts_evalsha_falls_back_to_eval_on_noscript),
        cmocka_unit_test(test_blocking_commands_and_transactions_use_dedicated_connections),
        cmocka_unit_test(test_pubsub_subscribe_next_and_run_loop),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

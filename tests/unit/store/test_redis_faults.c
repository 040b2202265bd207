/* SPDX-License-Identifier: MIT */
/* The Redis client under faults: the server killed and restarted mid-load, a server that
 * accepts and never answers, refused connections with backoff, an oversized reply. Every
 * call must end within its ctx deadline, and the pool must recover. */
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

#define SLACK_MS 300 /* scheduling slack over a ctx deadline (valgrind is slow) */

/* ---- restart mid-load ------------------------------------------------------------- */

struct load_case {
    mica_redis_t *r;
    struct redis_server *srv;
    mica_wg_t *wg;
    atomic_bool stop;
    int ok_before, failed, ok_after, late;
    int64_t restarted_at;
    int errors_seen[8];
};

static void loader(void *arg)
{
    struct load_case *c = arg;
    while (!atomic_load(&c->stop)) {
        mica_ctx_t *ctx;
        mica_ctx_with_timeout(NULL, 500, &ctx);
        int64_t t0 = mica_now_ms();
        int64_t n = 0;
        int rc = mica_redis_incr(c->r, ctx, "f:counter", &n);
        int64_t took = mica_now_ms() - t0;
        mica_ctx_free(ctx);
        if (took > 500 + SLACK_MS)
            c->late++;
        if (rc == 0) {
            if (c->restarted_at && t0 > c->restarted_at)
                c->ok_after++;
            else
                c->ok_before++;
        } else {
            c->failed++;
            EXPECT(rc == MICA_ECONNRESET || rc == MICA_ECONNREFUSED || rc == MICA_EUNAVAILABLE ||
                   rc == MICA_ETIMEDOUT);
            mica_sleep_ms(5);
        }
    }
    mica_wg_done(c->wg);
}

static int restart_server(void *arg)
{
    struct load_case *c = arg;
    redis_kill(c->srv);
    test_sleep_ms(300);
    return redis_start(c->srv);
}

static void restart_body(mica_redis_t *r, void *arg)
{
    struct load_case *c = arg;
    c->r = r;
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 100);
    for (int i = 0; i < 100; i++)
        mica_go(loader, c);
    mica_sleep_ms(300);
    int rc = -1;
    /* Kill and restart on the offload pool: the workers keep running the load meanwhile. */
    EXPECT_EQ(mica_offload(NULL, NULL, restart_server, c, &rc), 0);
    EXPECT_EQ(rc, 0);
    c->restarted_at = mica_now_ms();
    mica_sleep_ms(2500); /* > backoff_max: the pool must have reconnected by now */
    atomic_store(&c->stop, true);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    mica_wg_free(c->wg);
    EXPECT(c->ok_before > 0);
    EXPECT(c->failed > 0);
    EXPECT(c->ok_after > 0);
    EXPECT_EQ(c->late, 0);
    mica_redis_stats_t st;
    mica_redis_stats(r, &st);
    EXPECT(st.conns_lost >= 1);
    EXPECT(st.connects >= 2);
}

static void test_server_restarted_mid_load_fails_calls_fast_then_recovers(void **state)
{
    struct redis_server srv = {0};
    assert_int_equal(redis_start(&srv), 0);
    static struct load_case c;
    memset(&c, 0, sizeof(c));
    c.srv = &srv;
    mica_redis_opts_t o = {.backoff_min_ms = 20, .backoff_max_ms = 400};
    int rc = run_with_redis(1, srv.url, &o, restart_body, &c);
    redis_cleanup(&srv);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

/* ---- a server that never answers ------------------------------------------------------- */

static pid_t start_mute_server(int port)
{
    char code[256];
    snprintf(code, sizeof(code),
             "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,"
             "socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',%d))\ns.listen(64)\nc=[]\n"
             "while True: c.append(s.accept())\n",
             port);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("python3", "python3", "-c", code, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 300; i++) { /* until it listens */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        close(fd);
        if (ok)
            return pid;
        test_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

struct mute_case {
    struct redis_server *srv;
    pid_t mute;
    mica_redis_t *r;
    mica_wg_t *wg;
    int timeouts, late, other;
};

static void mute_caller(void *arg)
{
    struct mute_case *c = arg;
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 200, &ctx);
    int64_t t0 = mica_now_ms();
    mica_redis_reply_t *v = NULL;
    int rc = mica_redis_get(c->r, ctx, "k", &v);
    int64_t took = mica_now_ms() - t0;
    mica_ctx_free(ctx);
    if (rc == MICA_ETIMEDOUT)
        c->timeouts++;
    else
        c->other++;
    if (took > 200 + SLACK_MS)
        c->late++;
    mica_wg_done(c->wg);
}

static int swap_to_redis(void *arg)
{
    struct mute_case *c = arg;
    kill(c->mute, SIGKILL);
    waitpid(c->mute, NULL, 0);
    return redis_start(c->srv);
}

static void mute_body(mica_redis_t *r, void *arg)
{
    struct mute_case *c = arg;
    c->r = r;
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 50);
    for (int i = 0; i < 50; i++)
        mica_go(mute_caller, c);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    EXPECT_EQ(c->timeouts, 50);
    EXPECT_EQ(c->late, 0);
    /* A blocking command on a dedicated connection, too. */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 200, &ctx);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_redis_cmdl(r, ctx, NULL, "BLPOP", "l", "0", NULL), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 <= 200 + SLACK_MS);
    mica_ctx_free(ctx);
    /* The shared connection is closed once its replies are read_timeout_ms overdue. */
    mica_sleep_ms(600);
    mica_redis_stats_t st;
    mica_redis_stats(r, &st);
    EXPECT(st.conns_lost >= 1);
    /* A real server takes the port: the pool recovers. */
    int rc = -1;
    EXPECT_EQ(mica_offload(NULL, NULL, swap_to_redis, c, &rc), 0);
    EXPECT_EQ(rc, 0);
    mica_sleep_ms(500); /* the mute server's last connection times out too */
    int ok = 0;
    for (int i = 0; i < 40 && ok < 5; i++) {
        mica_ctx_with_timeout(NULL, 500, &ctx);
        if (mica_redis_set(r, ctx, "k", "v", 1, 0, 0) == 0)
            ok++;
        else
            mica_sleep_ms(50);
        mica_ctx_free(ctx);
    }
    EXPECT_EQ(ok, 5);
    mica_wg_free(c->wg);
}

static void test_mute_server_gives_errors_within_the_deadline_and_the_pool_recovers(void **state)
{
    struct redis_server srv = {0};
    srv.port = test_free_port();
    struct mute_case c = {.srv = &srv};
    c.mute = start_mute_server(srv.port);
    assert_true(c.mute > 0);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
    mica_redis_opts_t o = {.read_timeout_ms = 300, .backoff_min_ms = 20, .backoff_max_ms = 200};
    int rc = run_with_redis(1, url, &o, mute_body, &c);
    if (c.mute > 0 && srv.pid == 0) {
        kill(c.mute, SIGKILL);
        waitpid(c.mute, NULL, 0);
    }
    redis_cleanup(&srv);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

/* ---- refused connections: backoff, then recovery ------------------------------------- */

static int start_it(void *arg)
{
    return redis_start(arg);
}

static void refused_body(mica_redis_t *r, void *arg)
{
    struct redis_server *srv = arg;
    int rc = mica_redis_set(r, NULL, "k", "v", 1, 0, 0);
    EXPECT_EQ(rc, MICA_ECONNREFUSED);
    EXPECT(strstr(mica_redis_errmsg(r), "connect") != NULL);
    /* Within the backoff: fail at once, no new attempt. */
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_redis_set(r, NULL, "k", "v", 1, 0, 0), MICA_EUNAVAILABLE);
    EXPECT(mica_now_ms() - t0 < 50);
    EXPECT(strstr(mica_redis_errmsg(r), "reconnecting") != NULL);
    EXPECT_EQ(mica_redis_cmdl(r, NULL, NULL, "BLPOP", "x", "1", NULL), MICA_EUNAVAILABLE);
    mica_redis_stats_t st;
    mica_redis_stats(r, &st);
    EXPECT_EQ(st.connect_errors, 1);
    EXPECT_EQ(mica_offload(NULL, NULL, start_it, srv, &rc), 0);
    EXPECT_EQ(rc, 0);
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = mica_redis_set(r, NULL, "k", "v", 1, 0, 0) == 0;
        if (!ok)
            mica_sleep_ms(20);
    }
    EXPECT(ok);
}

static void test_refused_connects_back_off_and_recover(void **state)
{
    struct redis_server srv = {0};
    srv.port = test_free_port();
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
    mica_redis_opts_t o = {.backoff_min_ms = 200, .backoff_max_ms = 400};
    int rc = run_with_redis(1, url, &o, refused_body, &srv);
    redis_cleanup(&srv);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

/* ---- a reply over the cap; AUTH ------------------------------------------------------------ */

static void cap_body(mica_redis_t *r, void *arg)
{
    char big[4000];
    memset(big, 'x', sizeof(big));
    EXPECT_EQ(mica_redis_set(r, NULL, "big", big, sizeof(big), 0, 0), 0);
    mica_redis_reply_t *v = NULL;
    EXPECT_EQ(mica_redis_get(r, NULL, "big", &v), MICA_ELIMIT);
    EXPECT(strstr(mica_redis_errmsg(r), "max_reply_bytes") != NULL);
    EXPECT_EQ(mica_redis_set(r, NULL, "small", "y", 1, 0, 0), 0); /* a new connection */
    const char *argv[] = {"SET", "big2", big};
    size_t lens[] = {3, 4, sizeof(big)};
    char huge[9000];
    memset(huge, 'z', sizeof(huge));
    argv[2] = huge;
    lens[2] = sizeof(huge);
    EXPECT_EQ(mica_redis_cmd(r, NULL, 3, argv, lens, NULL), MICA_ELIMIT); /* max_pending_bytes */
}

static void test_replies_and_requests_over_their_caps_fail_with_elimit(void **state)
{
    struct redis_server srv = {0};
    assert_int_equal(redis_start(&srv), 0);
    mica_redis_opts_t o = {.max_reply_bytes = 3000, .max_pending_bytes = 8000};
    int rc = run_with_redis(1, srv.url, &o, cap_body, NULL);
    redis_cleanup(&srv);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

static void auth_body(mica_redis_t *r, void *arg)
{
    int expect = *(int *)arg;
    EXPECT_EQ(mica_redis_set(r, NULL, "k", "v", 1, 0, 0), expect);
}

static void test_auth_on_connect(void **state)
{
    struct redis_server srv = {0};
    assert_int_equal(redis_start(&srv), 0);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "redis-cli -p %d CONFIG SET requirepass s3cret >/dev/null", srv.port);
    assert_int_equal(system(cmd), 0);
    char url[96];
    snprintf(url, sizeof(url), "redis://:s3cret@127.0.0.1:%d/1", srv.port);
    int ok = 0, refused = MICA_EUNAUTHENTICATED;
    int rc1 = run_with_redis(1, url, NULL, auth_body, &ok);
    snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d", srv.port);
    int rc2 = run_with_redis(1, url, NULL, auth_body, &refused);
    redis_cleanup(&srv);
    assert_int_equal(rc1, 0);
    assert_int_equal(rc2, 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_restarted_mid_load_fails_calls_fast_then_recovers),
        cmocka_unit_test(test_mute_server_gives_errors_within_the_deadline_and_the_pool_recovers),
        cmocka_unit_test(test_refused_connects_back_off_and_recover),
        cmocka_unit_test(test_replies_and_requests_over_their_caps_fail_with_elimit),
        cmocka_unit_test(test_auth_on_connect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

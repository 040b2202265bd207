/* SPDX-License-Identifier: MIT */
/*
 * PostgreSQL backend faults and pool behaviour against a real PostgreSQL 15:
 * a ctx ending during pg_sleep (prompt return, the query really cancelled
 * on the server), a backend terminated mid-transaction and while idle in
 * the pool, a server that accepts and never answers, pool limits,
 * serialization failures retried, the prepared-statement cache.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include "mica/db.h"
#include "mica/sync.h"
#include "../runtime/helpers.h"
#include "store_helpers.h"

struct tc {
    mica_db_t *db;
    void *extra;
};

static int group_setup(void **state)
{
    return pg_start();
}

static int group_teardown(void **state)
{
    pg_stop();
    return 0;
}

static void run_with(mica_db_t *db, int workers, void (*body)(void *), void *extra)
{
    struct tc c = {.db = db, .extra = extra};
    assert_int_equal(run_in_coroutine(workers, body, &c), 0);
    expect_no_failure();
}

static void run_case(const mica_db_opts_t *o, int workers, void (*body)(void *), void *extra)
{
    mica_db_t *db;
    assert_int_equal(mica_db_open(&db, pg_url(), o), 0);
    run_with(db, workers, body, extra);
    mica_db_close(db);
}

static int64_t scalar(mica_db_t *db, const char *sql, const mica_db_value_t *p, int n)
{
    mica_db_rows_t *r;
    int64_t v = -1;
    if (mica_db_query_row(db, NULL, sql, p, n, &r) == 0) {
        mica_db_rows_int64(r, 0, 0, &v);
        mica_db_rows_free(r);
    }
    return v;
}

/* Active server-side pg_sleep(10) calls, waiting up to 2 s for them to go. */
static int64_t sleepers_after_wait(mica_db_t *db)
{
    int64_t n = -1;
    for (int i = 0; i < 100; i++) {
        n = scalar(db,
                   "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                   "AND query LIKE 'SELECT pg_sleep(10)%'",
                   NULL, 0);
        if (n == 0)
            break;
        mica_sleep_ms(20);
    }
    return n;
}

/* ---- cancel ------------------------------------------------------------------ */

static void canceller_coro(void *arg)
{
    mica_sleep_ms(50);
    mica_ctx_cancel(arg);
}

static void cancel_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(scalar(c->db, "SELECT 1", NULL, 0), 1);
    /* Deadline: returns within a few ms of it. */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 100, &ctx);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_db_exec(c->db, ctx, "SELECT pg_sleep(10)", NULL, 0, NULL), MICA_ETIMEDOUT);
    int64_t took = mica_now_ms() - t0;
    EXPECT(took >= 95 && took < 100 + slack_ms(50));
    mica_ctx_free(ctx);
    EXPECT_EQ(sleepers_after_wait(c->db), 0);
    /* Cancel from another coroutine. */
    mica_ctx_with_cancel(NULL, &ctx);
    mica_go(canceller_coro, ctx);
    t0 = mica_now_ms();
    EXPECT_EQ(mica_db_query(c->db, ctx, "SELECT pg_sleep(10)", NULL, 0,
                            &(mica_db_rows_t *){NULL}),
              MICA_ECANCELED);
    took = mica_now_ms() - t0;
    EXPECT(took >= 45 && took < 50 + slack_ms(50));
    mica_ctx_free(ctx);
    EXPECT_EQ(sleepers_after_wait(c->db), 0);
    /* The cancelled connections were drained and reused, not dropped. */
    mica_sleep_ms(50);
    EXPECT_EQ(scalar(c->db, "SELECT 2", NULL, 0), 2);
    mica_db_stats_t st;
    mica_db_stats(c->db, &st);
    EXPECT_EQ(st.cancels, 2);
    EXPECT_EQ(st.dropped, 0);
    EXPECT(st.connects <= 3);
}

static void test_ctx_end_during_pg_sleep_returns_promptly_and_cancels_on_the_server(void **state)
{
    run_case(NULL, 1, cancel_body, NULL);
}

static int sleep_in_tx(mica_db_tx_t *tx, void *arg)
{
    mica_db_value_t p = mica_db_int64(1);
    int rc = mica_db_tx_exec(tx, "INSERT INTO t_ctx VALUES ($1)", &p, 1, NULL);
    if (rc == 0)
        rc = mica_db_tx_exec(tx, "SELECT pg_sleep(10)", NULL, 0, NULL);
    return rc;
}

static void cancel_tx_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(mica_db_exec(c->db, NULL, "DROP TABLE IF EXISTS t_ctx", NULL, 0, NULL), 0);
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE t_ctx (id BIGINT PRIMARY KEY)", NULL, 0,
                           NULL),
              0);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 100, &ctx);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_db_tx(c->db, ctx, NULL, sleep_in_tx, NULL), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 100 + slack_ms(50));
    mica_ctx_free(ctx);
    EXPECT_EQ(sleepers_after_wait(c->db), 0);
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_ctx", NULL, 0), 0);
    /* Nothing is left open: no session idles in a transaction. */
    mica_sleep_ms(50);
    EXPECT_EQ(scalar(c->db,
                     "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
                     NULL, 0),
              0);
}

static void test_ctx_end_inside_a_transaction_rolls_it_back(void **state)
{
    run_case(NULL, 1, cancel_tx_body, NULL);
}

/* ---- terminated backends ------------------------------------------------------------ */

struct kill_arg {
    mica_db_t *admin;
    int64_t pid;
};

static int killed_mid_tx(mica_db_tx_t *tx, void *arg)
{
    struct kill_arg *k = arg;
    mica_db_rows_t *r;
    int rc = mica_db_tx_query(tx, "SELECT pg_backend_pid()", NULL, 0, &r);
    if (rc != 0)
        return rc;
    mica_db_rows_int64(r, 0, 0, &k->pid);
    mica_db_rows_free(r);
    mica_db_value_t p = mica_db_int64(7);
    if ((rc = mica_db_tx_exec(tx, "INSERT INTO t_kill VALUES ($1)", &p, 1, NULL)) != 0)
        return rc;
    mica_db_value_t pid = mica_db_int64(k->pid);
    EXPECT_EQ(scalar(k->admin, "SELECT pg_terminate_backend($1::int)::int", &pid, 1), 1);
    mica_sleep_ms(50);
    p = mica_db_int64(8);
    return mica_db_tx_exec(tx, "INSERT INTO t_kill VALUES ($1)", &p, 1, NULL);
}

static void kill_body(void *arg)
{
    struct tc *c = arg;
    struct kill_arg k = {.admin = c->extra};
    EXPECT_EQ(mica_db_exec(c->db, NULL, "DROP TABLE IF EXISTS t_kill", NULL, 0, NULL), 0);
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE t_kill (id BIGINT PRIMARY KEY)", NULL, 0,
                           NULL),
              0);
    EXPECT_EQ(mica_db_tx(c->db, NULL, NULL, killed_mid_tx, &k), MICA_EUNAVAILABLE);
    EXPECT(mica_db_errmsg()[0] != '\0');
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_kill", NULL, 0), 0);
    /* A pooled connection terminated while idle is noticed before reuse. */
    int64_t pid = scalar(c->db, "SELECT pg_backend_pid()", NULL, 0);
    mica_db_value_t p = mica_db_int64(pid);
    EXPECT_EQ(scalar(k.admin, "SELECT pg_terminate_backend($1::int)::int", &p, 1), 1);
    mica_sleep_ms(50);
    int64_t pid2 = scalar(c->db, "SELECT pg_backend_pid()", NULL, 0);
    EXPECT(pid2 > 0 && pid2 != pid);
    mica_db_stats_t st;
    mica_db_stats(c->db, &st);
    EXPECT_EQ(st.dropped, 2);
}

static void test_terminated_backends_fail_their_call_and_are_replaced(void **state)
{
    mica_db_t *admin;
    assert_int_equal(mica_db_open(&admin, pg_url(), NULL), 0);
    mica_db_opts_t o = {.pool_size = 1};
    run_case(&o, 1, kill_body, admin);
    mica_db_close(admin);
}

/* ---- a server that never answers ---------------------------------------------------- */

struct mute {
    int lfd;
    int fds[64];
    int n;
};

static void *mute_main(void *arg)
{
    struct mute *m = arg;
    for (;;) {
        int fd = accept(m->lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        if (m->n < 64)
            m->fds[m->n++] = fd; /* accepted, read from never, answered never */
    }
}

static void mute_body(void *arg)
{
    struct tc *c = arg;
    for (int i = 0; i < 3; i++) {
        mica_ctx_t *ctx;
        mica_ctx_with_timeout(NULL, 150, &ctx);
        int64_t t0 = mica_now_ms();
        EXPECT_EQ(mica_db_exec(c->db, ctx, "SELECT 1", NULL, 0, NULL), MICA_ETIMEDOUT);
        int64_t took = mica_now_ms() - t0;
        EXPECT(took >= 145 && took < 150 + slack_ms(50));
        mica_ctx_free(ctx);
    }
    /* Without a ctx, the connect timeout bounds it. */
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_db_exec(c->db, NULL, "SELECT 1", NULL, 0, NULL), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 300 + slack_ms(100));
    mica_db_stats_t st;
    mica_db_stats(c->db, &st);
    EXPECT_EQ(st.connects, 4);
    EXPECT_EQ(st.connect_errors, 4);
}

static void test_a_server_that_never_answers_fails_within_the_deadline(void **state)
{
    struct mute m = {0};
    m.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(m.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    getsockname(m.lfd, (struct sockaddr *)&sa, &len);
    assert_int_equal(listen(m.lfd, 16), 0);
    pthread_t t;
    pthread_create(&t, NULL, mute_main, &m);
    char url[128];
    snprintf(url, sizeof(url), "postgres://postgres@127.0.0.1:%d/postgres", ntohs(sa.sin_port));
    mica_db_t *db;
    mica_db_opts_t o = {.pool_size = 1, .connect_timeout_ms = 300};
    assert_int_equal(mica_db_open(&db, url, &o), 0);
    run_with(db, 1, mute_body, NULL);
    mica_db_close(db);
    shutdown(m.lfd, SHUT_RDWR);
    close(m.lfd);
    pthread_join(t, NULL);
    for (int i = 0; i < m.n; i++)
        close(m.fds[i]);
}

/* ---- pool ------------------------------------------------------------------------- */

struct pool_arg {
    struct tc *c;
    mica_wg_t *wg;
    atomic_int ok;
};

static void pool_user(void *arg)
{
    struct pool_arg *a = arg;
    if (mica_db_exec(a->c->db, NULL, "SELECT pg_sleep(0.02)", NULL, 0, NULL) == 0)
        atomic_fetch_add(&a->ok, 1);
    mica_wg_done(a->wg);
}

static void pool_body(void *arg)
{
    struct tc *c = arg;
    struct pool_arg a = {.c = c};
    mica_wg_new(&a.wg);
    mica_wg_add(a.wg, 20);
    for (int i = 0; i < 20; i++)
        mica_go(pool_user, &a);
    /* While all are busy, a short ctx gives up waiting for a connection. */
    mica_sleep_ms(5);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10, &ctx);
    EXPECT_EQ(mica_db_exec(c->db, ctx, "SELECT 1", NULL, 0, NULL), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    EXPECT_EQ(mica_wg_wait(a.wg, NULL), 0);
    mica_wg_free(a.wg);
    EXPECT_EQ(atomic_load(&a.ok), 20);
    /* The same statement again and again is prepared once per connection. */
    for (int i = 0; i < 50; i++) {
        mica_db_value_t p = mica_db_int64(i);
        EXPECT_EQ(scalar(c->db, "SELECT $1 + 1", &p, 1), i + 1);
    }
    /* Prepared statements dropped behind the cache's back are prepared again. */
    EXPECT_EQ(mica_db_exec(c->db, NULL, "DEALLOCATE ALL", NULL, 0, NULL), 0);
    for (int i = 0; i < 4; i++) {
        mica_db_value_t p = mica_db_int64(i);
        EXPECT_EQ(scalar(c->db, "SELECT $1 + 1", &p, 1), i + 1);
    }
    mica_db_stats_t st;
    mica_db_stats(c->db, &st);
    EXPECT_EQ(st.connects, 2);
    EXPECT(st.pool_waits >= 18);
    /* pg_sleep and $1 + 1 on each of 2 connections, DEALLOCATE ALL, $1 + 1 again */
    EXPECT(st.prepares <= 6);
    EXPECT_EQ(scalar(c->db,
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mica_test'",
                     NULL, 0),
              2);
}

static void test_pool_caps_connections_and_waiters_respect_their_ctx(void **state)
{
    mica_db_opts_t o = {.pool_size = 2};
    run_case(&o, 1, pool_body, NULL);
}

/* ---- serialization failures ------------------------------------------------------ */

struct ser {
    mica_db_t *db;
    mica_wg_t *both_read, *done;
    atomic_int attempts;
    int id;
};

static int ser_tx(mica_db_tx_t *tx, void *arg)
{
    struct ser *s = arg;
    int attempt = atomic_fetch_add(&s->attempts, 1);
    mica_db_rows_t *r;
    int rc = mica_db_tx_query(tx, "SELECT coalesce(sum(v), 0) FROM t_ser", NULL, 0, &r);
    if (rc != 0)
        return rc;
    int64_t sum = 0;
    mica_db_rows_int64(r, 0, 0, &sum);
    mica_db_rows_free(r);
    if (attempt < 2) { /* the first two attempts overlap: both read before either writes */
        mica_wg_done(s->both_read);
        mica_ctx_t *ctx;
        mica_ctx_with_timeout(NULL, 2000, &ctx);
        mica_wg_wait(s->both_read, ctx);
        mica_ctx_free(ctx);
    }
    mica_db_value_t p = mica_db_int64(sum + 1);
    return mica_db_tx_exec(tx, "INSERT INTO t_ser VALUES ($1)", &p, 1, NULL);
}

static void ser_worker(void *arg)
{
    struct ser *s = arg;
    mica_db_tx_opts_t o = {.serializable = true, .retries = 3};
    EXPECT_EQ(mica_db_tx(s->db, NULL, &o, ser_tx, s), 0);
    mica_wg_done(s->done);
}

static void ser_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(mica_db_exec(c->db, NULL, "DROP TABLE IF EXISTS t_ser", NULL, 0, NULL), 0);
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE t_ser (v BIGINT)", NULL, 0, NULL), 0);
    struct ser s = {.db = c->db};
    mica_wg_new(&s.both_read);
    mica_wg_new(&s.done);
    mica_wg_add(s.both_read, 2);
    mica_wg_add(s.done, 2);
    mica_go(ser_worker, &s);
    mica_go(ser_worker, &s);
    EXPECT_EQ(mica_wg_wait(s.done, NULL), 0);
    mica_wg_free(s.both_read);
    mica_wg_free(s.done);
    EXPECT_EQ(atomic_load(&s.attempts), 3); /* one of the two was retried once */
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_ser", NULL, 0), 2);
    EXPECT_EQ(scalar(c->db, "SELECT max(v) FROM t_ser", NULL, 0), 2);
}

static void test_serialization_failures_are_retried(void **state)
{
    run_case(NULL, 1, ser_body, NULL);
}

/* ---- pipelines -------------------------------------------------------------------- */

static void pipe_body(void *arg)
{
    struct tc *c = arg;
    mica_db_batch_item_t items[10];
    mica_db_value_t p[10];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 10; i++) {
            p[i] = mica_db_int64(i * 10 + round);
            items[i] = (mica_db_batch_item_t){.sql = i % 2 ? "SELECT $1 * 2" : "SELECT $1 + 1",
                                              .params = &p[i],
                                              .nparams = 1,
                                              .want_rows = true};
        }
        if (!EXPECT_EQ(mica_db_batch(c->db, NULL, items, 10), 0))
            return;
        for (int i = 0; i < 10; i++) {
            int64_t v;
            EXPECT_EQ(mica_db_rows_int64(items[i].rows, 0, 0, &v), 0);
            EXPECT_EQ(v, i % 2 ? (i * 10 + round) * 2 : i * 10 + round + 1);
            mica_db_rows_free(items[i].rows);
        }
    }
    /* A pipeline cancelled mid-way leaves a usable pool. */
    mica_db_batch_item_t slow[2] = {{.sql = "SELECT 1"}, {.sql = "SELECT pg_sleep(10)"}};
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 50, &ctx);
    EXPECT_EQ(mica_db_batch(c->db, ctx, slow, 2), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    EXPECT_EQ(sleepers_after_wait(c->db), 0);
    mica_db_stats_t st;
    mica_db_stats(c->db, &st);
    EXPECT_EQ(st.pipelines, 4);
    /* Each statement once: two in the first batches, two in the slow one,
     * and the pg_stat_activity query of sleepers_after_wait(). */
    EXPECT_EQ(st.prepares, 5);
}

static void test_pipeline_batches_reuse_prepared_statements_and_cancel_cleanly(void **state)
{
    mica_db_opts_t o = {.pool_size = 1};
    run_case(&o, 1, pipe_body, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_end_during_pg_sleep_returns_promptly_and_cancels_on_the_server),
        cmocka_unit_test(test_ctx_end_inside_a_transaction_rolls_it_back),
        cmocka_unit_test(test_terminated_backends_fail_their_call_and_are_replaced),
        cmocka_unit_test(test_a_server_that_never_answers_fails_within_the_deadline),
        cmocka_unit_test(test_pool_caps_connections_and_waiters_respect_their_ctx),
        cmocka_unit_test(test_serialization_failures_are_retried),
        cmocka_unit_test(test_pipeline_batches_reuse_prepared_statements_and_cancel_cleanly),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

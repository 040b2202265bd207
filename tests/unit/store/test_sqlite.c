/* SPDX-License-Identifier: MIT */
/*
 * SQLite backend: group commit under many concurrent writers, a failing
 * unit failing only itself, interactive transactions through the writer,
 * bounds on a transaction that holds the writer and on a long read, and
 * durability: every id a child process saw committed is in the file after
 * the child is killed with SIGKILL, and its failed transaction is not.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "mica/db.h"
#include "mica/sync.h"
#include "../runtime/helpers.h"
#include "store_helpers.h"

static char dir[64];

static int group_setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/mica-sqlite-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *file_url(const char *name)
{
    static char url[160];
    snprintf(url, sizeof(url), "sqlite://%s/%s", dir, name);
    return url;
}

struct tc {
    mica_db_t *db;
    mica_wg_t *wg;
    atomic_int next, ok, dup;
};

static int64_t scalar(mica_db_t *db, const char *sql)
{
    mica_db_rows_t *r;
    int64_t v = -1;
    if (mica_db_query_row(db, NULL, sql, NULL, 0, &r) == 0) {
        mica_db_rows_int64(r, 0, 0, &v);
        mica_db_rows_free(r);
    }
    return v;
}

static void run_case(const char *url, const mica_db_opts_t *o, int workers, void (*body)(void *))
{
    struct tc c = {0};
    assert_int_equal(mica_db_open(&c.db, url, o), 0);
    assert_int_equal(run_in_coroutine(workers, body, &c), 0);
    expect_no_failure();
    mica_db_close(c.db);
}

/* ---- group commit ------------------------------------------------------------ */

static void writer(void *arg)
{
    struct tc *c = arg;
    for (int i = 0; i < 10; i++) {
        int id = atomic_fetch_add(&c->next, 1);
        /* Every 7th insert repeats an id taken by an earlier one. */
        int64_t key = id % 7 == 6 ? id - 1 : id;
        mica_db_value_t p[] = {mica_db_int64(key), mica_db_int64(mica_worker_id())};
        int rc = mica_db_exec(c->db, NULL, "INSERT INTO t_gc VALUES ($1, $2)", p, 2, NULL);
        if (rc == 0)
            atomic_fetch_add(&c->ok, 1);
        else if (EXPECT_EQ(rc, MICA_EEXIST))
            atomic_fetch_add(&c->dup, 1);
    }
    mica_wg_done(c->wg);
}

static void group_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE t_gc (id INTEGER PRIMARY KEY, w INTEGER)",
                           NULL, 0, NULL),
              0);
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 200);
    for (int i = 0; i < 200; i++)
        mica_go_on(i % 2, writer, c);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    mica_wg_free(c->wg);
    /* The ids whose insert was a duplicate (id % 7 == 6) failed alone. */
    int dups = 0;
    for (int id = 0; id < 2000; id++)
        dups += id % 7 == 6;
    EXPECT_EQ(atomic_load(&c->dup), dups);
    EXPECT_EQ(atomic_load(&c->ok), 2000 - dups);
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_gc"), 2000 - dups);
    mica_db_stats_t st;
    mica_db_stats(c->db, &st);
    EXPECT(st.group_max > 1);
    EXPECT(st.group_commits < st.group_units); /* units shared commits */
    EXPECT_EQ(st.errors, dups);
}

static void test_concurrent_writers_share_group_commits_and_fail_alone(void **state)
{
    run_case(file_url("group.db"), NULL, 2, group_body);
}

/* A failing batch (a savepoint) rolls back alone; units in its group commit. */
static void batcher(void *arg)
{
    struct tc *c = arg;
    int id = atomic_fetch_add(&c->next, 1);
    mica_db_value_t p[2] = {mica_db_int64(id * 2), mica_db_int64(id % 5 == 0 ? 0 : id * 2 + 1)};
    mica_db_batch_item_t items[2] = {
        {.sql = "INSERT INTO t_b (id) VALUES ($1)", .params = &p[0], .nparams = 1},
        {.sql = "INSERT INTO t_b (id) VALUES ($1)", .params = &p[1], .nparams = 1},
    };
    int rc = mica_db_batch(c->db, NULL, items, 2);
    if (id % 5 == 0 && id != 0)
        EXPECT_EQ(rc, MICA_EEXIST);
    else if (rc == 0)
        atomic_fetch_add(&c->ok, 1);
    else
        EXPECT(id == 0 && rc == MICA_EEXIST); /* 0 and 0 */
    mica_wg_done(c->wg);
}

static void batch_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE t_b (id INTEGER PRIMARY KEY)", NULL, 0,
                           NULL),
              0);
    /* id 0 exists, so every batch that inserts 0 fails. */
    mica_db_value_t zero = mica_db_int64(0);
    EXPECT_EQ(mica_db_exec(c->db, NULL, "INSERT INTO t_b VALUES ($1)", &zero, 1, NULL), 0);
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 100);
    for (int i = 0; i < 100; i++)
        mica_go(batcher, c);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    mica_wg_free(c->wg);
    EXPECT_EQ(atomic_load(&c->ok), 80);
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_b"), 1 + 80 * 2);
    /* A failed batch left nothing: no even id of a multiple of 5 but 0. */
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_b WHERE id > 0 AND (id / 2) % 5 = 0"), 0);
}

static void test_a_failing_batch_rolls_back_only_its_savepoint(void **state)
{
    run_case("sqlite::memory:", NULL, 1, batch_body);
}

/* ---- interactive transactions ------------------------------------------------- */

static int transfer(mica_db_tx_t *tx, void *arg)
{
    struct tc *c = arg;
    int n = atomic_fetch_add(&c->next, 1);
    mica_db_value_t from = mica_db_int64(n % 10), to = mica_db_int64((n + 3) % 10);
    mica_db_rows_t *r;
    int rc = mica_db_tx_query(tx, "SELECT balance FROM acct WHERE id = $1", &from, 1, &r);
    if (rc != 0)
        return rc;
    int64_t bal;
    mica_db_rows_int64(r, 0, 0, &bal);
    mica_db_rows_free(r);
    if (bal < 5)
        return MICA_EPRECONDITION;
    mica_yield(); /* others queue up meanwhile */
    mica_db_value_t p[] = {mica_db_int64(5), from};
    if ((rc = mica_db_tx_exec(tx, "UPDATE acct SET balance = balance - $1 WHERE id = $2", p, 2,
                              NULL)) != 0)
        return rc;
    p[1] = to;
    return mica_db_tx_exec(tx, "UPDATE acct SET balance = balance + $1 WHERE id = $2", p, 2, NULL);
}

static void mover(void *arg)
{
    struct tc *c = arg;
    int rc = mica_db_tx(c->db, NULL, NULL, transfer, c);
    EXPECT(rc == 0 || rc == MICA_EPRECONDITION);
    if (rc == 0)
        atomic_fetch_add(&c->ok, 1);
    mica_wg_done(c->wg);
}

static void tx_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INTEGER)",
                           NULL, 0, NULL),
              0);
    for (int i = 0; i < 10; i++) {
        mica_db_value_t p[] = {mica_db_int64(i), mica_db_int64(20)};
        EXPECT_EQ(mica_db_exec(c->db, NULL, "INSERT INTO acct VALUES ($1, $2)", p, 2, NULL), 0);
    }
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 100);
    for (int i = 0; i < 100; i++)
        mica_go_on(i % 2, mover, c);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    mica_wg_free(c->wg);
    EXPECT(atomic_load(&c->ok) >= 40);
    EXPECT_EQ(scalar(c->db, "SELECT sum(balance) FROM acct"), 200);
    EXPECT_EQ(scalar(c->db, "SELECT min(balance) FROM acct") >= 0, 1);
}

static void test_interactive_transactions_through_the_writer_keep_invariants(void **state)
{
    run_case(file_url("tx.db"), NULL, 2, tx_body);
}

static int dawdle(mica_db_tx_t *tx, void *arg)
{
    mica_db_value_t p = mica_db_int64(1);
    int rc = mica_db_tx_exec(tx, "INSERT INTO t_idle VALUES ($1)", &p, 1, NULL);
    if (rc != 0)
        return rc;
    mica_sleep_ms(300); /* holds the writer past tx_idle_timeout_ms */
    p = mica_db_int64(2);
    return mica_db_tx_exec(tx, "INSERT INTO t_idle VALUES ($1)", &p, 1, NULL);
}

static void other_writer(void *arg)
{
    struct tc *c = arg;
    mica_sleep_ms(20);
    int64_t t0 = mica_now_ms();
    mica_db_value_t p = mica_db_int64(3);
    EXPECT_EQ(mica_db_exec(c->db, NULL, "INSERT INTO t_idle VALUES ($1)", &p, 1, NULL), 0);
    EXPECT(mica_now_ms() - t0 < 100 + slack_ms(100)); /* not the full 300 ms */
    mica_wg_done(c->wg);
}

static void cancel_progress_body(void *arg)
{
    struct tc *c = arg;
    /* A long read is interrupted when its ctx ends. */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 50, &ctx);
    int64_t t0 = mica_now_ms();
    mica_db_rows_t *r;
    EXPECT_EQ(mica_db_query(c->db, ctx,
                            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                            "WHERE x < 1000000000) SELECT count(*) FROM n",
                            NULL, 0, &r),
              MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 50 + slack_ms(50));
    mica_ctx_free(ctx);
    /* A transaction that sits on the writer is rolled back after the idle timeout. */
    EXPECT_EQ(mica_db_exec(c->db, NULL, "CREATE TABLE t_idle (id INTEGER PRIMARY KEY)", NULL, 0,
                           NULL),
              0);
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 1);
    mica_go(other_writer, c);
    EXPECT_EQ(mica_db_tx(c->db, NULL, NULL, dawdle, NULL), MICA_ETIMEDOUT);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    mica_wg_free(c->wg);
    EXPECT_EQ(scalar(c->db, "SELECT count(*) FROM t_idle"), 1);
    EXPECT_EQ(scalar(c->db, "SELECT id FROM t_idle"), 3);
}

static void test_long_reads_and_idle_transactions_are_bounded(void **state)
{
    mica_db_opts_t o = {.tx_idle_timeout_ms = 50};
    run_case(file_url("bounds.db"), &o, 1, cancel_progress_body);
}

/* ---- durability ------------------------------------------------------------------ */

static int report_fd;
static mica_db_t *child_db;

static int failing_tx(mica_db_tx_t *tx, void *arg)
{
    mica_db_value_t p = mica_db_int64(-1);
    int rc = mica_db_tx_exec(tx, "INSERT INTO orders (id, note) VALUES ($1, 'never')", &p, 1, NULL);
    return rc ? rc : MICA_EINVAL;
}

static void child_writer(void *arg)
{
    int64_t base = (intptr_t)arg * 1000000;
    for (int64_t i = 0;; i++) {
        mica_db_value_t p = mica_db_int64(base + i);
        if (mica_db_exec(child_db, NULL, "INSERT INTO orders (id, note) VALUES ($1, 'x')", &p, 1,
                         NULL) != 0)
            return;
        int64_t id = base + i;
        if (write(report_fd, &id, sizeof(id)) != sizeof(id)) /* committed: tell the parent */
            return;
    }
}

static void child_start(int worker, void *arg)
{
    if (worker != 0)
        return;
    if (mica_db_exec(child_db, NULL, "CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)",
                     NULL, 0, NULL) != 0)
        _exit(3);
    mica_db_tx(child_db, NULL, NULL, failing_tx, NULL);
    for (int i = 0; i < 40; i++)
        mica_go_on(i % 2, child_writer, (void *)(intptr_t)i);
}

struct check {
    mica_db_t *db;
    int64_t *ids;
    size_t n;
};

static void check(void *arg)
{
    struct check *chk = arg;
    mica_db_rows_t *r;
    if (!EXPECT_EQ(mica_db_query(chk->db, NULL, "SELECT id FROM orders ORDER BY id", NULL, 0, &r),
                   0))
        return;
    size_t rows = mica_db_rows_count(r);
    EXPECT(rows >= chk->n);
    /* Sorted rows; look each reported id up by binary search. */
    size_t missing = 0;
    for (size_t i = 0; i < chk->n; i++) {
        size_t lo = 0, hi = rows;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            int64_t v;
            mica_db_rows_int64(r, mid, 0, &v);
            if (v < chk->ids[i])
                lo = mid + 1;
            else
                hi = mid;
        }
        int64_t v = INT64_MIN;
        if (lo < rows)
            mica_db_rows_int64(r, lo, 0, &v);
        missing += v != chk->ids[i];
    }
    EXPECT_EQ(missing, 0);
    int64_t first;
    mica_db_rows_int64(r, 0, 0, &first);
    EXPECT(first >= 0); /* no -1: the failed transaction left nothing */
    mica_db_rows_free(r);
    if (EXPECT_EQ(mica_db_query_row(chk->db, NULL, "PRAGMA integrity_check", NULL, 0, &r), 0)) {
        EXPECT(!strcmp(mica_db_rows_text(r, 0, 0, NULL), "ok"));
        mica_db_rows_free(r);
    }
}

static void test_every_committed_row_survives_kill_9(void **state)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/durable.db", dir);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        report_fd = fds[1];
        if (mica_db_open(&child_db, file_url("durable.db"), NULL) != 0)
            _exit(3);
        mica_runtime_t *rt;
        mica_runtime_opts_t o = {.workers = 2, .no_signals = true};
        mica_runtime_new(&rt, &o);
        mica_runtime_on_start(rt, child_start, NULL);
        mica_runtime_run(rt);
        _exit(0);
    }
    close(fds[1]);
    /* Let it commit for a while, then kill it mid-stream. */
    int64_t got = 0;
    int64_t *ids = malloc(sizeof(int64_t) * 4000000);
    size_t nids = 0;
    char buf[8192];
    size_t carry = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool killed = false;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (!killed && (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >
                           slack_ms(400)) {
            kill(pid, SIGKILL);
            killed = true;
        }
        ssize_t n = read(fds[0], buf + carry, sizeof(buf) - carry);
        if (n <= 0)
            break;
        size_t have = carry + (size_t)n, whole = have / 8 * 8;
        for (size_t i = 0; i < whole && nids < 4000000; i += 8)
            memcpy(&ids[nids++], buf + i, 8);
        carry = have - whole;
        memmove(buf, buf + whole, carry);
        got += n;
    }
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_true(nids > 100);
    /* Every reported id is in the file; the failed transaction's is not. */
    mica_db_t *db;
    assert_int_equal(mica_db_open(&db, file_url("durable.db"), NULL), 0);
    struct check chk = {db, ids, nids};
    assert_int_equal(run_in_coroutine(1, check, &chk), 0);
    expect_no_failure();
    mica_db_close(db);
    free(ids);
    print_message("durability: %zu committed ids reported before SIGKILL, all present\n", nids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_writers_share_group_commits_and_fail_alone),
        cmocka_unit_test(test_a_failing_batch_rolls_back_only_its_savepoint),
        cmocka_unit_test(test_interactive_transactions_through_the_writer_keep_invariants),
        cmocka_unit_test(test_long_reads_and_idle_transactions_are_bounded),
        cmocka_unit_test(test_every_committed_row_survives_kill_9),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

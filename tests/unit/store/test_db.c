/* SPDX-License-Identifier: MIT */
/*
 * The database interface (include/mica/db.h), one suite run against every
 * backend: SQLite in memory, SQLite in a WAL file, and a real PostgreSQL 15
 * over TCP and over its Unix socket. Same SQL, same expectations.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>

#include "common/alloc.h"
#include "mica/db.h"
#include "mica/sync.h"
#include "../runtime/helpers.h"
#include "store_helpers.h"

enum { B_SQLITE_MEM, B_SQLITE_FILE, B_PG_TCP, B_PG_UNIX, NBACKENDS };
static const char *urls[NBACKENDS];
static char sqlite_dir[64];
static char sqlite_url[128];

struct tc {
    int backend;
    mica_db_t *db;
    void *extra;
};

static int group_setup(void **state)
{
    snprintf(sqlite_dir, sizeof(sqlite_dir), "/tmp/mica-sqlite-XXXXXX");
    if (!mkdtemp(sqlite_dir))
        return -1;
    snprintf(sqlite_url, sizeof(sqlite_url), "sqlite://%s/test.db", sqlite_dir);
    urls[B_SQLITE_MEM] = "sqlite::memory:";
    urls[B_SQLITE_FILE] = sqlite_url;
    if (pg_start() != 0)
        return -1;
    static char tcp[256], unix_[256];
    snprintf(tcp, sizeof(tcp), "%s", pg_url());
    snprintf(unix_, sizeof(unix_), "%s", pg_unix_url());
    urls[B_PG_TCP] = tcp;
    urls[B_PG_UNIX] = unix_;
    return 0;
}

static int group_teardown(void **state)
{
    pg_stop();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", sqlite_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static bool is_pg(const struct tc *c)
{
    return c->backend >= B_PG_TCP;
}

/* Opens the backend of this test, runs body in a coroutine on `workers` workers, closes. */
static void run_case(void **state, int workers, void (*body)(void *), void *extra)
{
    struct tc c = {.backend = (int)(intptr_t)*state, .extra = extra};
    assert_int_equal(mica_db_open(&c.db, urls[c.backend], NULL), 0);
    assert_int_equal(run_in_coroutine(workers, body, &c), 0);
    expect_no_failure();
    mica_db_close(c.db);
}

static int exec0(mica_db_t *db, const char *sql)
{
    return mica_db_exec(db, NULL, sql, NULL, 0, NULL);
}

/* ---- values ------------------------------------------------------------------ */

static void types_body(void *arg)
{
    struct tc *c = arg;
    mica_db_t *db = c->db;
    EXPECT_EQ(exec0(db, "DROP TABLE IF EXISTS t_types"), 0);
    EXPECT_EQ(exec0(db, "CREATE TABLE t_types (id BIGINT PRIMARY KEY, name TEXT, "
                        "score DOUBLE PRECISION, data BYTEA)"),
              0);
    static const unsigned char bin[] = {0, 1, 2, 0, 255, 128};
    mica_db_value_t rows[][4] = {
        {mica_db_int64(INT64_MIN), mica_db_text("h\xc3\xa9llo"), mica_db_double(3.25),
         mica_db_blob(bin, sizeof(bin))},
        {mica_db_int64(INT64_MAX), mica_db_text(""), mica_db_double(-1e300), mica_db_blob("", 0)},
        {mica_db_int64(7), mica_db_null(), mica_db_null(), mica_db_null()},
        {mica_db_int64(8), mica_db_textn("abcdef", 3), mica_db_double(0.5), mica_db_null()},
    };
    for (int i = 0; i < 4; i++) {
        int64_t n = -1;
        EXPECT_EQ(mica_db_exec(db, NULL, "INSERT INTO t_types VALUES ($1, $2, $3, $4)", rows[i], 4,
                               &n),
                  0);
        EXPECT_EQ(n, 1);
    }
    mica_db_rows_t *r;
    if (!EXPECT_EQ(mica_db_query(db, NULL, "SELECT id, name, score, data FROM t_types ORDER BY id",
                                 NULL, 0, &r),
                   0))
        return;
    EXPECT_EQ(mica_db_rows_count(r), 4);
    EXPECT_EQ(mica_db_rows_columns(r), 4);
    EXPECT(!strcmp(mica_db_rows_name(r, 1), "name"));
    int64_t id;
    double d;
    size_t len;
    /* row 0: INT64_MIN */
    EXPECT_EQ(mica_db_rows_type(r, 0, 0), MICA_DB_INT64);
    EXPECT_EQ(mica_db_rows_int64(r, 0, 0, &id), 0);
    EXPECT(id == INT64_MIN);
    const char *s = mica_db_rows_text(r, 0, 1, &len);
    EXPECT(s && !strcmp(s, "h\xc3\xa9llo") && len == 6);
    EXPECT_EQ(mica_db_rows_type(r, 0, 2), MICA_DB_DOUBLE);
    EXPECT_EQ(mica_db_rows_double(r, 0, 2, &d), 0);
    EXPECT(d == 3.25);
    EXPECT_EQ(mica_db_rows_type(r, 0, 3), MICA_DB_BLOB);
    const void *b = mica_db_rows_blob(r, 0, 3, &len);
    EXPECT(b && len == sizeof(bin) && !memcmp(b, bin, sizeof(bin)));
    /* row 3 (INT64_MAX): empty text and empty blob are not NULL */
    EXPECT_EQ(mica_db_rows_type(r, 3, 1), MICA_DB_TEXT);
    s = mica_db_rows_text(r, 3, 1, &len);
    EXPECT(s && len == 0);
    EXPECT_EQ(mica_db_rows_type(r, 3, 3), MICA_DB_BLOB);
    EXPECT(mica_db_rows_blob(r, 3, 3, &len) != NULL && len == 0);
    EXPECT_EQ(mica_db_rows_double(r, 3, 2, &d), 0);
    EXPECT(d == -1e300);
    /* row 1 (id 7): NULLs */
    EXPECT(mica_db_rows_is_null(r, 1, 1) && mica_db_rows_is_null(r, 1, 2) &&
           mica_db_rows_is_null(r, 1, 3));
    EXPECT_EQ(mica_db_rows_int64(r, 1, 1, &id), MICA_EINVAL);
    EXPECT(mica_db_rows_text(r, 1, 1, NULL) == NULL);
    /* row 2 (id 8): a text parameter of 3 bytes out of a longer buffer */
    s = mica_db_rows_text(r, 2, 1, &len);
    EXPECT(s && !strcmp(s, "abc"));
    /* out of range */
    EXPECT_EQ(mica_db_rows_int64(r, 9, 0, &id), MICA_ENOTFOUND);
    EXPECT_EQ(mica_db_rows_int64(r, 0, 9, &id), MICA_ENOTFOUND);
    mica_db_rows_free(r);

    /* Computed columns: a count is an integer everywhere, a bare parameter
     * comes back as what was bound. */
    EXPECT_EQ(mica_db_query_row(db, NULL, "SELECT count(*) FROM t_types", NULL, 0, &r), 0);
    EXPECT_EQ(mica_db_rows_int64(r, 0, 0, &id), 0);
    EXPECT_EQ(id, 4);
    mica_db_rows_free(r);
}

static void test_values_of_every_type_round_trip(void **state)
{
    run_case(state, 1, types_body, NULL);
}

static void large_body(void *arg)
{
    struct tc *c = arg;
    mica_db_t *db = c->db;
    size_t n = 1 << 20;
    char *text = malloc(n + 1);
    unsigned char *blob = malloc(n);
    for (size_t i = 0; i < n; i++) {
        text[i] = (char)('a' + i % 26);
        blob[i] = (unsigned char)(i * 7);
    }
    text[n] = '\0';
    EXPECT_EQ(exec0(db, "DROP TABLE IF EXISTS t_large"), 0);
    EXPECT_EQ(exec0(db, "CREATE TABLE t_large (id BIGINT PRIMARY KEY, t TEXT, b BYTEA)"), 0);
    mica_db_value_t p[] = {mica_db_int64(1), mica_db_textn(text, n), mica_db_blob(blob, n)};
    EXPECT_EQ(mica_db_exec(db, NULL, "INSERT INTO t_large VALUES ($1, $2, $3)", p, 3, NULL), 0);
    mica_db_rows_t *r;
    if (EXPECT_EQ(mica_db_query_row(db, NULL, "SELECT t, b FROM t_large WHERE id = $1", p, 1, &r),
                  0)) {
        size_t len;
        const char *t = mica_db_rows_text(r, 0, 0, &len);
        EXPECT(t && len == n && !memcmp(t, text, n));
        const void *b = mica_db_rows_blob(r, 0, 1, &len);
        EXPECT(b && len == n && !memcmp(b, blob, n));
        mica_db_rows_free(r);
    }
    /* A result over the cap is refused. */
    mica_db_t *small;
    mica_db_opts_t o = {.max_result_bytes = 1000};
    const char *url = c->backend == B_SQLITE_MEM ? NULL : urls[c->backend];
    if (url && EXPECT_EQ(mica_db_open(&small, url, &o), 0)) {
        EXPECT_EQ(mica_db_query(small, NULL, "SELECT t FROM t_large", NULL, 0, &r), MICA_ELIMIT);
        EXPECT(r == NULL);
        mica_db_close(small);
    }
    free(text);
    free(blob);
}

static void test_large_values_round_trip_and_the_result_cap_holds(void **state)
{
    run_case(state, 1, large_body, NULL);
}

static void placeholders_body(void *arg)
{
    struct tc *c = arg;
    mica_db_rows_t *r;
    mica_db_value_t p[] = {mica_db_text("a"), mica_db_int64(7)};
    if (EXPECT_EQ(mica_db_query_row(c->db, NULL, "SELECT $2, CAST($1 AS TEXT), '$1 stays', $2 + 1", p, 2, &r),
                  0)) {
        int64_t v;
        EXPECT_EQ(mica_db_rows_int64(r, 0, 0, &v), 0);
        EXPECT_EQ(v, 7);
        EXPECT(!strcmp(mica_db_rows_text(r, 0, 1, NULL), "a"));
        EXPECT(!strcmp(mica_db_rows_text(r, 0, 2, NULL), "$1 stays"));
        EXPECT_EQ(mica_db_rows_int64(r, 0, 3, &v), 0);
        EXPECT_EQ(v, 8);
        mica_db_rows_free(r);
    }
    /* A text parameter compared with an integer column: the server infers. */
    EXPECT_EQ(exec0(c->db, "DROP TABLE IF EXISTS t_ph"), 0);
    EXPECT_EQ(exec0(c->db, "CREATE TABLE t_ph (id BIGINT PRIMARY KEY, v TEXT)"), 0);
    mica_db_value_t ins[] = {mica_db_int64(42), mica_db_text("x")};
    EXPECT_EQ(mica_db_exec(c->db, NULL, "INSERT INTO t_ph (v, id) VALUES ($2, $1)", ins, 2, NULL),
              0);
    mica_db_value_t key = mica_db_text("42");
    if (EXPECT_EQ(mica_db_query_row(c->db, NULL, "SELECT v FROM t_ph WHERE id = $1", &key, 1, &r),
                  0)) {
        EXPECT(!strcmp(mica_db_rows_text(r, 0, 0, NULL), "x"));
        mica_db_rows_free(r);
    }
}

static void test_dollar_placeholders_bind_by_number_on_both(void **state)
{
    run_case(state, 1, placeholders_body, NULL);
}

/* ---- errors ------------------------------------------------------------------ */

static void errors_body(void *arg)
{
    struct tc *c = arg;
    mica_db_t *db = c->db;
    mica_db_rows_t *r = (mica_db_rows_t *)1;
    EXPECT_EQ(mica_db_query(db, NULL, "SELEC 1", NULL, 0, &r), MICA_EINVAL);
    EXPECT(r == NULL);
    EXPECT(strstr(mica_db_errmsg(), "syntax") != NULL);
    EXPECT_EQ(exec0(db, "DROP TABLE IF EXISTS t_err"), 0);
    EXPECT_EQ(exec0(db, "CREATE TABLE t_err (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"), 0);
    mica_db_value_t p[] = {mica_db_int64(1), mica_db_text("a")};
    EXPECT_EQ(mica_db_exec(db, NULL, "INSERT INTO t_err VALUES ($1, $2)", p, 2, NULL), 0);
    EXPECT_EQ(mica_db_exec(db, NULL, "INSERT INTO t_err VALUES ($1, $2)", p, 2, NULL), MICA_EEXIST);
    EXPECT(mica_db_errmsg()[0] != '\0');
    if (is_pg(c))
        EXPECT(!strcmp(mica_db_sqlstate(), "23505"));
    mica_db_value_t q[] = {mica_db_int64(2), mica_db_null()};
    EXPECT_EQ(mica_db_exec(db, NULL, "INSERT INTO t_err VALUES ($1, $2)", q, 2, NULL),
              MICA_EPRECONDITION);
    EXPECT_EQ(mica_db_exec(db, NULL, "INSERT INTO t_err VALUES ($1, $2)", q, 1, NULL), MICA_EINVAL);
    EXPECT_EQ(mica_db_query(db, NULL, "SELECT * FROM no_such_table", NULL, 0, &r), MICA_EINVAL);
    mica_db_value_t k = mica_db_int64(99);
    EXPECT_EQ(mica_db_query_row(db, NULL, "SELECT name FROM t_err WHERE id = $1", &k, 1, &r),
              MICA_ENOTFOUND);
    EXPECT(r == NULL);
    /* After all that, the connection (or writer) still works. */
    if (EXPECT_EQ(mica_db_query_row(db, NULL, "SELECT name FROM t_err WHERE id = $1", p, 1, &r),
                  0)) {
        EXPECT(!strcmp(mica_db_rows_text(r, 0, 0, NULL), "a"));
        mica_db_rows_free(r);
    }
    /* A ctx that has already ended fails before anything is sent. */
    mica_db_t *dummy = NULL;
    (void)dummy;
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 0, &ctx);
    EXPECT_EQ(mica_db_exec(db, ctx, "INSERT INTO t_err VALUES (5, 'e')", NULL, 0, NULL),
              MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    mica_db_stats_t st;
    mica_db_stats(db, &st);
    EXPECT(st.errors >= 6);
    EXPECT(st.statements >= 4);
}

static void test_errors_map_to_mica_codes_with_the_server_message(void **state)
{
    run_case(state, 1, errors_body, NULL);
}

/* ---- transactions --------------------------------------------------------- */

static int insert_two(mica_db_tx_t *tx, void *arg)
{
    int base = *(int *)arg;
    for (int i = 0; i < 2; i++) {
        mica_db_value_t p = mica_db_int64(base + i);
        int rc = mica_db_tx_exec(tx, "INSERT INTO t_tx (id) VALUES ($1)", &p, 1, NULL);
        if (rc != 0)
            return rc;
    }
    mica_db_rows_t *r;
    int rc = mica_db_tx_query(tx, "SELECT count(*) FROM t_tx", NULL, 0, &r);
    mica_db_rows_free(r);
    return rc;
}

static int insert_then_fail(mica_db_tx_t *tx, void *arg)
{
    int rc = insert_two(tx, arg);
    return rc ? rc : MICA_EINVAL;
}

static int insert_then_duplicate(mica_db_tx_t *tx, void *arg)
{
    int rc = insert_two(tx, arg);
    if (rc != 0)
        return rc;
    mica_db_value_t p = mica_db_int64(1); /* committed by the first transaction */
    return mica_db_tx_exec(tx, "INSERT INTO t_tx (id) VALUES ($1)", &p, 1, NULL);
}

static int insert_then_cancel(mica_db_tx_t *tx, void *arg)
{
    int rc = insert_two(tx, arg);
    mica_ctx_cancel(*(mica_ctx_t **)((int *)arg + 2));
    if (rc != 0)
        return rc;
    mica_db_value_t p = mica_db_int64(1000);
    return mica_db_tx_exec(tx, "INSERT INTO t_tx (id) VALUES ($1)", &p, 1, NULL);
}

struct retry {
    int calls;
};

static int fail_once_aborted(mica_db_tx_t *tx, void *arg)
{
    struct retry *r = arg;
    mica_db_value_t p = mica_db_int64(500 + r->calls);
    int rc = mica_db_tx_exec(tx, "INSERT INTO t_tx (id) VALUES ($1)", &p, 1, NULL);
    if (rc != 0)
        return rc;
    return r->calls++ == 0 ? MICA_EABORTED : 0;
}

static int64_t count_rows(mica_db_t *db, const char *sql)
{
    mica_db_rows_t *r;
    int64_t n = -1;
    if (mica_db_query_row(db, NULL, sql, NULL, 0, &r) == 0) {
        mica_db_rows_int64(r, 0, 0, &n);
        mica_db_rows_free(r);
    }
    return n;
}

static void tx_body(void *arg)
{
    struct tc *c = arg;
    mica_db_t *db = c->db;
    EXPECT_EQ(exec0(db, "DROP TABLE IF EXISTS t_tx"), 0);
    EXPECT_EQ(exec0(db, "CREATE TABLE t_tx (id BIGINT PRIMARY KEY)"), 0);
    struct {
        int base, pad;
        mica_ctx_t *ctx;
    } a = {1, 0, NULL};
    EXPECT_EQ(mica_db_tx(db, NULL, NULL, insert_two, &a), 0);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_tx"), 2);
    a.base = 10;
    EXPECT_EQ(mica_db_tx(db, NULL, NULL, insert_then_fail, &a), MICA_EINVAL);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_tx"), 2);
    a.base = 20;
    EXPECT_EQ(mica_db_tx(db, NULL, NULL, insert_then_duplicate, &a), MICA_EEXIST);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_tx"), 2);
    a.base = 30;
    mica_ctx_with_cancel(NULL, &a.ctx);
    EXPECT_EQ(mica_db_tx(db, a.ctx, NULL, insert_then_cancel, &a), MICA_ECANCELED);
    mica_ctx_free(a.ctx);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_tx"), 2);
    /* Retry on MICA_EABORTED: the first attempt is rolled back, the second commits. */
    struct retry r = {0};
    mica_db_tx_opts_t o = {.retries = 2};
    EXPECT_EQ(mica_db_tx(db, NULL, &o, fail_once_aborted, &r), 0);
    EXPECT_EQ(r.calls, 2);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_tx WHERE id >= 500"), 1);
    r.calls = 0;
    EXPECT_EQ(mica_db_tx(db, NULL, NULL, fail_once_aborted, &r), MICA_EABORTED);
    EXPECT_EQ(r.calls, 1);
    /* The pool or writer is clean afterwards. */
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_tx"), 3);
}

static void test_transactions_commit_and_roll_back_on_error_and_cancel(void **state)
{
    run_case(state, 1, tx_body, NULL);
}

/* ---- batches ------------------------------------------------------------------- */

static void batch_body(void *arg)
{
    struct tc *c = arg;
    mica_db_t *db = c->db;
    EXPECT_EQ(exec0(db, "DROP TABLE IF EXISTS t_batch"), 0);
    EXPECT_EQ(exec0(db, "CREATE TABLE t_batch (id BIGINT PRIMARY KEY, v TEXT)"), 0);
    mica_db_value_t p[3][2] = {{mica_db_int64(1), mica_db_text("one")},
                               {mica_db_int64(2), mica_db_text("two")},
                               {mica_db_int64(3), mica_db_text("three")}};
    mica_db_batch_item_t items[4] = {
        {.sql = "INSERT INTO t_batch VALUES ($1, $2)", .params = p[0], .nparams = 2},
        {.sql = "INSERT INTO t_batch VALUES ($1, $2)", .params = p[1], .nparams = 2},
        {.sql = "UPDATE t_batch SET v = $2 WHERE id = $1", .params = p[2], .nparams = 2},
        {.sql = "SELECT id, v FROM t_batch ORDER BY id", .want_rows = true},
    };
    p[2][0] = mica_db_int64(2);
    if (EXPECT_EQ(mica_db_batch(db, NULL, items, 4), 0)) {
        EXPECT_EQ(items[0].rc, 0);
        EXPECT_EQ(items[0].affected, 1);
        EXPECT_EQ(items[2].affected, 1);
        EXPECT_EQ(mica_db_rows_count(items[3].rows), 2);
        EXPECT(!strcmp(mica_db_rows_text(items[3].rows, 1, 1, NULL), "three"));
        mica_db_rows_free(items[3].rows);
    }
    /* The second statement fails: nothing of the batch is applied. */
    mica_db_value_t q[2][2] = {{mica_db_int64(10), mica_db_text("ten")},
                               {mica_db_int64(1), mica_db_text("dup")}};
    mica_db_batch_item_t bad[3] = {
        {.sql = "INSERT INTO t_batch VALUES ($1, $2)", .params = q[0], .nparams = 2},
        {.sql = "INSERT INTO t_batch VALUES ($1, $2)", .params = q[1], .nparams = 2},
        {.sql = "SELECT count(*) FROM t_batch", .want_rows = true},
    };
    EXPECT_EQ(mica_db_batch(db, NULL, bad, 3), MICA_EEXIST);
    EXPECT_EQ(bad[0].rc, MICA_EABORTED);
    EXPECT_EQ(bad[1].rc, MICA_EEXIST);
    EXPECT_EQ(bad[2].rc, MICA_EABORTED);
    EXPECT(bad[2].rows == NULL);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_batch"), 2);
    /* A syntax error in a batch (a Parse that fails in the pipeline). */
    mica_db_batch_item_t syn[2] = {
        {.sql = "INSERT INTO t_batch VALUES ($1, $2)", .params = q[0], .nparams = 2},
        {.sql = "SELEKT 1"},
    };
    EXPECT_EQ(mica_db_batch(db, NULL, syn, 2), MICA_EINVAL);
    EXPECT_EQ(syn[1].rc, MICA_EINVAL);
    EXPECT_EQ(count_rows(db, "SELECT count(*) FROM t_batch"), 2);
    if (is_pg(c)) {
        mica_db_stats_t st;
        mica_db_stats(db, &st);
        EXPECT_EQ(st.pipelines, 3);
    }
}

static void test_batches_apply_all_or_nothing(void **state)
{
    run_case(state, 1, batch_body, NULL);
}

/* ---- concurrency ------------------------------------------------------------- */

struct conc {
    struct tc *c;
    mica_wg_t *wg;
    atomic_int next;
};

static void conc_writer(void *arg)
{
    struct conc *k = arg;
    for (int i = 0; i < 20; i++) {
        mica_db_value_t p[] = {mica_db_int64(atomic_fetch_add(&k->next, 1)),
                               mica_db_int64(mica_worker_id())};
        EXPECT_EQ(mica_db_exec(k->c->db, NULL, "INSERT INTO t_conc VALUES ($1, $2)", p, 2, NULL),
                  0);
        if (i % 5 == 0) {
            mica_db_rows_t *r;
            EXPECT_EQ(mica_db_query_row(k->c->db, NULL, "SELECT w FROM t_conc WHERE id = $1", p,
                                        1, &r),
                      0);
            mica_db_rows_free(r);
        }
    }
    mica_wg_done(k->wg);
}

static void conc_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(exec0(c->db, "DROP TABLE IF EXISTS t_conc"), 0);
    EXPECT_EQ(exec0(c->db, "CREATE TABLE t_conc (id BIGINT PRIMARY KEY, w BIGINT)"), 0);
    struct conc k = {.c = c};
    mica_wg_new(&k.wg);
    mica_wg_add(k.wg, 50);
    for (int i = 0; i < 50; i++)
        mica_go_on(i % 2, conc_writer, &k);
    EXPECT_EQ(mica_wg_wait(k.wg, NULL), 0);
    mica_wg_free(k.wg);
    EXPECT_EQ(count_rows(c->db, "SELECT count(*) FROM t_conc"), 1000);
    EXPECT_EQ(count_rows(c->db, "SELECT count(DISTINCT w) FROM t_conc"), 2);
}

static void test_many_coroutines_on_two_workers_share_one_db(void **state)
{
    run_case(state, 2, conc_body, NULL);
}

/* ---- shards -------------------------------------------------------------------- */

static void shards_body(void *arg)
{
    struct tc *c = arg;
    mica_db_shards_t *s = c->extra;
    for (int i = 0; i < 3; i++) {
        mica_db_t *db = mica_db_shards_at(s, i);
        EXPECT_EQ(exec0(db, "DROP TABLE IF EXISTS orders"), 0);
        EXPECT_EQ(exec0(db, "CREATE TABLE orders (id BIGINT PRIMARY KEY, user_id BIGINT)"), 0);
    }
    for (int64_t uid = 1000; uid < 1300; uid++) {
        mica_db_value_t p[] = {mica_db_int64(uid * 10), mica_db_int64(uid)};
        EXPECT_EQ(mica_db_exec(mica_db_shards_pick(s, (uint64_t)uid), NULL,
                               "INSERT INTO orders VALUES ($1, $2)", p, 2, NULL),
                  0);
    }
    int64_t total = 0;
    for (int i = 0; i < 3; i++) {
        mica_db_t *db = mica_db_shards_at(s, i);
        mica_db_rows_t *r;
        if (!EXPECT_EQ(mica_db_query(db, NULL, "SELECT user_id FROM orders", NULL, 0, &r), 0))
            continue;
        size_t n = mica_db_rows_count(r);
        EXPECT(n > 60); /* 300 users over 3 shards: ~100 each */
        for (size_t j = 0; j < n; j++) {
            int64_t uid;
            mica_db_rows_int64(r, j, 0, &uid);
            EXPECT_EQ(mica_db_shard_of((uint64_t)uid, 3), i);
        }
        total += (int64_t)n;
        mica_db_rows_free(r);
    }
    EXPECT_EQ(total, 300);
}

static void create_shards(void *arg)
{
    struct tc *c = arg;
    char sql[64];
    for (int i = 0; i < 3; i++) {
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS shard%d", i);
        EXPECT_EQ(exec0(c->db, sql), 0);
        snprintf(sql, sizeof(sql), "CREATE DATABASE shard%d", i);
        EXPECT_EQ(exec0(c->db, sql), 0);
    }
}

static void test_shard_router_places_each_user_on_its_hashed_shard(void **state)
{
    int backend = (int)(intptr_t)*state;
    const char *list[3];
    char buf[3][300];
    if (backend >= B_PG_TCP) {
        mica_db_t *admin;
        assert_int_equal(mica_db_open(&admin, urls[B_PG_TCP], NULL), 0);
        struct tc c = {.db = admin};
        assert_int_equal(run_in_coroutine(1, create_shards, &c), 0);
        expect_no_failure();
        mica_db_close(admin);
        for (int i = 0; i < 3; i++) {
            snprintf(buf[i], sizeof(buf[i]), "postgres://postgres@127.0.0.1:%d/shard%d", pg_port,
                     i);
            list[i] = buf[i];
        }
    } else {
        for (int i = 0; i < 3; i++) {
            snprintf(buf[i], sizeof(buf[i]), "sqlite://%s/shard%d.db", sqlite_dir, i);
            list[i] = buf[i];
        }
    }
    mica_db_shards_t *s;
    assert_int_equal(mica_db_shards_open(&s, list, 3, NULL), 0);
    assert_int_equal(mica_db_shards_count(s), 3);
    run_case(state, 1, shards_body, s);
    mica_db_shards_close(s);
}

/* The placement is part of the data: these values must never change. */
static void test_shard_hash_is_stable_and_moves_few_keys(void **state)
{
    static const struct {
        uint64_t key;
        int n, shard;
    } golden[] = {
        {0, 2, 1}, {1, 2, 0}, {1001, 4, 0}, {1002, 4, 0}, {123456789, 16, 10},
        {UINT64_MAX, 7, 3},
    };
    for (size_t i = 0; i < sizeof(golden) / sizeof(golden[0]); i++)
        assert_int_equal(mica_db_shard_of(golden[i].key, golden[i].n), golden[i].shard);
    assert_int_equal(mica_db_shard_of(12345, 1), 0);
    assert_true(mica_db_shard_key("1001", 4) == 0x0d826af0f88e4bd7ULL);
    int counts[4] = {0}, moved = 0;
    for (uint64_t k = 0; k < 40000; k++) {
        int a = mica_db_shard_of(k, 4), b = mica_db_shard_of(k, 5);
        counts[a]++;
        if (a != b) {
            moved++;
            assert_int_equal(b, 4); /* a key only ever moves to the new shard */
        }
    }
    for (int i = 0; i < 4; i++)
        assert_true(counts[i] > 9000 && counts[i] < 11000);
    assert_true(moved > 7000 && moved < 9000); /* ~1/5 */
}


/* ---- allocation failures ---------------------------------------------------------- */

static bool clean_at(int rc, int line)
{
    bool ok = rc == 0 || rc == MICA_ENOMEM || rc == MICA_EABORTED || rc == MICA_ENOTFOUND;
    if (!ok)
        fprintf(stderr, "oom scenario line %d: %s (%s)\n", line, mica_err_name(rc),
                mica_db_errmsg());
    return ok;
}
#define clean(rc) clean_at((rc), __LINE__)

static int oom_tx(mica_db_tx_t *tx, void *arg)
{
    mica_db_value_t p[] = {mica_db_int64(2), mica_db_text("tx")};
    int rc = mica_db_tx_exec(tx, "INSERT INTO t_oom (id, v) VALUES ($1, $2) "
                                 "ON CONFLICT (id) DO UPDATE SET v = excluded.v", p, 2, NULL);
    if (rc != 0)
        return rc;
    mica_db_rows_t *r;
    rc = mica_db_tx_query(tx, "SELECT v FROM t_oom WHERE id = $1", p, 1, &r);
    mica_db_rows_free(r);
    return rc;
}

/* Every call of the scenario either works or fails cleanly. Returns how many ran clean. */
static int oom_scenario(mica_db_t *db)
{
    static const unsigned char bin[] = {1, 0, 2};
    mica_db_value_t p[] = {mica_db_int64(1), mica_db_text("value"), mica_db_blob(bin, 3)};
    int ok = 0;
    ok += clean(mica_db_exec(db, NULL, "INSERT INTO t_oom (id, v, b) VALUES ($1, $2, $3) "
                                       "ON CONFLICT (id) DO UPDATE SET v = excluded.v", p, 3, NULL));
    mica_db_rows_t *r;
    ok += clean(mica_db_query_row(db, NULL, "SELECT id, v, b FROM t_oom WHERE id = $1", p, 1, &r));
    mica_db_rows_free(r);
    mica_db_batch_item_t items[2] = {
        {.sql = "UPDATE t_oom SET v = $2 WHERE id = $1", .params = p, .nparams = 2},
        {.sql = "SELECT count(*) FROM t_oom", .want_rows = true},
    };
    ok += clean(mica_db_batch(db, NULL, items, 2));
    mica_db_rows_free(items[1].rows);
    ok += clean(mica_db_tx(db, NULL, NULL, oom_tx, NULL));
    return ok;
}

static void oom_body(void *arg)
{
    struct tc *c = arg;
    EXPECT_EQ(exec0(c->db, "DROP TABLE IF EXISTS t_oom"), 0);
    EXPECT_EQ(exec0(c->db, "CREATE TABLE t_oom (id BIGINT PRIMARY KEY, v TEXT, b BYTEA)"), 0);
    long n;
    for (n = 1; n < 400; n++) {
        mica__alloc_fail_nth(n);
        int ok = oom_scenario(c->db);
        long used = mica__alloc_count();
        mica__alloc_fail_nth(0);
        EXPECT_EQ(ok, 4);
        if (used < n)
            break; /* the n-th allocation never came: every one has failed once */
    }
    EXPECT(n < 400);
    EXPECT_EQ(oom_scenario(c->db), 4);
    /* And with no failure injected, everything works again. */
    mica_db_rows_t *r;
    mica_db_value_t k = mica_db_int64(2);
    if (EXPECT_EQ(mica_db_query_row(c->db, NULL, "SELECT v FROM t_oom WHERE id = $1", &k, 1, &r),
                  0)) {
        EXPECT(!strcmp(mica_db_rows_text(r, 0, 0, NULL), "tx"));
        mica_db_rows_free(r);
    }
}

static void test_allocation_failures_give_clean_errors_and_no_leak(void **state)
{
    run_case(state, 1, oom_body, NULL);
}

#define FOR_BACKENDS(fn)                                                                          \
    cmocka_unit_test_prestate(fn, (void *)(intptr_t)B_SQLITE_MEM),                                \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)B_SQLITE_FILE),                           \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)B_PG_TCP),                                \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)B_PG_UNIX)

int main(void)
{
    const struct CMUnitTest tests[] = {
        FOR_BACKENDS(test_values_of_every_type_round_trip),
        FOR_BACKENDS(test_large_values_round_trip_and_the_result_cap_holds),
        FOR_BACKENDS(test_dollar_placeholders_bind_by_number_on_both),
        FOR_BACKENDS(test_errors_map_to_mica_codes_with_the_server_message),
        FOR_BACKENDS(test_transactions_commit_and_roll_back_on_error_and_cancel),
        FOR_BACKENDS(test_batches_apply_all_or_nothing),
        FOR_BACKENDS(test_many_coroutines_on_two_workers_share_one_db),
        FOR_BACKENDS(test_allocation_failures_give_clean_errors_and_no_leak),
        cmocka_unit_test_prestate(test_shard_router_places_each_user_on_its_hashed_shard,
                                  (void *)(intptr_t)B_SQLITE_FILE),
        cmocka_unit_test_prestate(test_shard_router_places_each_user_on_its_hashed_shard,
                                  (void *)(intptr_t)B_PG_TCP),
        cmocka_unit_test(test_shard_hash_is_stable_and_moves_few_keys),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/* SPDX-License-Identifier: MIT */
/*
 * The database interface: picks a backend from the URL, fills in defaults,
 * and holds what both backends share -- the row set (cells pointing into
 * chunks the rows own, or into a PGresult they keep), the per-thread error
 * message, the transaction retry loop, and the shard router.
 *
 * Errors go to a per-thread slot rather than the db object: many coroutines
 * share one db, but the slot is written right before a call returns and the
 * caller reads it before it next suspends, so on one thread nothing can come
 * in between (the same rule as errno in STYLE.md).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "store/db_internal.h"

/* ---- errors ---------------------------------------------------------------- */

static _Thread_local struct {
    char msg[512];
    char state[32];
} tls_err;

const char *mica_db_errmsg(void)
{
    return tls_err.msg;
}

const char *mica_db_sqlstate(void)
{
    return tls_err.state;
}

void mica__db_clear_error(void)
{
    tls_err.msg[0] = '\0';
    tls_err.state[0] = '\0';
}

int mica__db_fail(mica_db_t *db, int rc, const char *sqlstate, const char *msg, const char *sql)
{
    snprintf(tls_err.state, sizeof(tls_err.state), "%s", sqlstate ? sqlstate : "");
    snprintf(tls_err.msg, sizeof(tls_err.msg), "%s", msg ? msg : mica_strerror(rc));
    /* libpq's messages end in a newline; a log line should not. */
    size_t n = strlen(tls_err.msg);
    while (n > 0 && (tls_err.msg[n - 1] == '\n' || tls_err.msg[n - 1] == ' '))
        tls_err.msg[--n] = '\0';
    if (db)
        MICA__DB_COUNT(db, errors);
    /* Expected outcomes a caller handles (a duplicate key, a cancelled
     * call, a retryable conflict) log at info; the rest at warn. */
    bool expected = rc == MICA_EEXIST || rc == MICA_ECANCELED || rc == MICA_ETIMEDOUT ||
                    rc == MICA_EABORTED || rc == MICA_ENOTFOUND;
    char sqlbuf[120];
    snprintf(sqlbuf, sizeof(sqlbuf), "%s", sql ? sql : "");
    mica__log(expected ? "info" : "warn", "db: statement failed", "backend",
              db ? db->ops->name : "", "error", mica_err_name(rc), "sqlstate", tls_err.state,
              "message", tls_err.msg, "sql", sqlbuf, (const char *)0);
    return rc;
}

int mica__db_pg_code(const char *s)
{
    if (!s || strlen(s) != 5)
        return MICA_EINTERNAL;
    if (!strcmp(s, "23505") || !strcmp(s, "23P01"))
        return MICA_EEXIST; /* unique, exclusion */
    if (!strncmp(s, "23", 2))
        return MICA_EPRECONDITION; /* foreign key, not null, check */
    if (!strcmp(s, "40001") || !strcmp(s, "40P01"))
        return MICA_EABORTED; /* serialization failure, deadlock: retry */
    if (!strcmp(s, "57014"))
        return MICA_ECANCELED; /* query_canceled */
    if (!strcmp(s, "08P01"))
        return MICA_EINVAL; /* protocol violation: wrong number of parameters */
    if (!strcmp(s, "42501"))
        return MICA_EPERM;
    if (!strncmp(s, "42", 2) || !strncmp(s, "22", 2) || !strncmp(s, "26", 2) ||
        !strncmp(s, "34", 2))
        return MICA_EINVAL; /* syntax, undefined object, bad data, bad statement name */
    if (!strncmp(s, "25", 2))
        return MICA_EPRECONDITION; /* invalid transaction state */
    if (!strncmp(s, "28", 2))
        return MICA_EUNAUTHENTICATED;
    if (!strncmp(s, "08", 2) || !strncmp(s, "57P", 3))
        return MICA_EUNAVAILABLE; /* connection exception, admin shutdown */
    if (!strncmp(s, "53", 2))
        return MICA_EOVERLOAD; /* insufficient resources, too many connections */
    if (!strcmp(s, "55P03"))
        return MICA_EBUSY; /* lock_not_available */
    return MICA_EINTERNAL;
}

int mica__db_env_int(const char *name, int def)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    long x = strtol(v, &end, 10);
    return (*end || x <= 0 || x > 1000000) ? def : (int)x;
}

/* ---- open and dispatch --------------------------------------------------- */

int mica_db_open(mica_db_t **out, const char *url, const mica_db_opts_t *opts)
{
    *out = NULL;
    if (!url)
        url = getenv("MICA_DB");
    if (!url || !*url)
        return mica__db_fail(NULL, MICA_EINVAL, NULL, "no database URL (set MICA_DB)", NULL);
    const mica__db_ops_t *ops;
    const char *target;
    if (!strncmp(url, "sqlite:", 7)) {
        ops = &mica__db_sqlite_ops;
        target = url + 7;
        if (!strncmp(target, "//", 2))
            target += 2; /* sqlite:///abs -> /abs, sqlite://rel -> rel */
    } else if (!strncmp(url, "postgres://", 11) || !strncmp(url, "postgresql://", 13)) {
        ops = &mica__db_pg_ops;
        target = url;
    } else if (!strncmp(url, "postgres:", 9)) {
        ops = &mica__db_pg_ops;
        target = url + 9; /* "postgres:host=... dbname=..." conninfo */
    } else {
        return mica__db_fail(NULL, MICA_EINVAL, NULL, "unknown database URL scheme", NULL);
    }
    if (!*target)
        return mica__db_fail(NULL, MICA_EINVAL, NULL, "empty database name", NULL);
    mica_db_t *db = mica__calloc(1, sizeof(*db));
    if (!db)
        return MICA_ENOMEM;
    db->ops = ops;
    if (opts)
        db->opts = *opts;
    mica_db_opts_t *o = &db->opts;
    bool pg = ops == &mica__db_pg_ops;
    if (o->pool_size <= 0)
        o->pool_size = mica__db_env_int("MICA_DB_POOL_SIZE", pg ? 8 : 2);
    if (o->max_idle <= 0 || o->max_idle > o->pool_size)
        o->max_idle = o->pool_size;
    if (o->idle_timeout_ms <= 0)
        o->idle_timeout_ms = 300000;
    if (o->connect_timeout_ms <= 0)
        o->connect_timeout_ms = 10000;
    if (o->cancel_drain_ms <= 0)
        o->cancel_drain_ms = 2000;
    if (o->busy_timeout_ms <= 0)
        o->busy_timeout_ms = 5000;
    if (o->max_group <= 0)
        o->max_group = 512;
    if (o->tx_idle_timeout_ms <= 0)
        o->tx_idle_timeout_ms = 5000;
    if (o->max_result_bytes == 0)
        o->max_result_bytes = 64u << 20;
    int rc = ops->open(db, target);
    if (rc != 0) {
        mica__free(db);
        return rc;
    }
    *out = db;
    return 0;
}

void mica_db_close(mica_db_t *db)
{
    if (!db)
        return;
    db->ops->close(db);
    mica__free(db);
}

const char *mica_db_backend(const mica_db_t *db)
{
    return db->ops->name;
}

void mica_db_stats(const mica_db_t *db, mica_db_stats_t *out)
{
    const mica__db_counters_t *c = &db->counters;
#define LOAD(f) out->f = atomic_load_explicit(&c->f, memory_order_relaxed)
    LOAD(statements);
    LOAD(errors);
    LOAD(connects);
    LOAD(connect_errors);
    LOAD(dropped);
    LOAD(cancels);
    LOAD(pool_waits);
    LOAD(prepares);
    LOAD(pipelines);
    LOAD(group_commits);
    LOAD(group_units);
    LOAD(group_max);
#undef LOAD
}

static int check_params(mica_db_t *db, const char *sql, const mica_db_value_t *params, int n)
{
    if (!sql || n < 0 || (n > 0 && !params) || n > 65535)
        return mica__db_fail(db, MICA_EINVAL, NULL, "bad statement or parameters", sql);
    return 0;
}

int mica_db_exec(mica_db_t *db, mica_ctx_t *ctx, const char *sql, const mica_db_value_t *params,
                 int nparams, int64_t *affected)
{
    int rc = check_params(db, sql, params, nparams);
    if (rc != 0)
        return rc;
    mica__db_stmt_t st = {sql, params, nparams, NULL, affected};
    return db->ops->run(db, ctx, &st);
}

int mica_db_query(mica_db_t *db, mica_ctx_t *ctx, const char *sql, const mica_db_value_t *params,
                  int nparams, mica_db_rows_t **out)
{
    *out = NULL;
    int rc = check_params(db, sql, params, nparams);
    if (rc != 0)
        return rc;
    mica__db_stmt_t st = {sql, params, nparams, out, NULL};
    return db->ops->run(db, ctx, &st);
}

int mica_db_query_row(mica_db_t *db, mica_ctx_t *ctx, const char *sql,
                      const mica_db_value_t *params, int nparams, mica_db_rows_t **out)
{
    int rc = mica_db_query(db, ctx, sql, params, nparams, out);
    if (rc == 0 && (*out)->nrows == 0) {
        mica_db_rows_free(*out);
        *out = NULL;
        snprintf(tls_err.msg, sizeof(tls_err.msg), "no rows");
        tls_err.state[0] = '\0';
        return MICA_ENOTFOUND;
    }
    return rc;
}

int mica_db_batch(mica_db_t *db, mica_ctx_t *ctx, mica_db_batch_item_t *items, int n)
{
    if (n <= 0 || !items)
        return mica__db_fail(db, MICA_EINVAL, NULL, "empty batch", NULL);
    for (int i = 0; i < n; i++) {
        items[i].rows = NULL;
        items[i].affected = 0;
        items[i].rc = MICA_EABORTED;
        int rc = check_params(db, items[i].sql, items[i].params, items[i].nparams);
        if (rc != 0)
            return items[i].rc = rc;
    }
    int rc = db->ops->batch(db, ctx, items, n);
    if (rc != 0) {
        for (int i = 0; i < n; i++) {
            mica_db_rows_free(items[i].rows);
            items[i].rows = NULL;
        }
    }
    return rc;
}

/* ---- transactions -------------------------------------------------------- */

int mica_db_tx(mica_db_t *db, mica_ctx_t *ctx, const mica_db_tx_opts_t *opts, mica_db_tx_fn fn,
               void *arg)
{
    mica_db_tx_opts_t o = opts ? *opts : (mica_db_tx_opts_t){0};
    for (int attempt = 0;; attempt++) {
        mica_db_tx_t *tx;
        int rc = db->ops->tx_begin(db, ctx, &o, &tx);
        if (rc == 0) {
            rc = fn(tx, arg);
            if (rc == 0 && mica_ctx_err(ctx) != 0)
                rc = mica_ctx_err(ctx);
            int crc = db->ops->tx_end(tx, rc == 0);
            if (rc == 0)
                rc = crc;
        }
        if (rc != MICA_EABORTED || attempt >= o.retries || mica_ctx_err(ctx) != 0)
            return rc;
        char n[16];
        snprintf(n, sizeof(n), "%d", attempt + 1);
        mica__log_info("db: retrying transaction after a serialization failure", "backend",
                       db->ops->name, "attempt", n);
    }
}

int mica_db_tx_exec(mica_db_tx_t *tx, const char *sql, const mica_db_value_t *params, int nparams,
                    int64_t *affected)
{
    int rc = check_params(tx->db, sql, params, nparams);
    if (rc != 0)
        return rc;
    mica__db_stmt_t st = {sql, params, nparams, NULL, affected};
    return tx->db->ops->tx_run(tx, &st);
}

int mica_db_tx_query(mica_db_tx_t *tx, const char *sql, const mica_db_value_t *params, int nparams,
                     mica_db_rows_t **out)
{
    *out = NULL;
    int rc = check_params(tx->db, sql, params, nparams);
    if (rc != 0)
        return rc;
    mica__db_stmt_t st = {sql, params, nparams, out, NULL};
    return tx->db->ops->tx_run(tx, &st);
}

/* ---- rows ------------------------------------------------------------------ */

struct mica__db_chunk {
    mica__db_chunk_t *next;
    size_t used, cap;
    max_align_t data[];
};

mica_db_rows_t *mica__db_rows_new(int ncols, size_t rows_hint, size_t max_bytes)
{
    mica_db_rows_t *r = mica__calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->ncols = ncols;
    r->max_bytes = max_bytes;
    if (ncols > 0) {
        r->names = mica__calloc((size_t)ncols, sizeof(*r->names));
        if (!r->names)
            goto fail;
        if (rows_hint > 0) {
            r->cells = mica__calloc(rows_hint * (size_t)ncols, sizeof(*r->cells));
            if (!r->cells)
                goto fail;
            r->cap_rows = rows_hint;
        }
    }
    return r;
fail:
    mica_db_rows_free(r);
    return NULL;
}

char *mica__db_rows_copy(mica_db_rows_t *r, const void *p, size_t len)
{
    if (len > r->max_bytes || r->bytes > r->max_bytes - len)
        return NULL;
    size_t need = len + 1;
    mica__db_chunk_t *c = r->chunks;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > 4000 ? need : 4000;
        c = mica__malloc(sizeof(*c) + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = r->chunks;
        r->chunks = c;
    }
    char *dst = (char *)c->data + c->used;
    c->used += need;
    if (len)
        memcpy(dst, p, len);
    dst[len] = '\0';
    r->bytes += len;
    return dst;
}

int mica__db_rows_set_name(mica_db_rows_t *r, int col, const char *name)
{
    size_t max = r->max_bytes;
    r->max_bytes = SIZE_MAX; /* names do not count against the value cap */
    char *s = mica__db_rows_copy(r, name, strlen(name));
    r->max_bytes = max;
    if (!s)
        return MICA_ENOMEM;
    r->bytes -= strlen(name);
    r->names[col] = s;
    return 0;
}

mica__db_cell_t *mica__db_rows_add(mica_db_rows_t *r, int *err)
{
    size_t nc = (size_t)r->ncols;
    if (r->nrows == r->cap_rows) {
        size_t cap = r->cap_rows ? r->cap_rows * 2 : 16;
        if (cap * nc * sizeof(mica__db_cell_t) / 2 > r->max_bytes) {
            *err = MICA_ELIMIT;
            return NULL;
        }
        mica__db_cell_t *c = mica__realloc(r->cells, cap * nc * sizeof(*c));
        if (!c) {
            *err = MICA_ENOMEM;
            return NULL;
        }
        r->cells = c;
        r->cap_rows = cap;
    }
    mica__db_cell_t *row = r->cells + r->nrows * nc;
    memset(row, 0, nc * sizeof(*row));
    r->nrows++;
    return row;
}

void mica_db_rows_free(mica_db_rows_t *r)
{
    if (!r)
        return;
    for (mica__db_chunk_t *c = r->chunks, *next; c; c = next) {
        next = c->next;
        mica__free(c);
    }
    if (r->owner_free)
        r->owner_free(r->owner);
    mica__free(r->names);
    mica__free(r->cells);
    mica__free(r);
}

static const mica__db_cell_t *cell(const mica_db_rows_t *r, size_t row, int col)
{
    if (!r || row >= r->nrows || col < 0 || col >= r->ncols)
        return NULL;
    return &r->cells[row * (size_t)r->ncols + (size_t)col];
}

size_t mica_db_rows_count(const mica_db_rows_t *r)
{
    return r ? r->nrows : 0;
}

int mica_db_rows_columns(const mica_db_rows_t *r)
{
    return r ? r->ncols : 0;
}

const char *mica_db_rows_name(const mica_db_rows_t *r, int col)
{
    return (r && col >= 0 && col < r->ncols) ? r->names[col] : NULL;
}

int64_t mica_db_rows_affected(const mica_db_rows_t *r)
{
    return r ? r->affected : 0;
}

mica_db_type_t mica_db_rows_type(const mica_db_rows_t *r, size_t row, int col)
{
    const mica__db_cell_t *c = cell(r, row, col);
    return c ? (mica_db_type_t)c->type : MICA_DB_NULL;
}

bool mica_db_rows_is_null(const mica_db_rows_t *r, size_t row, int col)
{
    return mica_db_rows_type(r, row, col) == MICA_DB_NULL;
}

int mica_db_rows_int64(const mica_db_rows_t *r, size_t row, int col, int64_t *out)
{
    const mica__db_cell_t *c = cell(r, row, col);
    if (!c)
        return MICA_ENOTFOUND;
    switch (c->type) {
    case MICA_DB_INT64:
        *out = c->v.i64;
        return 0;
    case MICA_DB_TEXT: {
        char *end;
        errno = 0;
        long long x = strtoll(c->v.p, &end, 10);
        if (end == c->v.p || *end || errno)
            return MICA_EINVAL;
        *out = x;
        return 0;
    }
    default:
        return MICA_EINVAL;
    }
}

int mica_db_rows_double(const mica_db_rows_t *r, size_t row, int col, double *out)
{
    const mica__db_cell_t *c = cell(r, row, col);
    if (!c)
        return MICA_ENOTFOUND;
    switch (c->type) {
    case MICA_DB_DOUBLE:
        *out = c->v.f64;
        return 0;
    case MICA_DB_INT64:
        *out = (double)c->v.i64;
        return 0;
    case MICA_DB_TEXT: {
        char *end;
        double x = strtod(c->v.p, &end);
        if (end == c->v.p || *end)
            return MICA_EINVAL;
        *out = x;
        return 0;
    }
    default:
        return MICA_EINVAL;
    }
}

const char *mica_db_rows_text(const mica_db_rows_t *r, size_t row, int col, size_t *len)
{
    const mica__db_cell_t *c = cell(r, row, col);
    if (!c || (c->type != MICA_DB_TEXT && c->type != MICA_DB_BLOB))
        return NULL;
    if (len)
        *len = c->len;
    return c->v.p;
}

const void *mica_db_rows_blob(const mica_db_rows_t *r, size_t row, int col, size_t *len)
{
    return mica_db_rows_text(r, row, col, len);
}

/* ---- shards ---------------------------------------------------------------- */

struct mica_db_shards {
    int n;
    mica_db_t *dbs[];
};

int mica_db_shards_open(mica_db_shards_t **out, const char *const *urls, int n,
                        const mica_db_opts_t *opts)
{
    *out = NULL;
    if (n <= 0 || !urls)
        return MICA_EINVAL;
    mica_db_shards_t *s = mica__calloc(1, sizeof(*s) + (size_t)n * sizeof(s->dbs[0]));
    if (!s)
        return MICA_ENOMEM;
    for (int i = 0; i < n; i++) {
        int rc = mica_db_open(&s->dbs[i], urls[i], opts);
        if (rc != 0) {
            mica_db_shards_close(s);
            return rc;
        }
        s->n = i + 1;
    }
    char nb[16];
    snprintf(nb, sizeof(nb), "%d", n);
    mica__log_info("db: shard router open", "shards", nb, "hash", "jump(splitmix64(key))");
    *out = s;
    return 0;
}

void mica_db_shards_close(mica_db_shards_t *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        mica_db_close(s->dbs[i]);
    mica__free(s);
}

int mica_db_shards_count(const mica_db_shards_t *s)
{
    return s->n;
}

mica_db_t *mica_db_shards_at(const mica_db_shards_t *s, int i)
{
    return (i >= 0 && i < s->n) ? s->dbs[i] : NULL;
}

mica_db_t *mica_db_shards_pick(const mica_db_shards_t *s, uint64_t key)
{
    return s->dbs[mica_db_shard_of(key, s->n)];
}

/*
 * splitmix64's finalizer spreads sequential ids over all 64 bits; jump
 * consistent hash then walks the "jumps" a key makes as buckets are added
 * (its LCG and the 2^31 scaling are the paper's), ending in the last bucket
 * below n. Both are pure integer/double arithmetic with fixed constants, so
 * the placement never depends on the process, build or machine.
 */
int mica_db_shard_of(uint64_t key, int nshards)
{
    if (nshards <= 1)
        return 0;
    uint64_t z = key + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    int64_t b = -1, j = 0;
    while (j < nshards) {
        b = j;
        z = z * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((z >> 33) + 1)));
    }
    return (int)b;
}

uint64_t mica_db_shard_key(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

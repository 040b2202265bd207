/* SPDX-License-Identifier: MIT */
/*
 * One SQL database interface over PostgreSQL (libpq, non-blocking on the
 * worker's loop, pooled per worker) and SQLite (the embedded default: reads
 * on a small pool of threads, writes group-committed by one writer thread),
 * chosen by a URL, so a service moves from one to the other by configuration:
 *
 *     mica_db_t *db;
 *     mica_db_open(&db, NULL, NULL);           // $MICA_DB: sqlite:///var/shop.db,
 *                                              // sqlite::memory:, postgres://u@h:5432/db
 *     mica_db_value_t p[] = {mica_db_int64(42)};
 *     mica_db_rows_t *rows;
 *     int rc = mica_db_query_row(db, ctx, "SELECT name FROM users WHERE id = $1", p, 1, &rows);
 *     if (rc == 0) puts(mica_db_rows_text(rows, 0, 0, NULL));
 *     mica_db_rows_free(rows);
 *
 * Placeholders are `$1`..`$N` on both backends (translated for SQLite).
 * Every call that can wait takes a ctx (NULL: none) and must run in a
 * coroutine on a worker; a ctx that ends returns MICA_ETIMEDOUT or
 * MICA_ECANCELED promptly, and PostgreSQL then cancels the statement on
 * the server. Errors are MICA_E* codes: unique violation MICA_EEXIST, other
 * constraint violations MICA_EPRECONDITION, serialization failure or
 * deadlock MICA_EABORTED, syntax or type errors MICA_EINVAL, lost server
 * MICA_EUNAVAILABLE; the server's text is in mica_db_errmsg().
 */
#ifndef MICA_DB_H
#define MICA_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mica/ctx.h"
#include "mica/error.h"

typedef struct mica_db mica_db_t;
typedef struct mica_db_rows mica_db_rows_t;
typedef struct mica_db_tx mica_db_tx_t;

/* The type of a parameter or of a result cell. */
typedef enum mica_db_type {
    MICA_DB_NULL,
    MICA_DB_INT64,  /* PostgreSQL int2/int4/int8/oid/bool; SQLite INTEGER */
    MICA_DB_DOUBLE, /* float4/float8; REAL */
    MICA_DB_TEXT,   /* everything else (numeric, timestamps, json...); TEXT */
    MICA_DB_BLOB,   /* bytea; BLOB */
} mica_db_type_t;

/* A parameter value. Build it with the constructors below; it borrows `ptr`. */
typedef struct mica_db_value {
    mica_db_type_t type;
    int64_t i64;
    double f64;
    const void *ptr; /* TEXT (need not be NUL-terminated) and BLOB bytes */
    size_t len;
} mica_db_value_t;

typedef struct mica_db_opts {
    int pool_size;           /* PostgreSQL: connections per worker; SQLite: reader threads.
                                0: $MICA_DB_POOL_SIZE, else 8 (PostgreSQL) or 2 (SQLite) */
    int max_idle;            /* PostgreSQL: idle connections kept per worker, 0: pool_size */
    int idle_timeout_ms;     /* PostgreSQL: close connections idle longer, 0: 300000 */
    int connect_timeout_ms;  /* PostgreSQL: bound on one connect (besides ctx), 0: 10000 */
    int cancel_drain_ms;     /* PostgreSQL: after a cancel, how long to drain before dropping
                                the connection, 0: 2000 */
    int busy_timeout_ms;     /* SQLite: busy timeout, 0: 5000 */
    int max_group;           /* SQLite: units per group commit, 0: 512 */
    int tx_idle_timeout_ms;  /* SQLite: a transaction holding the writer idle longer is
                                rolled back, 0: 5000 */
    size_t max_result_bytes; /* cap on one result's values, 0: 64 MiB (MICA_ELIMIT past it) */
} mica_db_opts_t;

/** Counters since the db was opened (all workers). */
typedef struct mica_db_stats {
    uint64_t statements;     /* statements run (batch items count one each) */
    uint64_t errors;         /* statements that failed */
    uint64_t connects;       /* connections opened (PostgreSQL) */
    uint64_t connect_errors; /* connects that failed */
    uint64_t dropped;        /* connections closed as dead, dirty or after an error */
    uint64_t cancels;        /* statements cancelled on the server (ctx ended) */
    uint64_t pool_waits;     /* acquisitions that waited for a free connection */
    uint64_t prepares;       /* statements prepared (PostgreSQL cache misses) */
    uint64_t pipelines;      /* batches sent in pipeline mode */
    uint64_t group_commits;  /* SQLite: writer transactions committed */
    uint64_t group_units;    /* SQLite: units they carried (mean batch = units/commits) */
    uint64_t group_max;      /* SQLite: largest group */
} mica_db_stats_t;

/**
 * Opens the database named by `url` (NULL: $MICA_DB): "sqlite:///abs/path.db",
 * "sqlite:rel/path.db", "sqlite::memory:", or a libpq URI "postgres://..." /
 * "postgresql://..." (also key=value conninfo after "postgres:"). PostgreSQL
 * connects lazily on first use; SQLite opens (and sets WAL, synchronous=NORMAL,
 * the busy timeout) at once. Returns 0, MICA_EINVAL (bad URL), MICA_EIO, MICA_ENOMEM.
 */
MICA_API int mica_db_open(mica_db_t **out, const char *url, const mica_db_opts_t *opts);

/**
 * Closes `db` and frees it: waits for SQLite's writer to finish its queue,
 * closes every connection. Call with no statement in flight, after the
 * runtime has returned (or from a worker when it is the only one). NULL: no-op.
 */
MICA_API void mica_db_close(mica_db_t *db);

/** Returns "postgres" or "sqlite". */
MICA_API const char *mica_db_backend(const mica_db_t *db);

/** Fills `out` with the counters of `db`. */
MICA_API void mica_db_stats(const mica_db_t *db, mica_db_stats_t *out);

/**
 * Runs one statement that returns no rows the caller wants (INSERT, UPDATE,
 * DDL). `params` are borrowed for the call. *affected (may be NULL) gets the
 * number of rows changed. Returns 0 or a MICA_E* code (see the top).
 */
MICA_API int mica_db_exec(mica_db_t *db, mica_ctx_t *ctx, const char *sql,
                          const mica_db_value_t *params, int nparams, int64_t *affected);

/**
 * Runs one statement and hands back all its rows in *out, which the caller
 * owns (mica_db_rows_free). *out is NULL on error. Returns 0 or a MICA_E* code.
 */
MICA_API int mica_db_query(mica_db_t *db, mica_ctx_t *ctx, const char *sql,
                           const mica_db_value_t *params, int nparams, mica_db_rows_t **out);

/** As mica_db_query(), but MICA_ENOTFOUND (and *out NULL) when there is no row. */
MICA_API int mica_db_query_row(mica_db_t *db, mica_ctx_t *ctx, const char *sql,
                               const mica_db_value_t *params, int nparams, mica_db_rows_t **out);

/* ---- transactions -------------------------------------------------------- */

/** Body of a transaction: run statements through `tx`; return 0 to commit, else rollback. */
typedef int (*mica_db_tx_fn)(mica_db_tx_t *tx, void *arg);

typedef struct mica_db_tx_opts {
    bool serializable; /* PostgreSQL: BEGIN ISOLATION LEVEL SERIALIZABLE */
    int retries;       /* reruns of `fn` after MICA_EABORTED (serialization failure, deadlock) */
} mica_db_tx_opts_t;

/**
 * Runs fn(tx, arg) inside BEGIN ... COMMIT; rolls back when fn returns
 * non-zero, a statement fails and fn passes it on, or ctx ends. With
 * opts->retries, a MICA_EABORTED outcome reruns fn from the start. Returns 0
 * (committed), fn's error, or the commit's. `tx` is valid only inside fn.
 */
MICA_API int mica_db_tx(mica_db_t *db, mica_ctx_t *ctx, const mica_db_tx_opts_t *opts,
                        mica_db_tx_fn fn, void *arg);

/** mica_db_exec() inside a transaction, bounded by the transaction's ctx. */
MICA_API int mica_db_tx_exec(mica_db_tx_t *tx, const char *sql, const mica_db_value_t *params,
                             int nparams, int64_t *affected);

/** mica_db_query() inside a transaction. */
MICA_API int mica_db_tx_query(mica_db_tx_t *tx, const char *sql, const mica_db_value_t *params,
                              int nparams, mica_db_rows_t **out);

/* ---- batches --------------------------------------------------------------- */

/* One statement of a batch; `rows` and `rc` are filled in. */
typedef struct mica_db_batch_item {
    const char *sql;
    const mica_db_value_t *params;
    int nparams;
    bool want_rows;        /* hand back rows in `rows` (caller frees) */
    mica_db_rows_t *rows;  /* out */
    int64_t affected;      /* out */
    int rc;                /* out: 0, the error, or MICA_EABORTED (not run: an earlier one failed) */
} mica_db_batch_item_t;

/**
 * Runs `n` statements as one atomic unit in one round trip: PostgreSQL's
 * pipeline mode (one Sync: an implicit transaction), SQLite's writer (one
 * savepoint). On failure nothing is applied, no rows are handed out, and the
 * first error is returned. Returns 0 or a MICA_E* code.
 */
MICA_API int mica_db_batch(mica_db_t *db, mica_ctx_t *ctx, mica_db_batch_item_t *items, int n);

/* ---- rows ------------------------------------------------------------------ */

/** Number of rows. */
MICA_API size_t mica_db_rows_count(const mica_db_rows_t *r);
/** Number of columns. */
MICA_API int mica_db_rows_columns(const mica_db_rows_t *r);
/** Name of column `col`, or NULL. Borrowed from `r`. */
MICA_API const char *mica_db_rows_name(const mica_db_rows_t *r, int col);
/** Rows changed by the statement (INSERT/UPDATE/DELETE ... RETURNING). */
MICA_API int64_t mica_db_rows_affected(const mica_db_rows_t *r);
/** Type of a cell (MICA_DB_NULL for NULL or out of range). */
MICA_API mica_db_type_t mica_db_rows_type(const mica_db_rows_t *r, size_t row, int col);
/** Whether a cell is NULL (true out of range). */
MICA_API bool mica_db_rows_is_null(const mica_db_rows_t *r, size_t row, int col);
/**
 * Reads a cell as int64 (INT64, or TEXT holding an integer). Returns 0,
 * MICA_ENOTFOUND (out of range), MICA_EINVAL (NULL or not an integer).
 */
MICA_API int mica_db_rows_int64(const mica_db_rows_t *r, size_t row, int col, int64_t *out);
/** Reads a cell as double (DOUBLE, INT64, numeric TEXT). Returns as mica_db_rows_int64(). */
MICA_API int mica_db_rows_double(const mica_db_rows_t *r, size_t row, int col, double *out);
/**
 * Returns a TEXT (or BLOB) cell's bytes, NUL-terminated, borrowed from `r`;
 * *len (may be NULL) gets their length. NULL for NULL, numbers, out of range.
 */
MICA_API const char *mica_db_rows_text(const mica_db_rows_t *r, size_t row, int col, size_t *len);
/** Returns a BLOB (or TEXT) cell's bytes and length, borrowed from `r`; NULL as above. */
MICA_API const void *mica_db_rows_blob(const mica_db_rows_t *r, size_t row, int col, size_t *len);
/** Frees `r` and everything borrowed from it. NULL is a no-op. */
MICA_API void mica_db_rows_free(mica_db_rows_t *r);

/* ---- errors ---------------------------------------------------------------- */

/**
 * The server's message for the last failed mica_db call of this thread
 * ("" if none). Read it before the coroutine next suspends (like errno).
 */
MICA_API const char *mica_db_errmsg(void);
/** The SQLSTATE of that failure ("23505"; SQLite: its extended code name; "" if none). */
MICA_API const char *mica_db_sqlstate(void);

/* ---- shards ---------------------------------------------------------------- */

typedef struct mica_db_shards mica_db_shards_t;

/**
 * Opens `n` databases (any URLs, usually PostgreSQL) as shards, in order.
 * The order is part of the data's placement: never reorder the list.
 * Returns 0, or the first open error (nothing left open).
 */
MICA_API int mica_db_shards_open(mica_db_shards_t **out, const char *const *urls, int n,
                                 const mica_db_opts_t *opts);
/** Closes every shard and frees `s`. NULL is a no-op. */
MICA_API void mica_db_shards_close(mica_db_shards_t *s);
/** Number of shards. */
MICA_API int mica_db_shards_count(const mica_db_shards_t *s);
/** Shard `i` (0-based), borrowed; NULL out of range. */
MICA_API mica_db_t *mica_db_shards_at(const mica_db_shards_t *s, int i);
/** The shard that holds `key` (a user id): shard mica_db_shard_of(key, count). Borrowed. */
MICA_API mica_db_t *mica_db_shards_pick(const mica_db_shards_t *s, uint64_t key);
/**
 * The placement function, stable across restarts, builds and machines:
 * jump consistent hash (Lamping & Veach 2014) of splitmix64(key) into
 * [0, nshards). Growing N to N+1 moves only ~1/(N+1) of the keys.
 */
MICA_API int mica_db_shard_of(uint64_t key, int nshards);
/** 64-bit FNV-1a of `len` bytes, to turn a string key into mica_db_shard_of()'s key. */
MICA_API uint64_t mica_db_shard_key(const void *key, size_t len);

/* ---- inline definitions ------------------------------------------------------ */

static inline mica_db_value_t mica_db_null(void)
{
    mica_db_value_t v = {.type = MICA_DB_NULL};
    return v;
}

static inline mica_db_value_t mica_db_int64(int64_t i)
{
    mica_db_value_t v = {.type = MICA_DB_INT64, .i64 = i};
    return v;
}

static inline mica_db_value_t mica_db_double(double d)
{
    mica_db_value_t v = {.type = MICA_DB_DOUBLE, .f64 = d};
    return v;
}

/* Text of `len` bytes (no NUL needed). */
static inline mica_db_value_t mica_db_textn(const char *s, size_t len)
{
    mica_db_value_t v = {.type = MICA_DB_TEXT, .ptr = s, .len = len};
    return v;
}

/* A NUL-terminated string; NULL gives a SQL NULL. */
static inline mica_db_value_t mica_db_text(const char *s)
{
    return s ? mica_db_textn(s, strlen(s)) : mica_db_null();
}

static inline mica_db_value_t mica_db_blob(const void *p, size_t len)
{
    mica_db_value_t v = {.type = MICA_DB_BLOB, .ptr = p, .len = len};
    return v;
}

#endif /* MICA_DB_H */

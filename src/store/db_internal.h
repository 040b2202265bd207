/* SPDX-License-Identifier: MIT */
/*
 * The store layer's private interface: the backend callbacks behind
 * mica_db_t (pg.c, sqlite.c), the row set both fill, and the error helpers.
 */
#ifndef MICA_STORE_DB_INTERNAL_H
#define MICA_STORE_DB_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/db.h"

/* One statement to run: what mica_db_exec/query/tx_* pass to a backend. */
typedef struct mica__db_stmt {
    const char *sql;
    const mica_db_value_t *params;
    int nparams;
    mica_db_rows_t **rows; /* NULL: no rows wanted */
    int64_t *affected;     /* may be NULL */
} mica__db_stmt_t;

typedef struct mica__db_ops {
    const char *name;
    int (*open)(mica_db_t *db, const char *target);
    void (*close)(mica_db_t *db);
    int (*run)(mica_db_t *db, mica_ctx_t *ctx, const mica__db_stmt_t *st);
    int (*batch)(mica_db_t *db, mica_ctx_t *ctx, mica_db_batch_item_t *items, int n);
    int (*tx_begin)(mica_db_t *db, mica_ctx_t *ctx, const mica_db_tx_opts_t *o,
                    mica_db_tx_t **out);
    int (*tx_run)(mica_db_tx_t *tx, const mica__db_stmt_t *st);
    /* Commits (commit) or rolls back and frees tx. Returns the commit's result. */
    int (*tx_end)(mica_db_tx_t *tx, bool commit);
} mica__db_ops_t;

/* Counters, relaxed atomics: each is bumped by one thread at a time mostly. */
typedef struct mica__db_counters {
    _Atomic uint64_t statements, errors, connects, connect_errors, dropped, cancels, pool_waits,
        prepares, pipelines, group_commits, group_units, group_max;
} mica__db_counters_t;

#define MICA__DB_COUNT(db, field) atomic_fetch_add_explicit(&(db)->counters.field, 1, memory_order_relaxed)

struct mica_db {
    const mica__db_ops_t *ops;
    mica_db_opts_t opts; /* defaults filled in */
    mica__db_counters_t counters;
    void *impl; /* the backend's state */
};

/* Every backend's transaction starts with this. */
struct mica_db_tx {
    mica_db_t *db;
    mica_ctx_t *ctx;
};

extern const mica__db_ops_t mica__db_pg_ops;
extern const mica__db_ops_t mica__db_sqlite_ops;

/* ---- rows ---------------------------------------------------------------- */

typedef struct mica__db_cell {
    uint8_t type; /* mica_db_type_t */
    size_t len;   /* TEXT/BLOB bytes */
    union {
        int64_t i64;
        double f64;
        const char *p; /* NUL-terminated (BLOB too, past len) */
    } v;
} mica__db_cell_t;

typedef struct mica__db_chunk mica__db_chunk_t;

struct mica_db_rows {
    int ncols;
    size_t nrows, cap_rows;
    const char **names;
    mica__db_cell_t *cells; /* nrows * ncols */
    int64_t affected;
    size_t bytes, max_bytes; /* value bytes so far and the cap */
    mica__db_chunk_t *chunks;
    void *owner; /* freed with owner_free (a PGresult the cells point into) */
    void (*owner_free)(void *owner);
};

/* A row set with `ncols` columns and room for `rows_hint` rows. NULL on ENOMEM. */
mica_db_rows_t *mica__db_rows_new(int ncols, size_t rows_hint, size_t max_bytes);
/* Copies `len` bytes (+ a NUL) into memory owned by r. NULL: ENOMEM or over the cap. */
char *mica__db_rows_copy(mica_db_rows_t *r, const void *p, size_t len);
/* Sets column `col`'s name (copied). Returns 0, MICA_ENOMEM. */
int mica__db_rows_set_name(mica_db_rows_t *r, int col, const char *name);
/* Appends a row and returns its cells (zeroed: NULLs). NULL on ENOMEM/ELIMIT (*err). */
mica__db_cell_t *mica__db_rows_add(mica_db_rows_t *r, int *err);

/* ---- errors ---------------------------------------------------------------- */

/*
 * Records the failure of a call for mica_db_errmsg()/mica_db_sqlstate() on
 * this thread, bumps the error counter, logs it, and returns rc.
 */
int mica__db_fail(mica_db_t *db, int rc, const char *sqlstate, const char *msg, const char *sql);
/* Clears this thread's error (a call that succeeds). */
void mica__db_clear_error(void);
/* Maps a PostgreSQL SQLSTATE ("23505") to a MICA_E* code. */
int mica__db_pg_code(const char *sqlstate);

/* Resolves an env-or-default integer option. */
int mica__db_env_int(const char *name, int def);

#endif /* MICA_STORE_DB_INTERNAL_H */

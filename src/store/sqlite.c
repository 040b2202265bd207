/* SPDX-License-Identifier: MIT */
/*
 * SQLite backend: the embedded default. SQLite blocks, so no call runs on a
 * worker's loop. Reads run on a small offload pool of our own, one read-only
 * connection per thread (WAL lets them read while the writer writes).
 * Writes -- and queries that turn out not to be read-only -- go to one
 * writer thread with its own connection, which group-commits: it takes
 * every unit queued (up to max_group), runs them in one BEGIN ... COMMIT and
 * only then wakes each caller with its own result. With WAL and
 * synchronous=NORMAL a commit is one WAL append (no fsync), so per-commit
 * overhead is what group commit saves; a caller is woken only after the
 * COMMIT that holds its unit returned, so what a caller saw committed
 * survives the process being killed.
 *
 * Units: a statement (atomic by itself in SQLite), a batch (wrapped in a
 * savepoint, so a failing statement rolls back only its own batch), or an
 * interactive transaction (a savepoint the writer holds open while the
 * transaction's coroutine sends statements one by one; bounded by the
 * caller's deadline and tx_idle_timeout_ms, since it stalls the writer).
 * A unit is shared by the caller and the writer through a reference count:
 * a caller whose ctx ends returns at once; a unit still queued is then
 * skipped, one already running finishes and is freed by the writer.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/list.h"
#include "common/log.h"
#include "mica/runtime.h"
#include "mica/sync.h"
#include "store/db_internal.h"

#define CACHE_SLOTS 64

typedef struct cached {
    uint64_t hash, used;
    char *sql;
    sqlite3_stmt *st;
} cached_t;

typedef struct sconn {
    sqlite3 *h;
    uint64_t tick;
    cached_t cache[CACHE_SLOTS];
    struct sconn *next_free;
} sconn_t;

enum { U_STMT, U_BATCH, U_TX };
enum { S_QUEUED, S_RUNNING, S_DONE, S_ABANDONED };
enum { TX_OPEN, TX_COMMIT, TX_ROLLBACK };

/* A statement with its own copies of the SQL and the parameters. */
typedef struct ustmt {
    char *sql;
    mica_db_value_t *params;
    int nparams;
    bool want_rows;
    mica_db_rows_t *rows;
    int64_t affected;
    int rc;
    char msg[200];
    char state[24];
} ustmt_t;

typedef struct unit {
    mica__list_t link;
    _Atomic int refs;
    _Atomic int state;
    int kind;
    mica_event_t done;
    int rc;
    char msg[200];
    int nstmts;
    ustmt_t **stmts;
    /* interactive transactions (U_TX), under sq->lock */
    pthread_cond_t cond;
    ustmt_t *req;  /* the statement sent, answered when req_done */
    bool req_done;
    int end;       /* TX_* */
    bool begun;
    int64_t deadline_ms;
    mica_event_t reply;
} unit_t;

typedef struct sq {
    mica_db_t *db;
    char *path;
    bool memory;
    /* readers */
    mica_offload_pool_t *rpool;
    pthread_mutex_t rlock;
    sconn_t *rfree;
    int nreaders;
    sconn_t **readers;
    /* writer */
    sconn_t w;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mica__list_t queue;
    size_t queued;
    bool stop, sleeping;
    uint64_t savepoints;
    /* group-commit log summary (writer thread only) */
    int64_t log_at;
    uint64_t log_groups, log_units, log_max;
} sq_t;

typedef struct sq_tx {
    struct mica_db_tx base;
    unit_t *u;
} sq_tx_t;

/* ---- errors and statements ------------------------------------------------- */

static int code_of(int xrc)
{
    if (xrc == SQLITE_CONSTRAINT_UNIQUE || xrc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return MICA_EEXIST;
    switch (xrc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_CONSTRAINT:
        return MICA_EPRECONDITION;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return MICA_EBUSY;
    case SQLITE_ERROR:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return MICA_EINVAL;
    case SQLITE_FULL:
        return MICA_ENOSPC;
    case SQLITE_IOERR:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return MICA_EIO;
    case SQLITE_NOMEM:
        return MICA_ENOMEM;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return MICA_EPERM;
    case SQLITE_CANTOPEN:
        return MICA_ENOENT;
    case SQLITE_TOOBIG:
        return MICA_ELIMIT;
    case SQLITE_INTERRUPT:
        return MICA_ECANCELED;
    default:
        return MICA_EINTERNAL;
    }
}

/* Records SQLite's error of `h` in `s`; returns the MICA_E* code. */
static int st_fail(ustmt_t *s, sqlite3 *h, int xrc)
{
    s->rc = code_of(xrc);
    if (s->rc == 0)
        s->rc = MICA_EINTERNAL;
    snprintf(s->msg, sizeof(s->msg), "%s", h ? sqlite3_errmsg(h) : sqlite3_errstr(xrc));
    snprintf(s->state, sizeof(s->state), "sqlite:%d", xrc);
    return s->rc;
}

static uint64_t hash_str(const char *s)
{
    return mica_db_shard_key(s, strlen(s));
}

/*
 * `$1` placeholders become SQLite's `?1` (same length, same number), outside
 * string literals, quoted identifiers and comments. SQLite reads `$1` as a
 * named parameter numbered by first appearance, which would bind "$2 ... $1"
 * backwards; `?NNN` is positional.
 */
static void translate(char *sql)
{
    for (char *p = sql; *p; p++) {
        if (*p == '\'' || *p == '"' || *p == '`' || *p == '[') {
            char close = *p == '[' ? ']' : *p;
            for (p++; *p && *p != close; p++)
                ;
            if (!*p)
                return;
        } else if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
            if (!*p)
                return;
        } else if (p[0] == '/' && p[1] == '*') {
            char *e = strstr(p + 2, "*/");
            if (!e)
                return;
            p = e + 1;
        } else if (p[0] == '$' && p[1] >= '1' && p[1] <= '9') {
            *p = '?';
        }
    }
}

static void cache_clear(sconn_t *c)
{
    for (int i = 0; i < CACHE_SLOTS; i++) {
        sqlite3_finalize(c->cache[i].st);
        mica__free(c->cache[i].sql);
        memset(&c->cache[i], 0, sizeof(c->cache[i]));
    }
}

/* Returns the cached, reset statement for `sql`, preparing it on a miss. */
static int prepare(sconn_t *c, ustmt_t *s, sqlite3_stmt **out)
{
    uint64_t h = hash_str(s->sql);
    cached_t *victim = &c->cache[0];
    for (int i = 0; i < CACHE_SLOTS; i++) {
        cached_t *e = &c->cache[i];
        if (e->st && e->hash == h && !strcmp(e->sql, s->sql)) {
            e->used = ++c->tick;
            *out = e->st;
            return 0;
        }
        if (!e->st || e->used < victim->used)
            victim = e;
    }
    char *sql = mica__strdup(s->sql);
    if (!sql)
        return s->rc = MICA_ENOMEM;
    translate(sql);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v3(c->h, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    mica__free(sql);
    if (rc != SQLITE_OK)
        return st_fail(s, c->h, sqlite3_extended_errcode(c->h));
    if (!st) { /* only whitespace or a comment */
        s->rc = MICA_EINVAL;
        snprintf(s->msg, sizeof(s->msg), "empty statement");
        return s->rc;
    }
    char *key = mica__strdup(s->sql);
    if (!key) {
        sqlite3_finalize(st);
        return s->rc = MICA_ENOMEM;
    }
    sqlite3_finalize(victim->st);
    mica__free(victim->sql);
    *victim = (cached_t){h, ++c->tick, key, st};
    *out = st;
    return 0;
}

static int bind_all(sconn_t *c, sqlite3_stmt *st, ustmt_t *s)
{
    int want = sqlite3_bind_parameter_count(st);
    if (want != s->nparams) {
        s->rc = MICA_EINVAL;
        snprintf(s->msg, sizeof(s->msg), "statement takes %d parameters, %d given", want,
                 s->nparams);
        return s->rc;
    }
    for (int i = 0; i < s->nparams; i++) {
        const mica_db_value_t *v = &s->params[i];
        int rc;
        switch (v->type) {
        case MICA_DB_INT64:
            rc = sqlite3_bind_int64(st, i + 1, v->i64);
            break;
        case MICA_DB_DOUBLE:
            rc = sqlite3_bind_double(st, i + 1, v->f64);
            break;
        case MICA_DB_TEXT:
            rc = sqlite3_bind_text64(st, i + 1, v->ptr ? v->ptr : "", v->len, SQLITE_STATIC,
                                     SQLITE_UTF8);
            break;
        case MICA_DB_BLOB:
            /* A NULL pointer would bind SQL NULL, not an empty blob. */
            rc = v->len ? sqlite3_bind_blob64(st, i + 1, v->ptr, v->len, SQLITE_STATIC)
                        : sqlite3_bind_zeroblob(st, i + 1, 0);
            break;
        default:
            rc = sqlite3_bind_null(st, i + 1);
        }
        if (rc != SQLITE_OK)
            return st_fail(s, c->h, rc);
    }
    return 0;
}

static int add_row(sqlite3_stmt *st, mica_db_rows_t *r, ustmt_t *s)
{
    int err = 0;
    mica__db_cell_t *row = mica__db_rows_add(r, &err);
    if (!row)
        goto fail;
    for (int i = 0; i < r->ncols; i++) {
        mica__db_cell_t *cl = &row[i];
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            cl->type = MICA_DB_INT64;
            cl->v.i64 = sqlite3_column_int64(st, i);
            break;
        case SQLITE_FLOAT:
            cl->type = MICA_DB_DOUBLE;
            cl->v.f64 = sqlite3_column_double(st, i);
            break;
        case SQLITE_TEXT:
        case SQLITE_BLOB: {
            bool text = sqlite3_column_type(st, i) == SQLITE_TEXT;
            const void *p = text ? (const void *)sqlite3_column_text(st, i)
                                 : sqlite3_column_blob(st, i);
            size_t n = (size_t)sqlite3_column_bytes(st, i);
            cl->v.p = mica__db_rows_copy(r, p, n);
            if (!cl->v.p) {
                err = r->bytes + n > r->max_bytes ? MICA_ELIMIT : MICA_ENOMEM;
                goto fail;
            }
            cl->type = text ? MICA_DB_TEXT : MICA_DB_BLOB;
            cl->len = n;
            break;
        }
        default:
            break;
        }
    }
    return 0;
fail:
    s->rc = err;
    snprintf(s->msg, sizeof(s->msg), "%s", err == MICA_ELIMIT ? "result too large" : "no memory");
    return err;
}

/* Runs `s` on `c` to completion. `readonly`: refuse (MICA_EPERM) a statement that writes. */
static int run_stmt(sconn_t *c, ustmt_t *s, size_t max_bytes, bool readonly)
{
    s->rc = 0;
    sqlite3_stmt *st;
    if (prepare(c, s, &st) != 0)
        return s->rc;
    if (readonly && !sqlite3_stmt_readonly(st))
        return s->rc = MICA_EPERM; /* the caller sends it to the writer instead */
    if (bind_all(c, st, s) != 0)
        goto out;
    mica_db_rows_t *r = NULL;
    if (s->want_rows) {
        int nc = sqlite3_column_count(st);
        r = mica__db_rows_new(nc, 0, max_bytes);
        if (!r) {
            s->rc = MICA_ENOMEM;
            goto out;
        }
        for (int i = 0; i < nc; i++) {
            const char *name = sqlite3_column_name(st, i);
            if (mica__db_rows_set_name(r, i, name ? name : "") != 0) {
                s->rc = MICA_ENOMEM;
                break;
            }
        }
    }
    for (int rc; s->rc == 0;) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            if (r)
                add_row(st, r, s);
        } else if (rc == SQLITE_DONE) {
            break;
        } else {
            st_fail(s, c->h, sqlite3_extended_errcode(c->h));
        }
    }
    if (s->rc == 0) {
        s->affected = sqlite3_stmt_readonly(st) ? 0 : sqlite3_changes64(c->h);
        if (r)
            r->affected = s->affected;
        s->rows = r;
    } else {
        mica_db_rows_free(r);
    }
out:
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return s->rc;
}

/* A heap copy of st (SQL, parameters and their bytes) in one allocation. */
static ustmt_t *ustmt_new(const mica__db_stmt_t *st)
{
    size_t sql_len = strlen(st->sql) + 1;
    size_t bytes = sizeof(ustmt_t) + (size_t)st->nparams * sizeof(mica_db_value_t) + sql_len;
    for (int i = 0; i < st->nparams; i++)
        if (st->params[i].type == MICA_DB_TEXT || st->params[i].type == MICA_DB_BLOB)
            bytes += st->params[i].len;
    ustmt_t *s = mica__malloc(bytes);
    if (!s)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->params = (mica_db_value_t *)(s + 1);
    char *p = (char *)(s->params + st->nparams);
    s->sql = p;
    memcpy(p, st->sql, sql_len);
    p += sql_len;
    s->nparams = st->nparams;
    s->want_rows = st->rows != NULL;
    for (int i = 0; i < st->nparams; i++) {
        s->params[i] = st->params[i];
        if ((st->params[i].type == MICA_DB_TEXT || st->params[i].type == MICA_DB_BLOB) &&
            st->params[i].len) {
            memcpy(p, st->params[i].ptr, st->params[i].len);
            s->params[i].ptr = p;
            p += st->params[i].len;
        }
    }
    return s;
}

static void ustmt_free(ustmt_t *s)
{
    if (s) {
        mica_db_rows_free(s->rows);
        mica__free(s);
    }
}

/* Hands the result of `s` to the caller of `st`, on the caller's thread. */
static int deliver(mica_db_t *db, ustmt_t *s, const mica__db_stmt_t *st)
{
    MICA__DB_COUNT(db, statements);
    if (s->rc != 0)
        return mica__db_fail(db, s->rc, s->state, s->msg[0] ? s->msg : NULL, s->sql);
    if (st->affected)
        *st->affected = s->affected;
    if (st->rows) {
        *st->rows = s->rows;
        s->rows = NULL;
    }
    return 0;
}

/* ---- connections ------------------------------------------------------------ */

static int exec_simple(sqlite3 *h, const char *sql, char *msg, size_t n)
{
    char *err = NULL;
    int rc = sqlite3_exec(h, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK && msg)
        snprintf(msg, n, "%s", err ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    return rc;
}

static int conn_open(sq_t *q, sconn_t *c, bool reader)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
    if (!reader)
        flags |= SQLITE_OPEN_CREATE;
    int rc = sqlite3_open_v2(q->path, &c->h, flags, NULL);
    char msg[200] = "";
    if (rc != SQLITE_OK) {
        snprintf(msg, sizeof(msg), "%s", c->h ? sqlite3_errmsg(c->h) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(c->h, 1);
    sqlite3_busy_timeout(c->h, q->db->opts.busy_timeout_ms);
    if (!reader && !q->memory) {
        /* WAL: readers never block the writer nor it them; NORMAL: a commit
         * appends to the WAL without fsync (durable against a crash of the
         * process, not of the machine); checkpoints fsync. */
        rc = exec_simple(c->h, "PRAGMA journal_mode=WAL", msg, sizeof(msg));
        if (rc == SQLITE_OK)
            rc = exec_simple(c->h, "PRAGMA synchronous=NORMAL", msg, sizeof(msg));
    }
    if (rc == SQLITE_OK)
        rc = exec_simple(c->h, "PRAGMA foreign_keys=ON", msg, sizeof(msg));
    if (rc == SQLITE_OK && reader)
        rc = exec_simple(c->h, "PRAGMA query_only=1", msg, sizeof(msg));
    if (rc != SQLITE_OK)
        goto fail;
    return 0;
fail:
    sqlite3_close_v2(c->h);
    c->h = NULL;
    return mica__db_fail(q->db, code_of(rc) ? code_of(rc) : MICA_EIO, NULL, msg, q->path);
}

static void conn_close(sconn_t *c)
{
    cache_clear(c);
    sqlite3_close_v2(c->h);
    c->h = NULL;
}

/* ---- the writer ------------------------------------------------------------ */

static void unit_unref(unit_t *u)
{
    if (atomic_fetch_sub(&u->refs, 1) != 1)
        return;
    for (int i = 0; i < u->nstmts; i++)
        ustmt_free(u->stmts[i]);
    ustmt_free(u->req);
    mica__free(u->stmts);
    pthread_cond_destroy(&u->cond);
    mica__free(u);
}

static unit_t *unit_new(int kind, int nstmts)
{
    unit_t *u = mica__calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    if (nstmts > 0 && !(u->stmts = mica__calloc((size_t)nstmts, sizeof(*u->stmts)))) {
        mica__free(u);
        return NULL;
    }
    u->kind = kind;
    u->nstmts = nstmts;
    atomic_init(&u->refs, 2); /* the caller's and the writer's */
    atomic_init(&u->state, S_QUEUED);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* run_tx's timed waits */
    pthread_cond_init(&u->cond, &ca);
    pthread_condattr_destroy(&ca);
    mica__list_init(&u->link);
    return u;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Savepoint statements, numbered so nested names never clash. */
static int savepoint(sq_t *q, const char *verb, uint64_t id)
{
    char sql[64];
    snprintf(sql, sizeof(sql), "%s u%" PRIu64, verb, id);
    return exec_simple(q->w.h, sql, NULL, 0);
}

static void run_batch(sq_t *q, unit_t *u)
{
    uint64_t id = ++q->savepoints;
    int rc = savepoint(q, "SAVEPOINT", id);
    if (rc != SQLITE_OK) {
        u->rc = code_of(rc);
        snprintf(u->msg, sizeof(u->msg), "%s", sqlite3_errmsg(q->w.h));
        return;
    }
    u->rc = 0;
    for (int i = 0; i < u->nstmts; i++) {
        ustmt_t *s = u->stmts[i];
        if (u->rc != 0) {
            s->rc = MICA_EABORTED;
            continue;
        }
        if (run_stmt(&q->w, s, q->db->opts.max_result_bytes, false) != 0) {
            u->rc = s->rc;
            snprintf(u->msg, sizeof(u->msg), "%s", s->msg);
        }
    }
    if (u->rc != 0)
        savepoint(q, "ROLLBACK TO", id);
    savepoint(q, "RELEASE", id);
}

/* Serves an interactive transaction until its coroutine commits or rolls back. */
static void run_tx(sq_t *q, unit_t *u)
{
    uint64_t id = ++q->savepoints;
    int rc = savepoint(q, "SAVEPOINT", id);
    pthread_mutex_lock(&q->lock);
    u->begun = true;
    if (rc != SQLITE_OK) {
        u->rc = code_of(rc);
        u->end = TX_ROLLBACK;
    }
    pthread_mutex_unlock(&q->lock);
    mica_event_set(&u->reply);
    if (rc != SQLITE_OK)
        return;
    const char *why = NULL;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        /* Idle time counts from the last answer (or the savepoint). */
        int64_t until = mono_ms() + q->db->opts.tx_idle_timeout_ms;
        if (u->deadline_ms < until)
            until = u->deadline_ms;
        while (u->end == TX_OPEN && (!u->req || u->req_done)) {
            int64_t now = mono_ms();
            if (now >= until) {
                why = until == u->deadline_ms ? "deadline" : "idle";
                u->end = TX_ROLLBACK;
                u->rc = MICA_ETIMEDOUT;
                break;
            }
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t wait = until - now;
            ts.tv_sec += wait / 1000;
            ts.tv_nsec += (wait % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&u->cond, &q->lock, &ts);
        }
        if (u->end != TX_OPEN)
            break;
        ustmt_t *s = u->req;
        pthread_mutex_unlock(&q->lock);
        run_stmt(&q->w, s, q->db->opts.max_result_bytes, false);
        pthread_mutex_lock(&q->lock);
        u->req_done = true;
        pthread_mutex_unlock(&q->lock);
        mica_event_set(&u->reply);
        pthread_mutex_lock(&q->lock);
    }
    int end = u->end;
    pthread_mutex_unlock(&q->lock);
    if (why)
        mica__log_warn("db: sqlite transaction rolled back: it held the writer too long",
                       "reason", why);
    if (end == TX_COMMIT) {
        u->rc = 0;
    } else {
        if (u->rc == 0)
            u->rc = MICA_ECANCELED; /* rolled back: nobody waits for a result */
        savepoint(q, "ROLLBACK TO", id);
    }
    savepoint(q, "RELEASE", id);
    mica_event_set(&u->reply); /* a coroutine waiting on a statement when time ran out */
}

static void group_log(sq_t *q, size_t n, bool force)
{
    q->log_groups++;
    q->log_units += n;
    if (n > q->log_max)
        q->log_max = n;
    int64_t now = mono_ms();
    if (!force && now - q->log_at < 1000)
        return;
    char g[24], un[24], mx[24];
    snprintf(g, sizeof(g), "%" PRIu64, q->log_groups);
    snprintf(un, sizeof(un), "%" PRIu64, q->log_units);
    snprintf(mx, sizeof(mx), "%" PRIu64, q->log_max);
    mica__log_info("db: sqlite group commits", "commits", g, "units", un, "max_units", mx);
    q->log_at = now;
    q->log_groups = q->log_units = q->log_max = 0;
}

static void run_group(sq_t *q, mica__list_t *group)
{
    char msg[200] = "";
    int brc = exec_simple(q->w.h, "BEGIN IMMEDIATE", msg, sizeof(msg));
    size_t n = 0;
    int fatal = brc == SQLITE_OK ? 0 : code_of(brc);
    mica__list_foreach(node, group) {
        unit_t *u = mica__list_entry(node, unit_t, link);
        int expect = S_QUEUED;
        if (!atomic_compare_exchange_strong(&u->state, &expect, S_RUNNING))
            continue; /* abandoned while queued */
        n++;
        if (fatal) {
            u->rc = fatal;
            snprintf(u->msg, sizeof(u->msg), "%s", msg);
            if (u->kind == U_TX) {
                pthread_mutex_lock(&q->lock);
                u->begun = true;
                u->end = TX_ROLLBACK;
                pthread_mutex_unlock(&q->lock);
                mica_event_set(&u->reply);
            }
            continue;
        }
        if (u->kind == U_STMT) {
            run_stmt(&q->w, u->stmts[0], q->db->opts.max_result_bytes, false);
            u->rc = 0; /* the statement's own error is in stmts[0] */
        } else if (u->kind == U_BATCH) {
            run_batch(q, u);
        } else {
            run_tx(q, u);
        }
        /* Some errors (disk full, I/O, a statement's own COMMIT) end the whole
         * transaction: every unit before is then lost too, so fail them all. */
        if (sqlite3_get_autocommit(q->w.h)) {
            fatal = MICA_EIO;
            snprintf(msg, sizeof(msg), "group transaction ended by a statement: %s",
                     sqlite3_errmsg(q->w.h));
            mica__list_foreach(prev, group) {
                unit_t *p = mica__list_entry(prev, unit_t, link);
                if (atomic_load(&p->state) == S_RUNNING) {
                    p->rc = fatal;
                    snprintf(p->msg, sizeof(p->msg), "%s", msg);
                }
                if (prev == node)
                    break;
            }
        }
    }
    if (!fatal) {
        int rc = exec_simple(q->w.h, "COMMIT", msg, sizeof(msg));
        if (rc != SQLITE_OK) {
            fatal = code_of(rc);
            exec_simple(q->w.h, "ROLLBACK", NULL, 0);
        }
    } else if (!sqlite3_get_autocommit(q->w.h)) {
        exec_simple(q->w.h, "ROLLBACK", NULL, 0);
    }
    if (n > 0) {
        MICA__DB_COUNT(q->db, group_commits);
        atomic_fetch_add_explicit(&q->db->counters.group_units, n, memory_order_relaxed);
        uint64_t mx = atomic_load_explicit(&q->db->counters.group_max, memory_order_relaxed);
        if (n > mx)
            atomic_store_explicit(&q->db->counters.group_max, n, memory_order_relaxed);
        group_log(q, n, false);
    }
    mica__list_foreach_safe(node, next, group) {
        unit_t *u = mica__list_entry(node, unit_t, link);
        mica__list_remove(node);
        if (fatal && u->rc == 0) {
            u->rc = fatal;
            snprintf(u->msg, sizeof(u->msg), "%s", msg);
        }
        atomic_store(&u->state, S_DONE);
        mica_event_set(&u->done);
        unit_unref(u);
    }
}

static void *writer_main(void *arg)
{
    sq_t *q = arg;
    pthread_setname_np(pthread_self(), "mica-sqlite-w");
    size_t last = 0; /* size of the previous group */
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (mica__list_empty(&q->queue) && !q->stop) {
            q->sleeping = true;
            pthread_cond_wait(&q->cond, &q->lock);
            q->sleeping = false;
        }
        if (mica__list_empty(&q->queue))
            break;
        /* The callers of the last group were just woken and are about to
         * submit again: while fewer than half of them are back, let them
         * run (twice at most) so that they share the next commit instead
         * of each paying for one. */
        for (int i = 0; i < 2 && q->queued * 2 < last && !q->stop; i++) {
            pthread_mutex_unlock(&q->lock);
            sched_yield();
            pthread_mutex_lock(&q->lock);
        }
        mica__list_t group;
        mica__list_init(&group);
        size_t n = 0;
        for (; n < (size_t)q->db->opts.max_group && !mica__list_empty(&q->queue); n++)
            mica__list_push_back(&group, mica__list_pop_front(&q->queue));
        q->queued -= n;
        last = n;
        pthread_mutex_unlock(&q->lock);
        run_group(q, &group);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    if (q->log_groups)
        group_log(q, 0, true);
    return NULL;
}

static void submit(sq_t *q, unit_t *u)
{
    pthread_mutex_lock(&q->lock);
    mica__list_push_back(&q->queue, &u->link);
    q->queued++;
    if (q->sleeping)
        pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/*
 * Waits for `u` to be done. On a ctx that ends first: a unit still queued
 * is withdrawn (the writer skips it); one already running keeps going and
 * the writer frees it. Either way the caller returns the ctx's error now.
 */
static int wait_done(unit_t *u, mica_ctx_t *ctx)
{
    int rc = mica_event_wait(&u->done, ctx, MICA_NO_DEADLINE);
    if (rc == 0) {
        /* mica_event_wait()'s fast path (already set) orders nothing: the
         * writer's results are ours through its store of S_DONE. */
        while (atomic_load_explicit(&u->state, memory_order_acquire) != S_DONE)
            ;
    } else {
        int expect = S_QUEUED;
        atomic_compare_exchange_strong(&u->state, &expect, S_ABANDONED);
    }
    return rc;
}

static int write_stmt(sq_t *q, mica_ctx_t *ctx, const mica__db_stmt_t *st)
{
    mica_db_t *db = q->db;
    int rc = mica_ctx_err(ctx);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, st->sql);
    unit_t *u = unit_new(U_STMT, 1);
    if (!u || !(u->stmts[0] = ustmt_new(st))) {
        if (u) {
            atomic_store(&u->refs, 1);
            unit_unref(u);
        }
        return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, st->sql);
    }
    submit(q, u);
    rc = wait_done(u, ctx);
    if (rc != 0)
        rc = mica__db_fail(db, rc, NULL,
                           rc == MICA_EINVAL ? "not called from a coroutine"
                                             : "ended while waiting for the sqlite writer",
                           st->sql);
    else if (u->rc != 0)
        rc = mica__db_fail(db, u->rc, NULL, u->msg, st->sql);
    else
        rc = deliver(db, u->stmts[0], st);
    unit_unref(u);
    return rc;
}

/* ---- readers --------------------------------------------------------------- */

typedef struct read_job {
    sq_t *q;
    ustmt_t s;
    mica_ctx_t *ctx;
} read_job_t;

/* Interrupts a read whose caller's ctx ended (checked every 1000 VM steps). */
static int read_progress(void *arg)
{
    return mica_ctx_err(arg) != 0;
}

static int read_fn(void *arg)
{
    read_job_t *j = arg;
    sq_t *q = j->q;
    pthread_mutex_lock(&q->rlock);
    sconn_t *c = q->rfree; /* one connection per pool thread: never empty here */
    q->rfree = c->next_free;
    pthread_mutex_unlock(&q->rlock);
    sqlite3_progress_handler(c->h, 1000, read_progress, j->ctx);
    run_stmt(c, &j->s, q->db->opts.max_result_bytes, true);
    sqlite3_progress_handler(c->h, 0, NULL, NULL);
    pthread_mutex_lock(&q->rlock);
    c->next_free = q->rfree;
    q->rfree = c;
    pthread_mutex_unlock(&q->rlock);
    return 0;
}

static int sq_run(mica_db_t *db, mica_ctx_t *ctx, const mica__db_stmt_t *st)
{
    sq_t *q = db->impl;
    if (!st->rows || q->nreaders == 0)
        return write_stmt(q, ctx, st);
    /* A query reads on a reader, borrowing the caller's SQL and parameters
     * (the offload job always finishes before mica_offload returns). */
    read_job_t j = {.q = q, .ctx = ctx};
    j.s.sql = (char *)st->sql;
    j.s.params = (mica_db_value_t *)st->params;
    j.s.nparams = st->nparams;
    j.s.want_rows = true;
    int res;
    int rc = mica_offload(q->rpool, ctx, read_fn, &j, &res);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, rc == MICA_EOVERLOAD ? "sqlite readers busy" : NULL,
                             st->sql);
    if (j.s.rc == MICA_EPERM && !j.s.msg[0])
        return write_stmt(q, ctx, st); /* INSERT ... RETURNING and the like */
    if (j.s.rc == MICA_ECANCELED && mica_ctx_err(ctx) != 0)
        j.s.rc = mica_ctx_err(ctx); /* interrupted by read_progress(): say why */
    rc = deliver(db, &j.s, st);
    mica_db_rows_free(j.s.rows);
    return rc;
}

/* ---- batches and transactions -------------------------------------------- */

static int sq_batch(mica_db_t *db, mica_ctx_t *ctx, mica_db_batch_item_t *items, int n)
{
    sq_t *q = db->impl;
    int rc = mica_ctx_err(ctx);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, items[0].sql);
    unit_t *u = unit_new(U_BATCH, n);
    if (!u)
        return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        mica_db_rows_t *dummy;
        mica__db_stmt_t st = {items[i].sql, items[i].params, items[i].nparams,
                              items[i].want_rows ? &dummy : NULL, NULL};
        if (!(u->stmts[i] = ustmt_new(&st))) {
            atomic_store(&u->refs, 1);
            unit_unref(u);
            return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, NULL);
        }
    }
    submit(q, u);
    rc = wait_done(u, ctx);
    if (rc != 0) {
        unit_unref(u);
        return mica__db_fail(db, rc, NULL, NULL, items[0].sql);
    }
    int first = u->rc;
    for (int i = 0; i < n; i++) {
        ustmt_t *s = u->stmts[i];
        MICA__DB_COUNT(db, statements);
        items[i].rc = first != 0 && s->rc == 0 ? MICA_EABORTED : s->rc;
        items[i].affected = s->affected;
        if (first == 0 && items[i].want_rows) {
            items[i].rows = s->rows;
            s->rows = NULL;
        }
    }
    if (first != 0) {
        const char *state = "", *sql = NULL;
        for (int i = 0; i < n; i++)
            if (u->stmts[i]->rc != 0 && u->stmts[i]->rc != MICA_EABORTED) {
                state = u->stmts[i]->state;
                sql = u->stmts[i]->sql;
                break;
            }
        rc = mica__db_fail(db, first, state, u->msg, sql);
    }
    unit_unref(u);
    return rc;
}

static int sq_tx_begin(mica_db_t *db, mica_ctx_t *ctx, const mica_db_tx_opts_t *o,
                       mica_db_tx_t **out)
{
    sq_t *q = db->impl;
    int rc = mica_ctx_err(ctx);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, "BEGIN");
    sq_tx_t *tx = mica__calloc(1, sizeof(*tx));
    unit_t *u = unit_new(U_TX, 0);
    if (!tx || !u) {
        mica__free(tx);
        if (u) {
            atomic_store(&u->refs, 1);
            unit_unref(u);
        }
        return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, "BEGIN");
    }
    int64_t d = mica_ctx_deadline(ctx);
    u->deadline_ms = d == MICA_NO_DEADLINE ? INT64_MAX : mono_ms() + (d - mica_now_ms());
    tx->base.db = db;
    tx->base.ctx = ctx;
    tx->u = u;
    submit(q, u);
    /* Wait until the writer has opened our savepoint. */
    rc = mica_event_wait(&u->reply, ctx, MICA_NO_DEADLINE);
    if (rc != 0) {
        int expect = S_QUEUED;
        if (!atomic_compare_exchange_strong(&u->state, &expect, S_ABANDONED)) {
            pthread_mutex_lock(&q->lock);
            u->end = TX_ROLLBACK;
            pthread_cond_signal(&u->cond);
            pthread_mutex_unlock(&q->lock);
        }
        unit_unref(u);
        mica__free(tx);
        return mica__db_fail(db, rc, NULL, "cancelled waiting for the sqlite writer", "BEGIN");
    }
    pthread_mutex_lock(&q->lock);
    bool failed = u->end != TX_OPEN;
    pthread_mutex_unlock(&q->lock);
    if (failed) {
        rc = u->rc ? u->rc : MICA_EIO;
        wait_done(u, NULL);
        rc = mica__db_fail(db, rc, NULL, u->msg, "BEGIN");
        unit_unref(u);
        mica__free(tx);
        return rc;
    }
    *out = &tx->base;
    return 0;
}

static int sq_tx_run(mica_db_tx_t *base, const mica__db_stmt_t *st)
{
    sq_tx_t *tx = (sq_tx_t *)base;
    unit_t *u = tx->u;
    sq_t *q = base->db->impl;
    mica_db_t *db = base->db;
    int rc = mica_ctx_err(base->ctx);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, st->sql);
    ustmt_t *s = ustmt_new(st);
    if (!s)
        return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, st->sql);
    mica_event_reset(&u->reply);
    pthread_mutex_lock(&q->lock);
    if (u->end != TX_OPEN) { /* the writer gave up on us (deadline, idle) */
        pthread_mutex_unlock(&q->lock);
        ustmt_free(s);
        return mica__db_fail(db, MICA_ETIMEDOUT, NULL, "transaction rolled back by the writer",
                             st->sql);
    }
    ustmt_free(u->req);
    u->req = s;
    u->req_done = false;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&q->lock);
    rc = mica_event_wait(&u->reply, base->ctx, MICA_NO_DEADLINE);
    pthread_mutex_lock(&q->lock);
    bool answered = u->req_done;
    if (rc != 0 && !answered)
        u->end = TX_ROLLBACK; /* the writer rolls back after this statement */
    pthread_mutex_unlock(&q->lock);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, st->sql);
    if (!answered)
        return mica__db_fail(db, MICA_ETIMEDOUT, NULL, "transaction rolled back by the writer",
                             st->sql);
    return deliver(db, s, st);
}

static int sq_tx_end(mica_db_tx_t *base, bool commit)
{
    sq_tx_t *tx = (sq_tx_t *)base;
    unit_t *u = tx->u;
    sq_t *q = base->db->impl;
    mica_db_t *db = base->db;
    pthread_mutex_lock(&q->lock);
    bool open = u->end == TX_OPEN;
    if (open)
        u->end = commit ? TX_COMMIT : TX_ROLLBACK;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&q->lock);
    int rc = 0;
    if (commit) {
        if (!open)
            rc = mica__db_fail(db, MICA_ETIMEDOUT, NULL, "transaction rolled back by the writer",
                               "COMMIT");
        else if ((rc = wait_done(u, base->ctx)) != 0)
            rc = mica__db_fail(db, rc, NULL, "outcome unknown: cancelled waiting for COMMIT",
                               "COMMIT");
        else if (u->rc != 0)
            rc = mica__db_fail(db, u->rc, NULL, u->msg, "COMMIT");
    }
    unit_unref(u);
    mica__free(tx);
    return rc;
}

/* ---- open and close -------------------------------------------------------- */

static void sq_close(mica_db_t *db)
{
    sq_t *q = db->impl;
    if (!q)
        return;
    if (q->started) {
        pthread_mutex_lock(&q->lock);
        q->stop = true;
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&q->lock);
        pthread_join(q->thread, NULL);
    }
    mica_offload_pool_free(q->rpool);
    for (int i = 0; i < q->nreaders; i++)
        if (q->readers[i]) {
            conn_close(q->readers[i]);
            mica__free(q->readers[i]);
        }
    mica__free(q->readers);
    if (q->w.h)
        conn_close(&q->w);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->rlock);
    mica__free(q->path);
    mica__free(q);
    db->impl = NULL;
}

static int sq_open(mica_db_t *db, const char *target)
{
    sq_t *q = mica__calloc(1, sizeof(*q));
    if (!q)
        return MICA_ENOMEM;
    db->impl = q;
    q->db = db;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    pthread_mutex_init(&q->rlock, NULL);
    mica__list_init(&q->queue);
    q->memory = !strcmp(target, ":memory:");
    /* One in-memory database must be seen by one connection only: the
     * writer then serves the reads too. */
    q->path = q->memory ? mica__strdup(":memory:") : mica__strdup(target);
    int rc = q->path ? conn_open(q, &q->w, false) : MICA_ENOMEM;
    if (rc == 0 && !q->memory) {
        q->nreaders = db->opts.pool_size;
        q->readers = mica__calloc((size_t)q->nreaders, sizeof(*q->readers));
        rc = q->readers ? mica_offload_pool_new(&q->rpool, q->nreaders, 4096) : MICA_ENOMEM;
        for (int i = 0; rc == 0 && i < q->nreaders; i++) {
            q->readers[i] = mica__calloc(1, sizeof(sconn_t));
            rc = q->readers[i] ? conn_open(q, q->readers[i], true) : MICA_ENOMEM;
            if (rc == 0) {
                q->readers[i]->next_free = q->rfree;
                q->rfree = q->readers[i];
            }
        }
    }
    if (rc == 0) {
        rc = -pthread_create(&q->thread, NULL, writer_main, q);
        q->started = rc == 0;
    }
    if (rc != 0) {
        sq_close(db);
        return rc;
    }
    char nr[16];
    snprintf(nr, sizeof(nr), "%d", q->nreaders);
    mica__log_info("db: sqlite open", "path", q->path, "readers", nr, "journal",
                   q->memory ? "memory" : "wal");
    return 0;
}

const mica__db_ops_t mica__db_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .run = sq_run,
    .batch = sq_batch,
    .tx_begin = sq_tx_begin,
    .tx_run = sq_tx_run,
    .tx_end = sq_tx_end,
};

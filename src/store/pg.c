/* SPDX-License-Identifier: MIT */
/*
 * PostgreSQL backend: libpq in non-blocking mode on the worker's loop.
 * libpq speaks the protocol (connect and auth, extended query, pipeline
 * mode, cancel requests); we only decide when to wait. Every wait is a
 * mica_net_wait() on the connection's socket bounded by the caller's ctx, so
 * a statement suspends its coroutine, never the worker.
 *
 * The socket is libpq's: it opens and closes it, and may replace it while
 * connecting (SSL or multi-host fallback). mica's loop registers an fd once
 * and remembers it by number until mica_net_close(), so waiting on libpq's
 * own number would leave a stale registration behind when libpq closes it.
 * We wait on a dup of it instead (same socket, same readiness), which we
 * own and close with mica_net_close(); libpq's close then cannot confuse
 * the loop.
 *
 * Pools are per worker (objects belong to one worker: no locks), created by
 * the worker on first use: idle connections most-recently-used first, a cap
 * on open ones, an event that waiters wait on bounded by their ctx. An idle
 * connection is checked before reuse with one non-blocking peek (a
 * terminated backend has sent its FATAL and closed), and dropped rather
 * than reused when anything is off: a failed connection, an open
 * transaction, a busy or pipelined state.
 *
 * A ctx that ends while a statement is on the server returns to the caller
 * at once; the connection goes to a background coroutine that sends a
 * cancel request (PQcancel blocks: it runs on the offload pool), drains the
 * outstanding results within cancel_drain_ms and, if the connection is
 * idle again, returns it to the pool; otherwise it is closed.
 */
#include <arpa/inet.h>
#include <endian.h>
#include <fcntl.h>
#include <poll.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/list.h"
#include "common/log.h"
#include "mica/net.h"
#include "mica/runtime.h"
#include "mica/sync.h"
#include "store/db_internal.h"

#define MAX_WORKERS 1024
#define CACHE_SLOTS 128
#define SMALL_PARAMS 16

/* PostgreSQL type OIDs (pg_type.dat): stable across versions. */
enum {
    OID_BOOL = 16,
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_OID = 26,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
};

typedef struct pstmt {
    uint64_t hash, used;
    char *sql;
    Oid *types;
    int n;
    char name[24];
} pstmt_t;

typedef struct pool pool_t;

typedef struct pconn {
    mica__list_t link;
    pool_t *pool;
    PGconn *pg;
    int fd;   /* our dup of PQsocket(pg): what we wait on */
    ino_t ino; /* which socket it is */
    int64_t idle_since;
    uint64_t tick;
    unsigned next_id;
    int last_hit; /* cache slot of the last lookup that hit */
    pstmt_t cache[CACHE_SLOTS];
} pconn_t;

struct pool {
    struct pg *p;
    mica__list_t idle;
    int nidle, open;
    mica_event_t avail;
};

typedef struct pg {
    mica_db_t *db;
    char *conninfo;
    pool_t *pools[MAX_WORKERS];
} pg_t;

typedef struct pg_tx {
    struct mica_db_tx base;
    pconn_t *c; /* NULL once the connection was lost or handed to the canceller */
    int lost_rc;
} pg_tx_t;

/* What a failed call leaves of its connection. */
enum { C_OK, C_DROP, C_GONE /* handed to the canceller */ };

/* ---- connections ------------------------------------------------------------ */

static mica_db_t *db_of(pconn_t *c)
{
    return c->pool->p->db;
}

static void conn_free(pconn_t *c)
{
    if (c->fd >= 0)
        mica_net_close(c->fd);
    for (int i = 0; i < CACHE_SLOTS; i++) {
        mica__free(c->cache[i].sql);
        mica__free(c->cache[i].types);
    }
    PQfinish(c->pg);
    mica__free(c);
}

static void drop(pconn_t *c, const char *why)
{
    pool_t *pool = c->pool;
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", c->pg ? PQbackendPID(c->pg) : 0);
    mica__log_info("db: postgres connection dropped", "reason", why, "pid", pid);
    MICA__DB_COUNT(pool->p->db, dropped);
    pool->open--;
    conn_free(c);
    mica_event_set(&pool->avail);
}

static void release(pconn_t *c)
{
    pool_t *pool = c->pool;
    if (PQstatus(c->pg) != CONNECTION_OK)
        return drop(c, "broken");
    if (PQtransactionStatus(c->pg) != PQTRANS_IDLE || PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF ||
        PQisBusy(c->pg))
        return drop(c, "dirty");
    if (pool->nidle >= pool->p->db->opts.max_idle) {
        pool->open--;
        conn_free(c);
        mica_event_set(&pool->avail);
        return;
    }
    c->idle_since = mica_now_ms();
    mica__list_push_front(&pool->idle, &c->link);
    pool->nidle++;
    mica_event_set(&pool->avail);
}

/* Re-dups libpq's socket when libpq has switched to another one. */
static int sync_fd(pconn_t *c)
{
    int s = PQsocket(c->pg);
    if (s < 0)
        return MICA_ENOTCONN;
    struct stat st;
    if (fstat(s, &st) != 0)
        return -errno;
    if (c->fd >= 0 && st.st_ino == c->ino)
        return 0;
    if (c->fd >= 0)
        mica_net_close(c->fd);
    c->fd = fcntl(s, F_DUPFD_CLOEXEC, 0);
    if (c->fd < 0)
        return -errno;
    c->ino = st.st_ino;
    return 0;
}

/* Whether an idle connection is still usable: one non-blocking peek. */
static bool alive(pconn_t *c)
{
    if (PQstatus(c->pg) != CONNECTION_OK)
        return false;
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0)
        return false;
    /* The server spoke while we were idle: a notice, a parameter change,
     * or the FATAL of a terminated backend followed by EOF. */
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) != CONNECTION_OK)
        return false;
    for (PGnotify *nt; (nt = PQnotifies(c->pg));)
        PQfreemem(nt);
    n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/*
 * Waits for `fd` to be ready as libpq's polling asks. libpq expects a
 * level-triggered wait (it may ask again for a socket that is already
 * writable), the loop reports edges: look with poll() first.
 */
static int wait_level(int fd, int events, mica_ctx_t *ctx, int64_t deadline)
{
    struct pollfd pfd = {.fd = fd, .events = events == MICA_NET_READABLE ? POLLIN : POLLOUT};
    if (poll(&pfd, 1, 0) == 1)
        return 0;
    return mica_net_wait(fd, events, ctx, deadline);
}

static int conn_fail(mica_db_t *db, PGconn *pg, int rc, const char *what)
{
    char msg[300];
    snprintf(msg, sizeof(msg), "%s: %s", what, pg ? PQerrorMessage(pg) : "out of memory");
    return mica__db_fail(db, rc, "08006", msg, NULL);
}

static int connect_conn(pool_t *pool, mica_ctx_t *ctx, pconn_t **out)
{
    pg_t *p = pool->p;
    mica_db_t *db = p->db;
    pconn_t *c = mica__calloc(1, sizeof(*c));
    if (!c)
        return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, NULL);
    c->pool = pool;
    c->fd = -1;
    mica__list_init(&c->link);
    MICA__DB_COUNT(db, connects);
    int rc = 0;
    c->pg = PQconnectStart(p->conninfo);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        rc = conn_fail(db, c->pg, c->pg ? MICA_EINVAL : MICA_ENOMEM, "connect");
        goto fail;
    }
    int64_t deadline = mica_deadline_in(db->opts.connect_timeout_ms);
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (;;) {
        if ((rc = sync_fd(c)) != 0) {
            rc = conn_fail(db, c->pg, MICA_EUNAVAILABLE, "connect");
            goto fail;
        }
        if (st == PGRES_POLLING_OK)
            break;
        if (st == PGRES_POLLING_FAILED) {
            rc = conn_fail(db, c->pg, MICA_EUNAVAILABLE, "connect");
            goto fail;
        }
        rc = wait_level(c->fd, st == PGRES_POLLING_READING ? MICA_NET_READABLE
                                                            : MICA_NET_WRITABLE,
                        ctx, deadline);
        if (rc != 0) {
            mica__db_fail(db, rc, "08006", "connect: no answer from the server in time", NULL);
            goto fail;
        }
        st = PQconnectPoll(c->pg);
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        rc = conn_fail(db, c->pg, MICA_EIO, "set non-blocking");
        goto fail;
    }
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", PQbackendPID(c->pg));
    mica__log_info("db: postgres connected", "pid", pid);
    *out = c;
    return 0;
fail:
    MICA__DB_COUNT(db, connect_errors);
    conn_free(c);
    return rc;
}

static int acquire(pg_t *p, mica_ctx_t *ctx, pconn_t **out)
{
    int w = mica_worker_id();
    if (w < 0 || w >= MAX_WORKERS)
        return mica__db_fail(p->db, MICA_EINVAL, NULL, "postgres calls run on a worker", NULL);
    pool_t *pool = p->pools[w];
    if (!pool) {
        pool = p->pools[w] = mica__calloc(1, sizeof(*pool));
        if (!pool)
            return mica__db_fail(p->db, MICA_ENOMEM, NULL, NULL, NULL);
        pool->p = p;
        mica__list_init(&pool->idle);
    }
    bool waited = false;
    for (;;) {
        mica__list_t *n;
        while ((n = mica__list_pop_front(&pool->idle))) {
            pconn_t *c = mica__list_entry(n, pconn_t, link);
            pool->nidle--;
            if (mica_now_ms() - c->idle_since > p->db->opts.idle_timeout_ms)
                drop(c, "idle timeout");
            else if (!alive(c))
                drop(c, "dead while idle");
            else
                return *out = c, 0;
        }
        if (pool->open < p->db->opts.pool_size) {
            pool->open++;
            int rc = connect_conn(pool, ctx, out);
            if (rc != 0) {
                pool->open--;
                mica_event_set(&pool->avail);
            }
            return rc;
        }
        int rc = mica_ctx_err(ctx);
        if (rc != 0)
            return mica__db_fail(p->db, rc, NULL, "waiting for a pooled connection", NULL);
        if (!waited) {
            MICA__DB_COUNT(p->db, pool_waits);
            waited = true;
        }
        mica_event_reset(&pool->avail);
        if (mica__list_empty(&pool->idle) && pool->open >= p->db->opts.pool_size) {
            rc = mica_event_wait(&pool->avail, ctx, MICA_NO_DEADLINE);
            if (rc != 0)
                return mica__db_fail(p->db, rc, NULL, "waiting for a pooled connection", NULL);
        }
    }
}

/* ---- waiting on libpq -------------------------------------------------------- */

/* Sends what libpq has buffered. Returns 0, a wait's error, or MICA_EUNAVAILABLE. */
static int flush(pconn_t *c, mica_ctx_t *ctx, int64_t deadline)
{
    for (;;) {
        int r = PQflush(c->pg);
        if (r == 0)
            return 0;
        if (r < 0)
            return MICA_EUNAVAILABLE;
        /* Read what the server sends meanwhile, so neither side can block
         * the other with full buffers (libpq's advice for PQflush). */
        if (!PQconsumeInput(c->pg))
            return MICA_EUNAVAILABLE;
        int64_t d = mica_deadline_in(20);
        int rc = wait_level(c->fd, MICA_NET_WRITABLE, ctx, d < deadline ? d : deadline);
        if (rc == MICA_ETIMEDOUT && mica_now_ms() < deadline && mica_ctx_err(ctx) == 0)
            continue;
        if (rc != 0)
            return rc;
    }
}

/* Waits until PQgetResult() will not block. Returns 0, a wait's error, MICA_EUNAVAILABLE. */
static int await(pconn_t *c, mica_ctx_t *ctx, int64_t deadline)
{
    bool peek = false;
    while (PQisBusy(c->pg)) {
        /* The loop reports edges; one PQconsumeInput() may leave bytes in
         * the socket, for which no new edge comes: look before waiting. */
        char b;
        if (!peek || recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) < 0) {
            if (peek && errno != EAGAIN && errno != EWOULDBLOCK)
                return MICA_EUNAVAILABLE;
            int rc = mica_net_wait(c->fd, MICA_NET_READABLE, ctx, deadline);
            if (rc != 0)
                return rc;
        }
        if (!PQconsumeInput(c->pg))
            return MICA_EUNAVAILABLE;
        peek = true;
    }
    return 0;
}

/* The next result (NULL: end of this query's results), waiting as needed. */
static int next_result(pconn_t *c, mica_ctx_t *ctx, int64_t deadline, PGresult **out)
{
    *out = NULL;
    int rc = await(c, ctx, deadline);
    if (rc != 0)
        return rc;
    *out = PQgetResult(c->pg);
    return 0;
}

/* ---- cancelling ---------------------------------------------------------------- */

typedef struct cancel_job {
    PGcancel *cancel;
    char err[256];
} cancel_job_t;

static int cancel_fn(void *arg)
{
    cancel_job_t *j = arg;
    return PQcancel(j->cancel, j->err, sizeof(j->err)) ? 0 : -1;
}

/* Reads and discards results until the connection is idle. Returns 0 or an error. */
static int drain(pconn_t *c, int64_t deadline)
{
    /* The caller may have given up halfway through sending. */
    int rc = flush(c, NULL, deadline);
    if (rc != 0)
        return rc;
    for (;;) {
        PGresult *r;
        rc = next_result(c, NULL, deadline, &r);
        if (rc != 0)
            return rc;
        if (!r) {
            if (PQpipelineStatus(c->pg) == PQ_PIPELINE_OFF)
                return PQstatus(c->pg) == CONNECTION_OK ? 0 : MICA_EUNAVAILABLE;
            continue; /* between the queries of a pipeline */
        }
        ExecStatusType s = PQresultStatus(r);
        PQclear(r);
        if (s == PGRES_PIPELINE_SYNC && PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF) {
            /* Sync seen: nothing more is queued (we send one per batch). */
            if (!PQexitPipelineMode(c->pg))
                return MICA_EIO;
            return 0;
        }
        if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH)
            return MICA_EPROTO;
    }
}

/* Runs a statement with no parameters, bounded by its own deadline (no ctx). */
static int simple(pconn_t *c, const char *sql, int64_t deadline)
{
    if (!PQsendQuery(c->pg, sql))
        return MICA_EUNAVAILABLE;
    int rc = flush(c, NULL, deadline);
    int ok = 0;
    while (rc == 0) {
        PGresult *r;
        rc = next_result(c, NULL, deadline, &r);
        if (rc != 0 || !r)
            break;
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
            ok = MICA_EIO;
        PQclear(r);
    }
    return rc ? rc : ok;
}

static void canceller(void *arg)
{
    pconn_t *c = arg;
    mica_db_t *db = db_of(c);
    int64_t deadline = mica_deadline_in(db->opts.cancel_drain_ms);
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", PQbackendPID(c->pg));
    cancel_job_t j = {.cancel = PQgetCancel(c->pg)};
    int res = -1, rc = MICA_ENOMEM;
    if (j.cancel) {
        rc = mica_offload(NULL, NULL, cancel_fn, &j, &res);
        PQfreeCancel(j.cancel);
    }
    mica__log_info("db: postgres statement cancelled on the server", "pid", pid, "sent",
                   rc == 0 && res == 0 ? "yes" : "no", "error", res == 0 ? "" : j.err);
    rc = drain(c, deadline);
    if (rc == 0 && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        rc = simple(c, "ROLLBACK", deadline);
    if (rc != 0)
        return drop(c, "not drained after cancel");
    release(c);
}

/*
 * The ctx of a call ended while its statement is on the server: hand the
 * connection to a canceller coroutine and let the caller return now.
 */
static void cancel_later(pconn_t *c)
{
    MICA__DB_COUNT(db_of(c), cancels);
    if (PQbackendPID(c->pg) == 0 || mica_go(canceller, c) != 0)
        drop(c, "cancelled");
}

/* ---- parameters and results --------------------------------------------------- */

typedef struct params {
    const char *values[SMALL_PARAMS];
    int lengths[SMALL_PARAMS], formats[SMALL_PARAMS];
    Oid types[SMALL_PARAMS];
    const char **v;
    int *l, *f;
    Oid *t;
    char scratch[512];
    char *heap;
} params_t;

static void params_free(params_t *pp)
{
    if (pp->v != pp->values) {
        mica__free(pp->v);
        mica__free(pp->l);
        mica__free(pp->f);
        mica__free(pp->t);
    }
    mica__free(pp->heap);
}

/*
 * Integers and doubles go in binary (int8, float8: no formatting, no
 * parsing), blobs as binary bytea, text in text format with an unspecified
 * type so the server infers it from the context, as it would for a literal.
 */
static int params_build(params_t *pp, const mica_db_value_t *vals, int n)
{
    memset(pp, 0, offsetof(params_t, scratch));
    pp->heap = NULL;
    if (n <= SMALL_PARAMS) {
        pp->v = pp->values, pp->l = pp->lengths, pp->f = pp->formats, pp->t = pp->types;
    } else {
        pp->v = mica__calloc((size_t)n, sizeof(*pp->v));
        pp->l = mica__calloc((size_t)n, sizeof(*pp->l));
        pp->f = mica__calloc((size_t)n, sizeof(*pp->f));
        pp->t = mica__calloc((size_t)n, sizeof(*pp->t));
        if (!pp->v || !pp->l || !pp->f || !pp->t)
            return MICA_ENOMEM;
    }
    size_t need = 0;
    for (int i = 0; i < n; i++)
        need += vals[i].type == MICA_DB_TEXT ? vals[i].len + 1
                : vals[i].type == MICA_DB_INT64 || vals[i].type == MICA_DB_DOUBLE ? 8 : 0;
    char *buf = pp->scratch;
    if (need > sizeof(pp->scratch) && !(buf = pp->heap = mica__malloc(need)))
        return MICA_ENOMEM;
    for (int i = 0; i < n; i++) {
        const mica_db_value_t *v = &vals[i];
        switch (v->type) {
        case MICA_DB_INT64: {
            uint64_t be = htobe64((uint64_t)v->i64);
            memcpy(buf, &be, 8);
            pp->v[i] = buf, pp->l[i] = 8, pp->f[i] = 1, pp->t[i] = OID_INT8;
            buf += 8;
            break;
        }
        case MICA_DB_DOUBLE: {
            uint64_t bits;
            memcpy(&bits, &v->f64, 8);
            bits = htobe64(bits);
            memcpy(buf, &bits, 8);
            pp->v[i] = buf, pp->l[i] = 8, pp->f[i] = 1, pp->t[i] = OID_FLOAT8;
            buf += 8;
            break;
        }
        case MICA_DB_TEXT:
            if (v->len)
                memcpy(buf, v->ptr, v->len);
            buf[v->len] = '\0';
            pp->v[i] = buf, pp->l[i] = (int)v->len, pp->f[i] = 0, pp->t[i] = 0;
            buf += v->len + 1;
            break;
        case MICA_DB_BLOB:
            if (v->len > INT32_MAX)
                return MICA_ELIMIT;
            pp->v[i] = v->len ? v->ptr : "", pp->l[i] = (int)v->len, pp->f[i] = 1;
            pp->t[i] = OID_BYTEA;
            break;
        default:
            pp->v[i] = NULL, pp->t[i] = 0;
        }
    }
    return 0;
}

static void clear_result(void *r)
{
    PQclear(r);
}

/* Turns a PGresult into rows (taking it over). Returns 0, MICA_ENOMEM, MICA_ELIMIT. */
static int to_rows(PGresult *res, size_t max_bytes, mica_db_rows_t **out)
{
    int nr = PQntuples(res), nc = PQnfields(res);
    mica_db_rows_t *r = mica__db_rows_new(nc, (size_t)nr, max_bytes);
    if (!r) {
        PQclear(res);
        return MICA_ENOMEM;
    }
    r->owner = res;
    r->owner_free = clear_result;
    r->nrows = (size_t)nr;
    const char *tuples = PQcmdTuples(res);
    r->affected = *tuples ? strtoll(tuples, NULL, 10) : 0;
    size_t total = 0;
    for (int j = 0; j < nc; j++)
        r->names[j] = PQfname(res, j);
    for (int i = 0; i < nr; i++) {
        for (int j = 0; j < nc; j++) {
            mica__db_cell_t *cl = &r->cells[(size_t)i * (size_t)nc + (size_t)j];
            if (PQgetisnull(res, i, j))
                continue;
            const char *s = PQgetvalue(res, i, j);
            size_t len = (size_t)PQgetlength(res, i, j);
            total += len;
            if (total > max_bytes) {
                mica_db_rows_free(r);
                return MICA_ELIMIT;
            }
            switch (PQftype(res, j)) {
            case OID_INT2:
            case OID_INT4:
            case OID_INT8:
            case OID_OID:
                cl->type = MICA_DB_INT64;
                cl->v.i64 = strtoll(s, NULL, 10);
                break;
            case OID_BOOL:
                cl->type = MICA_DB_INT64;
                cl->v.i64 = s[0] == 't';
                break;
            case OID_FLOAT4:
            case OID_FLOAT8:
                cl->type = MICA_DB_DOUBLE;
                cl->v.f64 = strtod(s, NULL);
                break;
            case OID_BYTEA: {
                size_t n;
                unsigned char *b = PQunescapeBytea((const unsigned char *)s, &n);
                if (!b) {
                    mica_db_rows_free(r);
                    return MICA_ENOMEM;
                }
                cl->v.p = mica__db_rows_copy(r, b, n);
                PQfreemem(b);
                if (!cl->v.p) {
                    mica_db_rows_free(r);
                    return MICA_ENOMEM;
                }
                cl->type = MICA_DB_BLOB;
                cl->len = n;
                break;
            }
            default:
                cl->type = MICA_DB_TEXT;
                cl->v.p = s;
                cl->len = len;
            }
        }
    }
    *out = r;
    return 0;
}

/* The error a failed result stands for, recorded for mica_db_errmsg(). */
static int result_error(mica_db_t *db, PGresult *r, const char *sql)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    int rc = state ? mica__db_pg_code(state) : MICA_EINTERNAL;
    return mica__db_fail(db, rc, state, msg ? msg : PQresultErrorMessage(r), sql);
}

/* ---- prepared statements ------------------------------------------------------ */

static uint64_t stmt_hash(const char *sql, const Oid *types, int n)
{
    uint64_t h = mica_db_shard_key(sql, strlen(sql));
    return h ^ mica_db_shard_key(types, (size_t)n * sizeof(Oid)) * 31;
}

static bool cache_match(const pstmt_t *e, const char *sql, const Oid *types, int n, uint64_t h)
{
    return e->sql && e->hash == h && e->n == n && !strcmp(e->sql, sql) &&
           (n == 0 || !memcmp(e->types, types, (size_t)n * sizeof(Oid)));
}

static pstmt_t *cache_find(pconn_t *c, const char *sql, const Oid *types, int n, uint64_t h)
{
    /* A service runs a few statements over and over: try the last hit first. */
    pstmt_t *e = &c->cache[c->last_hit];
    if (!cache_match(e, sql, types, n, h)) {
        e = NULL;
        for (int i = 0; i < CACHE_SLOTS && !e; i++)
            if (cache_match(&c->cache[i], sql, types, n, h))
                e = &c->cache[i];
        if (!e)
            return NULL;
        c->last_hit = (int)(e - c->cache);
    }
    e->used = ++c->tick;
    return e;
}

/* A free slot for a new statement (the least recently used one is evicted:
 * its server-side statement is deallocated with the next Parse's round trip). */
static pstmt_t *cache_slot(pconn_t *c, const char *sql, const Oid *types, int n, uint64_t h,
                           char *dealloc, size_t dsize)
{
    pstmt_t *v = &c->cache[0];
    for (int i = 0; i < CACHE_SLOTS && v->sql; i++)
        if (!c->cache[i].sql || c->cache[i].used < v->used)
            v = &c->cache[i];
    dealloc[0] = '\0';
    if (v->sql) {
        snprintf(dealloc, dsize, "DEALLOCATE %s", v->name);
        mica__free(v->sql);
        v->sql = NULL;
    }
    v->sql = mica__strdup(sql);
    if (!v->sql)
        return NULL;
    mica__free(v->types);
    v->types = NULL;
    v->n = n;
    v->hash = h;
    v->used = ++c->tick;
    snprintf(v->name, sizeof(v->name), "mica_%u", ++c->next_id);
    return v;
}

/* ---- running statements -------------------------------------------------------- */

/*
 * Runs `st` on `c`. *fate tells the caller what to do with the connection:
 * C_OK (release), C_DROP (close), C_GONE (the canceller owns it now).
 */
static int run_on(pconn_t *c, mica_ctx_t *ctx, const mica__db_stmt_t *st, int *fate)
{
    mica_db_t *db = db_of(c);
    *fate = C_OK;
    MICA__DB_COUNT(db, statements);
    int rc = mica_ctx_err(ctx);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, st->sql);
    params_t pp;
    int result = 0;
    rc = params_build(&pp, st->params, st->nparams);
    if (rc != 0) {
        params_free(&pp);
        return mica__db_fail(db, rc, NULL, NULL, st->sql);
    }
    uint64_t h = stmt_hash(st->sql, pp.t, st->nparams);
    pstmt_t *ps = cache_find(c, st->sql, pp.t, st->nparams, h);
    bool prepared_now = false;
    if (!ps) {
        char dealloc[48];
        ps = cache_slot(c, st->sql, pp.t, st->nparams, h, dealloc, sizeof(dealloc));
        if (ps && st->nparams > 0) {
            ps->types = mica__malloc((size_t)st->nparams * sizeof(Oid));
            if (ps->types)
                memcpy(ps->types, pp.t, (size_t)st->nparams * sizeof(Oid));
        }
        if (!ps || (st->nparams > 0 && !ps->types)) {
            if (ps) {
                mica__free(ps->sql);
                ps->sql = NULL;
            }
            params_free(&pp);
            return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, st->sql);
        }
        MICA__DB_COUNT(db, prepares);
        prepared_now = true;
        if (dealloc[0]) {
            rc = simple(c, dealloc, mica_deadline_in(db->opts.cancel_drain_ms));
            if (rc != 0) {
                *fate = C_DROP;
                params_free(&pp);
                return mica__db_fail(db, rc, NULL, "deallocating a cached statement", st->sql);
            }
        }
        if (!PQsendPrepare(c->pg, ps->name, st->sql, st->nparams, pp.t)) {
            *fate = C_DROP;
            goto conn_lost;
        }
    }
    /* Outside pipeline mode libpq takes one query at a time: after a Parse,
     * the Bind/Execute goes once the Parse's result is read. */
    if (!prepared_now && !PQsendQueryPrepared(c->pg, ps->name, st->nparams, pp.v, pp.l, pp.f, 0)) {
        *fate = C_DROP;
        goto conn_lost;
    }
    bool sent_exec = !prepared_now;
    int64_t deadline = MICA_NO_DEADLINE;
    mica_db_rows_t *rows = NULL;
    bool got = false;
    for (;;) {
        rc = flush(c, ctx, deadline);
        if (rc != 0)
            break;
        PGresult *r;
        rc = next_result(c, ctx, deadline, &r);
        if (rc != 0)
            break;
        if (!r) {
            if (!sent_exec) { /* the Parse is done: now the Bind/Execute */
                if (result != 0)
                    break;
                if (!PQsendQueryPrepared(c->pg, ps->name, st->nparams, pp.v, pp.l, pp.f, 0)) {
                    rc = MICA_EUNAVAILABLE;
                    break;
                }
                sent_exec = true;
                continue;
            }
            break;
        }
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_FATAL_ERROR) {
            if (result == 0)
                result = result_error(db, r, st->sql);
            const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            /* Never prepared, or dropped behind our back (DEALLOCATE ALL,
             * DISCARD ALL: 26000): forget it so the next call prepares. */
            if (!sent_exec || (state && !strcmp(state, "26000"))) {
                mica__free(ps->sql);
                mica__free(ps->types);
                ps->sql = NULL;
                ps->types = NULL;
            }
            PQclear(r);
        } else if (!sent_exec || got) {
            PQclear(r); /* the Parse's CommandComplete; or a second result */
        } else if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK) {
            got = true;
            if (st->affected) {
                const char *t = PQcmdTuples(r);
                *st->affected = *t ? strtoll(t, NULL, 10) : 0;
            }
            if (st->rows) {
                int e = to_rows(r, db->opts.max_result_bytes, &rows);
                if (e != 0 && result == 0)
                    result = mica__db_fail(db, e, NULL, NULL, st->sql);
            } else {
                PQclear(r);
            }
        } else {
            PQclear(r);
            if (result == 0)
                result = mica__db_fail(db, MICA_EPROTO, NULL, "unexpected result", st->sql);
        }
    }
    params_free(&pp);
    if (rc == MICA_ECANCELED || rc == MICA_ETIMEDOUT) {
        mica_db_rows_free(rows);
        /* Whether a Parse still in flight succeeded is unknown: prepare
         * again next time (under a new name; the old one dies with the
         * connection). */
        if (!sent_exec && ps->sql) {
            mica__free(ps->sql);
            mica__free(ps->types);
            ps->sql = NULL;
            ps->types = NULL;
        }
        *fate = C_GONE;
        cancel_later(c);
        return mica__db_fail(db, rc, NULL, "statement cancelled", st->sql);
    }
    if (rc != 0) {
        mica_db_rows_free(rows);
        *fate = C_DROP;
        goto conn_lost_rc;
    }
    if (result != 0) {
        mica_db_rows_free(rows);
        return result;
    }
    if (st->rows)
        *st->rows = rows;
    return 0;
conn_lost:
    params_free(&pp);
conn_lost_rc:
    if (ps && prepared_now && ps->sql) {
        mica__free(ps->sql);
        mica__free(ps->types);
        ps->sql = NULL;
        ps->types = NULL;
    }
    /* A terminated backend says why (57P01) before it closes: keep that. */
    if (result != 0)
        return result;
    return conn_fail(db, c->pg, MICA_EUNAVAILABLE, "connection lost");
}

static void finish(pconn_t *c, int fate)
{
    if (fate == C_OK)
        release(c);
    else if (fate == C_DROP)
        drop(c, "connection error");
}

static int pg_run(mica_db_t *db, mica_ctx_t *ctx, const mica__db_stmt_t *st)
{
    pconn_t *c;
    int rc = acquire(db->impl, ctx, &c);
    if (rc != 0)
        return rc;
    int fate;
    rc = run_on(c, ctx, st, &fate);
    if (rc == MICA_EINVAL && fate == C_OK && !strcmp(mica_db_sqlstate(), "26000")) {
        /* Our prepared statement was dropped behind our back (DISCARD
         * ALL, DEALLOCATE ALL): run_on() forgot it; prepare it again. */
        mica__log_info("db: re-preparing a statement dropped on the server");
        rc = run_on(c, ctx, st, &fate);
    }
    finish(c, fate);
    return rc;
}

/* ---- pipelines ------------------------------------------------------------------ */

typedef struct sent {
    pstmt_t *parse; /* Parse sent for this statement (not cached before) */
    bool dealloc;   /* a DEALLOCATE of an evicted statement went before it */
} sent_t;

static void forget(pstmt_t *ps)
{
    mica__free(ps->sql);
    mica__free(ps->types);
    ps->sql = NULL;
    ps->types = NULL;
}

/* Queues item `it` on a connection in pipeline mode. */
static int pipe_send(pconn_t *c, mica_db_batch_item_t *it, sent_t *sent)
{
    params_t pp;
    int rc = params_build(&pp, it->params, it->nparams);
    if (rc == 0) {
        uint64_t h = stmt_hash(it->sql, pp.t, it->nparams);
        pstmt_t *ps = cache_find(c, it->sql, pp.t, it->nparams, h);
        if (!ps) {
            char dealloc[48];
            ps = cache_slot(c, it->sql, pp.t, it->nparams, h, dealloc, sizeof(dealloc));
            if (ps && it->nparams > 0 &&
                (ps->types = mica__malloc((size_t)it->nparams * sizeof(Oid))))
                memcpy(ps->types, pp.t, (size_t)it->nparams * sizeof(Oid));
            if (!ps || (it->nparams > 0 && !ps->types)) {
                if (ps)
                    forget(ps);
                params_free(&pp);
                return MICA_ENOMEM;
            }
            MICA__DB_COUNT(db_of(c), prepares);
            sent->parse = ps;
            sent->dealloc = dealloc[0] != '\0';
            if (sent->dealloc && !PQsendQueryParams(c->pg, dealloc, 0, NULL, NULL, NULL, NULL, 0))
                rc = MICA_EUNAVAILABLE;
            if (rc == 0 && !PQsendPrepare(c->pg, ps->name, it->sql, it->nparams, pp.t))
                rc = MICA_EUNAVAILABLE;
        }
        if (rc == 0 && !PQsendQueryPrepared(c->pg, ps->name, it->nparams, pp.v, pp.l, pp.f, 0))
            rc = MICA_EUNAVAILABLE;
    }
    params_free(&pp);
    return rc;
}

/* Reads the results of item `it`: [DEALLOCATE], [Parse], Execute, each then NULL. */
static int pipe_read(pconn_t *c, mica_ctx_t *ctx, mica_db_batch_item_t *it, sent_t *sent,
                     int *first)
{
    mica_db_t *db = db_of(c);
    int steps = 1 + (sent->parse != NULL) + sent->dealloc;
    int err = 0;
    for (int k = 0; k < steps; k++) {
        bool exec = k == steps - 1, parse = sent->parse && k == steps - 2;
        PGresult *r;
        int rc = next_result(c, ctx, MICA_NO_DEADLINE, &r);
        if (rc != 0)
            return rc;
        if (!r)
            return MICA_EPROTO;
        ExecStatusType s = PQresultStatus(r);
        int e = 0;
        if (s == PGRES_FATAL_ERROR)
            e = result_error(db, r, it->sql);
        else if (s == PGRES_PIPELINE_ABORTED)
            e = MICA_EABORTED;
        if (e != 0 && parse)
            forget(sent->parse);
        if (e != 0 && err == 0)
            err = e;
        if (e != 0 && e != MICA_EABORTED && *first == 0)
            *first = e;
        if (exec && err == 0) {
            MICA__DB_COUNT(db, statements);
            const char *t = PQcmdTuples(r);
            it->affected = *t ? strtoll(t, NULL, 10) : 0;
            if (it->want_rows) {
                err = to_rows(r, db->opts.max_result_bytes, &it->rows);
                r = NULL;
                if (err != 0 && *first == 0)
                    *first = err;
            }
        }
        PQclear(r);
        rc = next_result(c, ctx, MICA_NO_DEADLINE, &r); /* the NULL that ends each query */
        if (rc != 0)
            return rc;
        if (r) {
            PQclear(r);
            return MICA_EPROTO;
        }
    }
    it->rc = err;
    return 0;
}

static int pg_batch(mica_db_t *db, mica_ctx_t *ctx, mica_db_batch_item_t *items, int n)
{
    int rc = mica_ctx_err(ctx);
    if (rc != 0)
        return mica__db_fail(db, rc, NULL, NULL, items[0].sql);
    pconn_t *c;
    if ((rc = acquire(db->impl, ctx, &c)) != 0)
        return rc;
    MICA__DB_COUNT(db, pipelines);
    sent_t *sent = mica__calloc((size_t)n, sizeof(*sent));
    if (!sent || !PQenterPipelineMode(c->pg)) {
        mica__free(sent);
        release(c);
        return mica__db_fail(db, MICA_ENOMEM, NULL, "pipeline", NULL);
    }
    /* One Sync for the whole batch: the server runs it as one implicit
     * transaction and skips everything after a failure. */
    for (int i = 0; i < n && rc == 0; i++)
        rc = pipe_send(c, &items[i], &sent[i]);
    if (rc == 0 && !PQpipelineSync(c->pg))
        rc = MICA_EUNAVAILABLE;
    if (rc == 0)
        rc = flush(c, ctx, MICA_NO_DEADLINE);
    int first = 0;
    for (int i = 0; i < n && rc == 0; i++)
        rc = pipe_read(c, ctx, &items[i], &sent[i], &first);
    if (rc == 0) {
        PGresult *r;
        rc = next_result(c, ctx, MICA_NO_DEADLINE, &r);
        if (rc == 0 && (!r || PQresultStatus(r) != PGRES_PIPELINE_SYNC))
            rc = MICA_EPROTO;
        PQclear(r);
        if (rc == 0 && !PQexitPipelineMode(c->pg))
            rc = MICA_EPROTO;
    }
    if (rc != 0) {
        for (int i = 0; i < n; i++)
            if (sent[i].parse && sent[i].parse->sql && items[i].rc != 0)
                forget(sent[i].parse);
    }
    mica__free(sent);
    if (rc == MICA_ECANCELED || rc == MICA_ETIMEDOUT) {
        cancel_later(c);
        return mica__db_fail(db, rc, NULL, "batch cancelled", items[0].sql);
    }
    if (rc != 0) {
        int r2 = rc == MICA_EPROTO ? mica__db_fail(db, rc, NULL, "pipeline out of step", NULL)
                                   : conn_fail(db, c->pg, MICA_EUNAVAILABLE, "connection lost");
        drop(c, "connection error in pipeline");
        return r2;
    }
    release(c);
    if (first != 0) {
        for (int i = 0; i < n; i++)
            if (items[i].rc == 0)
                items[i].rc = MICA_EABORTED; /* rolled back with the rest */
        return first;
    }
    return 0;
}

/* ---- transactions --------------------------------------------------------------- */

static int pg_tx_begin(mica_db_t *db, mica_ctx_t *ctx, const mica_db_tx_opts_t *o,
                       mica_db_tx_t **out)
{
    pg_tx_t *tx = mica__calloc(1, sizeof(*tx));
    if (!tx)
        return mica__db_fail(db, MICA_ENOMEM, NULL, NULL, "BEGIN");
    int rc = acquire(db->impl, ctx, &tx->c);
    if (rc != 0) {
        mica__free(tx);
        return rc;
    }
    tx->base.db = db;
    tx->base.ctx = ctx;
    int fate;
    mica__db_stmt_t st = {o->serializable ? "BEGIN ISOLATION LEVEL SERIALIZABLE" : "BEGIN", NULL,
                          0, NULL, NULL};
    rc = run_on(tx->c, ctx, &st, &fate);
    if (rc != 0) {
        finish(tx->c, fate);
        mica__free(tx);
        return rc;
    }
    *out = &tx->base;
    return 0;
}

static int pg_tx_run(mica_db_tx_t *base, const mica__db_stmt_t *st)
{
    pg_tx_t *tx = (pg_tx_t *)base;
    if (!tx->c)
        return mica__db_fail(base->db, tx->lost_rc, NULL,
                             "the transaction's connection was lost", st->sql);
    int fate;
    int rc = run_on(tx->c, base->ctx, st, &fate);
    if (fate != C_OK) {
        if (fate == C_DROP)
            drop(tx->c, "connection error in transaction");
        tx->c = NULL;
        tx->lost_rc = rc;
    }
    return rc;
}

static int pg_tx_end(mica_db_tx_t *base, bool commit)
{
    pg_tx_t *tx = (pg_tx_t *)base;
    mica_db_t *db = base->db;
    pconn_t *c = tx->c;
    int rc = 0;
    if (!c) {
        rc = commit ? mica__db_fail(db, tx->lost_rc ? tx->lost_rc : MICA_EUNAVAILABLE, NULL,
                                    "the transaction's connection was lost", "COMMIT")
                    : 0;
    } else if (commit && PQtransactionStatus(c->pg) == PQTRANS_INERROR) {
        /* COMMIT of a failed transaction silently rolls back: say so. */
        simple(c, "ROLLBACK", mica_deadline_in(db->opts.cancel_drain_ms));
        rc = mica__db_fail(db, MICA_EPRECONDITION, "25P02",
                           "a statement failed earlier: the transaction was rolled back",
                           "COMMIT");
        finish(c, PQtransactionStatus(c->pg) == PQTRANS_IDLE ? C_OK : C_DROP);
    } else if (commit) {
        int fate;
        mica__db_stmt_t st = {"COMMIT", NULL, 0, NULL, NULL};
        rc = run_on(c, base->ctx, &st, &fate);
        finish(c, fate);
    } else {
        /* Roll back even when the ctx has ended, within its own bound. */
        int r = simple(c, "ROLLBACK", mica_deadline_in(db->opts.cancel_drain_ms));
        if (r == MICA_ETIMEDOUT || r == MICA_ECANCELED)
            cancel_later(c);
        else
            finish(c, r == 0 ? C_OK : C_DROP);
    }
    mica__free(tx);
    return rc;
}

/* ---- open and close --------------------------------------------------------------- */

static int pg_open(mica_db_t *db, const char *target)
{
    pg_t *p = mica__calloc(1, sizeof(*p));
    if (!p)
        return MICA_ENOMEM;
    p->db = db;
    p->conninfo = mica__strdup(target);
    if (!p->conninfo) {
        mica__free(p);
        return MICA_ENOMEM;
    }
    /* Check the conninfo now, so a typo fails at open, not at first use. */
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(target, &err);
    if (!opts) {
        int rc = mica__db_fail(db, MICA_EINVAL, NULL, err ? err : "bad conninfo", NULL);
        PQfreemem(err);
        mica__free(p->conninfo);
        mica__free(p);
        return rc;
    }
    PQconninfoFree(opts);
    db->impl = p;
    return 0;
}

static void pg_close(mica_db_t *db)
{
    pg_t *p = db->impl;
    for (int w = 0; w < MAX_WORKERS; w++) {
        pool_t *pool = p->pools[w];
        if (!pool)
            continue;
        for (mica__list_t *n; (n = mica__list_pop_front(&pool->idle));)
            conn_free(mica__list_entry(n, pconn_t, link));
        mica__free(pool);
    }
    mica__free(p->conninfo);
    mica__free(p);
}

const mica__db_ops_t mica__db_pg_ops = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .run = pg_run,
    .batch = pg_batch,
    .tx_begin = pg_tx_begin,
    .tx_run = pg_tx_run,
    .tx_end = pg_tx_end,
};

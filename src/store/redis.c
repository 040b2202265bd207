/* SPDX-License-Identifier: MIT */
/*
 * The Redis client: hiredis's RESP reader and command formatter over mica
 * sockets, with a pool per worker and automatic pipelining.
 *
 * Each worker has its own pool (no locks anywhere): `pipelines` shared
 * connections that carry every ordinary command, and up to `pool_size`
 * dedicated connections lent to one coroutine at a time (blocking commands,
 * transactions, leases).
 *
 * A shared connection is two coroutines. Callers format their command into
 * the connection's output buffer, append a request to its FIFO of pending
 * requests and wait on the request's event. The writer, woken by the first
 * of them, yields once -- so every coroutine that runs in this scheduler
 * round adds its command first -- and writes the whole buffer in one send;
 * meanwhile new commands collect in a second buffer. The reader (which also
 * connects and authenticates) feeds what it reads to the hiredis reader and
 * hands each complete reply to the request at the head of the FIFO: Redis
 * answers one connection's commands in order (rueidis and ioredis pipeline
 * the same way). A caller whose ctx ends stops waiting and marks its request
 * abandoned; the reader frees the reply when it comes.
 *
 * Failure is per connection: EOF, a read or write error, a malformed reply,
 * or a reply overdue by read_timeout_ms closes it and fails every request
 * pipelined on it with the cause; the next command opens a new one. A
 * failed connect starts exponential backoff with jitter, during which
 * commands fail at once with MICA_EUNAVAILABLE rather than pile up.
 *
 * Shutdown: the stop hook closes idle connections; a busy one closes once
 * its last reply is in, so the drain finishes without cutting calls off.
 */
#include <ctype.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "common/list.h"
#include "common/log.h"
#include "mica/config.h"
#include "mica/net.h"
#include "mica/sync.h"
#include "store/internal.h"

#define RBUF_BYTES (64 * 1024)
#define ERRMSG_BYTES 256

typedef struct mica_redis_conn conn_t;
typedef struct pool pool_t;

/* One command waiting for its reply on a shared connection. */
typedef struct req {
    mica__list_t link; /* in conn->pending, or pool->free_reqs */
    mica_event_t done;
    mica_redis_reply_t *reply;
    int rc;
    bool abandoned; /* its caller stopped waiting: the reader frees it */
    int64_t queued_ms;
} req_t;

struct mica_redis_conn {
    pool_t *pool;
    int fd;
    bool pipe;   /* shared and auto-pipelined, or dedicated */
    bool dead;   /* closed or closing: no new requests */
    bool broken; /* dedicated: a call failed midway, the stream is out of step */
    bool counted; /* dedicated: counts against pool_size */
    int refs;    /* shared: reader + writer coroutines; dedicated: 1 */
    int slot;    /* shared: index in pool->pipes */
    mica_ctx_t *ctx; /* cancelled when the connection closes: wakes its coroutines */
    redisReader *rd;
    size_t reply_bytes; /* objects built for the reply being read (the cap) */
    char *rbuf;
    /* shared connections */
    mica__buf_t out, wbuf; /* commands being collected, commands being written */
    bool kicked;           /* the writer was woken for what is in `out` */
    mica_event_t wev;
    mica__list_t pending; /* req_t, in the order their commands were queued */
    size_t npending;
    /* dedicated connections */
    mica__list_t link; /* pool->idle */
};

struct pool {
    mica_redis_t *r;
    conn_t **pipes;
    unsigned rr;
    mica__list_t idle; /* idle dedicated connections, most recent last */
    int ndedicated;    /* open and counted: idle + lent */
    mica_event_t freed; /* a dedicated connection came back or closed */
    /* reconnecting */
    int failures;     /* connect attempts failed in a row */
    int64_t retry_at; /* no attempt before (mica_now_ms clock) */
    int last_err;
    mica__list_t free_reqs;
    /* error reply logging: at most one line a second, with a count of the rest */
    int64_t err_logged_ms;
    uint64_t err_suppressed;
    char errmsg[ERRMSG_BYTES];
    struct {
        mica__counter_t commands, batches, error_replies, failures, timeouts, connects,
            connect_errors, conns_lost;
    } st;
};

struct mica_redis {
    char addr[80];  /* "host:port" for mica_net_connect */
    char *user, *password;
    int db;
    mica_redis_opts_t o;
    int nworkers;
    pool_t **pools; /* one per worker, each its own allocation (no shared cache lines) */
    uint64_t seed;
};

static void conn_unref(conn_t *cn);

/* ---- replies: hiredis builds mica_redis_reply_t trees directly ---------------- */

static void *attach(const redisReadTask *t, mica_redis_reply_t *rep, size_t bytes)
{
    if (!rep)
        return NULL;
    conn_t *cn = t->privdata;
    if (cn)
        cn->reply_bytes += bytes;
    if (t->parent) {
        mica_redis_reply_t *parent = t->parent->obj;
        parent->element[t->idx] = rep;
    }
    return rep;
}

static void *create_string(const redisReadTask *t, char *str, size_t len)
{
    size_t bytes = sizeof(mica_redis_reply_t) + len + 1;
    mica_redis_reply_t *rep = mica__malloc(bytes);
    if (!rep)
        return NULL;
    *rep = (mica_redis_reply_t){.len = len, .str = (char *)(rep + 1)};
    rep->type = t->type == REDIS_REPLY_ERROR    ? MICA_REDIS_ERROR
                : t->type == REDIS_REPLY_STATUS ? MICA_REDIS_STATUS
                                                : MICA_REDIS_STRING;
    memcpy(rep->str, str, len);
    rep->str[len] = '\0';
    return attach(t, rep, bytes);
}

static void *create_array(const redisReadTask *t, int elements)
{
    size_t n = elements > 0 ? (size_t)elements : 0;
    size_t bytes = sizeof(mica_redis_reply_t) + n * sizeof(mica_redis_reply_t *);
    mica_redis_reply_t *rep = mica__calloc(1, bytes);
    if (!rep)
        return NULL;
    rep->type = MICA_REDIS_ARRAY;
    rep->len = n;
    rep->element = n ? (mica_redis_reply_t **)(rep + 1) : NULL;
    return attach(t, rep, bytes);
}

static void *create_integer(const redisReadTask *t, long long v)
{
    mica_redis_reply_t *rep = mica__calloc(1, sizeof(*rep));
    if (rep) {
        rep->type = MICA_REDIS_INTEGER;
        rep->integer = v;
    }
    return attach(t, rep, sizeof(*rep));
}

static void *create_nil(const redisReadTask *t)
{
    mica_redis_reply_t *rep = mica__calloc(1, sizeof(*rep));
    return attach(t, rep, sizeof(*rep)); /* type 0 is MICA_REDIS_NIL */
}

void mica_redis_reply_free(mica_redis_reply_t *rep)
{
    if (!rep)
        return;
    if (rep->type == MICA_REDIS_ARRAY)
        for (size_t i = 0; i < rep->len; i++)
            mica_redis_reply_free(rep->element[i]); /* a partial reply has NULLs: fine */
    mica__free(rep);
}

static void free_object(void *obj)
{
    mica_redis_reply_free(obj);
}

static redisReplyObjectFunctions reply_fns = {create_string, create_array, create_integer,
                                              create_nil, free_object};

/* ---- errors and logging ----------------------------------------------------------- */

static pool_t *my_pool(mica_redis_t *r)
{
    int w = mica_worker_id();
    return w >= 0 && w < r->nworkers ? r->pools[w] : NULL;
}

void mica__redis_seterr(mica_redis_t *r, const char *fmt, ...)
{
    pool_t *p = my_pool(r);
    if (!p)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
    va_end(ap);
}

const char *mica_redis_errmsg(mica_redis_t *r)
{
    pool_t *p = my_pool(r);
    return p ? p->errmsg : "";
}

/* An error reply: the message for the caller, and a log line (at most one a second). */
static void note_error_reply(pool_t *p, const mica_redis_reply_t *rep, const char *cmd)
{
    snprintf(p->errmsg, sizeof(p->errmsg), "%s", rep->str);
    mica__count(&p->st.error_replies, 1);
    if (strncmp(rep->str, "NOSCRIPT", 8) == 0 || strncmp(rep->str, "BUSYGROUP", 9) == 0)
        return; /* handled by mica_redis_eval / xgroup_create */
    int64_t now = mica_now_ms();
    if (now - p->err_logged_ms < 1000) {
        p->err_suppressed++;
        return;
    }
    char n[24];
    snprintf(n, sizeof(n), "%llu", (unsigned long long)p->err_suppressed);
    mica__log_warn("redis: error reply", "command", cmd, "error", rep->str, "suppressed", n);
    p->err_logged_ms = now;
    p->err_suppressed = 0;
}

int64_t mica__redis_backoff_ms(mica_redis_t *r, int attempt)
{
    int64_t d = r->o.backoff_min_ms;
    for (int i = 1; i < attempt && d < r->o.backoff_max_ms; i++)
        d *= 2;
    if (d > r->o.backoff_max_ms)
        d = r->o.backoff_max_ms;
    /* "Equal jitter": half fixed, half random, so workers and instances spread out. */
    uint64_t x = __atomic_add_fetch(&r->seed, 0x9e3779b97f4a7c15ull, __ATOMIC_RELAXED);
    x = (x ^ (x >> 31)) * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return d / 2 + (int64_t)(x % (uint64_t)(d / 2 + 1));
}

static void connect_failed(pool_t *p, int rc)
{
    mica_redis_t *r = p->r;
    p->failures++;
    p->last_err = rc;
    int64_t delay = mica__redis_backoff_ms(r, p->failures);
    p->retry_at = mica_now_ms() + delay;
    mica__count(&p->st.connect_errors, 1);
    char attempt[16], retry[24];
    snprintf(attempt, sizeof(attempt), "%d", p->failures);
    snprintf(retry, sizeof(retry), "%lld", (long long)delay);
    mica__log_warn("redis: connect failed", "addr", r->addr, "error", mica_err_name(rc),
                   "attempt", attempt, "retry_in_ms", retry);
}

static void connect_succeeded(pool_t *p)
{
    mica__count(&p->st.connects, 1);
    if (p->failures > 0) {
        char attempts[16];
        snprintf(attempts, sizeof(attempts), "%d", p->failures + 1);
        mica__log_info("redis: reconnected", "addr", p->r->addr, "attempts", attempts);
    }
    p->failures = 0;
    p->retry_at = 0;
}

/* MICA_EUNAVAILABLE while backing off after failed connects. */
static int check_backoff(pool_t *p)
{
    int64_t left = p->retry_at - mica_now_ms();
    if (left <= 0)
        return 0;
    snprintf(p->errmsg, sizeof(p->errmsg), "reconnecting to %s in %lld ms (last error: %s)",
             p->r->addr, (long long)left, mica_strerror(p->last_err));
    mica__count(&p->st.failures, 1);
    return MICA_EUNAVAILABLE;
}

/* ---- connections ------------------------------------------------------------------- */

static req_t *req_get(pool_t *p)
{
    mica__list_t *n = mica__list_pop_front(&p->free_reqs);
    req_t *q = n ? mica__list_entry(n, req_t, link) : mica__malloc(sizeof(*q));
    if (q) {
        *q = (req_t){.done = MICA_EVENT_INIT};
        mica__list_init(&q->link);
    }
    return q;
}

static void req_put(pool_t *p, req_t *q)
{
    mica__list_push_front(&p->free_reqs, &q->link);
}

/* Hands a reply (or failure) to its request's caller, or drops it if abandoned. */
static void req_finish(pool_t *p, req_t *q, int rc, mica_redis_reply_t *rep)
{
    if (q->abandoned) {
        mica_redis_reply_free(rep);
        req_put(p, q);
        return;
    }
    q->rc = rc;
    q->reply = rep;
    mica_event_set(&q->done);
}

static conn_t *conn_new(pool_t *p, bool pipe)
{
    conn_t *cn = mica__calloc(1, sizeof(*cn));
    if (!cn)
        return NULL;
    cn->pool = p;
    cn->fd = -1;
    cn->pipe = pipe;
    cn->refs = 1;
    cn->slot = -1;
    mica__list_init(&cn->pending);
    mica__list_init(&cn->link);
    mica__buf_init(&cn->out, p->r->o.max_pending_bytes);
    mica__buf_init(&cn->wbuf, p->r->o.max_pending_bytes);
    cn->rd = redisReaderCreateWithFunctions(&reply_fns);
    cn->rbuf = mica__malloc(RBUF_BYTES);
    if (!cn->rd || !cn->rbuf || mica_ctx_with_cancel(NULL, &cn->ctx) != 0) {
        conn_unref(cn);
        return NULL;
    }
    cn->rd->privdata = cn;
    return cn;
}

static void conn_unref(conn_t *cn)
{
    if (--cn->refs > 0)
        return;
    if (cn->fd >= 0)
        mica_net_close(cn->fd);
    if (cn->rd)
        redisReaderFree(cn->rd);
    mica__buf_free(&cn->out);
    mica__buf_free(&cn->wbuf);
    mica__free(cn->rbuf);
    mica_ctx_free(cn->ctx);
    mica__free(cn);
}

/*
 * Closes a connection for `rc`: fails every request pipelined on it with rc,
 * and wakes its coroutines (they end and drop their references). `why`
 * (NULL: a quiet close) is logged.
 */
static void conn_fail(conn_t *cn, int rc, const char *why)
{
    if (cn->dead)
        return;
    cn->dead = true;
    pool_t *p = cn->pool;
    if (why) {
        char n[24];
        snprintf(n, sizeof(n), "%zu", cn->npending);
        mica__log_warn("redis: connection closed", "addr", p->r->addr, "reason", why, "error",
                       mica_err_name(rc), "failed_calls", n);
        mica__count(&p->st.conns_lost, 1);
    }
    if (cn->pipe && cn->slot >= 0 && p->pipes[cn->slot] == cn)
        p->pipes[cn->slot] = NULL;
    if (cn->npending && why)
        snprintf(p->errmsg, sizeof(p->errmsg), "connection to %s lost: %s", p->r->addr, why);
    mica__list_t *n;
    while ((n = mica__list_pop_front(&cn->pending))) {
        mica__count(&p->st.failures, 1);
        req_finish(p, mica__list_entry(n, req_t, link), rc, NULL);
    }
    cn->npending = 0;
    mica__buf_reset(&cn->out);
    mica_ctx_cancel(cn->ctx);
    mica_event_set(&cn->wev);
}

/* Feeds `n` read bytes to the parser, keeping the reply being read under the cap. */
static int conn_feed(conn_t *cn, size_t n)
{
    size_t buffered = cn->rd->len - cn->rd->pos;
    if (buffered + n + cn->reply_bytes > cn->pool->r->o.max_reply_bytes) {
        snprintf(cn->pool->errmsg, sizeof(cn->pool->errmsg), "reply over max_reply_bytes (%zu)",
                 cn->pool->r->o.max_reply_bytes);
        return MICA_ELIMIT;
    }
    return redisReaderFeed(cn->rd, cn->rbuf, n) == REDIS_OK ? 0 : MICA_ENOMEM;
}

/* The next complete reply already read (*out NULL if none yet), or MICA_EPROTO/ENOMEM. */
static int conn_next_reply(conn_t *cn, mica_redis_reply_t **out)
{
    void *obj = NULL;
    if (redisReaderGetReply(cn->rd, &obj) != REDIS_OK) {
        int rc = cn->rd->err == REDIS_ERR_OOM ? MICA_ENOMEM : MICA_EPROTO;
        snprintf(cn->pool->errmsg, sizeof(cn->pool->errmsg), "bad reply from %s: %s",
                 cn->pool->r->addr, cn->rd->errstr);
        return rc;
    }
    if (obj)
        cn->reply_bytes = 0;
    *out = obj;
    return 0;
}

static int format(int argc, const char *const *argv, const size_t *argvlen, char **s, size_t *len)
{
    int n = redisFormatCommandArgv(s, argc, (const char **)argv, argvlen);
    if (n < 0)
        return MICA_ENOMEM;
    *len = (size_t)n;
    return 0;
}

/* Reads the next reply on a connection nobody else reads (handshake, dedicated). */
int mica__redis_conn_recv(conn_t *cn, mica_ctx_t *ctx, int64_t deadline_ms,
                          mica_redis_reply_t **out)
{
    *out = NULL;
    for (;;) {
        int rc = conn_next_reply(cn, out);
        if (rc != 0 || *out)
            return rc;
        ssize_t n = mica_net_read(cn->fd, cn->rbuf, RBUF_BYTES, ctx, deadline_ms);
        if (n == 0)
            return MICA_ECONNRESET;
        if (n < 0)
            return (int)n;
        if ((rc = conn_feed(cn, (size_t)n)) != 0)
            return rc;
    }
}

int mica__redis_conn_send(conn_t *cn, mica_ctx_t *ctx, int argc, const char *const *argv,
                          const size_t *argvlen)
{
    char *s;
    size_t len;
    int rc = format(argc, argv, argvlen, &s, &len);
    if (rc != 0)
        return rc;
    rc = mica_net_write(cn->fd, s, len, ctx, mica_deadline_in(cn->pool->r->o.read_timeout_ms));
    redisFreeCommand(s);
    return rc;
}

/* One command and its reply on a connection nobody else uses. */
static int conn_roundtrip(conn_t *cn, mica_ctx_t *ctx, int64_t deadline_ms, int argc,
                          const char *const *argv, const size_t *argvlen,
                          mica_redis_reply_t **out)
{
    int rc = mica__redis_conn_send(cn, ctx, argc, argv, argvlen);
    if (rc == 0)
        rc = mica__redis_conn_recv(cn, ctx, deadline_ms, out);
    return rc;
}

/* Connects `cn` and sends AUTH and SELECT as configured, by `deadline_ms`. */
static int conn_connect(conn_t *cn, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica_redis_t *r = cn->pool->r;
    int fd = mica_net_connect(r->addr, ctx, deadline_ms);
    if (fd < 0) {
        snprintf(cn->pool->errmsg, sizeof(cn->pool->errmsg), "connect to %s: %s", r->addr,
                 mica_strerror(fd));
        return fd;
    }
    cn->fd = fd;
    const char *argv[3];
    int argc = 0;
    char db[16];
    mica_redis_reply_t *rep = NULL;
    int rc = 0;
    if (r->password) {
        argv[argc++] = "AUTH";
        if (r->user)
            argv[argc++] = r->user;
        argv[argc++] = r->password;
        rc = conn_roundtrip(cn, ctx, deadline_ms, argc, argv, NULL, &rep);
        if (rc == 0 && rep->type == MICA_REDIS_ERROR) {
            snprintf(cn->pool->errmsg, sizeof(cn->pool->errmsg), "AUTH: %s", rep->str);
            mica__log_error("redis: AUTH refused", "addr", r->addr, "error", rep->str);
            rc = MICA_EUNAUTHENTICATED;
        }
        mica_redis_reply_free(rep);
        rep = NULL;
    }
    if (rc == 0 && r->db != 0) {
        snprintf(db, sizeof(db), "%d", r->db);
        argv[0] = "SELECT";
        argv[1] = db;
        rc = conn_roundtrip(cn, ctx, deadline_ms, 2, argv, NULL, &rep);
        if (rc == 0 && rep->type == MICA_REDIS_ERROR) {
            snprintf(cn->pool->errmsg, sizeof(cn->pool->errmsg), "SELECT %d: %s", r->db, rep->str);
            mica__log_error("redis: SELECT refused", "addr", r->addr, "error", rep->str);
            rc = MICA_EINVAL;
        }
        mica_redis_reply_free(rep);
    }
    return rc;
}

/* ---- shared connections: the writer and the reader ---------------------------------- */

static void writer_main(void *arg)
{
    conn_t *cn = arg;
    pool_t *p = cn->pool;
    while (!cn->dead) {
        if (mica__buf_len(&cn->out) == 0) {
            mica_event_reset(&cn->wev);
            if (mica__buf_len(&cn->out) == 0 && !cn->dead &&
                mica_event_wait(&cn->wev, cn->ctx, MICA_NO_DEADLINE) != 0)
                break;
            continue;
        }
        /* Let every coroutine this round made runnable queue its command first:
         * they then share this write (and, later, a read). */
        mica_yield();
        if (cn->dead)
            break;
        mica__buf_t t = cn->wbuf;
        cn->wbuf = cn->out;
        cn->out = t;
        cn->kicked = false;
        mica__count(&p->st.batches, 1);
        int rc = mica_net_write(cn->fd, mica__buf_data(&cn->wbuf), mica__buf_len(&cn->wbuf),
                                cn->ctx, mica_deadline_in(p->r->o.read_timeout_ms));
        mica__buf_reset(&cn->wbuf);
        if (cn->wbuf.cap > 1024 * 1024) /* a big value went out: don't keep its memory */
            mica__buf_free(&cn->wbuf);
        if (rc != 0) {
            conn_fail(cn, rc == MICA_ECANCELED ? MICA_ECONNRESET : rc, "write failed");
            break;
        }
    }
    conn_unref(cn);
}

/* Connects, then reads replies and hands them to the pending requests in order. */
static void reader_main(void *arg)
{
    conn_t *cn = arg;
    pool_t *p = cn->pool;
    mica_redis_t *r = p->r;
    int rc = conn_connect(cn, cn->ctx, mica_deadline_in(r->o.connect_timeout_ms));
    if (rc != 0) {
        if (!cn->dead) {
            connect_failed(p, rc);
            char why[ERRMSG_BYTES];
            snprintf(why, sizeof(why), "%s", p->errmsg);
            conn_fail(cn, rc, NULL);
            snprintf(p->errmsg, sizeof(p->errmsg), "%s", why);
        }
        conn_unref(cn);
        return;
    }
    connect_succeeded(p);
    cn->refs++;
    if (mica_go(writer_main, cn) != 0) {
        cn->refs--;
        conn_fail(cn, MICA_ENOMEM, "no memory for its writer");
    }
    while (!cn->dead) {
        if (cn->npending == 0 && mica_worker_stopping()) {
            conn_fail(cn, MICA_ECANCELED, NULL); /* drained */
            break;
        }
        /* With replies due, wake when the oldest is overdue; idle, now and then. */
        int64_t deadline = mica_deadline_in(r->o.read_timeout_ms);
        mica__list_t *head = mica__list_first(&cn->pending);
        if (head)
            deadline = mica__list_entry(head, req_t, link)->queued_ms + r->o.read_timeout_ms;
        ssize_t n = mica_net_read(cn->fd, cn->rbuf, RBUF_BYTES, cn->ctx, deadline);
        if (cn->dead)
            break;
        if (n == MICA_ETIMEDOUT) {
            head = mica__list_first(&cn->pending);
            if (head && mica_now_ms() - mica__list_entry(head, req_t, link)->queued_ms >=
                            r->o.read_timeout_ms) {
                snprintf(p->errmsg, sizeof(p->errmsg), "no reply from %s within %d ms", r->addr,
                         r->o.read_timeout_ms);
                conn_fail(cn, MICA_ETIMEDOUT, "reply overdue (read_timeout_ms)");
            }
            continue;
        }
        if (n <= 0) {
            conn_fail(cn, n == 0 ? MICA_ECONNRESET : (int)n,
                      n == 0 ? "closed by the server" : "read failed");
            break;
        }
        if ((rc = conn_feed(cn, (size_t)n)) != 0) {
            conn_fail(cn, rc, "reply over max_reply_bytes");
            break;
        }
        for (;;) {
            mica_redis_reply_t *rep;
            if ((rc = conn_next_reply(cn, &rep)) != 0) {
                conn_fail(cn, rc, "malformed reply");
                break;
            }
            if (!rep)
                break;
            mica__list_t *q = mica__list_pop_front(&cn->pending);
            if (!q) {
                mica_redis_reply_free(rep);
                conn_fail(cn, MICA_EPROTO, "reply without a request");
                break;
            }
            cn->npending--;
            req_finish(p, mica__list_entry(q, req_t, link), 0, rep);
        }
    }
    conn_unref(cn);
}

/* This worker's shared connection for the next command (opening one if needed). */
static int pipe_get(pool_t *p, conn_t **out)
{
    mica_redis_t *r = p->r;
    int i = (int)(p->rr++ % (unsigned)r->o.pipelines);
    conn_t *cn = p->pipes[i];
    if (cn && !cn->dead) {
        *out = cn;
        return 0;
    }
    int rc = check_backoff(p);
    if (rc != 0)
        return rc;
    if (!(cn = conn_new(p, true)))
        return MICA_ENOMEM;
    cn->slot = i;
    p->pipes[i] = cn;
    if (mica_go(reader_main, cn) != 0) {
        p->pipes[i] = NULL;
        conn_unref(cn);
        return MICA_ENOMEM;
    }
    *out = cn;
    return 0;
}

/* Waits for a request's reply; on a ctx end the request is left to the reader. */
static int req_wait(pool_t *p, req_t *q, mica_ctx_t *ctx, mica_redis_reply_t **rep)
{
    int rc = mica_event_wait(&q->done, ctx, MICA_NO_DEADLINE);
    if (rc != 0 && !mica_event_is_set(&q->done)) {
        q->abandoned = true;
        mica__count(&p->st.timeouts, 1);
        snprintf(p->errmsg, sizeof(p->errmsg), "%s waiting for the reply",
                 rc == MICA_ETIMEDOUT ? "timed out" : "canceled");
        return rc;
    }
    rc = q->rc;
    *rep = q->reply;
    req_put(p, q);
    return rc;
}

/* A command on this worker's shared, auto-pipelined connection. */
static int pipe_cmd(pool_t *p, mica_ctx_t *ctx, int argc, const char *const *argv,
                    const size_t *argvlen, mica_redis_reply_t **rep)
{
    conn_t *cn;
    int rc = pipe_get(p, &cn);
    if (rc != 0)
        return rc;
    req_t *q = req_get(p);
    if (!q)
        return MICA_ENOMEM;
    char *s;
    size_t len;
    if ((rc = format(argc, argv, argvlen, &s, &len)) != 0) {
        req_put(p, q);
        return rc;
    }
    rc = mica__buf_append(&cn->out, s, len);
    redisFreeCommand(s);
    if (rc != 0) {
        req_put(p, q);
        snprintf(p->errmsg, sizeof(p->errmsg), "%s", rc == MICA_ELIMIT ?
                 "too many bytes waiting to be written (max_pending_bytes)" : "out of memory");
        return rc;
    }
    q->queued_ms = mica_now_ms();
    mica__list_push_back(&cn->pending, &q->link);
    cn->npending++;
    mica__count(&p->st.commands, 1);
    if (!cn->kicked) {
        cn->kicked = true;
        mica_event_set(&cn->wev);
    }
    return req_wait(p, q, ctx, rep);
}

/* ---- dedicated connections ------------------------------------------------------------ */

static mica__list_t *pop_back(mica__list_t *head)
{
    if (mica__list_empty(head))
        return NULL;
    mica__list_t *n = head->prev;
    mica__list_remove(n);
    return n;
}

static bool conn_healthy(conn_t *cn)
{
    if (cn->dead || cn->broken || cn->rd->len != cn->rd->pos)
        return false;
    char c;
    ssize_t n = recv(cn->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK); /* no EOF, no stray bytes */
}

static void dedicated_close(conn_t *cn)
{
    pool_t *p = cn->pool;
    cn->dead = true;
    if (cn->counted) {
        p->ndedicated--;
        mica_event_set(&p->freed);
    }
    conn_unref(cn);
}

/* Opens a dedicated connection, bounded by ctx and connect_timeout_ms. */
static int dedicated_open(pool_t *p, mica_ctx_t *ctx, conn_t **out)
{
    int rc = check_backoff(p);
    if (rc != 0)
        return rc;
    conn_t *cn = conn_new(p, false);
    if (!cn)
        return MICA_ENOMEM;
    int64_t own = mica_deadline_in(p->r->o.connect_timeout_ms);
    int64_t theirs = mica_ctx_deadline(ctx ? ctx : mica_ctx_background());
    rc = conn_connect(cn, ctx, own < theirs ? own : theirs);
    if (rc != 0) {
        /* Only a failure of the attempt itself backs off, not the caller's ctx ending. */
        bool callers = rc == MICA_ECANCELED || (rc == MICA_ETIMEDOUT && theirs < own);
        if (!callers)
            connect_failed(p, rc);
        conn_unref(cn);
        return rc;
    }
    connect_succeeded(p);
    *out = cn;
    return 0;
}

int mica__redis_conn_open(mica_redis_t *r, mica_ctx_t *ctx, conn_t **out)
{
    pool_t *p = my_pool(r);
    return p ? dedicated_open(p, ctx, out) : MICA_EINVAL;
}

void mica__redis_conn_close(conn_t *cn)
{
    if (cn)
        dedicated_close(cn);
}

int mica_redis_acquire(mica_redis_t *r, mica_ctx_t *ctx, conn_t **out)
{
    pool_t *p = my_pool(r);
    if (!p)
        return MICA_EINVAL;
    for (;;) {
        int rc = ctx ? mica_ctx_err(ctx) : 0;
        if (rc != 0)
            return rc;
        mica__list_t *n;
        while ((n = pop_back(&p->idle))) {
            conn_t *cn = mica__list_entry(n, conn_t, link);
            if (conn_healthy(cn)) {
                *out = cn;
                return 0;
            }
            mica__log_info("redis: idle connection found dead, replaced", "addr", r->addr);
            mica__count(&p->st.conns_lost, 1);
            dedicated_close(cn);
        }
        if (p->ndedicated < r->o.pool_size) {
            p->ndedicated++;
            conn_t *cn = NULL;
            if ((rc = dedicated_open(p, ctx, &cn)) != 0) {
                p->ndedicated--;
                mica_event_set(&p->freed);
                return rc;
            }
            cn->counted = true;
            *out = cn;
            return 0;
        }
        mica_event_reset(&p->freed);
        if ((rc = mica_event_wait(&p->freed, ctx, MICA_NO_DEADLINE)) != 0)
            return rc;
    }
}

void mica_redis_release(conn_t *cn)
{
    if (!cn)
        return;
    pool_t *p = cn->pool;
    int idle = 0;
    mica__list_foreach(n, &p->idle) idle++;
    if (cn->broken || cn->dead || mica_worker_stopping() || idle >= p->r->o.pool_idle ||
        !cn->counted) {
        dedicated_close(cn);
        return;
    }
    mica__list_push_back(&p->idle, &cn->link);
    mica_event_set(&p->freed);
}

/* Whether argument i is `name`, ignoring case (arguments need not be NUL-terminated). */
static bool arg_is(const char *const *argv, const size_t *argvlen, int i, const char *name)
{
    size_t n = strlen(name);
    if (argvlen)
        return argvlen[i] == n && strncasecmp(argv[i], name, n) == 0;
    return strcasecmp(argv[i], name) == 0;
}

/* The command's name as a C string, for messages. */
static const char *cmd_name(const char *const *argv, const size_t *argvlen, char *buf, size_t size)
{
    size_t n = argvlen ? argvlen[0] : strlen(argv[0]);
    snprintf(buf, size, "%.*s", (int)(n < size ? n : size - 1), argv[0]);
    return buf;
}

/* Whether a command blocks the connection (it then needs a dedicated one). */
static bool is_blocking(int argc, const char *const *argv, const size_t *argvlen)
{
    static const char *const blocking[] = {"BLPOP",  "BRPOP",    "BRPOPLPUSH", "BLMOVE",
                                           "BLMPOP", "BZPOPMIN", "BZPOPMAX",   "BZMPOP",
                                           "WAIT",   "WAITAOF"};
    for (size_t i = 0; i < sizeof(blocking) / sizeof(*blocking); i++)
        if (arg_is(argv, argvlen, 0, blocking[i]))
            return true;
    if (arg_is(argv, argvlen, 0, "XREAD") || arg_is(argv, argvlen, 0, "XREADGROUP"))
        for (int i = 1; i < argc && !arg_is(argv, argvlen, i, "STREAMS"); i++)
            if (arg_is(argv, argvlen, i, "BLOCK"))
                return true;
    return false;
}

/* Commands that change a connection's state for everyone on it: not on a shared one. */
static bool is_stateful(const char *const *argv, const size_t *argvlen)
{
    static const char *const stateful[] = {
        "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "MONITOR",
        "MULTI",     "EXEC",       "DISCARD",    "WATCH",       "UNWATCH",      "SELECT",
        "AUTH",      "HELLO",      "RESET",      "QUIT",        "SYNC",         "PSYNC"};
    for (size_t i = 0; i < sizeof(stateful) / sizeof(*stateful); i++)
        if (arg_is(argv, argvlen, 0, stateful[i]))
            return true;
    return false;
}

int mica_redis_conn_cmd(conn_t *cn, mica_ctx_t *ctx, int argc, const char *const *argv,
                        const size_t *argvlen, mica_redis_reply_t **out)
{
    if (out)
        *out = NULL;
    pool_t *p = cn->pool;
    if (argc <= 0 || !argv || !argv[0])
        return MICA_EINVAL;
    if (cn->broken || cn->dead)
        return MICA_ECONNRESET;
    int64_t deadline = MICA_NO_DEADLINE;
    if (!is_blocking(argc, argv, argvlen))
        deadline = mica_deadline_in(p->r->o.read_timeout_ms);
    mica__count(&p->st.commands, 1);
    mica_redis_reply_t *rep = NULL;
    int rc = conn_roundtrip(cn, ctx, deadline, argc, argv, argvlen, &rep);
    if (rc != 0) {
        cn->broken = true;
        if (rc == MICA_ETIMEDOUT || rc == MICA_ECANCELED)
            mica__count(&p->st.timeouts, 1);
        else
            mica__count(&p->st.failures, 1);
        if (!p->errmsg[0] || rc == MICA_ETIMEDOUT || rc == MICA_ECANCELED ||
            rc == MICA_ECONNRESET)
            snprintf(p->errmsg, sizeof(p->errmsg), "%s on a dedicated connection",
                     mica_strerror(rc));
        return rc;
    }
    if (rep->type == MICA_REDIS_ERROR) {
        char name[32];
        note_error_reply(p, rep, cmd_name(argv, argvlen, name, sizeof(name)));
        rc = MICA_EPROTO;
    }
    if (out)
        *out = rep;
    else
        mica_redis_reply_free(rep);
    return rc;
}

/* ---- commands ---------------------------------------------------------------------------- */

int mica_redis_cmd(mica_redis_t *r, mica_ctx_t *ctx, int argc, const char *const *argv,
                   const size_t *argvlen, mica_redis_reply_t **out)
{
    if (out)
        *out = NULL;
    pool_t *p = my_pool(r);
    if (!p || argc <= 0 || !argv || !argv[0])
        return MICA_EINVAL;
    p->errmsg[0] = '\0';
    if (is_stateful(argv, argvlen)) {
        char name[32];
        snprintf(p->errmsg, sizeof(p->errmsg),
                 "%s needs a leased connection (mica_redis_acquire) or a subscriber",
                 cmd_name(argv, argvlen, name, sizeof(name)));
        return MICA_EINVAL;
    }
    int rc = ctx ? mica_ctx_err(ctx) : 0;
    if (rc != 0)
        return rc;
    if (is_blocking(argc, argv, argvlen)) {
        conn_t *cn;
        if ((rc = mica_redis_acquire(r, ctx, &cn)) != 0)
            return rc;
        rc = mica_redis_conn_cmd(cn, ctx, argc, argv, argvlen, out);
        mica_redis_release(cn);
        return rc;
    }
    mica_redis_reply_t *rep = NULL;
    if ((rc = pipe_cmd(p, ctx, argc, argv, argvlen, &rep)) != 0)
        return rc;
    if (rep->type == MICA_REDIS_ERROR) {
        char name[32];
        note_error_reply(p, rep, cmd_name(argv, argvlen, name, sizeof(name)));
        rc = MICA_EPROTO;
    }
    if (out)
        *out = rep;
    else
        mica_redis_reply_free(rep);
    return rc;
}

int mica_redis_cmdl(mica_redis_t *r, mica_ctx_t *ctx, mica_redis_reply_t **out, const char *arg0,
                    ...)
{
    const char *argv[64];
    int argc = 0;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a; a = va_arg(ap, const char *)) {
        if (argc == 64) {
            va_end(ap);
            return MICA_ELIMIT;
        }
        argv[argc++] = a;
    }
    va_end(ap);
    return mica_redis_cmd(r, ctx, argc, argv, NULL, out);
}

/* ---- the client ------------------------------------------------------------------------- */

static void on_worker_stop(int worker, void *arg)
{
    mica_redis_t *r = arg;
    if (worker < 0 || worker >= r->nworkers)
        return;
    pool_t *p = r->pools[worker];
    for (int i = 0; i < r->o.pipelines; i++) {
        conn_t *cn = p->pipes[i];
        if (cn && cn->npending == 0)
            conn_fail(cn, MICA_ECANCELED, NULL); /* busy ones close when their replies are in */
    }
    mica__list_t *n;
    while ((n = mica__list_pop_front(&p->idle)))
        dedicated_close(mica__list_entry(n, conn_t, link));
}

/* Percent-decodes s[0..n) into a new string. */
static char *decode(const char *s, size_t n)
{
    char *d = mica__malloc(n + 1), *o = d;
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            *o++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return d;
}

/* redis://[[user]:password@]host[:port][/db], or host:port. */
static int parse_url(mica_redis_t *r, const char *url)
{
    const char *s = url;
    if (strncmp(s, "redis://", 8) == 0)
        s += 8;
    else if (strstr(s, "://"))
        return MICA_EINVAL; /* rediss:// (TLS), unix:// */
    const char *at = strrchr(s, '@');
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (colon) {
            if (colon > s && !(r->user = decode(s, (size_t)(colon - s))))
                return MICA_ENOMEM;
            if (!(r->password = decode(colon + 1, (size_t)(at - colon - 1))))
                return MICA_ENOMEM;
        } else if (!(r->password = decode(s, (size_t)(at - s)))) {
            return MICA_ENOMEM;
        }
        s = at + 1;
    }
    const char *slash = strchr(s, '/');
    size_t hostlen = slash ? (size_t)(slash - s) : strlen(s);
    if (slash && slash[1]) {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (*end || db < 0 || db > 65535)
            return MICA_EINVAL;
        r->db = (int)db;
    }
    char host[72];
    if (hostlen == 0 || hostlen >= sizeof(host))
        return MICA_EINVAL;
    memcpy(host, s, hostlen);
    host[hostlen] = '\0';
    const char *port = "6379";
    char *colon = host[0] == '[' ? strstr(host, "]:") : strrchr(host, ':');
    if (colon) {
        if (host[0] == '[')
            colon++;
        *colon = '\0';
        port = colon + 1;
    }
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    snprintf(r->addr, sizeof(r->addr), "%s:%s", host, port);
    struct sockaddr_storage ss;
    socklen_t len;
    return mica_net_parse_addr(r->addr, &ss, &len) == 0 ? 0 : MICA_EINVAL;
}

static int env_opts(mica_redis_opts_t *e, const char **url)
{
    const mica_setting_t s[] = {
        {"redis_url", MICA_SETTING_STR, NULL, "Redis URL", url, 0, 0, NULL},
        {"redis_pipelines", MICA_SETTING_INT, NULL, "", &e->pipelines, 1, 64, NULL},
        {"redis_pool_size", MICA_SETTING_INT, NULL, "", &e->pool_size, 1, 4096, NULL},
        {"redis_pool_idle", MICA_SETTING_INT, NULL, "", &e->pool_idle, 0, 4096, NULL},
        {"redis_connect_timeout", MICA_SETTING_MS, NULL, "", &e->connect_timeout_ms, 1, 3600000,
         NULL},
        {"redis_read_timeout", MICA_SETTING_MS, NULL, "", &e->read_timeout_ms, 1, 3600000, NULL},
    };
    return mica_config_from_env(s, sizeof(s) / sizeof(*s));
}

int mica_redis_new(mica_redis_t **out, mica_runtime_t *rt, const char *url,
                   const mica_redis_opts_t *opts)
{
    if (!out || !rt)
        return MICA_EINVAL;
    mica_redis_opts_t o = {0}, e = {0};
    if (opts)
        o = *opts;
    const char *env_url = NULL;
    if (env_opts(&e, &env_url) != 0)
        return MICA_EINVAL;
#define PICK(f, d) o.f = o.f ? o.f : e.f ? e.f : (d)
    PICK(pipelines, 1);
    PICK(pool_size, 8);
    PICK(pool_idle, 2);
    PICK(connect_timeout_ms, 1000);
    PICK(read_timeout_ms, 3000);
    PICK(backoff_min_ms, 50);
    PICK(backoff_max_ms, 2000);
    PICK(max_reply_bytes, (size_t)64 << 20);
    PICK(max_pending_bytes, (size_t)64 << 20);
#undef PICK
    if (o.pipelines < 1 || o.pipelines > 64 || o.pool_size < 1 || o.pool_idle < 0 ||
        o.connect_timeout_ms < 1 || o.read_timeout_ms < 1 || o.backoff_min_ms < 1 ||
        o.backoff_max_ms < o.backoff_min_ms)
        return MICA_EINVAL;
    if (!url)
        url = env_url ? env_url : "redis://127.0.0.1:6379";
    mica_redis_t *r = mica__calloc(1, sizeof(*r));
    if (!r)
        return MICA_ENOMEM;
    r->o = o;
    r->o.password = NULL;
    r->seed = (uint64_t)(uintptr_t)r ^ (uint64_t)mica_now_ms();
    int rc = parse_url(r, url);
    if (rc == 0 && o.password) {
        mica__free(r->password);
        if (!(r->password = mica__strdup(o.password)))
            rc = MICA_ENOMEM;
    }
    if (rc != 0) {
        if (rc == MICA_EINVAL)
            mica__log_error("redis: bad URL (want redis://[[user]:password@]host:port[/db] "
                            "with an IP or localhost)",
                            "url", url);
        mica_redis_free(r);
        return rc;
    }
    r->nworkers = mica_runtime_workers(rt);
    r->pools = mica__calloc((size_t)r->nworkers, sizeof(pool_t *));
    if (!r->pools) {
        mica_redis_free(r);
        return MICA_ENOMEM;
    }
    for (int w = 0; w < r->nworkers; w++) {
        pool_t *p = r->pools[w] = mica__calloc(1, sizeof(pool_t));
        if (!p) {
            mica_redis_free(r);
            return MICA_ENOMEM;
        }
        p->r = r;
        mica__list_init(&p->idle);
        mica__list_init(&p->free_reqs);
        p->pipes = mica__calloc((size_t)o.pipelines, sizeof(conn_t *));
        if (!p->pipes) {
            mica_redis_free(r);
            return MICA_ENOMEM;
        }
    }
    if (mica_runtime_on_stop(rt, on_worker_stop, r) != 0) {
        mica_redis_free(r);
        return MICA_ENOMEM;
    }
    *out = r;
    return 0;
}

void mica_redis_free(mica_redis_t *r)
{
    if (!r)
        return;
    mica__store_unexport(r);
    for (int w = 0; r->pools && w < r->nworkers; w++) {
        pool_t *p = r->pools[w];
        if (!p)
            continue;
        mica__list_t *n;
        while ((n = mica__list_pop_front(&p->free_reqs)))
            mica__free(mica__list_entry(n, req_t, link));
        while ((n = mica__list_pop_front(&p->idle))) {
            conn_t *cn = mica__list_entry(n, conn_t, link);
            conn_unref(cn);
        }
        mica__free(p->pipes);
        mica__free(p);
    }
    mica__free(r->pools);
    mica__free(r->user);
    mica__free(r->password);
    mica__free(r);
}

void mica_redis_stats(const mica_redis_t *r, mica_redis_stats_t *st)
{
    *st = (mica_redis_stats_t){0};
    for (int w = 0; w < r->nworkers; w++) {
        const pool_t *p = r->pools[w];
        st->commands += mica__counter_get(&p->st.commands);
        st->batches += mica__counter_get(&p->st.batches);
        st->error_replies += mica__counter_get(&p->st.error_replies);
        st->failures += mica__counter_get(&p->st.failures);
        st->timeouts += mica__counter_get(&p->st.timeouts);
        st->connects += mica__counter_get(&p->st.connects);
        st->connect_errors += mica__counter_get(&p->st.connect_errors);
        st->conns_lost += mica__counter_get(&p->st.conns_lost);
    }
}

int mica__redis_workers(const mica_redis_t *r)
{
    return r->nworkers;
}

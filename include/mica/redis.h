/* SPDX-License-Identifier: MIT */
/*
 * Redis client on mica's coroutines: hiredis's reply parser and command
 * formatter over mica sockets, a pool per worker, automatic pipelining.
 *
 *     mica_redis_t *r;
 *     mica_redis_new(&r, rt, "redis://127.0.0.1:6379/0", NULL);  // NULL url: $MICA_REDIS_URL
 *     ...in a coroutine on a worker of rt:
 *     mica_redis_set(r, ctx, "greeting", "hi", 2, 60000, 0);  // SET greeting hi PX 60000
 *     mica_redis_reply_t *v;
 *     if (mica_redis_get(r, ctx, "greeting", &v) == 0) { use(v->str, v->len); mica_redis_reply_free(v); }
 *
 * Pipelining. Commands that coroutines of one worker issue while its loop
 * runs go out together in one write on that worker's shared connection, and
 * replies are matched to callers in order, so 256 coroutines each waiting
 * on one GET cost one read and one write per batch, not 256 of each.
 * Blocking commands (BLPOP, XREADGROUP ... BLOCK, WAIT, ...) go on a
 * dedicated connection from the worker's pool instead, so they never hold
 * up the pipeline; MULTI/EXEC and WATCH need a leased connection
 * (mica_redis_acquire), SUBSCRIBE a subscriber (mica_redis_subscribe).
 *
 * Errors. Calls return 0 or a negative MICA_E* code: ctx errors
 * (MICA_ETIMEDOUT, MICA_ECANCELED), connection errors (MICA_ECONNREFUSED,
 * MICA_ECONNRESET when the connection died with the call pipelined on it,
 * MICA_ETIMEDOUT when no reply came within read_timeout_ms),
 * MICA_EUNAVAILABLE while reconnecting after failed attempts (exponential
 * backoff with jitter: calls fail at once instead of queueing), MICA_ELIMIT
 * (a request or reply over its cap), and MICA_EPROTO when Redis answered
 * with an error reply ("WRONGTYPE ...") or sent bytes that are not RESP.
 * mica_redis_errmsg() has the server's message; it is logged too. Calls
 * must run in a coroutine on a worker of the runtime given to _new().
 */
#ifndef MICA_REDIS_H
#define MICA_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/runtime.h"

typedef struct mica_redis mica_redis_t;
typedef struct mica_redis_conn mica_redis_conn_t;
typedef struct mica_redis_script mica_redis_script_t;
typedef struct mica_redis_sub mica_redis_sub_t;

/* Client settings; 0 (NULL) picks $MICA_REDIS_<NAME> if set, else the default shown. */
typedef struct mica_redis_opts {
    int pipelines;            /* auto-pipelined connections per worker (PIPELINES): 1 */
    int pool_size;            /* dedicated connections per worker (POOL_SIZE): 8 */
    int pool_idle;            /* idle dedicated connections kept per worker (POOL_IDLE): 2 */
    int connect_timeout_ms;   /* connect + AUTH/SELECT (CONNECT_TIMEOUT): 1000 */
    int read_timeout_ms;      /* a reply overdue this long closes the connection (READ_TIMEOUT): 3000 */
    int backoff_min_ms;       /* first delay after a failed connect: 50 */
    int backoff_max_ms;       /* cap of the doubling delays: 2000 */
    size_t max_reply_bytes;   /* one reply, while it is read: 64 MiB (MICA_ELIMIT) */
    size_t max_pending_bytes; /* commands not yet written, per connection: 64 MiB (MICA_ELIMIT) */
    const char *password;     /* AUTH; overrides the URL's */
} mica_redis_opts_t;

/* A reply: a tree owned by whoever received it (free the root with mica_redis_reply_free). */
typedef enum mica_redis_type {
    MICA_REDIS_NIL = 0,   /* a nil bulk or array */
    MICA_REDIS_STRING,    /* bulk string: str/len */
    MICA_REDIS_STATUS,    /* "+OK": str/len */
    MICA_REDIS_INTEGER,   /* integer */
    MICA_REDIS_ARRAY,     /* element[0..len) */
    MICA_REDIS_ERROR,     /* "-ERR ...": str/len */
} mica_redis_type_t;

typedef struct mica_redis_reply {
    mica_redis_type_t type;
    long long integer;                 /* INTEGER */
    size_t len;                        /* bytes of str, or elements of an ARRAY */
    char *str;                         /* STRING/STATUS/ERROR: NUL-terminated, may hold NULs */
    struct mica_redis_reply **element; /* ARRAY */
} mica_redis_reply_t;

/* Counters of one client, summed over its workers (mica_redis_stats). */
typedef struct mica_redis_stats {
    uint64_t commands;       /* commands sent */
    uint64_t batches;        /* writes of the pipelined connections (commands/batches: depth) */
    uint64_t error_replies;  /* MICA_EPROTO from an error reply */
    uint64_t failures;       /* calls failed by connection loss, read timeout or reconnecting */
    uint64_t timeouts;       /* calls whose ctx ended before their reply */
    uint64_t connects;       /* connections opened */
    uint64_t connect_errors; /* failed connection attempts */
    uint64_t conns_lost;     /* connections closed by an error (EOF, timeout, bad reply) */
} mica_redis_stats_t;

/* ---- the client ----------------------------------------------------------- */

/**
 * Creates a client of `url` for coroutines of `rt`'s workers: "redis://[[user]:password@]
 * host:port[/db]", or "host:port"; NULL: $MICA_REDIS_URL, else redis://127.0.0.1:6379.
 * Hosts are IP literals or "localhost". Connections open on first use. Returns 0,
 * MICA_EINVAL (bad URL or option, logged) or MICA_ENOMEM.
 */
MICA_API int mica_redis_new(mica_redis_t **out, mica_runtime_t *rt, const char *url,
                            const mica_redis_opts_t *opts);

/** Frees the client after its runtime has stopped (the drain closes its connections). NULL: no-op. */
MICA_API void mica_redis_free(mica_redis_t *r);

/**
 * Sends one command, argv[0..argc) with byte lengths argvlen (NULL: strlen each), and
 * waits for its reply, bounded by `ctx`. *out (may be NULL to discard) gets the reply,
 * owned by the caller, on 0 and on MICA_EPROTO from an error reply; else NULL. Errors:
 * see the top of this header; MICA_EINVAL for SUBSCRIBE/MULTI-like commands.
 */
MICA_API int mica_redis_cmd(mica_redis_t *r, mica_ctx_t *ctx, int argc, const char *const *argv,
                            const size_t *argvlen, mica_redis_reply_t **out);

/** As mica_redis_cmd() with the arguments as C strings, ending at a NULL: (r, ctx, &rep, "PING", NULL). */
MICA_API int mica_redis_cmdl(mica_redis_t *r, mica_ctx_t *ctx, mica_redis_reply_t **out,
                             const char *arg0, ...) __attribute__((sentinel));

/** Frees a reply tree. NULL is a no-op. */
MICA_API void mica_redis_reply_free(mica_redis_reply_t *rep);

/**
 * The message of the last failed call of this coroutine's worker ("WRONGTYPE ...", or
 * what went wrong locally): read it right after the call, before anything suspends. Owned
 * by the client; "" when there is none.
 */
MICA_API const char *mica_redis_errmsg(mica_redis_t *r);

/** Fills `st` with the client's counters (a snapshot, any thread). */
MICA_API void mica_redis_stats(const mica_redis_t *r, mica_redis_stats_t *st);

typedef struct mica_metrics mica_metrics_t; /* include/mica/metrics.h */

/**
 * Exports the counters above as mica_redis_*_total{client="<name>"} from
 * `reg` (NULL: the default registry, what /metrics serves), read at each
 * scrape, until the client is freed. `name` is copied (< 64 bytes).
 * Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_redis_export_metrics(mica_redis_t *r, mica_metrics_t *reg, const char *name);

/* ---- typed helpers (keys are C strings, values binary) -------------------- */

enum {
    MICA_REDIS_NX = 1, /* SET only if the key does not exist */
    MICA_REDIS_XX = 2, /* SET only if it does */
};

/** GET: *val (STRING, caller frees) on 0; MICA_ENOTFOUND when the key does not exist. */
MICA_API int mica_redis_get(mica_redis_t *r, mica_ctx_t *ctx, const char *key,
                            mica_redis_reply_t **val);

/**
 * SET `key` to `len` bytes at `val`, expiring after `ttl_ms` (0: never; whole seconds go as EX,
 * others as PX), with MICA_REDIS_NX or _XX in `flags`. Returns 0, or MICA_EEXIST (NX) /
 * MICA_ENOTFOUND (XX) when the condition failed.
 */
MICA_API int mica_redis_set(mica_redis_t *r, mica_ctx_t *ctx, const char *key, const void *val,
                            size_t len, int64_t ttl_ms, int flags);

/** DEL `key`. *deleted (may be NULL) gets 1 or 0. Returns 0 or an error. */
MICA_API int mica_redis_del(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t *deleted);

/** INCRBY `key` by `by`; *value (may be NULL) gets the new value. MICA_EPROTO: not an integer. */
MICA_API int mica_redis_incrby(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t by,
                               int64_t *value);

/** INCR: mica_redis_incrby(r, ctx, key, 1, value). */
MICA_API int mica_redis_incr(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t *value);

/** PEXPIRE `key` `ttl_ms`. Returns 0, or MICA_ENOTFOUND when the key does not exist. */
MICA_API int mica_redis_expire(mica_redis_t *r, mica_ctx_t *ctx, const char *key, int64_t ttl_ms);

/** HGET: *val (STRING, caller frees) on 0; MICA_ENOTFOUND for no such key or field. */
MICA_API int mica_redis_hget(mica_redis_t *r, mica_ctx_t *ctx, const char *key, const char *field,
                             mica_redis_reply_t **val);

/** HSET one field to `len` bytes at `val`. *added (may be NULL): 1 for a new field, else 0. */
MICA_API int mica_redis_hset(mica_redis_t *r, mica_ctx_t *ctx, const char *key, const char *field,
                             const void *val, size_t len, int64_t *added);

/** HGETALL: *out is an ARRAY of field, value, field, value... (empty for no key); caller frees. */
MICA_API int mica_redis_hgetall(mica_redis_t *r, mica_ctx_t *ctx, const char *key,
                                mica_redis_reply_t **out);

/** MGET `n` keys: *out is an ARRAY of n STRING or NIL replies, in order; caller frees. */
MICA_API int mica_redis_mget(mica_redis_t *r, mica_ctx_t *ctx, const char *const *keys, size_t n,
                             mica_redis_reply_t **out);

/** PUBLISH `len` bytes to `channel`; *receivers (may be NULL) gets how many subscribers got it. */
MICA_API int mica_redis_publish(mica_redis_t *r, mica_ctx_t *ctx, const char *channel,
                                const void *msg, size_t len, int64_t *receivers);

/* ---- Lua scripts ------------------------------------------------------------ */

/** Creates a script from Lua source (copied) and computes its SHA1. Returns 0 or MICA_ENOMEM. */
MICA_API int mica_redis_script_new(mica_redis_script_t **out, const char *lua);

/** Frees a script. NULL is a no-op. */
MICA_API void mica_redis_script_free(mica_redis_script_t *s);

/** Returns the script's SHA1 as 40 hex digits (owned by the script). */
MICA_API const char *mica_redis_script_sha(const mica_redis_script_t *s);

/**
 * Runs `s` with KEYS[1..nkeys] and ARGV[1..nargs] (C strings, borrowed): EVALSHA first,
 * EVAL when Redis answers NOSCRIPT (which loads it). *out as mica_redis_cmd(); a Lua error
 * is MICA_EPROTO with the message in the ERROR reply and mica_redis_errmsg().
 */
MICA_API int mica_redis_eval(mica_redis_t *r, mica_ctx_t *ctx, const mica_redis_script_t *s,
                             int nkeys, const char *const *keys, int nargs,
                             const char *const *args, mica_redis_reply_t **out);

/* ---- leased connections: transactions, WATCH, anything stateful ------------- */

/**
 * Takes a dedicated connection of this worker's pool for the caller alone (a healthy idle
 * one, or a new one while fewer than pool_size are out; else waits, bounded by `ctx`).
 * Give it back with mica_redis_release(). Returns 0, connection or ctx errors.
 */
MICA_API int mica_redis_acquire(mica_redis_t *r, mica_ctx_t *ctx, mica_redis_conn_t **out);

/**
 * Sends one command on a leased connection and waits for its reply (as mica_redis_cmd(),
 * bounded by `ctx`; the read timeout applies unless the command blocks). A failure other
 * than an error reply leaves the connection broken: release() then closes it.
 */
MICA_API int mica_redis_conn_cmd(mica_redis_conn_t *c, mica_ctx_t *ctx, int argc,
                                 const char *const *argv, const size_t *argvlen,
                                 mica_redis_reply_t **out);

/** Returns a leased connection to its pool (closing it if broken or over pool_idle). */
MICA_API void mica_redis_release(mica_redis_conn_t *c);

/* ---- pub/sub ------------------------------------------------------------------ */

/* One pub/sub message; its strings are owned by the subscriber, valid until its next call. */
typedef struct mica_redis_msg {
    const char *channel;
    size_t channel_len;
    const char *pattern; /* the PSUBSCRIBE pattern that matched, or NULL */
    const char *data;
    size_t len;
} mica_redis_msg_t;

/**
 * Opens a dedicated connection (outside the pool) subscribed to `n` channels (patterns
 * when `patterns`: PSUBSCRIBE), after Redis confirmed each. Free with
 * mica_redis_sub_free(). Returns 0, connection or ctx errors, MICA_EINVAL (n == 0).
 */
MICA_API int mica_redis_subscribe(mica_redis_t *r, mica_ctx_t *ctx, const char *const *channels,
                                  size_t n, bool patterns, mica_redis_sub_t **out);

/**
 * Waits for the next message, bounded by `ctx`. Returns 0 with *msg filled, ctx errors,
 * or a connection error (the subscription is then gone: resubscribe, or use _run).
 */
MICA_API int mica_redis_sub_next(mica_redis_sub_t *s, mica_ctx_t *ctx, mica_redis_msg_t *msg);

/** A message handler for mica_redis_sub_run(); a non-zero return ends the loop with it. */
typedef int (*mica_redis_msg_fn)(const mica_redis_msg_t *msg, void *arg);

/**
 * Calls fn for each message until `ctx` ends (its error is returned) or fn returns
 * non-zero (returned). A lost connection is reopened and resubscribed with backoff
 * (logged); messages published meanwhile are lost, as pub/sub promises no more.
 */
MICA_API int mica_redis_sub_run(mica_redis_sub_t *s, mica_ctx_t *ctx, mica_redis_msg_fn fn,
                                void *arg);

/** Closes the subscription's connection and frees it. NULL is a no-op. */
MICA_API void mica_redis_sub_free(mica_redis_sub_t *s);

/* ---- streams and consumer groups ----------------------------------------------- */

/* One field of a stream entry (name and binary value, borrowed). */
typedef struct mica_redis_field {
    const char *name;
    const void *value;
    size_t len;
} mica_redis_field_t;

/**
 * XADD `stream` * with `n` fields (MAXLEN ~ `maxlen` when > 0). The new entry's id goes
 * to `id` (size bytes; may be NULL). Returns 0, MICA_EINVAL (n == 0) or an error.
 */
MICA_API int mica_redis_xadd(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                             const mica_redis_field_t *fields, size_t n, int64_t maxlen,
                             char *id, size_t size);

/**
 * XGROUP CREATE `stream` `group` `start` MKSTREAM ("0": from the beginning, "$": new
 * entries only). An existing group is fine (0).
 */
MICA_API int mica_redis_xgroup_create(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                                      const char *group, const char *start);

/**
 * XREADGROUP GROUP `group` `consumer` COUNT `count` [BLOCK `block_ms`] STREAMS `stream`
 * `id` (">": new entries; "0": this consumer's pending ones). With block_ms >= 0 it runs
 * on a dedicated connection, bounded by `ctx` too; block_ms < 0 does not block. *out
 * (caller frees) is the reply; MICA_ENOTFOUND when nothing came. See mica_redis_xentries().
 */
MICA_API int mica_redis_xreadgroup(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                                   const char *group, const char *consumer, int count,
                                   int64_t block_ms, const char *id, mica_redis_reply_t **out);

/** XACK `stream` `group` `id`. *acked (may be NULL): 1, or 0 if it was not pending. */
MICA_API int mica_redis_xack(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                             const char *group, const char *id, int64_t *acked);

/**
 * XAUTOCLAIM `stream` `group` `consumer` `min_idle_ms` `start` COUNT `count`: entries
 * pending longer than min_idle_ms (any consumer's) become this consumer's. *out (caller
 * frees) is the reply: [next start, entries, deleted ids]; see mica_redis_xentries().
 */
MICA_API int mica_redis_xautoclaim(mica_redis_t *r, mica_ctx_t *ctx, const char *stream,
                                   const char *group, const char *consumer, int64_t min_idle_ms,
                                   const char *start, int count, mica_redis_reply_t **out);

/**
 * The entries of an XREADGROUP (first stream) or XAUTOCLAIM reply: an ARRAY whose
 * elements are [id, [field, value, ...]] (owned by `rep`), or NULL if it has none.
 */
MICA_API const mica_redis_reply_t *mica_redis_xentries(const mica_redis_reply_t *rep);

/**
 * A stream message handler for mica_redis_consume(): `fields` is the entry's
 * [field, value, ...] ARRAY (borrowed). Return 0 to acknowledge (XACK); anything else
 * leaves it pending, to be claimed again after claim_idle_ms.
 */
typedef int (*mica_redis_stream_fn)(mica_ctx_t *ctx, const char *id,
                                    const mica_redis_reply_t *fields, void *arg);

typedef struct mica_redis_consumer_opts {
    const char *stream, *group, *consumer; /* required */
    const char *start;     /* where a new group starts: "0" */
    int count;             /* entries per read: 16 */
    int block_ms;          /* XREADGROUP BLOCK: 1000 */
    int64_t claim_idle_ms; /* entries pending longer (a dead consumer's) are claimed: 30000 */
    int claim_every_ms;    /* how often XAUTOCLAIM runs: 1000 */
} mica_redis_consumer_opts_t;

/**
 * Consumes `stream` as `consumer` of `group` until `ctx` ends (returns its error), with
 * at-least-once delivery: creates the group if needed, first redelivers this consumer's
 * own pending entries, then reads new ones and periodically claims entries another
 * consumer left pending (XAUTOCLAIM), calling fn for each and XACKing on 0. Redis
 * errors are logged and retried with backoff. Returns MICA_EINVAL for missing names.
 */
MICA_API int mica_redis_consume(mica_redis_t *r, mica_ctx_t *ctx,
                                const mica_redis_consumer_opts_t *o, mica_redis_stream_fn fn,
                                void *arg);

/* ---- shared rate limiter ----------------------------------------------------------- */

typedef struct mica_redis_limiter mica_redis_limiter_t;

typedef struct mica_redis_limiter_opts {
    double rate;        /* tokens per second per key (required, > 0) */
    double burst;       /* bucket size: 0 = rate (one second's worth), at least 1 */
    const char *prefix; /* key prefix in Redis: "mica:rl:" */
    int timeout_ms;     /* an answer slower than this counts as Redis down: 100 */
    double local_rate;  /* the fallback's rate per process: 0 = rate */
    size_t local_keys;  /* keys the fallback tracks per worker (LRU beyond): 10000 */
} mica_redis_limiter_opts_t;

typedef struct mica_redis_limiter_stats {
    uint64_t allowed, denied; /* decisions, both ways */
    uint64_t local;           /* of which made by the local fallback */
    uint64_t outages;         /* times Redis was found down */
} mica_redis_limiter_stats_t;

/**
 * Creates a token-bucket limiter shared through Redis (a Lua script on Redis's clock, so
 * every instance agrees). When Redis fails or is slower than timeout_ms, each worker
 * falls back to a local bucket with local_rate / workers, logged once per outage.
 * Returns 0, MICA_EINVAL or MICA_ENOMEM. The client must outlive it.
 */
MICA_API int mica_redis_limiter_new(mica_redis_limiter_t **out, mica_redis_t *r,
                                    const mica_redis_limiter_opts_t *opts);

/** Frees the limiter. NULL is a no-op. */
MICA_API void mica_redis_limiter_free(mica_redis_limiter_t *l);

/**
 * Takes `n` tokens from `key`'s bucket. Returns 0 (allowed), MICA_EOVERLOAD (not enough
 * tokens), or the ctx's error if `ctx` has ended. Never fails because Redis did.
 */
MICA_API int mica_redis_limiter_allow(mica_redis_limiter_t *l, mica_ctx_t *ctx, const char *key,
                                      int n);

/** Fills `st` with the limiter's counters (a snapshot, any thread). */
MICA_API void mica_redis_limiter_stats(const mica_redis_limiter_t *l,
                                       mica_redis_limiter_stats_t *st);

#endif /* MICA_REDIS_H */

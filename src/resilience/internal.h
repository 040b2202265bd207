/* SPDX-License-Identifier: MIT */
/*
 * The resilience layer's shared pieces: single-writer counters that any
 * thread may read, random numbers, the rolling window of the breakers, and
 * the per-worker string-keyed tables behind per-method breakers and the
 * balancers' per-endpoint entries.
 *
 * Everything here belongs to one worker. Other threads only read: the
 * counters (relaxed atomics, written by their owner alone, so an increment
 * is a load and a store, never a locked instruction) and, under the owning
 * worker's `lock`, the membership of its tables -- which the owner changes
 * rarely (a new method, a new endpoint list) and holds the lock only then.
 */
#ifndef MICA_RESILIENCE_INTERNAL_H
#define MICA_RESILIENCE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/balancer.h"
#include "mica/resilience.h"

/* ---- counters ------------------------------------------------------------------- */

typedef _Atomic uint64_t mica__ctr_t;

/* One writer: no read-modify-write needed, and readers see whole values. */
static inline void mica__ctr_add(mica__ctr_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t mica__ctr_get(const mica__ctr_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---- random numbers ------------------------------------------------------------- */

/* A fresh, never-zero seed (time, a counter, the address of `salt`). */
uint64_t mica__rand_seed(const void *salt);

/* xorshift64*: fast, good enough for jitter and sampling. */
static inline uint64_t mica__rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, 1). */
static inline double mica__rand01(uint64_t *s)
{
    return (double)(mica__rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [0, n), n > 0 (Lemire's multiply-shift; bias below 2^-32 for small n). */
static inline uint32_t mica__rand_below(uint64_t *s, uint32_t n)
{
    return (uint32_t)(((mica__rand(s) >> 32) * (uint64_t)n) >> 32);
}

/* 64-bit hash of bytes (FNV-1a, then a murmur3-style finalizer for spread). */
uint64_t mica__hash64(const void *data, size_t len);

/* ---- rolling window ------------------------------------------------------------- */

/* Three counts per bucket; totals kept up to date as buckets roll off. */
typedef struct mica__wbucket {
    uint32_t a, b, c;
} mica__wbucket_t;

typedef struct mica__window {
    int n;
    int64_t bucket_ms;
    int64_t epoch;    /* now / bucket_ms of the newest bucket */
    uint64_t a, b, c; /* totals over the window */
    mica__wbucket_t *buckets;
} mica__window_t;

int mica__window_init(mica__window_t *w, int64_t window_ms, int buckets);
void mica__window_destroy(mica__window_t *w);
/* Rolls the window forward to `now_ms`; returns whether a bucket boundary passed. */
bool mica__window_advance(mica__window_t *w, int64_t now_ms);
/* Adds to the newest bucket (advance first). */
void mica__window_add(mica__window_t *w, uint32_t a, uint32_t b, uint32_t c);
/* Forgets everything. */
void mica__window_clear(mica__window_t *w);

/* ---- string-keyed tables -------------------------------------------------------- */

/* Open addressing, keys owned by the table, values by the caller. */
typedef struct mica__table {
    size_t cap, n;
    struct mica__table_slot {
        char *key;
        uint64_t hash;
        void *value;
    } * slots;
} mica__table_t;

/* Returns the value of `key` or NULL. */
void *mica__table_get(const mica__table_t *t, const char *key);
/* Adds `key` (copied) -> value; the key must be absent. 0 or MICA_ENOMEM. */
int mica__table_put(mica__table_t *t, const char *key, void *value);
/* Frees the table's memory (not the values). */
void mica__table_destroy(mica__table_t *t);

/* ---- breakers ------------------------------------------------------------------- */

/* Fills the defaults into `o` (kind kept). */
void mica__breaker_defaults(mica_breaker_opts_t *o);
/* Checks filled options. 0 or MICA_EINVAL. */
int mica__breaker_check(const mica_breaker_opts_t *o);

/* Adds `b`'s numbers to `sum` (state: the worse of the two; drop_ppm: the larger). */
void mica__breaker_stats_add(mica_breaker_stats_t *sum, const mica_breaker_t *b);

/* ---- balancers ------------------------------------------------------------------ */

/*
 * One endpoint on one worker as the balancers see it: hung on the endpoint's
 * picker_ptr, kept while the endpoint is listed (the client keeps
 * picker_ptr for endpoints that stay).
 */
typedef struct mica__lb_ep {
    char *addr;
    mica_breaker_t *breaker; /* NULL: none */
    mica__ctr_t picks, calls, failures;
    _Atomic uint32_t ewma_us; /* p2c's latency estimate (mirrored for readers) */
    double ewma;              /* p2c: the estimate, in us */
    int64_t ewma_at_ms;       /* when it was last updated */
    int64_t last_pick_ms;
    uint64_t mark; /* == the state's pick sequence: refused during this pick */
    bool seen;     /* while a new list is applied */
    struct mica__lb_ep *next;
} mica__lb_ep_t;

typedef struct mica__lb mica__lb_t;

/* Per-algorithm parts of a balancer. */
typedef struct mica__lb_algo {
    /* The endpoint list changed (state's common part already updated). 0 or MICA_ENOMEM. */
    int (*update)(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n);
    /* Chooses among eps; may call mica__lb_try() on candidates. -1: none. */
    int (*pick)(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                const mica_pick_info_t *info);
    void (*destroy)(mica__lb_t *lb);
} mica__lb_algo_t;

/* One worker's state of one balancer (what the client's picker state points at). */
struct mica__lb {
    const mica__lb_algo_t *algo;
    mica_balancer_t *owner; /* NULL: made without a mica_balancer_t */
    mica_balancer_opts_t o;
    int worker;
    pthread_mutex_t *lock; /* the owner's per-worker lock (NULL: no owner) */
    mica__lb_ep_t *eps;    /* every entry, for readers (under lock) */
    uint64_t seq;          /* pick sequence, for mica__lb_ep_t.mark */
    uint64_t rng;
    size_t next; /* round robin position, least-request tie rotation */
    void *algo_state;
    struct mica__lb *reg_next; /* on the owner's list for this worker */
};

/* The entry of eps[i] (never NULL once update ran). */
static inline mica__lb_ep_t *mica__lb_ep(mica_picker_endpoint_t *e)
{
    return (mica__lb_ep_t *)e->picker_ptr;
}

/*
 * Whether endpoint `e` may take this call: usable (not backing off), not
 * already refused during this pick, and let through by its breaker. Counts
 * the pick when it says yes.
 */
bool mica__lb_try(mica__lb_t *lb, mica_picker_endpoint_t *e, int64_t now_ms);

/* When no endpoint would do: the first one not refused by a breaker but
 * backing off (the client then fails the call with its last error), else -1. */
int mica__lb_fallback(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n);

/* A picker_ops built from an algorithm. */
#define MICA__LB_OPS(algo_, name_, flags_)                                                         \
    {                                                                                              \
        .name = (name_), .flags = (flags_), .create = mica__lb_create_##algo_,                     \
        .update = mica__lb_update, .pick = mica__lb_pick, .done = mica__lb_done,                   \
        .destroy = mica__lb_destroy,                                                               \
    }

int mica__lb_create(void **state, const void *conf, const mica__lb_algo_t *algo);
void mica__lb_update(void *state, mica_picker_endpoint_t *const *eps, size_t n);
int mica__lb_pick(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                  const mica_pick_info_t *info);
void mica__lb_done(void *state, mica_picker_endpoint_t *ep, int code, uint32_t latency_us);
void mica__lb_destroy(void *state);

extern const mica__lb_algo_t mica__lb_p2c_algo; /* its done() keeps a latency estimate */

/* Tries candidates from a random start, in order: an index, or mica__lb_fallback()'s. */
int mica__lb_scan(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n, int64_t now_ms);

/* The call's hash key from its policy, or NULL. */
const char *mica__lb_hash_key(const mica_pick_info_t *info, size_t *len);

/* ---- the policy set (policy.c) and its gRPC adapter (grpc.c) -------------------- */

/* One worker's part of a mica_resilience_t, allocated apart (no false sharing). */
typedef struct mica__res_worker {
    pthread_mutex_t lock;   /* guards `breakers` against readers; the worker takes it to add */
    mica__table_t breakers; /* key -> mica_breaker_t * */
    mica_budget_t *budget;  /* NULL: no budget */
    uint64_t rng;
    mica__ctr_t calls, rejected, fallbacks, retries, hedges, hedge_wins, pushbacks;
    struct {
        const void *id; /* an adapter's stable name for a key (a method descriptor) */
        mica_breaker_t *b;
    } cache[16]; /* saves hashing the key's string on every call */
} mica__res_worker_t;

struct mica_resilience {
    mica_resilience_opts_t o;      /* defaults filled in */
    mica_resilience_grpc_opts_t g; /* the gRPC adapter's, once attached */
    char http_key[64];             /* the HTTP adapter's breaker key, once attached */
    bool attached;
    int nworkers;
    mica__res_worker_t **w;
};

/* ---- what both client adapters (grpc.c, http.c) share -------------------------------- */

/* A call's limit: the earlier of its ctx's deadline and its options' (0: none). */
static inline int64_t mica__res_call_deadline(mica_ctx_t *ctx, int64_t opts_deadline_ms)
{
    int64_t d = ctx ? mica_ctx_deadline(ctx) : MICA_NO_DEADLINE;
    if (opts_deadline_ms > 0 && opts_deadline_ms < d)
        d = opts_deadline_ms;
    return d;
}

/* Waits `ms` (a retry's backoff) on the call's ctx: 0, or the ctx's error. */
static inline int mica__res_backoff(mica_ctx_t *ctx, int64_t ms)
{
    if (ms <= 0)
        return ctx ? mica_ctx_err(ctx) : 0;
    return ctx ? mica_ctx_sleep(ctx, ms) : mica_sleep_ms(ms);
}

/* The calling worker's part, or NULL outside a worker. */
mica__res_worker_t *mica__res_worker(mica_resilience_t *r);

/* mica_resilience_breaker() for worker `w`, looked up by `id` first (a pointer
 * that stands for `key` for r's life). */
mica_breaker_t *mica__res_breaker(mica_resilience_t *r, mica__res_worker_t *w, const void *id,
                                  const char *key);

#endif /* MICA_RESILIENCE_INTERNAL_H */

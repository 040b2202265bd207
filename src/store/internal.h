/* SPDX-License-Identifier: MIT */
/*
 * What the store layer's files share: a small intrusive hash table, a local
 * token bucket, per-worker counters, and the Redis client's internal calls.
 */
#ifndef MICA_STORE_INTERNAL_H
#define MICA_STORE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"
#include "mica/redis.h"

/* ---- counters: written by one worker, read by any thread ------------------ */

typedef _Atomic uint64_t mica__counter_t;

static inline void mica__count(mica__counter_t *c, uint64_t n)
{
    /* One writer (the owning worker): a plain load and store, no locked add. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* Forgets the metrics export of a Redis client or cache being freed (metrics.c). */
void mica__store_unexport(const void *obj);

static inline uint64_t mica__counter_get(const mica__counter_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---- hash table --------------------------------------------------------------- */

/* FNV-1a over `n` bytes. */
static inline uint64_t mica__hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

/* A node embedded in an element; the element keeps its own key. */
typedef struct mica__hnode {
    struct mica__hnode *next;
    uint64_t hash;
} mica__hnode_t;

/* Chained table with a power-of-two number of slots; grows at load 1. */
typedef struct mica__hmap {
    mica__hnode_t **slots;
    size_t nslots, n;
} mica__hmap_t;

/* Whether node `n` holds `key` (the hashes already match). */
typedef bool (*mica__hmap_eq_fn)(const mica__hnode_t *n, const void *key, size_t len);

void mica__hmap_init(mica__hmap_t *m);
void mica__hmap_destroy(mica__hmap_t *m); /* frees the slots, not the elements */
mica__hnode_t *mica__hmap_find(const mica__hmap_t *m, uint64_t hash, mica__hmap_eq_fn eq,
                               const void *key, size_t len);
/* Links `n` (n->hash set by the caller). Returns 0 or MICA_ENOMEM (only growth can fail: it
 * then links anyway into the old slots). */
int mica__hmap_insert(mica__hmap_t *m, mica__hnode_t *n);
void mica__hmap_remove(mica__hmap_t *m, mica__hnode_t *n);

/* ---- a local token bucket ------------------------------------------------------ */

typedef struct mica__bucket {
    double tokens;
    int64_t last_us; /* when tokens was last brought up to date */
} mica__bucket_t;

/* Refills `b` for the time since it was last used (rate/s, up to burst) and takes n
 * tokens if it has them. A new bucket (last_us 0) starts full. Returns true if taken. */
bool mica__bucket_take(mica__bucket_t *b, double rate, double burst, double n, int64_t now_us);

/* ---- the Redis client's internals (redis.c), used by redis_api.c ---------------- */

/* The current worker's per-client error message buffer: a failed call writes it. */
void mica__redis_seterr(mica_redis_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Opens a dedicated connection outside the pool (subscribers). */
int mica__redis_conn_open(mica_redis_t *r, mica_ctx_t *ctx, mica_redis_conn_t **out);
/* Closes one from mica__redis_conn_open(). */
void mica__redis_conn_close(mica_redis_conn_t *c);
/* Writes a command on a dedicated connection without waiting for a reply. */
int mica__redis_conn_send(mica_redis_conn_t *c, mica_ctx_t *ctx, int argc,
                          const char *const *argv, const size_t *argvlen);
/* Reads the next reply of a dedicated connection, bounded by ctx and deadline_ms. */
int mica__redis_conn_recv(mica_redis_conn_t *c, mica_ctx_t *ctx, int64_t deadline_ms,
                          mica_redis_reply_t **out);
/* The number of workers the client serves. */
int mica__redis_workers(const mica_redis_t *r);
/* Backoff for `attempt` (1, 2, ...): doubling from min to max, half of it random. */
int64_t mica__redis_backoff_ms(mica_redis_t *r, int attempt);

#endif /* MICA_STORE_INTERNAL_H */

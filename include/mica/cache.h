/* SPDX-License-Identifier: MIT */
/*
 * Cache-aside: read through a cache, load from the source of truth on a
 * miss, and store what was loaded -- with the three classic defences built
 * in (go-zero's cache is the model):
 *
 * - singleflight: concurrent misses of one key on one worker run its loader
 *   once; the others wait for that result, each bounded by its own ctx;
 * - negative caching: a loader's MICA_ENOTFOUND is cached too (for
 *   not_found_ttl_ms), so lookups of missing keys do not all reach the
 *   source (cache penetration);
 * - TTL jitter: every TTL is spread by ±ttl_jitter, so entries written
 *   together do not all expire together (cache avalanche).
 *
 *     mica_cache_backend_t lru;
 *     mica_cache_backend_lru(&lru, rt, 10000, 64 << 20);   // or mica_cache_backend_redis()
 *     mica_cache_t *c;
 *     mica_cache_new(&c, rt, lru, NULL);                    // the cache owns the backend now
 *     ...in a coroutine:
 *     mica_cache_value_t *v;
 *     rc = mica_cache_get(c, ctx, "user:42", load_user, db, &v);  // 0, MICA_ENOTFOUND, errors
 *     if (rc == 0) { use(v->data, v->len); mica_cache_value_unref(v); }
 *
 * Writes stay with the application: update the source, then
 * mica_cache_del() the key (the next read loads the new value).
 */
#ifndef MICA_CACHE_H
#define MICA_CACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/redis.h"
#include "mica/runtime.h"

/* Immutable bytes with a reference count, shared by the cache and its readers. */
typedef struct mica_cache_value {
    size_t len;
    char *data; /* len bytes, then a NUL */
    atomic_int _refs;
} mica_cache_value_t;

/** Creates a value holding a copy of `len` bytes at `data`, with one reference (the caller's). */
MICA_API int mica_cache_value_new(mica_cache_value_t **out, const void *data, size_t len);

/** Adds a reference to `v` and returns it (any thread). */
MICA_API mica_cache_value_t *mica_cache_value_ref(mica_cache_value_t *v);

/** Drops a reference; the last one frees `v`. NULL is a no-op. */
MICA_API void mica_cache_value_unref(mica_cache_value_t *v);

/* ---- backends ---------------------------------------------------------------- */

/*
 * A cache backend: what mica_cache_get() reads and writes. `key`s are C
 * strings, borrowed for the call. Calls run in a coroutine and may suspend.
 */
typedef struct mica_cache_backend_ops {
    const char *name; /* "lru", "redis": for logs */
    /* 0 with *out a new reference, or 0 with *out NULL for a cached "not found";
     * MICA_ENOTFOUND when the key is not cached; other errors (counted, then loaded). */
    int (*get)(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t **out);
    /* Stores `val` (NULL: "not found") for ttl_ms. Takes its own reference if it keeps it. */
    int (*set)(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t *val,
               int64_t ttl_ms);
    /* Forgets `key`. */
    int (*del)(void *self, mica_ctx_t *ctx, const char *key);
    /* Frees the backend (after the runtime has stopped). */
    void (*free)(void *self);
} mica_cache_backend_ops_t;

typedef struct mica_cache_backend {
    const mica_cache_backend_ops_t *ops;
    void *self;
} mica_cache_backend_t;

/**
 * An in-process LRU per worker of `rt` (each worker reads and writes only its own, so a
 * hit takes no lock): at most `max_entries` entries and `max_bytes` bytes (keys + values
 * + ~100 bytes overhead each) per worker, the least recently used evicted first.
 * Returns 0, MICA_EINVAL (a zero bound) or MICA_ENOMEM.
 */
MICA_API int mica_cache_backend_lru(mica_cache_backend_t *out, mica_runtime_t *rt,
                                    size_t max_entries, size_t max_bytes);

/**
 * Redis as the cache, through `r` (borrowed; it must outlive the cache), keys prefixed
 * with `prefix` (NULL: "mica:cache:"). Values are stored with a one-byte tag, so a cached
 * "not found" is told apart from any value. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_cache_backend_redis(mica_cache_backend_t *out, mica_redis_t *r,
                                      const char *prefix);

/* ---- the cache ------------------------------------------------------------------- */

typedef struct mica_cache mica_cache_t;

/* Cache settings; 0 picks the default shown. */
typedef struct mica_cache_opts {
    int64_t ttl_ms;           /* a loaded value lives: 60000 */
    int64_t not_found_ttl_ms; /* a cached "not found" lives: 10000 */
    double ttl_jitter;        /* each TTL is spread uniformly by ±this fraction: 0.05 */
} mica_cache_opts_t;

/* Counters, summed over workers (mica_cache_stats). */
typedef struct mica_cache_stats {
    uint64_t hits;           /* values found */
    uint64_t negative_hits;  /* cached "not found"s found */
    uint64_t misses;         /* lookups that had to load (or wait for a load) */
    uint64_t loads;          /* loader runs */
    uint64_t shared;         /* misses that waited for another caller's load */
    uint64_t load_errors;    /* loader failures other than MICA_ENOTFOUND (never cached) */
    uint64_t backend_errors; /* backend gets and sets that failed (the load went ahead) */
} mica_cache_stats_t;

/**
 * A loader: fetches `key` from the source of truth. Returns 0 with *out (a new value,
 * whose reference passes to the cache), MICA_ENOTFOUND (cached as such), or an error
 * (returned to the callers, not cached). It runs in the first caller's coroutine.
 */
typedef int (*mica_cache_load_fn)(mica_ctx_t *ctx, const char *key, void *arg,
                                  mica_cache_value_t **out);

/**
 * Creates a cache over `backend`, which it owns from now on (even on failure), for
 * coroutines of `rt`'s workers. `opts` may be NULL. Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_cache_new(mica_cache_t **out, mica_runtime_t *rt, mica_cache_backend_t backend,
                            const mica_cache_opts_t *opts);

/** Frees the cache and its backend, after the runtime has stopped. NULL is a no-op. */
MICA_API void mica_cache_free(mica_cache_t *c);

/**
 * Gets `key`: from the backend, else from load(ctx, key, arg) (once per key per worker
 * however many callers miss at once), storing the result. Returns 0 with *out (a
 * reference for the caller: mica_cache_value_unref), MICA_ENOTFOUND (the key does not
 * exist, maybe cached), the loader's error, or the ctx's error (waits are bounded by it).
 */
MICA_API int mica_cache_get(mica_cache_t *c, mica_ctx_t *ctx, const char *key,
                            mica_cache_load_fn load, void *arg, mica_cache_value_t **out);

/** Stores `len` bytes at `data` under `key` for the cache's TTL (with jitter). */
MICA_API int mica_cache_set(mica_cache_t *c, mica_ctx_t *ctx, const char *key, const void *data,
                            size_t len);

/** Forgets `key` (after the source of truth changed). Returns 0 or the backend's error. */
MICA_API int mica_cache_del(mica_cache_t *c, mica_ctx_t *ctx, const char *key);

/** Fills `st` with the cache's counters (a snapshot, any thread). */
MICA_API void mica_cache_stats(const mica_cache_t *c, mica_cache_stats_t *st);

typedef struct mica_metrics mica_metrics_t; /* include/mica/metrics.h */

/**
 * Exports the counters above as mica_cache_*_total{cache="<name>"} from
 * `reg` (NULL: the default registry), read at each scrape, until the cache
 * is freed. `name` is copied (< 64 bytes). Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_cache_export_metrics(mica_cache_t *c, mica_metrics_t *reg, const char *name);

#endif /* MICA_CACHE_H */

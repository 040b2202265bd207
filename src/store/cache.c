/* SPDX-License-Identifier: MIT */
/*
 * Cache-aside (include/mica/cache.h): values with reference counts, the
 * per-worker LRU and the Redis backends, and mica_cache_get() with
 * singleflight, negative caching and TTL jitter.
 *
 * Singleflight is per worker, like everything else: a worker's table maps a
 * key to its flight (the load in progress). The first caller to miss runs
 * the loader and stores the result; later callers find the flight and wait
 * on its event, each with its own ctx. The flight leaves the table only
 * after the result is stored, so a caller arriving during a slow backend
 * write still joins it instead of starting a second load. If the loading
 * caller's ctx ends (its loader returns MICA_ETIMEDOUT/MICA_ECANCELED), the
 * waiters whose ctx is still live start over rather than inherit a failure
 * that was not theirs.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/list.h"
#include "common/log.h"
#include "mica/cache.h"
#include "mica/sync.h"
#include "store/internal.h"

/* ---- values --------------------------------------------------------------------------- */

int mica_cache_value_new(mica_cache_value_t **out, const void *data, size_t len)
{
    mica_cache_value_t *v = mica__malloc(sizeof(*v) + len + 1);
    if (!v)
        return MICA_ENOMEM;
    v->len = len;
    v->data = (char *)(v + 1);
    if (len)
        memcpy(v->data, data, len);
    v->data[len] = '\0';
    atomic_init(&v->_refs, 1);
    *out = v;
    return 0;
}

mica_cache_value_t *mica_cache_value_ref(mica_cache_value_t *v)
{
    if (v)
        atomic_fetch_add_explicit(&v->_refs, 1, memory_order_relaxed);
    return v;
}

void mica_cache_value_unref(mica_cache_value_t *v)
{
    if (v && atomic_fetch_sub_explicit(&v->_refs, 1, memory_order_acq_rel) == 1)
        mica__free(v);
}

/* ---- the LRU backend ------------------------------------------------------------------ */

#define ENTRY_OVERHEAD 96 /* what an entry costs besides its key and value, roughly */

typedef struct lru_entry {
    mica__hnode_t h;
    mica__list_t link; /* shard->order, most recent last */
    int64_t expires_ms;
    mica_cache_value_t *val; /* NULL: "not found" */
    size_t bytes;
    size_t len;
    char key[];
} lru_entry_t;

typedef struct lru_shard {
    mica__hmap_t map;
    mica__list_t order;
    size_t n, bytes;
} lru_shard_t;

typedef struct lru {
    int nworkers;
    size_t max_entries, max_bytes;
    lru_shard_t **shards;
} lru_t;

static bool entry_eq(const mica__hnode_t *n, const void *key, size_t len)
{
    const lru_entry_t *e = (const lru_entry_t *)n;
    return e->len == len && memcmp(e->key, key, len) == 0;
}

static lru_shard_t *lru_shard(lru_t *l)
{
    int w = mica_worker_id();
    return w >= 0 && w < l->nworkers ? l->shards[w] : NULL;
}

static void lru_drop(lru_shard_t *s, lru_entry_t *e)
{
    mica__hmap_remove(&s->map, &e->h);
    mica__list_remove(&e->link);
    s->n--;
    s->bytes -= e->bytes;
    mica_cache_value_unref(e->val);
    mica__free(e);
}

static lru_entry_t *lru_find(lru_shard_t *s, const char *key)
{
    size_t len = strlen(key);
    return (lru_entry_t *)mica__hmap_find(&s->map, mica__hash(key, len), entry_eq, key, len);
}

static int lru_get(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t **out)
{
    lru_shard_t *s = lru_shard(self);
    if (!s)
        return MICA_EINVAL;
    lru_entry_t *e = lru_find(s, key);
    if (!e)
        return MICA_ENOTFOUND;
    if (mica_now_ms() >= e->expires_ms) {
        lru_drop(s, e);
        return MICA_ENOTFOUND;
    }
    mica__list_remove(&e->link);
    mica__list_push_back(&s->order, &e->link);
    *out = mica_cache_value_ref(e->val);
    return 0;
}

static int lru_set(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t *val,
                   int64_t ttl_ms)
{
    lru_t *l = self;
    lru_shard_t *s = lru_shard(l);
    if (!s)
        return MICA_EINVAL;
    size_t len = strlen(key);
    size_t bytes = ENTRY_OVERHEAD + len + (val ? val->len : 0);
    lru_entry_t *old = lru_find(s, key);
    if (old)
        lru_drop(s, old);
    if (bytes > l->max_bytes)
        return MICA_ELIMIT; /* would evict everything and still not fit */
    while (s->n >= l->max_entries || s->bytes + bytes > l->max_bytes)
        lru_drop(s, mica__list_entry(mica__list_first(&s->order), lru_entry_t, link));
    lru_entry_t *e = mica__malloc(sizeof(*e) + len + 1);
    if (!e)
        return MICA_ENOMEM;
    e->h.hash = mica__hash(key, len);
    e->len = len;
    memcpy(e->key, key, len + 1);
    e->val = mica_cache_value_ref(val);
    e->bytes = bytes;
    e->expires_ms = mica_now_ms() + ttl_ms;
    mica__hmap_insert(&s->map, &e->h);
    mica__list_push_back(&s->order, &e->link);
    s->n++;
    s->bytes += bytes;
    return 0;
}

static int lru_del(void *self, mica_ctx_t *ctx, const char *key)
{
    lru_shard_t *s = lru_shard(self);
    if (!s)
        return MICA_EINVAL;
    lru_entry_t *e = lru_find(s, key);
    if (e)
        lru_drop(s, e);
    return 0;
}

static void lru_free(void *self)
{
    lru_t *l = self;
    for (int w = 0; l->shards && w < l->nworkers; w++) {
        lru_shard_t *s = l->shards[w];
        if (!s)
            continue;
        while (!mica__list_empty(&s->order))
            lru_drop(s, mica__list_entry(mica__list_first(&s->order), lru_entry_t, link));
        mica__hmap_destroy(&s->map);
        mica__free(s);
    }
    mica__free(l->shards);
    mica__free(l);
}

static const mica_cache_backend_ops_t lru_ops = {"lru", lru_get, lru_set, lru_del, lru_free};

int mica_cache_backend_lru(mica_cache_backend_t *out, mica_runtime_t *rt, size_t max_entries,
                           size_t max_bytes)
{
    if (!out || !rt || max_entries == 0 || max_bytes == 0)
        return MICA_EINVAL;
    lru_t *l = mica__calloc(1, sizeof(*l));
    if (!l)
        return MICA_ENOMEM;
    l->nworkers = mica_runtime_workers(rt);
    l->max_entries = max_entries;
    l->max_bytes = max_bytes;
    if (!(l->shards = mica__calloc((size_t)l->nworkers, sizeof(*l->shards)))) {
        lru_free(l);
        return MICA_ENOMEM;
    }
    for (int w = 0; w < l->nworkers; w++) {
        lru_shard_t *s = l->shards[w] = mica__calloc(1, sizeof(*s));
        if (!s) {
            lru_free(l);
            return MICA_ENOMEM;
        }
        mica__hmap_init(&s->map);
        mica__list_init(&s->order);
    }
    *out = (mica_cache_backend_t){&lru_ops, l};
    return 0;
}

/* ---- the Redis backend --------------------------------------------------------------- */

/* Stored values carry a tag byte: 'v' then the value, or 'n' alone for "not found". */
typedef struct rbackend {
    mica_redis_t *r;
    char *prefix;
    size_t plen;
} rbackend_t;

/* prefix + key into buf (or a new allocation if it does not fit; free if != buf). */
static char *rkey(rbackend_t *b, const char *key, char *buf, size_t size)
{
    size_t len = strlen(key);
    char *k = b->plen + len + 1 <= size ? buf : mica__malloc(b->plen + len + 1);
    if (k) {
        memcpy(k, b->prefix, b->plen);
        memcpy(k + b->plen, key, len + 1);
    }
    return k;
}

static int redis_get(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t **out)
{
    rbackend_t *b = self;
    char buf[256], *k = rkey(b, key, buf, sizeof(buf));
    if (!k)
        return MICA_ENOMEM;
    mica_redis_reply_t *rep = NULL;
    int rc = mica_redis_get(b->r, ctx, k, &rep);
    if (k != buf)
        mica__free(k);
    if (rc != 0)
        return rc;
    *out = NULL;
    if (rep->len >= 1 && rep->str[0] == 'v')
        rc = mica_cache_value_new(out, rep->str + 1, rep->len - 1);
    else if (!(rep->len == 1 && rep->str[0] == 'n'))
        rc = MICA_EPROTO; /* not written by us */
    mica_redis_reply_free(rep);
    return rc;
}

static int redis_set(void *self, mica_ctx_t *ctx, const char *key, mica_cache_value_t *val,
                     int64_t ttl_ms)
{
    rbackend_t *b = self;
    char buf[256], *k = rkey(b, key, buf, sizeof(buf));
    size_t len = val ? val->len + 1 : 1;
    char small[512], *v = len <= sizeof(small) ? small : mica__malloc(len);
    int rc = MICA_ENOMEM;
    if (k && v) {
        v[0] = val ? 'v' : 'n';
        if (val)
            memcpy(v + 1, val->data, val->len);
        rc = mica_redis_set(b->r, ctx, k, v, len, ttl_ms > 0 ? ttl_ms : 1, 0);
    }
    if (k && k != buf)
        mica__free(k);
    if (v && v != small)
        mica__free(v);
    return rc;
}

static int redis_del(void *self, mica_ctx_t *ctx, const char *key)
{
    rbackend_t *b = self;
    char buf[256], *k = rkey(b, key, buf, sizeof(buf));
    if (!k)
        return MICA_ENOMEM;
    int rc = mica_redis_del(b->r, ctx, k, NULL);
    if (k != buf)
        mica__free(k);
    return rc;
}

static void redis_free(void *self)
{
    rbackend_t *b = self;
    mica__free(b->prefix);
    mica__free(b);
}

static const mica_cache_backend_ops_t redis_ops = {"redis", redis_get, redis_set, redis_del,
                                                   redis_free};

int mica_cache_backend_redis(mica_cache_backend_t *out, mica_redis_t *r, const char *prefix)
{
    if (!out || !r)
        return MICA_EINVAL;
    rbackend_t *b = mica__calloc(1, sizeof(*b));
    if (!b || !(b->prefix = mica__strdup(prefix ? prefix : "mica:cache:"))) {
        mica__free(b);
        return MICA_ENOMEM;
    }
    b->r = r;
    b->plen = strlen(b->prefix);
    *out = (mica_cache_backend_t){&redis_ops, b};
    return 0;
}

/* ---- the cache -------------------------------------------------------------------------- */

typedef struct flight {
    mica__hnode_t h;
    mica_event_t done;
    int refs; /* the loader and each waiter */
    int rc;
    mica_cache_value_t *val;
    bool in_table;
    size_t len;
    char key[];
} flight_t;

typedef struct cshard {
    mica__hmap_t flights;
    uint64_t rng;
    int64_t err_logged_ms;
    struct {
        mica__counter_t hits, negative_hits, misses, loads, shared, load_errors, backend_errors;
    } st;
} cshard_t;

struct mica_cache {
    mica_cache_backend_t be;
    mica_cache_opts_t o;
    int nworkers;
    cshard_t **shards;
};

static bool flight_eq(const mica__hnode_t *n, const void *key, size_t len)
{
    const flight_t *f = (const flight_t *)n;
    return f->len == len && memcmp(f->key, key, len) == 0;
}

static void flight_unref(flight_t *f)
{
    if (--f->refs > 0)
        return;
    mica_cache_value_unref(f->val);
    mica__free(f);
}

/* ttl spread uniformly over [ttl(1-j), ttl(1+j)]. */
static int64_t jitter(cshard_t *s, int64_t ttl, double j)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    double u = (double)(s->rng >> 11) / 9007199254740992.0; /* [0, 1) */
    int64_t t = (int64_t)((double)ttl * (1.0 - j + 2.0 * j * u) + 0.5);
    return t > 0 ? t : 1;
}

static void backend_error(mica_cache_t *c, cshard_t *s, const char *op, int rc)
{
    mica__count(&s->st.backend_errors, 1);
    int64_t now = mica_now_ms();
    if (now - s->err_logged_ms < 1000)
        return;
    s->err_logged_ms = now;
    mica__log_warn("cache: backend failed, going to the source", "backend", c->be.ops->name, "op",
                   op, "error", mica_err_name(rc));
}

static int is_ctx_err(int rc)
{
    return rc == MICA_ETIMEDOUT || rc == MICA_ECANCELED;
}

int mica_cache_get(mica_cache_t *c, mica_ctx_t *ctx, const char *key, mica_cache_load_fn load,
                   void *arg, mica_cache_value_t **out)
{
    *out = NULL;
    int w = mica_worker_id();
    if (w < 0 || w >= c->nworkers || !key || !load)
        return MICA_EINVAL;
    cshard_t *s = c->shards[w];
    int rc = ctx ? mica_ctx_err(ctx) : 0;
    if (rc != 0)
        return rc;
    mica_cache_value_t *v = NULL;
    rc = c->be.ops->get(c->be.self, ctx, key, &v);
    if (rc == 0) {
        mica__count(v ? &s->st.hits : &s->st.negative_hits, 1);
        *out = v;
        return v ? 0 : MICA_ENOTFOUND;
    }
    if (is_ctx_err(rc) && ctx && mica_ctx_err(ctx))
        return rc;
    if (rc != MICA_ENOTFOUND)
        backend_error(c, s, "get", rc);
    mica__count(&s->st.misses, 1);

    size_t len = strlen(key);
    uint64_t h = mica__hash(key, len);
    for (;;) {
        flight_t *f = (flight_t *)mica__hmap_find(&s->flights, h, flight_eq, key, len);
        if (f) { /* someone on this worker is loading it: wait for that */
            mica__count(&s->st.shared, 1);
            f->refs++;
            rc = mica_event_wait(&f->done, ctx, MICA_NO_DEADLINE);
            if (rc == 0) {
                rc = f->rc;
                v = mica_cache_value_ref(f->val);
            }
            flight_unref(f);
            if (rc != 0 && is_ctx_err(rc) && (!ctx || mica_ctx_err(ctx) == 0))
                continue; /* the loader's caller gave up, not us: try again */
            *out = v;
            return rc;
        }
        if (!(f = mica__calloc(1, sizeof(*f) + len + 1)))
            return MICA_ENOMEM;
        f->h.hash = h;
        f->refs = 1;
        f->len = len;
        memcpy(f->key, key, len + 1);
        mica_event_reset(&f->done);
        mica__hmap_insert(&s->flights, &f->h);
        f->in_table = true;

        mica__count(&s->st.loads, 1);
        v = NULL;
        rc = load(ctx, key, arg, &v);
        if (rc == 0 && !v)
            rc = MICA_EINVAL; /* a loader must hand back a value */
        if (rc == 0 || rc == MICA_ENOTFOUND) {
            int64_t ttl = rc == 0 ? c->o.ttl_ms : c->o.not_found_ttl_ms;
            int src = c->be.ops->set(c->be.self, ctx, key, v, jitter(s, ttl, c->o.ttl_jitter));
            if (src != 0)
                backend_error(c, s, "set", src);
        } else {
            mica__count(&s->st.load_errors, 1);
        }
        f->rc = rc;
        f->val = v; /* the flight's reference; the caller gets its own */
        mica__hmap_remove(&s->flights, &f->h);
        f->in_table = false;
        mica_event_set(&f->done);
        *out = mica_cache_value_ref(v);
        flight_unref(f);
        return rc;
    }
}

int mica_cache_set(mica_cache_t *c, mica_ctx_t *ctx, const char *key, const void *data,
                   size_t len)
{
    int w = mica_worker_id();
    if (w < 0 || w >= c->nworkers || !key)
        return MICA_EINVAL;
    mica_cache_value_t *v;
    int rc = mica_cache_value_new(&v, data, len);
    if (rc != 0)
        return rc;
    rc = c->be.ops->set(c->be.self, ctx, key, v, jitter(c->shards[w], c->o.ttl_ms, c->o.ttl_jitter));
    mica_cache_value_unref(v);
    return rc;
}

int mica_cache_del(mica_cache_t *c, mica_ctx_t *ctx, const char *key)
{
    return key ? c->be.ops->del(c->be.self, ctx, key) : MICA_EINVAL;
}

int mica_cache_new(mica_cache_t **out, mica_runtime_t *rt, mica_cache_backend_t backend,
                   const mica_cache_opts_t *opts)
{
    if (!out || !rt || !backend.ops) {
        if (backend.ops)
            backend.ops->free(backend.self);
        return MICA_EINVAL;
    }
    mica_cache_t *c = mica__calloc(1, sizeof(*c));
    if (!c) {
        backend.ops->free(backend.self);
        return MICA_ENOMEM;
    }
    c->be = backend;
    if (opts)
        c->o = *opts;
    if (c->o.ttl_ms <= 0)
        c->o.ttl_ms = 60000;
    if (c->o.not_found_ttl_ms <= 0)
        c->o.not_found_ttl_ms = 10000;
    if (!(c->o.ttl_jitter > 0))
        c->o.ttl_jitter = 0.05;
    if (c->o.ttl_jitter > 0.5) {
        mica_cache_free(c);
        return MICA_EINVAL;
    }
    c->nworkers = mica_runtime_workers(rt);
    if (!(c->shards = mica__calloc((size_t)c->nworkers, sizeof(*c->shards)))) {
        mica_cache_free(c);
        return MICA_ENOMEM;
    }
    for (int w = 0; w < c->nworkers; w++) {
        cshard_t *s = c->shards[w] = mica__calloc(1, sizeof(*s));
        if (!s) {
            mica_cache_free(c);
            return MICA_ENOMEM;
        }
        mica__hmap_init(&s->flights);
        s->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(w + 1) ^ (uint64_t)(uintptr_t)c;
        if (!s->rng)
            s->rng = 1;
    }
    *out = c;
    return 0;
}

void mica_cache_free(mica_cache_t *c)
{
    if (!c)
        return;
    mica__store_unexport(c);
    for (int w = 0; c->shards && w < c->nworkers; w++) {
        if (c->shards[w])
            mica__hmap_destroy(&c->shards[w]->flights);
        mica__free(c->shards[w]);
    }
    mica__free(c->shards);
    c->be.ops->free(c->be.self);
    mica__free(c);
}

void mica_cache_stats(const mica_cache_t *c, mica_cache_stats_t *st)
{
    *st = (mica_cache_stats_t){0};
    for (int w = 0; w < c->nworkers; w++) {
        const cshard_t *s = c->shards[w];
        st->hits += mica__counter_get(&s->st.hits);
        st->negative_hits += mica__counter_get(&s->st.negative_hits);
        st->misses += mica__counter_get(&s->st.misses);
        st->loads += mica__counter_get(&s->st.loads);
        st->shared += mica__counter_get(&s->st.shared);
        st->load_errors += mica__counter_get(&s->st.load_errors);
        st->backend_errors += mica__counter_get(&s->st.backend_errors);
    }
}

/* SPDX-License-Identifier: MIT */
/*
 * The shared rate limiter: one token bucket per key, kept in a Redis hash
 * and updated by a Lua script that reads the time from Redis itself
 * (TIME), so every instance takes tokens from the same bucket on the same
 * clock, whatever their own clocks say.
 *
 * When Redis fails or answers slower than timeout_ms the limiter must still
 * decide, at once: each worker then falls back to local buckets (rate
 * local_rate / workers, an LRU of local_keys keys) and says so in the log,
 * once per outage. While down, one call at a time probes Redis again (at
 * most every PROBE_MS); the others decide locally without waiting.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/list.h"
#include "common/log.h"
#include "store/internal.h"

#define PROBE_MS 200

/* KEYS[1]: the bucket; ARGV: rate per second, burst, tokens wanted. Returns 1 or 0. */
static const char bucket_lua[] =
    "local now = redis.call('TIME')\n"
    "local t = tonumber(now[1]) * 1000000 + tonumber(now[2])\n"
    "local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local s = redis.call('HMGET', KEYS[1], 't', 'v')\n"
    "local tokens, last = burst, t\n"
    "if s[1] then last = tonumber(s[1]); tokens = tonumber(s[2]) end\n"
    "if t > last then tokens = math.min(burst, tokens + (t - last) * rate / 1e6) else t = last end\n"
    "local ok = 0\n"
    "if tokens >= n then tokens = tokens - n; ok = 1 end\n"
    "redis.call('HSET', KEYS[1], 't', t, 'v', tokens)\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)\n"
    "return ok\n";

typedef struct lkey {
    mica__hnode_t h;
    mica__list_t lru;
    mica__bucket_t b;
    size_t len;
    char key[];
} lkey_t;

/* One worker's share: its local buckets, its view of Redis, its counters. */
typedef struct lshard {
    mica__hmap_t map;
    mica__list_t lru; /* most recent last */
    size_t n;
    bool down;        /* this worker saw Redis fail and has not seen it answer since */
    bool probing;     /* a call is checking Redis now */
    int64_t next_probe;
    struct {
        mica__counter_t allowed, denied, local, outages;
    } st;
} lshard_t;

struct mica_redis_limiter {
    mica_redis_t *r;
    mica_redis_script_t *script;
    mica_redis_limiter_opts_t o;
    char *prefix;
    char rate[32], burst[32];
    double local_rate, local_burst; /* per worker */
    int nworkers;
    lshard_t **shards;
    atomic_int down; /* any worker in an outage: logged on the first, and on recovery */
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool key_eq(const mica__hnode_t *n, const void *key, size_t len)
{
    const lkey_t *k = (const lkey_t *)n;
    return k->len == len && memcmp(k->key, key, len) == 0;
}

/* The local decision: the key's bucket on this worker (created, or the LRU's oldest reused). */
static bool local_take(mica_redis_limiter_t *l, lshard_t *s, const char *key, int n)
{
    size_t len = strlen(key);
    uint64_t h = mica__hash(key, len);
    lkey_t *k = (lkey_t *)mica__hmap_find(&s->map, h, key_eq, key, len);
    if (k) {
        mica__list_remove(&k->lru);
    } else {
        if (s->n >= l->o.local_keys) { /* forget the least recently used key */
            lkey_t *old = mica__list_entry(mica__list_pop_front(&s->lru), lkey_t, lru);
            mica__hmap_remove(&s->map, &old->h);
            mica__free(old);
            s->n--;
        }
        if (!(k = mica__calloc(1, sizeof(*k) + len + 1)))
            return false; /* no memory: deny, the safe side */
        k->h.hash = h;
        k->len = len;
        memcpy(k->key, key, len);
        mica__hmap_insert(&s->map, &k->h);
        s->n++;
    }
    mica__list_push_back(&s->lru, &k->lru);
    return mica__bucket_take(&k->b, l->local_rate, l->local_burst, n, now_us());
}

static void went_down(mica_redis_limiter_t *l, lshard_t *s, int rc)
{
    s->next_probe = mica_now_ms() + PROBE_MS;
    if (s->down)
        return;
    s->down = true;
    mica__count(&s->st.outages, 1);
    if (atomic_exchange(&l->down, 1) == 0)
        mica__log_warn("redis limiter: Redis unavailable, deciding locally", "error",
                       mica_err_name(rc), "detail", mica_redis_errmsg(l->r), "prefix", l->prefix);
}

static void came_back(mica_redis_limiter_t *l, lshard_t *s)
{
    if (!s->down)
        return;
    s->down = false;
    if (atomic_exchange(&l->down, 0) == 1)
        mica__log_info("redis limiter: Redis is back, deciding through it again", "prefix",
                       l->prefix);
}

int mica_redis_limiter_allow(mica_redis_limiter_t *l, mica_ctx_t *ctx, const char *key, int n)
{
    int w = mica_worker_id();
    if (w < 0 || w >= l->nworkers || !key || n < 1)
        return MICA_EINVAL;
    lshard_t *s = l->shards[w];
    int rc = ctx ? mica_ctx_err(ctx) : 0;
    if (rc != 0)
        return rc;
    bool probe = !s->down || (!s->probing && mica_now_ms() >= s->next_probe);
    if (probe) {
        char kbuf[256], nbuf[16];
        char *k = kbuf;
        size_t plen = strlen(l->prefix), klen = strlen(key);
        if (plen + klen + 1 > sizeof(kbuf) && !(k = mica__malloc(plen + klen + 1)))
            return MICA_ENOMEM;
        memcpy(k, l->prefix, plen);
        memcpy(k + plen, key, klen + 1);
        snprintf(nbuf, sizeof(nbuf), "%d", n);
        const char *keys[] = {k}, *args[] = {l->rate, l->burst, nbuf};
        mica_ctx_t *c = NULL;
        mica_redis_reply_t *rep = NULL;
        s->probing = s->down;
        rc = mica_ctx_with_timeout(ctx, l->o.timeout_ms, &c);
        if (rc == 0)
            rc = mica_redis_eval(l->r, c, l->script, 1, keys, 3, args, &rep);
        mica_ctx_free(c);
        s->probing = false;
        if (k != kbuf)
            mica__free(k);
        if (rc == 0 && rep->type == MICA_REDIS_INTEGER) {
            bool ok = rep->integer == 1;
            mica_redis_reply_free(rep);
            came_back(l, s);
            mica__count(ok ? &s->st.allowed : &s->st.denied, 1);
            return ok ? 0 : MICA_EOVERLOAD;
        }
        mica_redis_reply_free(rep);
        int cerr = ctx ? mica_ctx_err(ctx) : 0;
        if (cerr != 0)
            return cerr; /* the caller gave up: not Redis's fault */
        went_down(l, s, rc == 0 ? MICA_EPROTO : rc);
    }
    bool ok = local_take(l, s, key, n);
    mica__count(&s->st.local, 1);
    mica__count(ok ? &s->st.allowed : &s->st.denied, 1);
    return ok ? 0 : MICA_EOVERLOAD;
}

int mica_redis_limiter_new(mica_redis_limiter_t **out, mica_redis_t *r,
                           const mica_redis_limiter_opts_t *opts)
{
    if (!out || !r || !opts || !(opts->rate > 0) || opts->burst < 0 || opts->local_rate < 0)
        return MICA_EINVAL;
    mica_redis_limiter_t *l = mica__calloc(1, sizeof(*l));
    if (!l)
        return MICA_ENOMEM;
    l->r = r;
    l->o = *opts;
    if (l->o.burst == 0)
        l->o.burst = l->o.rate;
    if (l->o.burst < 1)
        l->o.burst = 1;
    if (l->o.timeout_ms <= 0)
        l->o.timeout_ms = 100;
    if (l->o.local_rate == 0)
        l->o.local_rate = l->o.rate;
    if (l->o.local_keys == 0)
        l->o.local_keys = 10000;
    l->nworkers = mica__redis_workers(r);
    l->local_rate = l->o.local_rate / l->nworkers;
    l->local_burst = l->o.burst / l->nworkers < 1 ? 1 : l->o.burst / l->nworkers;
    snprintf(l->rate, sizeof(l->rate), "%.17g", l->o.rate);
    snprintf(l->burst, sizeof(l->burst), "%.17g", l->o.burst);
    l->prefix = mica__strdup(l->o.prefix ? l->o.prefix : "mica:rl:");
    l->shards = mica__calloc((size_t)l->nworkers, sizeof(*l->shards));
    if (!l->prefix || !l->shards || mica_redis_script_new(&l->script, bucket_lua) != 0) {
        mica_redis_limiter_free(l);
        return MICA_ENOMEM;
    }
    l->o.prefix = l->prefix;
    for (int w = 0; w < l->nworkers; w++) {
        if (!(l->shards[w] = mica__calloc(1, sizeof(lshard_t)))) {
            mica_redis_limiter_free(l);
            return MICA_ENOMEM;
        }
        mica__hmap_init(&l->shards[w]->map);
        mica__list_init(&l->shards[w]->lru);
    }
    *out = l;
    return 0;
}

void mica_redis_limiter_free(mica_redis_limiter_t *l)
{
    if (!l)
        return;
    for (int w = 0; l->shards && w < l->nworkers; w++) {
        lshard_t *s = l->shards[w];
        if (!s)
            continue;
        mica__list_t *n;
        while ((n = mica__list_pop_front(&s->lru)))
            mica__free(mica__list_entry(n, lkey_t, lru));
        mica__hmap_destroy(&s->map);
        mica__free(s);
    }
    mica__free(l->shards);
    mica_redis_script_free(l->script);
    mica__free(l->prefix);
    mica__free(l);
}

void mica_redis_limiter_stats(const mica_redis_limiter_t *l, mica_redis_limiter_stats_t *st)
{
    *st = (mica_redis_limiter_stats_t){0};
    for (int w = 0; w < l->nworkers; w++) {
        const lshard_t *s = l->shards[w];
        st->allowed += mica__counter_get(&s->st.allowed);
        st->denied += mica__counter_get(&s->st.denied);
        st->local += mica__counter_get(&s->st.local);
        st->outages += mica__counter_get(&s->st.outages);
    }
}

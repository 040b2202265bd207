/* SPDX-License-Identifier: MIT */
/*
 * Small pieces the resilience layer shares: seeds and hashing, the rolling
 * window (fixed buckets recycled as time moves, with running totals so a
 * read is O(1)), and a string-keyed open-addressing table.
 */
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "resilience/internal.h"

uint64_t mica__rand_seed(const void *salt)
{
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 32 ^ (uint64_t)(uintptr_t)salt ^
                 atomic_fetch_add_explicit(&counter, 0x9E3779B97F4A7C15ull, memory_order_relaxed);
    /* splitmix64's finalizer, so nearby inputs give unrelated seeds */
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x ? x : 1;
}

uint64_t mica__hash64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* ---- rolling window ------------------------------------------------------------- */

int mica__window_init(mica__window_t *w, int64_t window_ms, int buckets)
{
    memset(w, 0, sizeof(*w));
    w->n = buckets;
    w->bucket_ms = window_ms / buckets > 0 ? window_ms / buckets : 1;
    w->buckets = mica__calloc((size_t)buckets, sizeof(*w->buckets));
    return w->buckets ? 0 : MICA_ENOMEM;
}

void mica__window_destroy(mica__window_t *w)
{
    mica__free(w->buckets);
    w->buckets = NULL;
}

void mica__window_clear(mica__window_t *w)
{
    memset(w->buckets, 0, (size_t)w->n * sizeof(*w->buckets));
    w->a = w->b = w->c = 0;
}

bool mica__window_advance(mica__window_t *w, int64_t now_ms)
{
    int64_t e = now_ms / w->bucket_ms;
    if (e <= w->epoch)
        return false;
    if (e - w->epoch >= w->n) {
        mica__window_clear(w);
    } else {
        for (int64_t k = w->epoch + 1; k <= e; k++) {
            mica__wbucket_t *b = &w->buckets[k % w->n];
            w->a -= b->a;
            w->b -= b->b;
            w->c -= b->c;
            *b = (mica__wbucket_t){0};
        }
    }
    w->epoch = e;
    return true;
}

void mica__window_add(mica__window_t *w, uint32_t a, uint32_t b, uint32_t c)
{
    mica__wbucket_t *k = &w->buckets[w->epoch % w->n];
    k->a += a;
    k->b += b;
    k->c += c;
    w->a += a;
    w->b += b;
    w->c += c;
}

/* ---- string-keyed tables ---------------------------------------------------------- */

void *mica__table_get(const mica__table_t *t, const char *key)
{
    if (!t->n)
        return NULL;
    uint64_t h = mica__hash64(key, strlen(key));
    for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        const struct mica__table_slot *s = &t->slots[i];
        if (!s->key)
            return NULL;
        if (s->hash == h && strcmp(s->key, key) == 0)
            return s->value;
    }
}

static void place(struct mica__table_slot *slots, size_t cap, struct mica__table_slot s)
{
    size_t i = s.hash & (cap - 1);
    while (slots[i].key)
        i = (i + 1) & (cap - 1);
    slots[i] = s;
}

int mica__table_put(mica__table_t *t, const char *key, void *value)
{
    if ((t->n + 1) * 2 > t->cap) { /* at most half full */
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct mica__table_slot *slots = mica__calloc(cap, sizeof(*slots));
        if (!slots)
            return MICA_ENOMEM;
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i].key)
                place(slots, cap, t->slots[i]);
        mica__free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    char *k = mica__strdup(key);
    if (!k)
        return MICA_ENOMEM;
    place(t->slots, t->cap, (struct mica__table_slot){k, mica__hash64(key, strlen(key)), value});
    t->n++;
    return 0;
}

void mica__table_destroy(mica__table_t *t)
{
    for (size_t i = 0; i < t->cap; i++)
        mica__free(t->slots[i].key);
    mica__free(t->slots);
    memset(t, 0, sizeof(*t));
}

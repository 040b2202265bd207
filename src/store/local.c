/* SPDX-License-Identifier: MIT */
/*
 * In-process pieces of the store layer: the chained hash table behind the
 * LRU cache, singleflight and the limiter's fallback, and the local token
 * bucket the shared limiter falls back to when Redis is down.
 */
#include <string.h>

#include "common/alloc.h"
#include "mica/error.h"
#include "store/internal.h"

void mica__hmap_init(mica__hmap_t *m)
{
    *m = (mica__hmap_t){0};
}

void mica__hmap_destroy(mica__hmap_t *m)
{
    mica__free(m->slots);
    *m = (mica__hmap_t){0};
}

mica__hnode_t *mica__hmap_find(const mica__hmap_t *m, uint64_t hash, mica__hmap_eq_fn eq,
                               const void *key, size_t len)
{
    if (!m->nslots)
        return NULL;
    for (mica__hnode_t *n = m->slots[hash & (m->nslots - 1)]; n; n = n->next)
        if (n->hash == hash && eq(n, key, len))
            return n;
    return NULL;
}

static int grow(mica__hmap_t *m)
{
    size_t nslots = m->nslots ? m->nslots * 2 : 16;
    mica__hnode_t **slots = mica__calloc(nslots, sizeof(*slots));
    if (!slots)
        return MICA_ENOMEM;
    for (size_t i = 0; i < m->nslots; i++) {
        mica__hnode_t *n = m->slots[i];
        while (n) {
            mica__hnode_t *next = n->next;
            size_t j = n->hash & (nslots - 1);
            n->next = slots[j];
            slots[j] = n;
            n = next;
        }
    }
    mica__free(m->slots);
    m->slots = slots;
    m->nslots = nslots;
    return 0;
}

int mica__hmap_insert(mica__hmap_t *m, mica__hnode_t *n)
{
    int rc = 0;
    if (m->n >= m->nslots && (rc = grow(m)) != 0 && !m->nslots)
        return rc; /* no slots at all */
    size_t j = n->hash & (m->nslots - 1);
    n->next = m->slots[j];
    m->slots[j] = n;
    m->n++;
    return 0;
}

void mica__hmap_remove(mica__hmap_t *m, mica__hnode_t *n)
{
    mica__hnode_t **pp = &m->slots[n->hash & (m->nslots - 1)];
    for (; *pp; pp = &(*pp)->next)
        if (*pp == n) {
            *pp = n->next;
            m->n--;
            return;
        }
}

bool mica__bucket_take(mica__bucket_t *b, double rate, double burst, double n, int64_t now_us)
{
    if (b->last_us == 0) {
        b->tokens = burst;
        b->last_us = now_us;
    }
    if (now_us > b->last_us) {
        b->tokens += (double)(now_us - b->last_us) * rate / 1e6;
        if (b->tokens > burst)
            b->tokens = burst;
        b->last_us = now_us;
    }
    if (b->tokens < n)
        return false;
    b->tokens -= n;
    return true;
}

/* SPDX-License-Identifier: MIT */
/* Request arena; see arena.h. */
#include <stdint.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "common/arena.h"

#define BLOCK_BYTES 4096

struct mica__arena_chunk {
    mica__arena_chunk_t *next;
    max_align_t data[];
};

void *mica__arena_alloc(mica__arena_t *a, size_t size)
{
    size_t need = (size + 15) & ~(size_t)15;
    if (need < size)
        return NULL;
    if (!a->block && need <= BLOCK_BYTES / 2) {
        a->block = mica__malloc(BLOCK_BYTES);
        if (!a->block)
            return NULL;
        a->cap = BLOCK_BYTES;
        a->used = 0;
    }
    if (a->block && need <= a->cap - a->used) {
        void *p = a->block + a->used;
        a->used += need;
        return p;
    }
    if (need > SIZE_MAX - sizeof(mica__arena_chunk_t))
        return NULL;
    mica__arena_chunk_t *c = mica__malloc(sizeof(*c) + need);
    if (!c)
        return NULL;
    c->next = a->big;
    a->big = c;
    return c->data;
}

void mica__arena_reset(mica__arena_t *a)
{
    while (a->big) {
        mica__arena_chunk_t *c = a->big;
        a->big = c->next;
        mica__free(c);
    }
    a->used = 0;
}

void mica__arena_destroy(mica__arena_t *a)
{
    mica__arena_reset(a);
    mica__free(a->block);
    a->block = NULL;
    a->cap = 0;
}

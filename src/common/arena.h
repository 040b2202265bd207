/* SPDX-License-Identifier: MIT */
/*
 * Request arena: a bump allocator over one reusable block, with oversized
 * allocations chained and freed on reset. Everything a request allocates
 * goes away in one step when the request ends (h2o's pool, lwan's coro_malloc).
 */
#ifndef MICA_COMMON_ARENA_H
#define MICA_COMMON_ARENA_H

#include <stddef.h>

typedef struct mica__arena_chunk mica__arena_chunk_t;

typedef struct mica__arena {
    char *block; /* reused across resets; allocated on first use */
    size_t used, cap;
    mica__arena_chunk_t *big; /* chained allocations that did not fit */
} mica__arena_t;

/* Returns `size` bytes aligned to 16, or NULL when memory runs out. */
void *mica__arena_alloc(mica__arena_t *a, size_t size);
/* Frees the chained allocations and empties the block (kept for reuse). */
void mica__arena_reset(mica__arena_t *a);
/* Frees everything. */
void mica__arena_destroy(mica__arena_t *a);

#endif /* MICA_COMMON_ARENA_H */

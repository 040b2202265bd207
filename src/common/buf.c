/* SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <string.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "mica/error.h"

void mica__buf_init(mica__buf_t *b, size_t max)
{
    *b = (mica__buf_t){.max = max};
}

void mica__buf_free(mica__buf_t *b)
{
    mica__free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

void mica__buf_reset(mica__buf_t *b)
{
    b->off = b->len = 0;
}

char *mica__buf_reserve(mica__buf_t *b, size_t n, int *err)
{
    size_t used = b->len - b->off;
    if (n > b->max || used > b->max - n) {
        *err = MICA_ELIMIT;
        return NULL;
    }
    if (n <= b->cap - b->len)
        return b->data + b->len;
    if (b->off) { /* compact first: the room may be at the front */
        memmove(b->data, b->data + b->off, used);
        b->off = 0;
        b->len = used;
        if (n <= b->cap - b->len)
            return b->data + b->len;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < used + n)
        cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    if (cap > b->max)
        cap = b->max;
    char *d = mica__realloc(b->data, cap);
    if (!d) {
        *err = MICA_ENOMEM;
        return NULL;
    }
    b->data = d;
    b->cap = cap;
    return b->data + b->len;
}

void mica__buf_commit(mica__buf_t *b, size_t n)
{
    b->len += n;
}

int mica__buf_append(mica__buf_t *b, const void *p, size_t n)
{
    int err = 0;
    char *dst = mica__buf_reserve(b, n, &err);
    if (!dst)
        return n ? err : 0;
    if (n)
        memcpy(dst, p, n);
    b->len += n;
    return 0;
}

void mica__buf_consume(mica__buf_t *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"

static atomic_bool armed;
static atomic_long countdown; /* allocations left before the failing one */
static atomic_long counted;   /* allocations since mica__alloc_fail_nth() */

/* True when this allocation is the one to fail. */
static inline int injected(void)
{
    if (!atomic_load_explicit(&armed, memory_order_relaxed))
        return 0;
    atomic_fetch_add_explicit(&counted, 1, memory_order_relaxed);
    return atomic_fetch_sub_explicit(&countdown, 1, memory_order_relaxed) == 1;
}

void *mica__malloc(size_t n)
{
    return injected() ? NULL : malloc(n);
}

void *mica__calloc(size_t count, size_t size)
{
    return injected() ? NULL : calloc(count, size);
}

void *mica__realloc(void *p, size_t n)
{
    return injected() ? NULL : realloc(p, n);
}

void mica__free(void *p)
{
    free(p);
}

char *mica__strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = mica__malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

char *mica__strdup(const char *s)
{
    return mica__strndup(s, strlen(s));
}

char *mica__aprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *d = mica__malloc((size_t)n + 1);
    if (!d)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}

void mica__alloc_fail_nth(long n)
{
    atomic_store(&counted, 0);
    atomic_store(&countdown, n > 0 ? n : 0);
    atomic_store(&armed, n > 0);
}

long mica__alloc_count(void)
{
    return atomic_load(&counted);
}

/* SPDX-License-Identifier: MIT */
/*
 * Every allocation mica makes goes through these (and nghttp2's and
 * protobuf-c's allocator hooks point at them), so a test can make the Nth
 * allocation from now fail and check that each failure becomes an error
 * status or a closed connection -- never a crash or a leak. Disarmed, the
 * cost is one relaxed atomic load per allocation.
 */
#ifndef MICA_COMMON_ALLOC_H
#define MICA_COMMON_ALLOC_H

#include <stddef.h>

void *mica__malloc(size_t n);
void *mica__calloc(size_t count, size_t size);
void *mica__realloc(void *p, size_t n);
void mica__free(void *p);
/* strdup/strndup through mica__malloc. */
char *mica__strdup(const char *s);
char *mica__strndup(const char *s, size_t n);
/* asprintf through mica__malloc: returns the string or NULL. */
char *mica__aprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Fault injection: the `n`th mica allocation from now (1: the next one), on
 * any thread, returns NULL; n <= 0 disarms. mica__alloc_count() tells how
 * many allocations were made since the last call, so a sweep knows when it
 * has covered every allocation a scenario makes.
 */
void mica__alloc_fail_nth(long n);
long mica__alloc_count(void);

#endif /* MICA_COMMON_ALLOC_H */

/* SPDX-License-Identifier: MIT */
/*
 * What the files of include/mica/limit.h share (limit_*.c, shed.c,
 * deadline.c): counters striped per worker, the monotonic clock, and
 * answering a refused request in its own protocol (an HTTP status, or a gRPC
 * status when the request is a gRPC call). Named apart from the rest of the
 * resilience layer's internals (balancers, breakers, retries).
 */
#ifndef MICA_RESILIENCE_LIMIT_INTERNAL_H
#define MICA_RESILIENCE_LIMIT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "common/alloc.h"
#include "mica/limit.h"

/*
 * Counters are striped: worker w adds to stripe w % MICA__STRIPES, each on a
 * cache line of its own, so counting takes no shared line on the request
 * path (only workers w and w + 64 share one). Readers sum the stripes.
 */
#define MICA__STRIPES 64

static inline unsigned mica__stripe(void)
{
    int w = mica_worker_id();
    return w < 0 ? 0 : (unsigned)w % MICA__STRIPES;
}

static inline void mica__add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline uint64_t mica__get(const _Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Zeroed memory of `size` bytes starting on a cache line; *base is what to mica__free(). */
static inline void *mica__calloc_lines(size_t size, void **base)
{
    char *p = mica__calloc(1, size + 63);
    *base = p;
    return p ? p + ((64 - ((uintptr_t)p & 63)) & 63) : NULL;
}

/* ceil() and round() for non-negative doubles within int64_t, without libm. */
static inline int64_t mica__ceil(double x)
{
    int64_t i = (int64_t)x;
    return (double)i < x ? i + 1 : i;
}

static inline int64_t mica__round(double x)
{
    return (int64_t)(x + 0.5);
}

/* CLOCK_MONOTONIC in ns (vDSO: no system call). */
static inline int64_t mica__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Whether `req` is a gRPC call (HTTP/2, content-type application/grpc...). */
bool mica__is_grpc(mica_http_req_t *req);

/*
 * Answers `req` as refused: a gRPC call gets a trailers-only response with
 * `grpc_code` and `msg` (and `pushback_ms` >= 0 as grpc-retry-pushback-ms),
 * anything else `http_status` with {"error": msg}. Returns 0 or an error of
 * the response calls.
 */
int mica__refuse(mica_http_req_t *req, mica_http_resp_t *resp, int http_status, int grpc_code,
                 const char *msg, int64_t pushback_ms);

/* Takes n from `l` for `key` of class `by` (classes never share a budget). */
int mica__limiter_take_class(mica_limiter_t *l, int by, const void *key, size_t len, uint32_t n,
                             int64_t *retry_after_us);
/* Counts a refusal by a rule of class `by`. */
void mica__limiter_count_rule(mica_limiter_t *l, int by);
/* A rule's memory, owned by the limiter (freed with it); NULL when 8 are taken or no memory. */
void *mica__limiter_rule_slot(mica_limiter_t *l, size_t size, int *err);

/* Tests: makes every worker assume CPU demand `permille` from its next sample on (-1: measure). */
void mica__shed_force_cpu(mica_shed_t *sh, int permille);

#endif /* MICA_RESILIENCE_LIMIT_INTERNAL_H */

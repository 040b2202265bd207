/* SPDX-License-Identifier: MIT */
/*
 * Balancers: pickers (include/mica/resolver.h's mica_picker_ops_t) for any
 * client with that seam, each with optional per-endpoint circuit breakers
 * and counters readable from any thread.
 *
 *     mica_balancer_t *lb;
 *     mica_balancer_new(&lb, rt, NULL);            // per-endpoint SRE throttles
 *     mica_grpc_client_opts_t o = {.picker = &mica_balancer_p2c, .picker_conf = lb};
 *     mica_grpc_client_new(&c, rt, "dns:///users:50051", &o);
 *
 * Like every picker, a balancer keeps one state per worker and picks from
 * that worker's numbers alone, with no lock and no shared line. So "least
 * outstanding requests" means the fewest of *this worker's* calls: with W
 * workers each sees about 1/W of an endpoint's load, which evens out when
 * workers carry similar traffic, and is blind to other processes' calls.
 *
 * An endpoint is skipped while the client backs off from it (it refused a
 * connection) or while its breaker refuses calls; when every endpoint's
 * breaker refuses, the pick fails and the call fails UNAVAILABLE at once.
 */
#ifndef MICA_BALANCER_H
#define MICA_BALANCER_H

#include <stdint.h>

#include "mica/resilience.h"
#include "mica/resolver.h"

/** Round robin over the usable endpoints, weights ignored. */
MICA_API extern const mica_picker_ops_t mica_balancer_round_robin;
/** Smooth weighted round robin (nginx's): endpoint i gets weight_i / sum of the picks, evenly
 * spread. */
MICA_API extern const mica_picker_ops_t mica_balancer_weighted;
/** Least outstanding requests: the fewest calls in flight per unit of weight, ties rotated. */
MICA_API extern const mica_picker_ops_t mica_balancer_least_request;
/** Uniformly random. */
MICA_API extern const mica_picker_ops_t mica_balancer_random;
/**
 * Power of two choices: of two random endpoints, the lower EWMA latency x
 * (in-flight + 1); latencies within 1.5x of each other, or stale, count as
 * equal and the shorter queue wins.
 */
MICA_API extern const mica_picker_ops_t mica_balancer_p2c;
/**
 * Consistent hashing on a ring: a call's key (mica_call_policy_t.hash_key)
 * always lands on the same endpoint while the list is unchanged; removing
 * one of N endpoints moves only its keys (about 1/N). No key: random.
 */
MICA_API extern const mica_picker_ops_t mica_balancer_ring_hash;

typedef struct mica_balancer mica_balancer_t;

/* Balancer settings; 0 picks the default shown. */
typedef struct mica_balancer_opts {
    mica_breaker_opts_t breaker; /* per endpoint and worker (kind NONE: none): SRE, and open
                                    after 5 consecutive failures */
    uint32_t failure_codes; /* done() codes counted as failures: MICA_RESILIENCE_GRPC_FAILURES */
    int64_t p2c_decay_ms;   /* p2c: a latency estimate this old is stale (the next sample
                               replaces it): 1000 */
    int64_t p2c_penalty_ms; /* p2c: a failed call counts as at least this slow: 250 */
    uint32_t ring_points;   /* ring hash: points per unit of weight: 256 (fewer when the
                               ring would pass 2^20 points) */
} mica_balancer_opts_t;

/**
 * Creates the settings and counters behind the balancers of clients on
 * `rt` (pass it as the client's picker_conf; a NULL picker_conf means
 * defaults and no counters). `opts` is copied (NULL: defaults). Returns 0,
 * MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_balancer_new(mica_balancer_t **out, mica_runtime_t *rt,
                               const mica_balancer_opts_t *opts);

/** Frees `b` after the clients that use it. NULL is a no-op. */
MICA_API void mica_balancer_free(mica_balancer_t *b);

/* One endpoint's numbers, summed over the workers. */
typedef struct mica_balancer_endpoint_stats {
    uint64_t picks;               /* times it was chosen */
    uint64_t calls, failures;     /* calls ended on it, and those counted as failures */
    uint32_t latency_ewma_us;     /* p2c's estimate (the largest of the workers'), else 0 */
    mica_breaker_stats_t breaker; /* summed; state: the worst worker's */
} mica_balancer_endpoint_stats_t;

/**
 * Fills `out` with endpoint `addr`'s numbers ("127.0.0.1:50051", as the
 * resolver lists it) while it is in the list. Any thread. Returns 0 or
 * MICA_ENOTFOUND.
 */
MICA_API int mica_balancer_endpoint_stats(mica_balancer_t *b, const char *addr,
                                          mica_balancer_endpoint_stats_t *out);

#endif /* MICA_BALANCER_H */

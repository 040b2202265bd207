/* SPDX-License-Identifier: MIT */
/*
 * Endpoint health for clients: active checks, passive outlier ejection,
 * and a picker that routes around what they take out, zone first.
 *
 * A mica_health_t follows one target's endpoints (the same target its
 * client calls) and keeps a verdict per endpoint, shared by every worker:
 *
 *   - active checks, per endpoint, every interval_ms (+- jitter): an HTTP
 *     GET expecting 2xx (mica's HTTP client), a grpc.health.v1 Check
 *     expecting SERVING (mica's gRPC client), or a TCP connect. `fall`
 *     failures in a row take the endpoint out, `rise` passes bring it back
 *     (haproxy's defaults: every 2 s, rise 2, fall 3);
 *   - passive outlier ejection from real calls (Envoy's): an endpoint whose
 *     calls end in `consecutive_errors` gateway errors in a row (UNAVAILABLE:
 *     HTTP 502/503/504, connections lost mid-call; a refused connect puts the
 *     endpoint in the client's own back-off, which the picker skips) is ejected for
 *     base_ejection_ms x the times it was ejected, never more than
 *     max_ejection_pct of the endpoints at once (but at least one).
 *
 * mica_picker_failover, given as a client's picker with a
 * mica_failover_conf_t, skips what the verdicts took out, prefers the
 * caller's zone and spills to other zones as the local one loses healthy
 * endpoints, and ignores health altogether below the panic threshold
 * (fewer than panic_threshold_pct healthy: better to try them all):
 *
 *     mica_failover_conf_t fo = {.zone = "eu-1a"};
 *     mica_grpc_client_opts_t o = {.picker = &mica_picker_failover, .picker_conf = &fo};
 *     mica_grpc_client_new(&users, rt, "etcd:///user", &o);
 *     mica_health_opts_t ho = {.kind = MICA_HEALTH_GRPC};
 *     mica_health_new(&fo.health, rt, "etcd:///user", &ho);   // before run, too
 */
#ifndef MICA_HEALTH_H
#define MICA_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "mica/error.h"
#include "mica/resolver.h"
#include "mica/runtime.h"

typedef struct mica_health mica_health_t;

/* What an active check does. */
typedef enum mica_health_kind {
    MICA_HEALTH_NONE, /* no active checks: passive ejection only */
    MICA_HEALTH_TCP,  /* a TCP connect */
    MICA_HEALTH_HTTP, /* GET http_path: 2xx passes */
    MICA_HEALTH_GRPC, /* grpc.health.v1.Health/Check of grpc_service: SERVING passes */
} mica_health_kind_t;

/* Settings of mica_health_new(); 0 (NULL) picks the default shown, -1 turns a number off. */
typedef struct mica_health_opts {
    mica_health_kind_t kind;  /* active check: NONE */
    const char *http_path;    /* HTTP: "/health" */
    const char *grpc_service; /* GRPC: the service asked about: "" (the server as a whole) */
    int interval_ms;          /* between two checks of an endpoint: 2000 */
    int timeout_ms;           /* one check: 1000 */
    int jitter_pct;           /* each interval is +- this share, spreading checks: 10 */
    int rise;                 /* passes in a row that bring an endpoint back: 2 */
    int fall;                 /* failures in a row that take it out: 3 */
    int consecutive_errors;   /* gateway errors in a row that eject an endpoint: 5 (-1: off) */
    int base_ejection_ms;     /* ejection time, times the times it was ejected (at most
                                 300 s or this): 30000 */
    int max_ejection_pct;     /* at most this share of the endpoints ejected at once: 10 */
    int panic_threshold_pct;  /* below this share healthy, pick among all: 50 (-1: off) */
} mica_health_opts_t;

/* Counters of one mica_health_t: "ever" counters, then gauges. */
typedef struct mica_health_stats {
    uint64_t checks;          /* active checks run */
    uint64_t check_failures;  /* of those, failed */
    uint64_t marked_down;     /* endpoints taken out by `fall` failed checks */
    uint64_t marked_up;       /* endpoints brought back by `rise` passed checks */
    uint64_t ejections;       /* endpoints ejected by outlier detection */
    uint64_t returns;         /* ejected endpoints back after their ejection time */
    uint64_t ejections_refused; /* ejections max_ejection_pct did not allow */
    uint64_t panics;          /* times a worker's picker found too few healthy and used all */
    uint64_t endpoints;       /* endpoints followed now */
    uint64_t down;            /* of those, out by active checks */
    uint64_t ejected;         /* of those, ejected */
} mica_health_stats_t;

/** How one endpoint stands (mica_health_endpoint()). */
typedef struct mica_health_endpoint {
    bool known;          /* the endpoint is in the target's list */
    bool down;           /* out by active checks */
    bool ejected;        /* out by outlier detection */
    uint32_t times_ejected;
    int64_t ejected_until_ms; /* mica_now_ms() clock; 0 when not ejected */
} mica_health_endpoint_t;

/**
 * Creates the health verdicts of `target`'s endpoints (the target the client
 * calls: "etcd:///user", "dns:///...", "static:///..."), checked as `opts`
 * says (NULL: defaults, passive only). Call before mica_runtime_run().
 * Returns 0, MICA_EINVAL (bad target or options: logged) or MICA_ENOMEM.
 */
MICA_API int mica_health_new(mica_health_t **out, mica_runtime_t *rt, const char *target,
                             const mica_health_opts_t *opts);

/** Frees `h` after its runtime has stopped and the clients using it are freed. NULL: no-op. */
MICA_API void mica_health_free(mica_health_t *h);

/**
 * Fills unset (zero) fields of `opts` from MICA_HEALTH_INTERVAL_MS,
 * MICA_HEALTH_TIMEOUT_MS, MICA_HEALTH_RISE, MICA_HEALTH_FALL,
 * MICA_HEALTH_CONSECUTIVE_ERRORS, MICA_HEALTH_BASE_EJECTION_MS. Returns 0
 * or MICA_EINVAL (logged).
 */
MICA_API int mica_health_opts_from_env(mica_health_opts_t *opts);

/** Fills *out with `h`'s counters (any thread; a moment's snapshot). */
MICA_API void mica_health_stats(const mica_health_t *h, mica_health_stats_t *out);

/** Fills *out with how endpoint `addr` ("10.0.0.5:50051") stands (any thread). */
MICA_API void mica_health_endpoint(mica_health_t *h, const char *addr, mica_health_endpoint_t *out);

typedef struct mica_metrics mica_metrics_t; /* include/mica/metrics.h */

/**
 * Exports `h`'s counters and gauges, and each endpoint's verdict, to `reg` (NULL: the
 * default registry, what /metrics serves), labelled target=`name`, read at each scrape
 * until mica_health_free(). Returns 0, MICA_EINVAL (bad name; exported already) or MICA_ENOMEM.
 */
MICA_API int mica_health_export_metrics(mica_health_t *h, mica_metrics_t *reg, const char *name);

/* ---- the failover picker ------------------------------------------------------- */

/* mica_picker_failover's picker_conf (borrowed for the client's life). */
typedef struct mica_failover_conf {
    mica_health_t *health;     /* verdicts to route around; NULL: none (zones only) */
    const char *zone;          /* the caller's zone; NULL: no preference */
    int overprovision_pct;     /* the local zone takes min(100 %, its healthy share x this):
                                  140 (Envoy's 1.4), so spilling starts below ~71 % healthy */
} mica_failover_conf_t;

/**
 * Round robin (weights ignored) over the endpoints kept: those active checks
 * or outlier ejection took out are skipped, the caller's zone is preferred
 * with proportional spill-over to the others, and below the panic threshold
 * every endpoint of every zone is used. Its done() counts gateway errors.
 */
MICA_API extern const mica_picker_ops_t mica_picker_failover;

#endif /* MICA_HEALTH_H */

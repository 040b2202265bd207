/* SPDX-License-Identifier: MIT */
/*
 * Service registries: where instances of a service say they exist, and
 * where clients learn of them. One interface, three backends chosen by URL:
 *
 *     file:///etc/shop/registry.json       a JSON file on this machine, watched (inotify)
 *     etcd://127.0.0.1:2379,10.0.0.2:2379   etcd v3: leases kept alive, watches
 *     etcd://127.0.0.1:2379/shop           ... with key prefix "/shop" (default "/mica")
 *     dns://  dns://10.96.0.10:53          DNS (SRV or A/AAAA): the platform registers
 *
 * Clients never name an address: they take a target of the registry's
 * scheme, resolved through it (include/mica/resolver.h):
 *
 *     file:///etc/shop/registry.json#user   service "user" of that file
 *     etcd:///user                         service "user" of the process's etcd registry
 *     dns:///_grpc._tcp.user.shop.svc      SRV records: addresses and ports
 *     dns:///user.shop.svc:50051           A/AAAA records, one port
 *
 *     mica_registry_t *reg;
 *     mica_registry_new(&reg, rt, "etcd://127.0.0.1:2379", NULL);    // before run
 *     mica_grpc_client_new(&users, rt, "etcd:///user", &opts);        // etcd:/// uses reg
 *     // once this service listens (a start hook on worker 0):
 *     mica_registry_register(reg, ctx, &(mica_instance_t){.service = "order",
 *                            .id = "order-1", .addr = "10.0.0.7:50051", .zone = "eu-1a"});
 *
 * A registered instance stays registered: after any registry outage it is
 * written again by itself (a new etcd lease, the same key), for as long as
 * it takes. At SIGTERM, in the runtime's MICA_SHUTDOWN_DEREGISTER phase,
 * the registry removes its instances and waits deregister_wait_ms so that
 * peers stop calling before the servers drain. While a registry cannot be
 * reached, resolvers keep the endpoints they last saw (static stability),
 * and say so in a log line and in mica_registry_stats().
 */
#ifndef MICA_REGISTRY_H
#define MICA_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/runtime.h"
#include "mica/sync.h"

typedef struct mica_registry mica_registry_t;

/* One instance of a service, as registered and as resolved. */
typedef struct mica_instance {
    const char *service;  /* "user": letters, digits, '-', '_', '.'; at most 128 bytes */
    const char *id;       /* stable per instance (its key: a restart replaces, never adds);
                             same characters; NULL: the address */
    const char *addr;     /* "10.0.0.5:50051" or "[::1]:50051": an IP literal and a port */
    uint32_t weight;      /* relative share for weighted pickers; 0 counts as 1 */
    const char *zone;     /* "eu-west-1a" (zone-aware pickers prefer their own), or NULL */
    const char *metadata; /* free text passed on to clients (JSON by convention), or NULL */
} mica_instance_t;

/* A service's instances as resolved: owned by the caller (mica_instances_free()). */
typedef struct mica_instances {
    size_t n;
    mica_instance_t *v; /* sorted by id */
    bool stale;         /* the registry is unreachable: this is the list last seen */
} mica_instances_t;

/* Settings of mica_registry_new(); 0 (NULL) picks the default shown. */
typedef struct mica_registry_opts {
    int ttl_s;              /* etcd: lease time to live, in seconds: 10 (etcd's minimum: 2) */
    int call_timeout_ms;    /* each call to the registry: 3000 */
    int deregister_wait_ms; /* at shutdown, after deregistering, before the drain: 1000 */
    int relist_grace_ms;    /* after an outage, instances missing from the first re-list are
                               kept this long, for them to re-register: 5000 */
    int dns_refresh_ms;     /* dns: re-resolution period: 30000 */
    int retry_max_ms;       /* etcd: longest pause between attempts to reach it: 1000 */
} mica_registry_opts_t;

/* Counters of one registry (all "ever", but reachable). */
typedef struct mica_registry_stats {
    uint64_t registrations;   /* instance records written: first ones and re-registrations */
    uint64_t reregistrations; /* of those, after a lease loss or an outage */
    uint64_t deregistrations; /* instances removed (deregister, shutdown) */
    uint64_t lease_grants;    /* etcd leases granted */
    uint64_t lease_losses;    /* leases that expired or vanished: their instances re-register */
    uint64_t watch_restarts;  /* watches that re-listed and resumed (broken stream, compaction) */
    uint64_t compactions;     /* of those, because their revision had been compacted */
    uint64_t outages;         /* times the registry became unreachable (lists kept meanwhile) */
    uint64_t updates;         /* service lists published to resolvers and watchers */
    uint64_t errors;          /* failed calls to the registry, and unreadable files */
    bool reachable;           /* the last call to the registry got an answer */
} mica_registry_stats_t;

/**
 * Creates a registry of `url` (above) for `rt`; call before mica_runtime_run().
 * The first etcd registry is the one "etcd:///" targets resolve through; the
 * registry deregisters its instances at shutdown. Returns 0, MICA_EINVAL
 * (bad URL or options: logged) or MICA_ENOMEM.
 */
MICA_API int mica_registry_new(mica_registry_t **out, mica_runtime_t *rt, const char *url,
                               const mica_registry_opts_t *opts);

/** Frees `reg` after its runtime has stopped (resolvers using it may outlive it). NULL: no-op. */
MICA_API void mica_registry_free(mica_registry_t *reg);

/**
 * Fills unset (zero) fields of `opts` from MICA_REGISTRY_TTL_S,
 * MICA_REGISTRY_CALL_TIMEOUT_MS, MICA_REGISTRY_DEREGISTER_WAIT_MS,
 * MICA_REGISTRY_RELIST_GRACE_MS. Returns 0 or MICA_EINVAL (logged).
 */
MICA_API int mica_registry_opts_from_env(mica_registry_opts_t *opts);

/**
 * Makes the resolver schemes "file" and "etcd" known (idempotent; any
 * thread). mica_registry_new() calls it; call it yourself before creating
 * clients of file:/// targets in a process without a registry. Returns 0.
 */
MICA_API int mica_registry_schemes_init(void);

/**
 * Registers `inst` (copied; the same service and id replaces) from a coroutine once the
 * service is ready, and keeps it registered until deregistered or shutdown. Returns 0 once
 * written, MICA_ETIMEDOUT/MICA_ECANCELED if `ctx` ended first (it goes on trying by itself),
 * MICA_EINVAL (bad fields; not in a coroutine) or MICA_ENOMEM.
 */
MICA_API int mica_registry_register(mica_registry_t *reg, mica_ctx_t *ctx,
                                    const mica_instance_t *inst);

/**
 * Removes instance `id` of `service` (registered by this process) from the
 * registry, bounded by `ctx`. Returns 0, MICA_ENOTFOUND (not ours), ctx
 * errors, or the registry's error (the instance is then no longer kept).
 */
MICA_API int mica_registry_deregister(mica_registry_t *reg, mica_ctx_t *ctx, const char *service,
                                      const char *id);

/**
 * Copies the instances of `service` into *out (free with
 * mica_instances_free()), waiting for the registry's first answer bounded
 * by `ctx`. Returns 0 (maybe an empty or stale list), MICA_EINVAL, ctx
 * errors, MICA_EUNAVAILABLE (never reached the registry) or MICA_ENOMEM.
 */
MICA_API int mica_registry_resolve(mica_registry_t *reg, mica_ctx_t *ctx, const char *service,
                                   mica_instances_t **out);

/** Frees a list from mica_registry_resolve(). NULL is a no-op. */
MICA_API void mica_instances_free(mica_instances_t *l);

/**
 * Sets `ev` (borrowed until mica_registry_unwatch() or the registry's free)
 * each time the instances of `service` change; follows the service from
 * now on. Pair with mica_registry_resolve(). Returns 0, MICA_EINVAL, MICA_ENOMEM.
 */
MICA_API int mica_registry_watch(mica_registry_t *reg, const char *service, mica_event_t *ev);

/** Stops setting `ev` for `service`. */
MICA_API void mica_registry_unwatch(mica_registry_t *reg, const char *service, mica_event_t *ev);

/** Fills *out with the registry's counters (any thread; a moment's snapshot). */
MICA_API void mica_registry_stats(const mica_registry_t *reg, mica_registry_stats_t *out);

#endif /* MICA_REGISTRY_H */

/* SPDX-License-Identifier: MIT */
/*
 * Discovery's private header: the registry object shared by the public API
 * (registry.c), its backends (reg_file.c, reg_etcd.c, reg_dns.c, each a
 * const mica__registry_ops_t) and the resolver schemes that read through it.
 *
 * A registry keeps two things. Its own instances (mica__rinst_t): what this
 * process registered, which the backend writes and, after an outage,
 * writes again. And service views (mica__svc_t): the instances of one
 * service as the backend last reported them, pushed to the resolvers and
 * events attached to the view. Backends report whole lists; the view
 * copies, sorts, compares and publishes only changes. Locking: reg->lock
 * guards both lists and every view; nothing suspends under it.
 */
#ifndef MICA_DISCOVERY_INTERNAL_H
#define MICA_DISCOVERY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/list.h"
#include "mica/registry.h"
#include "mica/resolver.h"
#include "mica/sync.h"

#define MICA__NAME_MAX 128 /* a service name or instance id */

typedef struct mica__svc mica__svc_t;
typedef struct mica__rinst mica__rinst_t;

/* An instance this process registered: the registry's own copy. */
struct mica__rinst {
    mica_instance_t i;        /* every string owned */
    char *record;             /* the instance as stored: one JSON object (reg_file, reg_etcd) */
    _Atomic int refs;         /* the registry's list, and backends working on it */
    _Atomic int64_t written;  /* etcd: the lease it was last written with; others: 1 once written */
    atomic_bool ever_written; /* so that a later write counts as a re-registration */
    atomic_bool removed;      /* deregistered: never write it again */
    mica__list_t link;        /* on reg->insts */
};

/*
 * A backend. open runs in mica_registry_new() (any thread, before run);
 * put/del/del_all/follow run in coroutines on workers and may suspend;
 * stop runs at the drain (must not suspend: ends the backend's coroutines);
 * close after the runtime stopped.
 */
typedef struct mica__registry_ops {
    const char *scheme;
    /* `rest` is the URL after "scheme://". 0, MICA_EINVAL (logged) or MICA_ENOMEM. */
    int (*open)(mica_registry_t *reg, const char *rest, void **state);
    void (*close)(void *state);
    void (*stop)(void *state);
    /* Writes (and keeps written) `ri`; returns once written or as ctx ends. */
    int (*put)(void *state, mica_ctx_t *ctx, mica__rinst_t *ri);
    /* Removes `ri` (already off the registry's list). */
    int (*del)(void *state, mica_ctx_t *ctx, mica__rinst_t *ri);
    /* Shutdown: removes every instance of this process at once. */
    int (*del_all)(void *state, mica_ctx_t *ctx);
    /* Starts reporting `svc`'s lists (mica__svc_publish()); called once per view. */
    int (*follow)(void *state, mica__svc_t *svc);
} mica__registry_ops_t;

extern const mica__registry_ops_t mica__registry_file;
extern const mica__registry_ops_t mica__registry_etcd;
extern const mica__registry_ops_t mica__registry_dns;

/* One service as the backend last reported it (fields under reg->lock). */
struct mica__svc {
    mica_registry_t *reg;
    char *name;
    mica__list_t link;        /* on reg->svcs */
    mica_instance_t *v;       /* n instances, sorted by id; one allocation with the strings */
    size_t n;
    bool have;                /* a first list came */
    bool stale;               /* the registry is unreachable: v is the list last seen */
    uint64_t gen;
    mica_resolver_t **rs;     /* resolvers fed from this view */
    size_t nrs;
    mica_event_t **evs;       /* mica_registry_watch() events */
    size_t nevs;
    mica_event_t first;       /* set with the first list (or the first failure) */
    int first_error;          /* no list yet: why */
    atomic_bool followed;
    void *bstate;             /* the backend's, for this service */
};

/* Counters (mica_registry_stats_t's, as atomics). */
typedef struct mica__reg_stats {
    _Atomic uint64_t registrations, reregistrations, deregistrations, lease_grants, lease_losses,
        watch_restarts, compactions, outages, updates, errors;
    atomic_bool reachable;
} mica__reg_stats_t;

struct mica_registry {
    const mica__registry_ops_t *ops;
    void *state;
    mica_runtime_t *rt; /* NULL for a file resolver's private registry */
    mica_registry_opts_t o;
    char *url;
    pthread_mutex_t lock;
    mica__list_t svcs;  /* mica__svc_t */
    mica__list_t insts; /* mica__rinst_t */
    _Atomic int refs;   /* the owner's, and each resolver's */
    atomic_bool closing; /* shutdown has deregistered: no more writes */
    atomic_bool stopped;
    mica__reg_stats_t st;
};

#define MICA__COUNT(reg, field) atomic_fetch_add_explicit(&(reg)->st.field, 1, memory_order_relaxed)

/*
 * Publishes `n` instances (borrowed: copied) as `svc`'s list: sorted by id;
 * an equal list publishes nothing. Clears the stale mark. Any thread.
 */
void mica__svc_publish(mica__svc_t *svc, const mica_instance_t *v, size_t n);
/* The backend cannot reach its registry for `svc`: keeps the list, logs once, marks it stale. */
void mica__svc_unreachable(mica__svc_t *svc, int err);
/* Tells the registry whether its last call got an answer (counts outages, logs transitions). */
void mica__registry_reachable(mica_registry_t *reg, bool ok, int err);
/*
 * The instances this process registered and still keeps, each with a
 * reference (drop with mica__rinst_unref()), into a new array (*n of them):
 * free it with mica__free(). NULL with *n = 0 when none (or no memory).
 */
mica__rinst_t **mica__registry_insts(mica_registry_t *reg, size_t *n);
void mica__rinst_unref(mica__rinst_t *ri);
/* Counts a write of `ri` as a registration (and a re-registration after the first). */
void mica__rinst_written(mica_registry_t *reg, mica__rinst_t *ri);

/*
 * One stored instance record of `service` (JSON: id, addr, weight, zone,
 * metadata as an object or a string) as a new mica_instance_t, its strings
 * in the same allocation (mica__free() it); `obj` is a json_t *. NULL when
 * it is not a valid record (logged at debug) or on ENOMEM.
 */
mica_instance_t *mica__instance_from_json(const void *obj, const char *service);
/* As mica__instance_from_json(), from the record's text. */
mica_instance_t *mica__instance_parse(const char *json, size_t len, const char *service);
/* A copy of `i` in one allocation (mica__free() it), or NULL. */
mica_instance_t *mica__instance_dup(const mica_instance_t *i);
/* The stored record of `i` (JSON, mica__malloc'd), or NULL: no memory. */
char *mica__instance_record(const mica_instance_t *i);
/* Tests only: reg_etcd.c pauses this long between a list and its watch (0: never). */
extern _Atomic int mica__etcd_watch_delay_ms;
/* Tests only: the etcd session of this registry stops keeping its lease alive (a hung process). */
extern _Atomic(mica_registry_t *) mica__etcd_paused;

/* Whether `s` is a valid service name or instance id. */
bool mica__name_ok(const char *s);

#endif /* MICA_DISCOVERY_INTERNAL_H */

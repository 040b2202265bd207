/* SPDX-License-Identifier: MIT */
/*
 * Discovery seams for clients: a *resolver* says which endpoints a target
 * has (and updates the list over time); a *picker* chooses the endpoint of
 * each call. Both are const callback structs, so a registry (etcd), a
 * balancer (least connections, power of two choices) or an outlier filter
 * plugs in without touching the clients that use them.
 *
 * Targets follow gRPC's naming: "scheme://authority/endpoint".
 *
 *     dns:///users.svc:50051                     A and AAAA records, re-resolved
 *     static:///10.0.0.1:50051,10.0.0.2:50051    a fixed list (mica_resolver_update() changes it)
 *     10.0.0.1:50051, [::1]:50051                 a literal: static
 *     users.svc:50051                            a name: dns
 *     etcd:///user                               a scheme registered with mica_resolver_register()
 *
 * A resolver publishes immutable, reference-counted endpoint lists
 * (mica_endpoints_t), each with a generation number. Readers on workers
 * compare one atomic generation with the one they hold and fetch the new
 * list only when it changed, so the call path takes no lock; a watcher's
 * mica_event_t is set on every change for readers that want to react at
 * once (draining connections to endpoints that went away).
 */
#ifndef MICA_RESOLVER_H
#define MICA_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/error.h"
#include "mica/runtime.h"
#include "mica/sync.h"

/* ---- endpoints ----------------------------------------------------------------- */

/* One endpoint of a target. */
typedef struct mica_endpoint {
    const char *addr;     /* "10.0.0.1:50051" or "[::1]:50051": an IP literal and a port */
    uint32_t weight;      /* relative share for weighted pickers; 0 counts as 1 */
    const char *metadata; /* the resolver's own words about it (version, JSON...), or NULL */
    const char *zone;     /* where it runs ("eu-west-1a"), for zone-aware pickers, or NULL */
} mica_endpoint_t;

/* An immutable endpoint list, as published by a resolver. Fields are read-only. */
typedef struct mica_endpoints {
    uint64_t generation; /* grows with every publication of the resolver */
    int error;           /* no list was ever resolved: why (0 once one was) */
    size_t n;
    const mica_endpoint_t *eps; /* n endpoints, no address twice */
    _Atomic long _refs;
} mica_endpoints_t;

/** Takes a reference on `l` (any thread). */
MICA_API void mica_endpoints_ref(mica_endpoints_t *l);
/** Drops a reference on `l`, freeing it with the last one (any thread). NULL is a no-op. */
MICA_API void mica_endpoints_unref(mica_endpoints_t *l);

/* ---- resolvers ------------------------------------------------------------------ */

typedef struct mica_resolver mica_resolver_t;

/* A target split the gRPC way: "scheme://authority/endpoint". */
typedef struct mica_target {
    const char *scheme;    /* "dns", "static", "etcd", ... */
    const char *authority; /* "" when absent (the usual "dns:///name:port") */
    const char *endpoint;  /* what the scheme resolves: "name:port", a list, a service name */
} mica_target_t;

/* Settings of mica_resolver_new(); 0 picks the default shown. */
typedef struct mica_resolver_opts {
    int64_t refresh_interval_ms; /* re-resolution period of polling resolvers (DNS): 30000 */
} mica_resolver_opts_t;

/*
 * A resolver backend, registered under a scheme. It runs as follows:
 * init (any thread, when mica_resolver_new() parses a target), start (once,
 * in a coroutine on the worker that first needs endpoints: it may keep
 * running, e.g. a re-resolution loop, until stop), stop (on every worker's
 * loop at shutdown: must not suspend; makes start's work end), destroy
 * (after the runtime stopped). Backends publish with mica_resolver_update()
 * and mica_resolver_report_error(), from any thread.
 */
typedef struct mica_resolver_ops {
    /* Validates `t` and creates the backend's state; a failure leaves nothing to destroy.
     * Returns 0, MICA_EINVAL (logged) or MICA_ENOMEM. */
    int (*init)(mica_resolver_t *r, const mica_target_t *t, const mica_resolver_opts_t *opts,
                void **state);
    /* Starts resolving (may stay running; NULL: nothing to run). */
    void (*start)(void *state);
    /* Ends what start began, on shutdown; called on each worker, never suspends (NULL: none). */
    void (*stop)(void *state, int worker_id);
    /* A hint from a client: an endpoint failed, resolve again soon (NULL: ignored). Any worker. */
    void (*resolve_now)(void *state);
    /* Frees the state (NULL: nothing to free). */
    void (*destroy)(void *state);
} mica_resolver_ops_t;

/**
 * Makes `ops` (borrowed for the process's life) resolve targets of `scheme`
 * ("etcd"; letters, digits, '+', '-', '.'). Call at startup, before the
 * clients that use it are created. Returns 0, MICA_EEXIST (taken: "dns" and
 * "static" are built in), MICA_EINVAL or MICA_ELIMIT (16 schemes).
 */
MICA_API int mica_resolver_register(const char *scheme, const mica_resolver_ops_t *ops);

/**
 * Parses `target` (see the top of this file) into `t`, borrowing `buf`
 * (`size` bytes) for the strings. A target without "://" is a literal
 * address (static) or a name (dns). Returns 0, MICA_EINVAL or MICA_ELIMIT
 * (buf too small).
 */
MICA_API int mica_target_parse(const char *target, mica_target_t *t, char *buf, size_t size);

/**
 * Creates a resolver of `target` for `rt`'s workers (opts may be NULL) and
 * runs its backend's init. It does not resolve yet: mica_resolver_start()
 * does. Returns 0, MICA_EINVAL (bad target or unknown scheme: logged),
 * MICA_ENOMEM, or the backend's error.
 */
MICA_API int mica_resolver_new(mica_resolver_t **out, mica_runtime_t *rt, const char *target,
                               const mica_resolver_opts_t *opts);

/** Frees `r` after its runtime has stopped (the backend's destroy runs). NULL is a no-op. */
MICA_API void mica_resolver_free(mica_resolver_t *r);

/**
 * Starts the backend in a new coroutine on the calling worker, the first
 * time it is called (later calls return 0 at once). Returns 0, MICA_EINVAL
 * outside a worker, or MICA_ENOMEM.
 */
MICA_API int mica_resolver_start(mica_resolver_t *r);

/** Passes a re-resolution hint to the backend (rate-limited by it). Any worker. */
MICA_API void mica_resolver_resolve_now(mica_resolver_t *r);

/**
 * Publishes a new endpoint list (`n` entries, copied; addresses must be IP
 * literals with a port, duplicates are dropped). Any thread. A list equal to
 * the current one publishes nothing. Returns 0, MICA_EINVAL (a bad address:
 * nothing published) or MICA_ENOMEM.
 */
MICA_API int mica_resolver_update(mica_resolver_t *r, const mica_endpoint_t *eps, size_t n);

/**
 * Reports a failed resolution (logged by the backend). The last good list
 * stays; before any list, readers see `err` in mica_endpoints_t.error so
 * that waiting calls fail instead of waiting. Any thread.
 */
MICA_API void mica_resolver_report_error(mica_resolver_t *r, int err);

/** Returns the generation of the current list (0: nothing published yet). One atomic load. */
MICA_API uint64_t mica_resolver_generation(const mica_resolver_t *r);

/**
 * Returns a reference to the current list (drop it with
 * mica_endpoints_unref()), or NULL when nothing was published yet. Any thread.
 */
MICA_API mica_endpoints_t *mica_resolver_get(mica_resolver_t *r);

/**
 * Sets `ev` (borrowed until mica_resolver_unwatch() or the resolver's free)
 * whenever a new list or error is published. Returns 0, MICA_ENOMEM.
 */
MICA_API int mica_resolver_watch(mica_resolver_t *r, mica_event_t *ev);
/** Stops setting `ev`. */
MICA_API void mica_resolver_unwatch(mica_resolver_t *r, mica_event_t *ev);

/**
 * The target's endpoint part ("users.svc:50051", "10.0.0.1:1,10.0.0.2:1"),
 * valid for the resolver's life. Clients derive :authority and the TLS
 * server name from it when it names one host.
 */
MICA_API const char *mica_resolver_endpoint(const mica_resolver_t *r);

/**
 * The name calls through `r` carry as :authority or Host: the endpoint when
 * it names one host ("users.svc:50051", "user" of etcd:///user), the service
 * after '#' of a path target (file:///reg.json#user), NULL for static lists.
 */
MICA_API const char *mica_resolver_authority(const mica_resolver_t *r);

/** The target's scheme ("dns", "static", ...), valid for the resolver's life. */
MICA_API const char *mica_resolver_scheme(const mica_resolver_t *r);

/* ---- pickers ------------------------------------------------------------------------ */

/* How a client stands with one endpoint, on one worker (grpc-go's connectivity states). */
typedef enum mica_endpoint_state {
    MICA_ENDPOINT_IDLE,       /* no connection yet: a pick connects */
    MICA_ENDPOINT_CONNECTING, /* an attempt is under way */
    MICA_ENDPOINT_READY,      /* a live connection */
    MICA_ENDPOINT_FAILING,    /* the last attempt failed: backing off until failing_until_ms */
} mica_endpoint_state_t;

/*
 * An endpoint as a picker sees it: one worker's view, kept by the client on
 * that worker (plain fields, no atomics: pickers run on the worker).
 */
typedef struct mica_picker_endpoint {
    const mica_endpoint_t *ep;     /* address, weight, metadata (valid until the next update) */
    mica_endpoint_state_t state;
    int64_t failing_until_ms;      /* FAILING: no attempt before (mica_now_ms() clock) */
    uint32_t inflight;             /* calls from this worker not finished yet */
    uint32_t consecutive_failures; /* connect failures and UNAVAILABLE/INTERNAL/UNKNOWN/DATA_LOSS
                                      ends since the last success */
    uint64_t calls, failures;      /* ended calls, and those of them that failed as above */
    uint32_t latency_ewma_us;      /* unary calls' latency, EWMA (weight 1/8); 0: none measured
                                      (only when the picker sets MICA_PICKER_MEASURES_LATENCY) */
    int64_t picker_i64;            /* free for the picker (a smooth-WRR current weight) */
    void *picker_ptr;              /* free for the picker */
} mica_picker_endpoint_t;

/* What a picker may know of the call it places. */
typedef struct mica_pick_info {
    const char *method;   /* "/pkg.Service/Method" */
    uint32_t flags;       /* the call's policy flags (mica_grpc_call_opts_t) */
    const void *policy;   /* the call's policy pointer */
} mica_pick_info_t;

/* mica_picker_ops_t.flags */
#define MICA_PICKER_MEASURES_LATENCY 1u /* the client times unary calls (two clock reads) */

/*
 * A picker (balancer) backend; one state per worker per client, used only
 * on that worker. pick() returns the index of the chosen endpoint in
 * eps[0..n), or -1 when none will do (the call fails UNAVAILABLE). The
 * client retries a pick whose connection attempt fails (nothing was sent)
 * after marking that endpoint FAILING, at most n times per call, so a
 * picker should skip FAILING endpoints (mica_picker_endpoint_usable()) while
 * others remain.
 */
typedef struct mica_picker_ops {
    const char *name;
    uint32_t flags; /* MICA_PICKER_* */
    /* Creates one worker's state; `conf` is the client's picker_conf. 0 or MICA_ENOMEM. */
    int (*create)(void **state, const void *conf);
    /* The endpoint list changed (or was first given) on this worker (NULL: nothing to do). */
    void (*update)(void *state, mica_picker_endpoint_t *const *eps, size_t n);
    int (*pick)(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                const mica_pick_info_t *info);
    /* A call placed on `ep` ended with gRPC status `code` (NULL: not wanted). */
    void (*done)(void *state, mica_picker_endpoint_t *ep, int code, uint32_t latency_us);
    void (*destroy)(void *state);
} mica_picker_ops_t;

/** Round robin over the usable endpoints, weights ignored (the default picker). */
MICA_API extern const mica_picker_ops_t mica_picker_round_robin;

/** Whether `e` may be tried now: not FAILING, or its back-off has run out by `now_ms`. */
static inline bool mica_picker_endpoint_usable(const mica_picker_endpoint_t *e, int64_t now_ms)
{
    return e->state != MICA_ENDPOINT_FAILING || e->failing_until_ms <= now_ms;
}

#endif /* MICA_RESOLVER_H */

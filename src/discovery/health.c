/* SPDX-License-Identifier: MIT */
/*
 * Endpoint health for clients (include/mica/health.h): one verdict per
 * endpoint of a target, written by active checks and by outlier detection,
 * read by mica_picker_failover on every worker without a lock.
 *
 * Verdicts. Each address the health ever saw gets an entry (hep_t) that
 * lives until mica_health_free(): pickers on other workers keep pointers to
 * entries, and never freeing them is what lets them read without locks or
 * hazard pointers. Addresses that leave the list stay as unlisted entries
 * and are reused if they come back; the table grows with the distinct
 * addresses a target ever had, which for one target is small. An entry's
 * verdict is one atomic word of flags (DOWN from active checks, EJECTED
 * from outlier detection); every change of any verdict bumps
 * h->verdict_gen, and a picker rebuilds its per-zone arrays only when that
 * generation, or its client's list, changed. A pick is then an atomic
 * load, a random draw for the zone and an index, whatever the list's size.
 *
 * Active checks run on one worker (the first), one coroutine per listed
 * endpoint, through one HTTP or gRPC client of the target made before the
 * runtime runs: its picker (pin_ops below) sends each check to the
 * endpoint the call names in opts.policy. The client's own connect
 * back-off is capped at the check interval so that a returning endpoint is
 * tried again on its next check. rise/fall counting (haproxy) is done by
 * that one coroutine, so it needs no atomics; only the verdict does.
 *
 * Outlier detection counts gateway errors (UNAVAILABLE: HTTP 502/503/504,
 * connections lost mid-call) from the failover picker's done() on any
 * worker: a counter per entry, reset by any other outcome. The ejection
 * itself is a CAS on the count of ejected endpoints, bounded by
 * max_ejection_pct (at least one), then on the entry's flags; a refused one
 * restarts the count so that the refusal is not repeated on every error.
 * The home worker's sweeper returns ejected endpoints when their time is
 * up and, as Envoy does, lowers times_ejected by one for every
 * base_ejection_ms an endpoint stays in, so that a flapping endpoint is
 * ejected for longer and longer while a recovered one is forgiven.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "health.pb-c.h"
#include "mica/grpc.h"
#include "mica/health.h"
#include "mica/http_client.h"
#include "mica/metrics.h"
#include "mica/net.h"

#define F_DOWN 1u    /* out by active checks */
#define F_EJECTED 2u /* out by outlier detection */
#define F_LISTED 4u  /* in the health's current list */
#define F_OUT (F_DOWN | F_EJECTED)

#define NBUCKETS 1024

typedef struct hep {
    char addr[64];
    _Atomic uint32_t flags;
    _Atomic uint32_t gw_errors; /* gateway errors in a row, from every worker */
    _Atomic uint32_t times_ejected;
    _Atomic int64_t ejected_until_ms;
    int64_t forgive_at_ms;      /* home worker: when times_ejected next drops by one */
    /* active checks: home worker only */
    int passes, fails;
    bool checking, last_ok;
    int pin_idx; /* index in the check client's list, on the home worker */
    uint64_t mark; /* apply_list()'s visit mark */
    struct mica_health *h;
    struct hep *bucket_next, *all_next;
} hep_t;

struct mica_health {
    mica_health_opts_t o;
    char *http_path, *grpc_service;
    mica_runtime_t *rt;
    mica_resolver_t *res;
    bool own_res;
    mica_http_client_t *hc;
    mica_grpc_client_t *gc;
    pthread_mutex_t lock; /* the table: insertions and walks, never a pick */
    hep_t *buckets[NBUCKETS];
    hep_t *all;
    /* read by every pick on every worker: padded away from what checks and calls write */
    char pad0[64];
    _Atomic uint64_t verdict_gen;
    char pad1[64];
    _Atomic uint32_t nlisted, ndown, nejected;
    _Atomic uint64_t checks, check_failures, marked_down, marked_up, ejections, returns,
        ejections_refused, panics;
    mica_event_t changed; /* the resolver published */
    mica_event_t stop;    /* the drain began */
    atomic_bool stopping;
    atomic_bool ever_ejected; /* the sweeper has times_ejected to lower */
    uint64_t rand;
    uint64_t mark;
    mica_metrics_t *export_reg; /* mica_health_export_metrics(): where, and the label */
    char export_name[64];
};

static void ctr(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t xs64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void bump(mica_health_t *h)
{
    atomic_fetch_add_explicit(&h->verdict_gen, 1, memory_order_release);
}

/* The entry of `addr`, made if new. Under h->lock. NULL: no memory or an address too long. */
static hep_t *entry_locked(mica_health_t *h, const char *addr, bool create)
{
    uint32_t b = hash_str(addr) % NBUCKETS;
    for (hep_t *e = h->buckets[b]; e; e = e->bucket_next)
        if (strcmp(e->addr, addr) == 0)
            return e;
    if (!create || strlen(addr) >= sizeof(((hep_t *)0)->addr))
        return NULL;
    hep_t *e = mica__calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    memcpy(e->addr, addr, strlen(addr) + 1);
    e->h = h;
    e->pin_idx = -1;
    e->last_ok = true;
    e->bucket_next = h->buckets[b];
    h->buckets[b] = e;
    e->all_next = h->all;
    h->all = e;
    return e;
}

static hep_t *entry(mica_health_t *h, const char *addr, bool create)
{
    pthread_mutex_lock(&h->lock);
    hep_t *e = entry_locked(h, addr, create);
    pthread_mutex_unlock(&h->lock);
    return e;
}

/* ---- options ------------------------------------------------------------------------- */

static int defaults(mica_health_opts_t *o)
{
#define DEF(f, v)                                                                                 \
    do {                                                                                          \
        if (o->f == 0)                                                                            \
            o->f = (v);                                                                           \
    } while (0)
    DEF(interval_ms, 2000);
    DEF(timeout_ms, 1000);
    DEF(jitter_pct, 10);
    DEF(rise, 2);
    DEF(fall, 3);
    DEF(consecutive_errors, 5);
    DEF(base_ejection_ms, 30000);
    DEF(max_ejection_pct, 10);
    DEF(panic_threshold_pct, 50);
#undef DEF
    if (!o->http_path)
        o->http_path = "/health";
    if (!o->grpc_service)
        o->grpc_service = "";
    if (o->jitter_pct < 0)
        o->jitter_pct = 0;
    const char *bad = NULL;
    if (o->kind < MICA_HEALTH_NONE || o->kind > MICA_HEALTH_GRPC)
        bad = "kind";
    else if (o->interval_ms < 1)
        bad = "interval_ms";
    else if (o->timeout_ms < 1)
        bad = "timeout_ms";
    else if (o->jitter_pct > 100)
        bad = "jitter_pct";
    else if (o->rise < 1)
        bad = "rise";
    else if (o->fall < 1)
        bad = "fall";
    else if (o->consecutive_errors < -1)
        bad = "consecutive_errors";
    else if (o->base_ejection_ms < 1)
        bad = "base_ejection_ms";
    else if (o->max_ejection_pct < 0 || o->max_ejection_pct > 100)
        bad = "max_ejection_pct";
    else if (o->panic_threshold_pct < -1 || o->panic_threshold_pct > 100)
        bad = "panic_threshold_pct";
    else if (o->http_path[0] != '/')
        bad = "http_path";
    if (bad) {
        mica__log_error("health: bad option", "option", bad);
        return MICA_EINVAL;
    }
    return 0;
}

int mica_health_opts_from_env(mica_health_opts_t *opts)
{
    static const struct {
        const char *name;
        size_t off;
    } vars[] = {
        {"MICA_HEALTH_INTERVAL_MS", offsetof(mica_health_opts_t, interval_ms)},
        {"MICA_HEALTH_TIMEOUT_MS", offsetof(mica_health_opts_t, timeout_ms)},
        {"MICA_HEALTH_RISE", offsetof(mica_health_opts_t, rise)},
        {"MICA_HEALTH_FALL", offsetof(mica_health_opts_t, fall)},
        {"MICA_HEALTH_CONSECUTIVE_ERRORS", offsetof(mica_health_opts_t, consecutive_errors)},
        {"MICA_HEALTH_BASE_EJECTION_MS", offsetof(mica_health_opts_t, base_ejection_ms)},
    };
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        int *f = (int *)((char *)opts + vars[i].off);
        const char *v = getenv(vars[i].name);
        if (*f || !v || !*v)
            continue;
        char *end;
        long x = strtol(v, &end, 10);
        if (*end || x < -1 || x == 0 || x > 86400000) {
            mica__log_error("health: bad environment variable", "name", vars[i].name, "value", v);
            return MICA_EINVAL;
        }
        *f = (int)x;
    }
    return 0;
}

/* ---- verdicts ------------------------------------------------------------------------- */

static void log_ep(const char *msg, const hep_t *e, const char *k1, long long v1, const char *k2,
                   const char *v2)
{
    char n1[24];
    snprintf(n1, sizeof(n1), "%lld", v1);
    if (k2)
        mica__log_warn(msg, "endpoint", e->addr, k1, n1, k2, v2);
    else
        mica__log_info(msg, "endpoint", e->addr, k1, n1);
}

/* One active check's result, on the home worker. */
static void check_result(mica_health_t *h, hep_t *e, bool ok, const char *why)
{
    ctr(&h->checks);
    if (!ok)
        ctr(&h->check_failures);
    if (ok != e->last_ok) {
        /* the check's own state changed: logged once per change, not per check */
        if (ok)
            mica__log_info("health: check passes again", "endpoint", e->addr);
        else
            mica__log_info("health: check failed", "endpoint", e->addr, "reason", why);
        e->last_ok = ok;
    }
    uint32_t f = atomic_load(&e->flags);
    if (ok) {
        e->fails = 0;
        e->passes++;
        if ((f & F_DOWN) && e->passes >= h->o.rise) {
            atomic_fetch_and(&e->flags, ~F_DOWN);
            atomic_fetch_sub(&h->ndown, 1);
            ctr(&h->marked_up);
            bump(h);
            log_ep("health: endpoint up (rise)", e, "passes", e->passes, NULL, NULL);
        }
    } else {
        e->passes = 0;
        e->fails++;
        if (!(f & F_DOWN) && e->fails >= h->o.fall && (f & F_LISTED)) {
            atomic_fetch_or(&e->flags, F_DOWN);
            atomic_fetch_add(&h->ndown, 1);
            ctr(&h->marked_down);
            bump(h);
            log_ep("health: endpoint down (fall)", e, "failures", e->fails, "reason", why);
        }
    }
}

static void eject(mica_health_t *h, hep_t *e, int64_t now_ms)
{
    uint32_t listed = atomic_load(&h->nlisted);
    uint32_t max = (uint32_t)((uint64_t)listed * (uint32_t)h->o.max_ejection_pct / 100);
    if (max < 1)
        max = 1; /* Envoy: one host may always be ejected */
    uint32_t cur = atomic_load(&h->nejected);
    do {
        if (cur >= max) {
            ctr(&h->ejections_refused);
            atomic_store(&e->gw_errors, 0);
            mica__log_info("health: ejection refused (max_ejection_pct)", "endpoint", e->addr);
            return;
        }
    } while (!atomic_compare_exchange_weak(&h->nejected, &cur, cur + 1));
    uint32_t f = atomic_load(&e->flags);
    do {
        if ((f & F_EJECTED) || !(f & F_LISTED)) { /* another worker was first, or it left */
            atomic_fetch_sub(&h->nejected, 1);
            return;
        }
    } while (!atomic_compare_exchange_weak(&e->flags, &f, f | F_EJECTED));
    uint32_t times = atomic_fetch_add(&e->times_ejected, 1) + 1;
    /* Envoy's max_ejection_time: 300 s (or the base, if longer) bounds a flapping endpoint's */
    int64_t ms = (int64_t)h->o.base_ejection_ms * times;
    int64_t cap = h->o.base_ejection_ms > 300000 ? h->o.base_ejection_ms : 300000;
    if (ms > cap)
        ms = cap;
    atomic_store(&e->ejected_until_ms, now_ms + ms);
    atomic_store(&e->gw_errors, 0);
    ctr(&h->ejections);
    atomic_store(&h->ever_ejected, true);
    bump(h);
    char t[24];
    snprintf(t, sizeof(t), "%u", times);
    log_ep("health: endpoint ejected (consecutive gateway errors)", e, "ejection_ms", ms,
           "times_ejected", t);
}

/* A call on `e` ended with gRPC status `code`; any worker. */
static void outcome(mica_health_t *h, hep_t *e, int code)
{
    if (h->o.consecutive_errors < 0)
        return;
    if (code != 14 /* UNAVAILABLE */) {
        if (atomic_load_explicit(&e->gw_errors, memory_order_relaxed))
            atomic_store_explicit(&e->gw_errors, 0, memory_order_relaxed);
        return;
    }
    uint32_t n = atomic_fetch_add_explicit(&e->gw_errors, 1, memory_order_relaxed) + 1;
    if (n >= (uint32_t)h->o.consecutive_errors &&
        !(atomic_load_explicit(&e->flags, memory_order_relaxed) & F_EJECTED))
        eject(h, e, mica_now_ms());
}

/* Returns ejected endpoints whose time is up, forgives old ejections. Home worker. */
static void sweep(mica_health_t *h, int64_t now)
{
    pthread_mutex_lock(&h->lock);
    for (hep_t *e = h->all; e; e = e->all_next) {
        uint32_t f = atomic_load(&e->flags);
        if (f & F_EJECTED) {
            int64_t until = atomic_load(&e->ejected_until_ms);
            if (!until || until > now) /* 0: eject() has yet to store it */
                continue;
            atomic_fetch_and(&e->flags, ~F_EJECTED);
            atomic_store(&e->ejected_until_ms, 0);
            atomic_store(&e->gw_errors, 0);
            atomic_fetch_sub(&h->nejected, 1);
            e->forgive_at_ms = now + h->o.base_ejection_ms;
            ctr(&h->returns);
            bump(h);
            log_ep("health: endpoint returned (ejection over)", e, "times_ejected",
                   atomic_load(&e->times_ejected), NULL, NULL);
        } else if (atomic_load(&e->times_ejected) && now >= e->forgive_at_ms) {
            atomic_fetch_sub(&e->times_ejected, 1);
            e->forgive_at_ms = now + h->o.base_ejection_ms;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

/* ---- active checks --------------------------------------------------------------------- */

/*
 * The check client's picker: the endpoint the call names (opts.policy, an
 * entry), found by the index it had last time or else by a walk; -1 when
 * the client's list does not have it (the check fails).
 */
static int pin_create(void **state, const void *conf)
{
    *state = (void *)conf;
    return 0;
}

static void pin_update(void *state, mica_picker_endpoint_t *const *eps, size_t n)
{
    (void)state;
    (void)eps;
    (void)n;
}

static int pin_pick(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                    const mica_pick_info_t *info)
{
    (void)state;
    hep_t *e = info ? (hep_t *)info->policy : NULL;
    if (!e)
        return -1;
    if (e->pin_idx >= 0 && (size_t)e->pin_idx < n && eps[e->pin_idx]->ep &&
        strcmp(eps[e->pin_idx]->ep->addr, e->addr) == 0)
        return e->pin_idx;
    for (size_t i = 0; i < n; i++)
        if (eps[i]->ep && strcmp(eps[i]->ep->addr, e->addr) == 0)
            return e->pin_idx = (int)i;
    return -1;
}

static void pin_destroy(void *state)
{
    (void)state;
}

static const mica_picker_ops_t pin_ops = {
    .name = "health_pin",
    .create = pin_create,
    .update = pin_update,
    .pick = pin_pick,
    .destroy = pin_destroy,
};

static bool run_check(mica_health_t *h, hep_t *e, const char **why)
{
    int64_t deadline = mica_deadline_in(h->o.timeout_ms);
    switch (h->o.kind) {
    case MICA_HEALTH_TCP: {
        int fd = mica_net_connect(e->addr, NULL, deadline);
        if (fd < 0) {
            *why = mica_strerror(fd);
            return false;
        }
        mica_net_close(fd);
        return true;
    }
    case MICA_HEALTH_HTTP: {
        mica_http_call_opts_t co = {.deadline_ms = deadline, .policy = e};
        mica_http_response_t *r = NULL;
        int rc = mica_http_client_get(h->hc, NULL, h->o.http_path, &co, &r);
        if (rc != 0) {
            *why = mica_strerror(rc);
            return false;
        }
        int st = mica_http_response_status(r);
        mica_http_response_free(r);
        if (st < 200 || st > 299) {
            *why = "status not 2xx";
            return false;
        }
        return true;
    }
    case MICA_HEALTH_GRPC: {
        mica_grpc_call_opts_t co = {.deadline_ms = deadline, .policy = e};
        Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        req.service = (char *)h->o.grpc_service;
        ProtobufCMessage *resp = NULL;
        mica_grpc_result_t res;
        int code = mica_grpc_unary(h->gc, NULL, &grpc__health__v1__health__descriptor, "Check", &co,
                                   &req.base, &resp, &res);
        if (code != 0) {
            *why = code == 14 ? "UNAVAILABLE" : code == 4 ? "DEADLINE_EXCEEDED" : "not OK";
            return false;
        }
        bool ok = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status ==
                  GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (!ok)
            *why = "not SERVING";
        return ok;
    }
    default:
        return true;
    }
}

/* The next check's delay: interval +- jitter_pct. */
static int64_t next_delay(mica_health_t *h)
{
    int64_t iv = h->o.interval_ms;
    int64_t span = iv * h->o.jitter_pct / 100;
    if (span <= 0)
        return iv;
    return iv - span + (int64_t)(xs64(&h->rand) % (uint64_t)(2 * span + 1));
}

/* Sleeps until `deadline_ms` or the drain. Returns false once draining. */
static bool nap(mica_health_t *h, int64_t deadline_ms)
{
    if (atomic_load(&h->stopping) || mica_worker_stopping())
        return false;
    mica_event_wait(&h->stop, NULL, deadline_ms);
    return !atomic_load(&h->stopping) && !mica_worker_stopping();
}

static void check_loop(void *arg)
{
    hep_t *e = arg;
    mica_health_t *h = e->h;
    /* the first check of each endpoint at a random point of the first interval */
    int64_t first = (int64_t)(xs64(&h->rand) % (uint64_t)h->o.interval_ms);
    bool run = nap(h, mica_deadline_in(first));
    while (run && (atomic_load(&e->flags) & F_LISTED)) {
        const char *why = "";
        bool ok = run_check(h, e, &why);
        if (atomic_load(&h->stopping))
            break;
        check_result(h, e, ok, why);
        run = nap(h, mica_deadline_in(next_delay(h)));
    }
    e->checking = false;
}

/* Applies a new list: entries listed or not, checks started. Home worker. */
static void apply_list(mica_health_t *h, const mica_endpoints_t *l)
{
    bool changed = false;
    uint32_t nl = 0;
    pthread_mutex_lock(&h->lock);
    h->mark++;
    for (size_t i = 0; i < l->n; i++) {
        hep_t *e = entry_locked(h, l->eps[i].addr, true);
        if (e) /* else no memory: not checked, and never ejected */
            e->mark = h->mark;
    }
    for (hep_t *e = h->all; e; e = e->all_next) {
        bool listed = e->mark == h->mark;
        uint32_t f = atomic_load(&e->flags);
        if (listed && !(f & F_LISTED)) {
            /* new, or back: starts healthy with a clean slate (haproxy starts servers up) */
            e->passes = e->fails = 0;
            e->last_ok = true;
            atomic_fetch_or(&e->flags, F_LISTED);
            changed = true;
        } else if (!listed && (f & F_LISTED)) {
            uint32_t old = atomic_fetch_and(&e->flags, ~(F_LISTED | F_OUT));
            if (old & F_DOWN)
                atomic_fetch_sub(&h->ndown, 1);
            if (old & F_EJECTED)
                atomic_fetch_sub(&h->nejected, 1);
            atomic_store(&e->ejected_until_ms, 0);
            changed = true;
        }
        if (!listed)
            continue;
        nl++;
        if (h->o.kind != MICA_HEALTH_NONE && !e->checking) {
            e->checking = true;
            if (mica_go(check_loop, e) != 0) {
                e->checking = false;
                mica__log_warn("health: cannot start a check", "endpoint", e->addr, "error",
                               mica_strerror(MICA_ENOMEM));
            }
        }
    }
    atomic_store(&h->nlisted, nl);
    pthread_mutex_unlock(&h->lock);
    if (changed)
        bump(h);
}

/* ---- the home coroutine: follows the list, returns ejected endpoints ------------------ */

static void home(int worker, void *arg)
{
    mica_health_t *h = arg;
    if (worker != 0)
        return;
    int rc = mica_resolver_start(h->res);
    if (rc != 0)
        mica__log_warn("health: cannot start the resolver", "error", mica_strerror(rc));
    /* ejections are returned within a tenth of the base ejection time (at most 100 ms late) */
    int64_t tick = h->o.base_ejection_ms / 10;
    tick = tick < 5 ? 5 : tick > 100 ? 100 : tick;
    uint64_t gen = 0;
    while (!mica_worker_stopping()) {
        mica_event_reset(&h->changed);
        if (mica_resolver_generation(h->res) != gen) {
            mica_endpoints_t *l = mica_resolver_get(h->res);
            if (l) {
                gen = l->generation;
                apply_list(h, l);
            }
            mica_endpoints_unref(l);
        }
        if (atomic_load(&h->nejected) || atomic_load(&h->ever_ejected))
            sweep(h, mica_now_ms());
        if (mica_event_wait(&h->changed, NULL, mica_deadline_in(tick)) == MICA_ECANCELED)
            break;
    }
    /* The drain began: the checks' naps end. (Noticed here rather than in an on_stop hook,
     * so that mica_health_new() registers one hook, last, and a failure leaves none behind.) */
    atomic_store(&h->stopping, true);
    mica_event_set(&h->stop);
}

static const char *kind_name(mica_health_kind_t k)
{
    static const char *names[] = {"none", "tcp", "http", "grpc"};
    return names[k];
}

int mica_health_new(mica_health_t **out, mica_runtime_t *rt, const char *target,
                    const mica_health_opts_t *opts)
{
    if (!out || !rt || !target)
        return MICA_EINVAL;
    mica_health_opts_t o = opts ? *opts : (mica_health_opts_t){0};
    int rc = defaults(&o);
    if (rc != 0)
        return rc;
    mica_health_t *h = mica__calloc(1, sizeof(*h));
    if (!h)
        return MICA_ENOMEM;
    pthread_mutex_init(&h->lock, NULL);
    h->rt = rt;
    h->rand = (uint64_t)(uintptr_t)h * 0x9E3779B97F4A7C15u | 1;
    h->http_path = mica__strdup(o.http_path);
    h->grpc_service = mica__strdup(o.grpc_service);
    if (!h->http_path || !h->grpc_service) {
        rc = MICA_ENOMEM;
        goto fail;
    }
    o.http_path = h->http_path;
    o.grpc_service = h->grpc_service;
    h->o = o;
    /* The check client's back-off never outlasts an interval: a returning endpoint is
     * tried on its next check, not up to 30 s later. */
    if (o.kind == MICA_HEALTH_HTTP) {
        mica_http_client_opts_t co = {.max_conns_per_endpoint = 2, .max_idle_per_endpoint = 1,
                                      .connect_timeout_ms = o.timeout_ms,
                                      .response_timeout_ms = o.timeout_ms,
                                      .body_timeout_ms = o.timeout_ms, .max_body_bytes = 65536,
                                      .picker = &pin_ops, .picker_conf = h,
                                      .backoff_max_ms = o.interval_ms};
        if ((rc = mica_http_client_new(&h->hc, rt, target, &co)) != 0)
            goto fail;
        h->res = mica_http_client_resolver(h->hc);
    } else if (o.kind == MICA_HEALTH_GRPC) {
        mica_grpc_client_opts_t co = {.conns_per_worker = 1, .connect_timeout_ms = o.timeout_ms,
                                      .max_message_bytes = 4096, .picker = &pin_ops,
                                      .picker_conf = h, .backoff_max_ms = o.interval_ms};
        if ((rc = mica_grpc_client_new(&h->gc, rt, target, &co)) != 0)
            goto fail;
        h->res = mica_grpc_client_resolver(h->gc);
    } else {
        if ((rc = mica_resolver_new(&h->res, rt, target, NULL)) != 0)
            goto fail;
        h->own_res = true;
    }
    if ((rc = mica_resolver_watch(h->res, &h->changed)) != 0)
        goto fail;
    if ((rc = mica_runtime_on_start(rt, home, h)) != 0) {
        mica_resolver_unwatch(h->res, &h->changed);
        goto fail;
    }
    char iv[24];
    snprintf(iv, sizeof(iv), "%d", o.interval_ms);
    mica__log_info("health: following", "target", target, "check", kind_name(o.kind),
                   "interval_ms", iv);
    *out = h;
    return 0;
fail:
    mica_http_client_free(h->hc);
    mica_grpc_client_free(h->gc);
    if (h->own_res)
        mica_resolver_free(h->res);
    mica__free(h->http_path);
    mica__free(h->grpc_service);
    pthread_mutex_destroy(&h->lock);
    mica__free(h);
    return rc;
}

static void collect(mica_collect_t *out, void *arg);

void mica_health_free(mica_health_t *h)
{
    if (!h)
        return;
    if (h->export_reg)
        mica_metrics_remove_collector(h->export_reg, collect, h);
    mica_resolver_unwatch(h->res, &h->changed);
    mica_http_client_free(h->hc);
    mica_grpc_client_free(h->gc);
    if (h->own_res)
        mica_resolver_free(h->res);
    for (hep_t *e = h->all, *next; e; e = next) {
        next = e->all_next;
        mica__free(e);
    }
    mica__free(h->http_path);
    mica__free(h->grpc_service);
    pthread_mutex_destroy(&h->lock);
    mica__free(h);
}

void mica_health_stats(const mica_health_t *h, mica_health_stats_t *out)
{
    mica_health_t *m = (mica_health_t *)h; /* atomics are read, never written */
    *out = (mica_health_stats_t){
        .checks = atomic_load(&m->checks),
        .check_failures = atomic_load(&m->check_failures),
        .marked_down = atomic_load(&m->marked_down),
        .marked_up = atomic_load(&m->marked_up),
        .ejections = atomic_load(&m->ejections),
        .returns = atomic_load(&m->returns),
        .ejections_refused = atomic_load(&m->ejections_refused),
        .panics = atomic_load(&m->panics),
        .endpoints = atomic_load(&m->nlisted),
        .down = atomic_load(&m->ndown),
        .ejected = atomic_load(&m->nejected),
    };
}

void mica_health_endpoint(mica_health_t *h, const char *addr, mica_health_endpoint_t *out)
{
    *out = (mica_health_endpoint_t){0};
    hep_t *e = entry(h, addr, false);
    if (!e)
        return;
    uint32_t f = atomic_load(&e->flags);
    out->known = f & F_LISTED;
    out->down = f & F_DOWN;
    out->ejected = f & F_EJECTED;
    out->times_ejected = atomic_load(&e->times_ejected);
    out->ejected_until_ms = out->ejected ? atomic_load(&e->ejected_until_ms) : 0;
}

/* ---- metrics ------------------------------------------------------------------------- */

static void sample(mica_collect_t *out, mica_metric_type_t type, const char *metric,
                   const char *help, const char *target, uint64_t v)
{
    const char *l[] = {"target"}, *val[] = {target};
    mica_collect_sample(out, type, metric, help, l, val, 1, (double)v);
}

static void collect(mica_collect_t *out, void *arg)
{
    mica_health_t *h = arg;
    mica_health_stats_t s;
    mica_health_stats(h, &s);
    const char *t = h->export_name;
    const mica_metric_type_t C = MICA_METRIC_COUNTER, G = MICA_METRIC_GAUGE;
    sample(out, C, "mica_health_checks_total", "Active health checks run.", t, s.checks);
    sample(out, C, "mica_health_check_failures_total", "Active health checks failed.", t,
           s.check_failures);
    sample(out, C, "mica_health_marked_down_total", "Endpoints taken out by `fall` failed checks.",
           t, s.marked_down);
    sample(out, C, "mica_health_marked_up_total", "Endpoints brought back by `rise` passed checks.",
           t, s.marked_up);
    sample(out, C, "mica_health_ejections_total", "Endpoints ejected by outlier detection.", t,
           s.ejections);
    sample(out, C, "mica_health_returns_total", "Ejected endpoints back after their time.", t,
           s.returns);
    sample(out, C, "mica_health_ejections_refused_total",
           "Ejections max_ejection_pct did not allow.", t, s.ejections_refused);
    sample(out, C, "mica_health_panics_total",
           "Times a worker's picker found too few healthy endpoints and used all.", t, s.panics);
    sample(out, G, "mica_health_endpoints", "Endpoints followed.", t, s.endpoints);
    sample(out, G, "mica_health_endpoints_down", "Endpoints out by active checks.", t, s.down);
    sample(out, G, "mica_health_endpoints_ejected", "Endpoints ejected.", t, s.ejected);
    const char *l[] = {"target", "endpoint"};
    pthread_mutex_lock(&h->lock);
    for (hep_t *e = h->all; e; e = e->all_next) {
        uint32_t f = atomic_load(&e->flags);
        if (!(f & F_LISTED))
            continue;
        const char *val[] = {t, e->addr};
        mica_collect_sample(out, G, "mica_health_endpoint_healthy",
                            "1 if the endpoint is neither down nor ejected, else 0.", l, val, 2,
                            (f & F_OUT) ? 0 : 1);
    }
    pthread_mutex_unlock(&h->lock);
}

int mica_health_export_metrics(mica_health_t *h, mica_metrics_t *reg, const char *name)
{
    if (!h || !name || !*name || strlen(name) >= sizeof(h->export_name) || h->export_reg)
        return MICA_EINVAL;
    mica_metrics_t *r = reg ? reg : mica_metrics_default();
    memcpy(h->export_name, name, strlen(name) + 1);
    int rc = mica_metrics_add_collector(r, collect, h);
    if (rc != 0)
        return rc;
    h->export_reg = r;
    return 0;
}

/* ---- the failover picker ------------------------------------------------------------ */

/*
 * One worker's state. Per endpoint the client's table carries the entry
 * (picker_ptr) and whether it is in the caller's zone (picker_i64), both set
 * by update. rebuild() sorts the indexes of the endpoints kept into two
 * tiers, the caller's zone and the others, and computes the local tier's
 * share of the calls (Envoy's zone-aware routing, simplified: the healthy
 * share of the local zone times the overprovisioning factor). It runs when
 * the list or any verdict changed, never per pick.
 */
typedef struct fo {
    mica_health_t *h;
    const char *zone;
    uint32_t overprov_pct;
    size_t n, cap;
    int *tier[2]; /* [0]: the caller's zone; [1]: the others (or every zone in panic) */
    size_t ntier[2], rr[2];
    uint32_t local_permille;
    uint64_t gen;
    bool stale, panic;
    uint64_t rng;
} fo_t;

static int fo_create(void **state, const void *conf)
{
    const mica_failover_conf_t *c = conf;
    fo_t *fo = mica__calloc(1, sizeof(*fo));
    if (!fo)
        return MICA_ENOMEM;
    if (c) {
        fo->h = c->health;
        fo->zone = c->zone && *c->zone ? c->zone : NULL;
        fo->overprov_pct = c->overprovision_pct > 0 ? (uint32_t)c->overprovision_pct : 140;
    } else {
        fo->overprov_pct = 140;
    }
    int w = mica_worker_id();
    fo->rng = ((uint64_t)(uintptr_t)fo ^ (uint64_t)(w + 1) * 0x9E3779B97F4A7C15u) | 1;
    fo->rr[0] = fo->rr[1] = w > 0 ? (size_t)w * 7919 : 0;
    fo->stale = true;
    *state = fo;
    return 0;
}

static void fo_destroy(void *state)
{
    fo_t *fo = state;
    if (!fo)
        return;
    mica__free(fo->tier[0]);
    mica__free(fo);
}

static void fo_update(void *state, mica_picker_endpoint_t *const *eps, size_t n)
{
    fo_t *fo = state;
    if (n > fo->cap) {
        int *t = mica__malloc(2 * n * sizeof(int));
        if (t) {
            mica__free(fo->tier[0]);
            fo->tier[0] = t;
            fo->tier[1] = t + n;
            fo->cap = n;
        }
    }
    if (fo->h)
        pthread_mutex_lock(&fo->h->lock);
    for (size_t i = 0; i < n; i++) {
        const mica_endpoint_t *ep = eps[i]->ep;
        eps[i]->picker_ptr = fo->h && ep ? entry_locked(fo->h, ep->addr, true) : NULL;
        eps[i]->picker_i64 = fo->zone && ep && ep->zone && strcmp(ep->zone, fo->zone) == 0;
    }
    if (fo->h)
        pthread_mutex_unlock(&fo->h->lock);
    fo->n = n;
    fo->stale = true;
}

static bool is_out(const mica_picker_endpoint_t *e)
{
    const hep_t *x = e->picker_ptr;
    return x && (atomic_load_explicit(&x->flags, memory_order_relaxed) & F_OUT);
}

static void rebuild(fo_t *fo, mica_picker_endpoint_t *const *eps, size_t n, uint64_t gen)
{
    size_t local = 0, local_ok = 0, ok = 0;
    for (size_t i = 0; i < n; i++) {
        bool out = is_out(eps[i]);
        ok += !out;
        if (eps[i]->picker_i64) {
            local++;
            local_ok += !out;
        }
    }
    int pct = fo->h ? fo->h->o.panic_threshold_pct : -1;
    bool panic = (pct >= 0 && ok * 100 < (size_t)pct * n) || ok == 0;
    if (panic && !fo->panic && fo->h && n) {
        ctr(&fo->h->panics);
        char a[24], b[24];
        snprintf(a, sizeof(a), "%zu", ok);
        snprintf(b, sizeof(b), "%zu", n);
        mica__log_warn("health: panic: too few healthy endpoints, using all", "healthy", a,
                       "endpoints", b);
    }
    fo->panic = panic;
    size_t k0 = 0, k1 = 0;
    for (size_t i = 0; i < n; i++) {
        if (panic) {
            fo->tier[1][k1++] = (int)i; /* every endpoint of every zone */
        } else if (!is_out(eps[i])) {
            if (eps[i]->picker_i64)
                fo->tier[0][k0++] = (int)i;
            else
                fo->tier[1][k1++] = (int)i;
        }
    }
    fo->ntier[0] = k0;
    fo->ntier[1] = k1;
    uint64_t share = local ? (uint64_t)local_ok * fo->overprov_pct * 10 / local : 0;
    if (!k1 || share > 1000)
        share = k0 ? 1000 : 0;
    if (!k0)
        share = 0;
    fo->local_permille = (uint32_t)share;
    fo->gen = gen;
    fo->stale = false;
}

static inline bool usable(const mica_picker_endpoint_t *e, int64_t *now)
{
    if (e->state != MICA_ENDPOINT_FAILING)
        return true;
    if (!*now)
        *now = mica_now_ms();
    return e->failing_until_ms <= *now;
}

/* Round robin within tier t, skipping endpoints the client backs off from; -1: none usable. */
static int rr_tier(fo_t *fo, int t, mica_picker_endpoint_t *const *eps, int64_t *now)
{
    size_t nt = fo->ntier[t];
    if (!nt)
        return -1;
    size_t j = fo->rr[t] % nt;
    for (size_t k = 0; k < nt; k++) {
        int i = fo->tier[t][j];
        if (++j == nt)
            j = 0;
        if (usable(eps[i], now)) {
            fo->rr[t] = j;
            return i;
        }
    }
    return -1;
}

static int fo_pick(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                   const mica_pick_info_t *info)
{
    fo_t *fo = state;
    (void)info;
    if (n == 0)
        return -1;
    if (n != fo->n || n > fo->cap) {
        /* no table for this list (no memory at update): plain round robin */
        int64_t now = 0;
        for (size_t k = 0; k < n; k++) {
            size_t i = fo->rr[1]++ % n;
            if (!is_out(eps[i]) && usable(eps[i], &now))
                return (int)i;
        }
        return (int)(fo->rr[1] % n);
    }
    uint64_t gen = fo->h ? atomic_load_explicit(&fo->h->verdict_gen, memory_order_acquire) : 0;
    if (fo->stale || gen != fo->gen)
        rebuild(fo, eps, n, gen);
    int t = 1;
    if (fo->local_permille >= 1000)
        t = 0;
    else if (fo->local_permille) {
        uint64_t r = (xs64(&fo->rng) >> 32) * 1000 >> 32; /* 0..999 without a division */
        t = r < fo->local_permille ? 0 : 1;
    }
    int64_t now = 0;
    int i = rr_tier(fo, t, eps, &now);
    if (i < 0)
        i = rr_tier(fo, t ^ 1, eps, &now);
    if (i < 0) /* all backing off: one anyway, the client fails the call with its error */
        i = fo->ntier[t] ? fo->tier[t][fo->rr[t]++ % fo->ntier[t]]
                         : fo->tier[t ^ 1][fo->rr[t ^ 1]++ % fo->ntier[t ^ 1]];
    return i;
}

static void fo_done(void *state, mica_picker_endpoint_t *ep, int code, uint32_t latency_us)
{
    fo_t *fo = state;
    (void)latency_us;
    if (fo->h && ep->picker_ptr)
        outcome(fo->h, ep->picker_ptr, code);
}

const mica_picker_ops_t mica_picker_failover = {
    .name = "failover",
    .create = fo_create,
    .update = fo_update,
    .pick = fo_pick,
    .done = fo_done,
    .destroy = fo_destroy,
};

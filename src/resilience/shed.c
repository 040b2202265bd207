/* SPDX-License-Identifier: MIT */
/*
 * Adaptive load shedding: a worker that is saturated refuses new requests
 * while it already holds more in flight than it can usefully work on.
 *
 * The estimate is Little's law, as Kratos' BBR limiter and go-zero's
 * adaptive shedder apply it: a server that completed at most P requests per
 * bucket (of the last window's buckets) with a best mean latency of R keeps
 * P * buckets-per-second * R requests busy; more in flight only queue. So a
 * request is refused when
 *
 *     saturated  and  inflight > max(1, ceil(maxPass * bucketsPerSec * minRT))
 *
 * (and above a floor: the requests the worker completes in queue_ms, 5 ms, at
 * its best rate -- see below) where "saturated" is a CPU signal -- the worker's CPU demand at or above
 * the threshold (90 %) now or within the cool-off (1 s: the in-flight limit
 * holds a little longer, so the load does not flap around the threshold).
 * Kratos and go-zero count the cool-off from the last refusal instead; then
 * refusals keep themselves going: with bursty arrivals the in-flight count
 * passes the limit at every burst, and a worker idle half the time went on
 * refusing two thirds of its requests in bench/load/shed.sh. The CPU signal keeps an idle server with a
 * burst of slow requests (waiting on a database, not on the CPU) from
 * shedding: there, more in flight is not more queueing.
 *
 * Per worker, not per process: a worker is a single-threaded server with
 * its own queue, so its own throughput, latency and in-flight count are the
 * right terms, and counting them touches no shared line. CPU demand is the
 * worker thread's, from /proc/thread-self/schedstat: time on a CPU plus time
 * runnable but waiting for one, over wall time, sampled every sample_ms
 * (when a request comes: no timer) into an EWMA (alpha 1/2: 90 % within
 * ~400 ms of saturation). Run-queue time matters on shared machines: a
 * worker that gets only 60 % of a CPU because of its neighbours is still
 * saturated; its CPU time alone would never reach the threshold. Where
 * schedstat is missing, getrusage(RUSAGE_THREAD) gives CPU time alone.
 *
 * The estimate feeds on itself under a steady flood (see limit_now()), so
 * while saturated each worker probes it once a window: BBR's ProbeRTT.
 *
 * The floor. A worker that is handed requests in batches -- HTTP/2 and gRPC
 * clients multiplexing hundreds of streams, dispatched together at each
 * read -- holds the whole batch in flight while it serves them in a
 * millisecond: the estimate is then the batch itself, noise pushes the
 * count past it, and the probe (a limit of 1) refused everything for up to
 * a fifth of each window. A closed-loop h2load at 50 x 10 streams on one
 * worker had 63 % of its requests shed and served a quarter of what it did
 * without shedding. So neither the limit nor the probe goes below the
 * requests the worker completes in queue_ms at its best rate (CoDel's
 * 5 ms target): queueing up to 5 ms is not overload; past it under a
 * flood, shedding works as before, and the estimate cannot ratchet up
 * (a queue held to the floor measures a latency of about the floor).
 *
 * Refusals happen at the request's head (an HTTP gate): 503 or UNAVAILABLE,
 * the body unread, no coroutine spent on a handler. One log line when the
 * process starts shedding (the first worker) and one when it stops (the
 * last worker's cool-off ends, noticed at its next request or completion).
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/log.h"
#include "mica/config.h"
#include "resilience/limit_internal.h"

#define MAX_WORKERS 1024
#define MAX_BUCKETS 1000
#define NEVER INT64_MIN
#define ALPHA 0.5

typedef struct bucket {
    uint32_t pass;  /* requests completed in the bucket */
    uint64_t rt_us; /* their latencies' sum */
} bucket_t;

/* One worker's shedder: written by that worker only; the _Atomic fields are read by stats. */
typedef struct wshed {
    int id;
    int64_t inflight;
    int64_t limit;  /* the in-flight limit; 0: no estimate yet (never shed) */
    int64_t floor;  /* ... never below: what the worker completes in queue_ms */
    int64_t bucket; /* the current bucket's number: ms / bucket_ms */
    int64_t next_sample_ms;
    int64_t last_drop_ms;
    int64_t last_hot_ms;    /* the last sample at or above the CPU threshold */
    int64_t min_rt_us;      /* the estimate's latency term (-1: none) */
    int64_t next_probe_ms;  /* when the next probe may begin */
    int64_t probe_start_ms, probe_until_ms; /* the current or last probe */
    bool shedding;
    double cpu; /* EWMA of CPU demand, 0..1 */
    bool sampled;
    int64_t prev_wall_ns;
    uint64_t prev_busy_ns;
    int fd; /* /proc/thread-self/schedstat, or -1 */
    bucket_t *ring;
    void *mem;
    _Atomic uint64_t admitted, shed;
    _Atomic int64_t pub_inflight, pub_limit, pub_cpu_permille, pub_min_rt_us, pub_max_pass;
} __attribute__((aligned(64))) wshed_t;

#define FAILED ((wshed_t *)1) /* a worker that could not get one: never shed there */

struct mica_shed {
    mica_shed_opts_t o;
    int nbuckets;
    atomic_int force_cpu;         /* tests: the CPU demand to assume (permille), -1: measure */
    atomic_int shedding;          /* workers shedding now */
    _Atomic uint64_t episodes;    /* times the process started shedding */
    _Atomic uint64_t shed_before; /* shed total when the current episode began */
    _Atomic(wshed_t *) w[MAX_WORKERS];
};

static const mica_http_gate_ops_t gate_ops;

/* ---- CPU demand --------------------------------------------------------------------------- */

/* The worker thread's busy time (ns): on a CPU, plus waiting for one where the kernel says. */
static uint64_t busy_ns(wshed_t *w)
{
    if (w->fd >= 0) {
        char buf[128];
        ssize_t n = pread(w->fd, buf, sizeof(buf) - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            char *end;
            unsigned long long run = strtoull(buf, &end, 10);
            unsigned long long wait = strtoull(end, NULL, 10);
            return run + wait;
        }
        close(w->fd);
        w->fd = -1;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0)
        return 0;
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000 +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000;
}

/* ---- per-worker state ------------------------------------------------------------------------ */

static void publish_estimates(wshed_t *w, int64_t min_rt_us, int64_t max_pass)
{
    atomic_store_explicit(&w->pub_limit, w->limit, memory_order_relaxed);
    atomic_store_explicit(&w->pub_min_rt_us, min_rt_us, memory_order_relaxed);
    atomic_store_explicit(&w->pub_max_pass, max_pass, memory_order_relaxed);
}

/* The limit from the completed buckets (not the current one, which is still filling). */
static void estimate(mica_shed_t *sh, wshed_t *w)
{
    int nb = sh->nbuckets, cur = (int)(w->bucket % nb);
    uint32_t max_pass = 0;
    double min_rt = INFINITY;
    for (int i = 0; i < nb; i++) {
        const bucket_t *b = &w->ring[i];
        if (i == cur || !b->pass)
            continue;
        if (b->pass > max_pass)
            max_pass = b->pass;
        double rt = (double)b->rt_us / b->pass;
        if (rt < min_rt)
            min_rt = rt;
    }
    if (!max_pass) {
        w->limit = 0;
        w->min_rt_us = -1;
        publish_estimates(w, -1, 0);
        return;
    }
    w->min_rt_us = (int64_t)min_rt;
    double per_s = 1000.0 / sh->o.bucket_ms;
    w->limit = mica__ceil((double)max_pass * per_s * min_rt / 1e6);
    if (w->limit < 1)
        w->limit = 1;
    w->floor = sh->o.queue_ms > 0 ? mica__ceil((double)max_pass * per_s * sh->o.queue_ms / 1e3) : 1;
    if (w->limit < w->floor)
        w->limit = w->floor;
    publish_estimates(w, (int64_t)min_rt, max_pass);
}

/* Moves to the bucket of `now_ms`, clearing the ones skipped. */
static void roll(mica_shed_t *sh, wshed_t *w, int64_t now_ms)
{
    int64_t b = now_ms / sh->o.bucket_ms;
    if (b == w->bucket)
        return;
    int64_t gap = b - w->bucket;
    if (gap < 0 || gap > sh->nbuckets)
        gap = sh->nbuckets;
    for (int64_t k = 1; k <= gap; k++)
        w->ring[(b - gap + k) % sh->nbuckets] = (bucket_t){0};
    w->bucket = b;
    estimate(sh, w);
}

static uint64_t shed_total(const mica_shed_t *sh)
{
    uint64_t n = 0;
    for (int i = 0; i < MAX_WORKERS; i++) {
        wshed_t *w = atomic_load_explicit(&sh->w[i], memory_order_acquire);
        if (w && w != FAILED)
            n += mica__get(&w->shed);
    }
    return n;
}

static void start_episode(mica_shed_t *sh, wshed_t *w)
{
    w->shedding = true;
    if (atomic_fetch_add(&sh->shedding, 1) != 0)
        return;
    mica__add(&sh->episodes, 1);
    atomic_store(&sh->shed_before, shed_total(sh));
    char id[12], cpu[12], infl[24], lim[24];
    snprintf(id, sizeof(id), "%d", w->id);
    snprintf(cpu, sizeof(cpu), "%d", (int)(w->cpu * 100 + 0.5));
    snprintf(infl, sizeof(infl), "%lld", (long long)w->inflight);
    snprintf(lim, sizeof(lim), "%lld", (long long)w->limit);
    mica__log_warn("load shedding started: refusing requests beyond the in-flight limit",
                   "worker", id, "cpu_pct", cpu, "inflight", infl, "limit", lim);
}

static void end_episode(mica_shed_t *sh, wshed_t *w)
{
    w->shedding = false;
    w->next_probe_ms = 0; /* the next episode begins with a probe */
    if (atomic_fetch_sub(&sh->shedding, 1) != 1)
        return;
    char n[24];
    snprintf(n, sizeof(n), "%llu", (unsigned long long)(shed_total(sh) - atomic_load(&sh->shed_before)));
    mica__log_info("load shedding stopped", "shed", n);
}

/* Samples CPU demand every sample_ms; ends an episode whose cool-off has passed. */
static void sample(mica_shed_t *sh, wshed_t *w, int64_t now_ms)
{
    if (now_ms < w->next_sample_ms)
        return;
    w->next_sample_ms = now_ms + sh->o.sample_ms;
    int64_t wall = mica__mono_ns();
    uint64_t busy = busy_ns(w);
    if (w->sampled && wall > w->prev_wall_ns) {
        double d = (double)(busy - w->prev_busy_ns) / (double)(wall - w->prev_wall_ns);
        w->cpu = w->cpu * (1 - ALPHA) + (d > 1 ? 1 : d) * ALPHA;
        atomic_store_explicit(&w->pub_cpu_permille, (int64_t)(w->cpu * 1000),
                              memory_order_relaxed);
    }
    int forced = atomic_load_explicit(&sh->force_cpu, memory_order_relaxed);
    if (forced >= 0) {
        w->cpu = forced / 1000.0;
        atomic_store_explicit(&w->pub_cpu_permille, forced, memory_order_relaxed);
    }
    if (w->cpu * 100 >= sh->o.cpu_threshold_pct)
        w->last_hot_ms = now_ms;
    w->sampled = true;
    w->prev_wall_ns = wall;
    w->prev_busy_ns = busy;
    if (w->shedding && now_ms - w->last_drop_ms >= sh->o.cool_off_ms)
        end_episode(sh, w);
}

/* This worker's state, made on its first request (on its own thread: thread-self is it). */
static wshed_t *worker(mica_shed_t *sh)
{
    int id = mica_worker_id();
    if (id < 0 || id >= MAX_WORKERS)
        return NULL;
    wshed_t *w = atomic_load_explicit(&sh->w[id], memory_order_relaxed);
    if (w)
        return w == FAILED ? NULL : w;
    void *mem;
    w = mica__calloc_lines(sizeof(*w), &mem);
    bucket_t *ring = w ? mica__calloc((size_t)sh->nbuckets, sizeof(bucket_t)) : NULL;
    if (!ring) {
        mica__free(mem);
        atomic_store_explicit(&sh->w[id], FAILED, memory_order_release);
        return NULL;
    }
    w->mem = mem;
    w->ring = ring;
    w->id = id;
    w->last_drop_ms = w->last_hot_ms = NEVER;
    w->min_rt_us = -1;
    w->fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    w->bucket = mica__mono_ns() / 1000000 / sh->o.bucket_ms;
    atomic_store_explicit(&w->pub_min_rt_us, -1, memory_order_relaxed);
    atomic_store_explicit(&sh->w[id], w, memory_order_release);
    return w;
}

/*
 * While saturated, the limit is probed now and then: for a moment (until
 * the queue has drained, then two buckets) at most the floor of 2 is in
 * flight, so the latency of a request that finds no queue is measured
 * again. Without it the estimate feeds on itself: with L in flight a request
 * waits behind L others, so the measured latency says L is right, whatever
 * L is -- and a queue built before the first estimate would stay. It is TCP
 * BBR's ProbeRTT; it costs a CPU-bound worker nothing (one request runs,
 * one waits), an I/O-bound one a few percent of one window's throughput.
 */
static int64_t limit_now(mica_shed_t *sh, wshed_t *w, int64_t now_ms)
{
    if (now_ms >= w->next_probe_ms) {
        w->probe_start_ms = now_ms;
        w->probe_until_ms = now_ms + 2 * sh->o.bucket_ms;
        w->next_probe_ms = now_ms + sh->o.window_ms;
    }
    if (now_ms >= w->probe_until_ms)
        return w->limit;
    /* Two buckets measured after the queue has drained to the floor (within a fifth
     * of the window: long-lived streams may never let it). */
    if (w->inflight > w->floor + 1 && now_ms - w->probe_start_ms < sh->o.window_ms / 5)
        w->probe_until_ms = now_ms + 2 * sh->o.bucket_ms;
    return w->floor > 1 ? w->floor : 1;
}

/* Single-writer counters (the worker's own): a load and a store, no locked add. */
static inline void bump(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* now_ns: CLOCK_MONOTONIC (not mica_now_ms(): a loop busy with long handlers refreshes it
 * rarely). */
static int admit(mica_shed_t *sh, wshed_t *w, int64_t now_ns)
{
    int64_t now_ms = now_ns / 1000000;
    roll(sh, w, now_ms);
    sample(sh, w, now_ms);
    /* Saturated now, or within cool_off of it (measured from the CPU, not from the last
     * refusal: refusals would keep themselves going on bursts the worker could absorb). */
    bool hot = w->cpu * 100 >= sh->o.cpu_threshold_pct ||
               (w->last_hot_ms != NEVER && now_ms - w->last_hot_ms < sh->o.cool_off_ms);
    if (hot && w->limit > 0 && w->inflight > 1 && w->inflight > limit_now(sh, w, now_ms)) {
        w->last_drop_ms = now_ms;
        bump(&w->shed);
        if (!w->shedding)
            start_episode(sh, w);
        return MICA_EOVERLOAD;
    }
    w->inflight++;
    atomic_store_explicit(&w->pub_inflight, w->inflight, memory_order_relaxed);
    bump(&w->admitted);
    return 0;
}

static void done(mica_shed_t *sh, wshed_t *w, int64_t now_ns, int64_t rt_us)
{
    int64_t now_ms = now_ns / 1000000;
    roll(sh, w, now_ms);
    bucket_t *b = &w->ring[w->bucket % sh->nbuckets];
    b->pass++;
    b->rt_us += (uint64_t)(rt_us > 0 ? rt_us : 0);
    w->inflight--;
    atomic_store_explicit(&w->pub_inflight, w->inflight, memory_order_relaxed);
    sample(sh, w, now_ms);
}

/* ---- the HTTP gate ------------------------------------------------------------------------ */

static int gate_admit(mica_http_req_t *req, int64_t now_ns, void *arg)
{
    mica_shed_t *sh = arg;
    wshed_t *w = worker(sh);
    return w ? admit(sh, w, now_ns) : 0;
}

static int gate_refuse(mica_http_req_t *req, mica_http_resp_t *resp, int why, void *arg)
{
    return mica__refuse(req, resp, 503, MICA_GRPC_UNAVAILABLE, "server overloaded: request shed",
                        -1);
}

static void gate_done(mica_http_req_t *req, int64_t now_ns, int64_t elapsed_ns, void *arg)
{
    mica_shed_t *sh = arg;
    int id = mica_worker_id();
    wshed_t *w = id >= 0 && id < MAX_WORKERS ? atomic_load_explicit(&sh->w[id], memory_order_relaxed)
                                             : NULL;
    if (w && w != FAILED)
        done(sh, w, now_ns, elapsed_ns / 1000);
}

static const mica_http_gate_ops_t gate_ops = {gate_admit, gate_refuse, gate_done};

/* ---- the API ------------------------------------------------------------------------------ */

size_t mica_shed_settings(mica_shed_opts_t *o, bool *on, mica_setting_t *out, size_t cap)
{
    const mica_setting_t all[] = {
        {"shed", MICA_SETTING_BOOL, "true",
         "adaptive load shedding: 503 / UNAVAILABLE when a worker saturates", on, 0, 0, NULL},
        {"shed_cpu_pct", MICA_SETTING_INT, "90", "a worker is saturated from this CPU demand on",
         &o->cpu_threshold_pct, 1, 100, NULL},
        {"shed_window_ms", MICA_SETTING_MS, "5s", "throughput and latency are remembered this long",
         &o->window_ms, 100, 600000, NULL},
        {"shed_cool_off_ms", MICA_SETTING_MS, "1s",
         "the in-flight limit holds this long after saturation", &o->cool_off_ms, 1, 600000,
         NULL},
        {"shed_queue_ms", MICA_SETTING_INT, "5",
         "queue a worker may hold before it sheds, in ms at its best rate (-1: none)",
         &o->queue_ms, -1, 60000, NULL},
    };
    size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = all[i];
    return n;
}

int mica_shed_opts_from_env(mica_shed_opts_t *o)
{
    /* Read into a zeroed copy, then fill only what the caller left unset. */
    mica_shed_opts_t env = {0};
    bool on = true;
    mica_setting_t e[MICA_SHED_SETTINGS];
    size_t n = mica_shed_settings(&env, &on, e, MICA_SHED_SETTINGS);
    if (mica_config_from_env(e, n) != 0)
        return MICA_EINVAL;
    if (!on)
        o->disabled = true;
    if (!o->cpu_threshold_pct)
        o->cpu_threshold_pct = env.cpu_threshold_pct;
    if (!o->window_ms)
        o->window_ms = env.window_ms;
    if (!o->cool_off_ms)
        o->cool_off_ms = env.cool_off_ms;
    if (!o->queue_ms)
        o->queue_ms = env.queue_ms;
    return 0;
}

int mica_shed_new(mica_shed_t **out, const mica_shed_opts_t *opts)
{
    mica_shed_opts_t o = opts ? *opts : (mica_shed_opts_t){0};
    if (!out || o.cpu_threshold_pct < 0 || o.cpu_threshold_pct > 100 || o.window_ms < 0 ||
        o.bucket_ms < 0 || o.cool_off_ms < 0 || o.sample_ms < 0 || o.queue_ms < -1)
        return MICA_EINVAL;
    if (!o.queue_ms)
        o.queue_ms = 5;
    if (!o.cpu_threshold_pct)
        o.cpu_threshold_pct = 90;
    if (!o.window_ms)
        o.window_ms = 5000;
    if (!o.bucket_ms)
        o.bucket_ms = 100;
    if (!o.cool_off_ms)
        o.cool_off_ms = 1000;
    if (!o.sample_ms)
        o.sample_ms = 100;
    int nb = o.window_ms / o.bucket_ms;
    if (nb < 2 || nb > MAX_BUCKETS)
        return MICA_EINVAL;
    mica_shed_t *sh = mica__calloc(1, sizeof(*sh));
    if (!sh)
        return MICA_ENOMEM;
    sh->o = o;
    sh->nbuckets = nb;
    atomic_init(&sh->force_cpu, -1);
    *out = sh;
    return 0;
}

int mica_shed_attach(mica_shed_t *sh, mica_http_server_t *srv)
{
    if (!sh || !srv)
        return MICA_EINVAL;
    return sh->o.disabled ? 0 : mica_http_gate(srv, &gate_ops, sh);
}

int mica_shed_allow(mica_shed_t *sh, int64_t *token)
{
    wshed_t *w = sh->o.disabled ? NULL : worker(sh);
    *token = -1;
    if (!w)
        return 0;
    int64_t now = mica__mono_ns();
    int rc = admit(sh, w, now);
    if (rc == 0)
        *token = now;
    return rc;
}

void mica_shed_done(mica_shed_t *sh, int64_t token)
{
    if (token < 0)
        return;
    int64_t now = mica__mono_ns();
    gate_done(NULL, now, now - token, sh);
}

void mica_shed_stats(const mica_shed_t *sh, mica_shed_stats_t *st)
{
    *st = (mica_shed_stats_t){.min_rt_us = -1};
    int64_t cpu = 0;
    for (int i = 0; i < MAX_WORKERS; i++) {
        wshed_t *w = atomic_load_explicit(&sh->w[i], memory_order_acquire);
        if (!w || w == FAILED)
            continue;
        st->admitted += mica__get(&w->admitted);
        st->shed += mica__get(&w->shed);
        int64_t v = atomic_load_explicit(&w->pub_inflight, memory_order_relaxed);
        st->inflight += v > 0 ? (uint64_t)v : 0;
        st->limit += (uint64_t)atomic_load_explicit(&w->pub_limit, memory_order_relaxed);
        st->max_pass += (uint64_t)atomic_load_explicit(&w->pub_max_pass, memory_order_relaxed);
        int64_t rt = atomic_load_explicit(&w->pub_min_rt_us, memory_order_relaxed);
        if (rt >= 0 && (st->min_rt_us < 0 || rt < st->min_rt_us))
            st->min_rt_us = rt;
        int64_t c = atomic_load_explicit(&w->pub_cpu_permille, memory_order_relaxed);
        if (c > cpu)
            cpu = c;
    }
    st->cpu_pct = (int)((cpu + 5) / 10);
    st->episodes = mica__get(&sh->episodes);
    st->shedding = atomic_load(&sh->shedding) > 0;
}

void mica__shed_force_cpu(mica_shed_t *sh, int permille)
{
    atomic_store(&sh->force_cpu, permille);
}

void mica_shed_free(mica_shed_t *sh)
{
    if (!sh)
        return;
    for (int i = 0; i < MAX_WORKERS; i++) {
        wshed_t *w = atomic_load(&sh->w[i]);
        if (!w || w == FAILED)
            continue;
        if (w->fd >= 0)
            close(w->fd);
        mica__free(w->ring);
        mica__free(w->mem);
    }
    mica__free(sh);
}

/* SPDX-License-Identifier: MIT */
/*
 * The rate limiter's cost per decision (include/mica/limit.h): one thread,
 * then two workers on one hot key (the cache line moves between cores at
 * every admission) and on keys of their own, for each algorithm, admitting
 * and refusing; and the shedder's allow/done pair. Prints ns per call.
 *
 *     taskset -c 0,1 build/bench/bench_limit
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mica/limit.h"
#include "mica/runtime.h"
#include "mica/sync.h"

#ifndef N
#define N 2000000
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct job {
    mica_limiter_t *l;
    mica_shed_t *sh;
    const char *key; /* NULL: a key per worker */
    mica_wg_t *wg;
    _Atomic long admitted;
};

static void take_loop(void *arg)
{
    struct job *j = arg;
    char own[16];
    snprintf(own, sizeof(own), "worker-%d", mica_worker_id());
    const char *key = j->key ? j->key : own;
    size_t len = strlen(key);
    long ok = 0;
    for (int i = 0; i < N; i++)
        ok += mica_limiter_take(j->l, key, len, 1, NULL) == 0;
    atomic_fetch_add(&j->admitted, ok);
    mica_wg_done(j->wg);
}

static void shed_loop(void *arg)
{
    struct job *j = arg;
    for (int i = 0; i < N; i++) {
        int64_t token;
        if (mica_shed_allow(j->sh, &token) == 0)
            mica_shed_done(j->sh, token);
    }
    mica_wg_done(j->wg);
}

struct run {
    mica_runtime_t *rt;
    int workers;
    void (*fn)(void *);
    struct job *job;
    double secs;
};

static void body(int worker, void *arg)
{
    struct run *r = arg;
    if (worker != 0)
        return;
    mica_wg_new(&r->job->wg);
    mica_wg_add(r->job->wg, r->workers);
    double t0 = now_s();
    for (int w = 0; w < r->workers; w++)
        mica_go_on(w, r->fn, r->job);
    mica_wg_wait(r->job->wg, NULL);
    r->secs = now_s() - t0;
    mica_wg_free(r->job->wg);
    mica_runtime_stop(r->rt);
}

/* Runs fn on `workers` workers, N calls each; returns ns per call (per worker). */
static double measure(int workers, void (*fn)(void *), struct job *job)
{
    struct run r = {.workers = workers, .fn = fn, .job = job};
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true};
    mica_runtime_new(&r.rt, &o);
    mica_runtime_on_start(r.rt, body, &r);
    mica_runtime_run(r.rt);
    mica_runtime_free(r.rt);
    return r.secs * 1e9 / N;
}

int main(void)
{
    static const char *names[] = {"token bucket", "GCRA", "sliding window"};
    printf("rate limiter, ns per mica_limiter_take() (%d calls per worker)\n", N);
    printf("%-15s %22s %22s %22s %22s\n", "", "1 worker, refusing", "1 worker, admitting",
           "2 workers, one key", "2 workers, own keys");
    for (int a = 0; a < 3; a++) {
        double r[4];
        for (int c = 0; c < 4; c++) {
            mica_limiter_t *l;
            /* c = 0: a limit far below the demand (nearly all refused); else far above. */
            mica_limiter_opts_t o = {.algo = a, .rate = c == 0 ? 1000 : 1e8,
                                     .burst = c == 0 ? 1000 : 1 << 20,
                                     .window_ms = c == 0 ? 1000 : 10};
            if (mica_limiter_new(&l, &o) != 0)
                return fprintf(stderr, "bench_limit: bad limiter settings\n"), 1;
            struct job j = {.l = l, .key = c == 3 ? NULL : "client"};
            r[c] = measure(c >= 2 ? 2 : 1, take_loop, &j);
            mica_limiter_free(l);
        }
        printf("%-15s %22.1f %22.1f %22.1f %22.1f\n", names[a], r[0], r[1], r[2], r[3]);
    }
    mica_shed_t *sh;
    if (mica_shed_new(&sh, NULL) != 0)
        return 1;
    struct job j = {.sh = sh};
    printf("shedder, ns per mica_shed_allow() + mica_shed_done(): %.1f\n",
           measure(1, shed_loop, &j));
    mica_shed_free(sh);
    return 0;
}

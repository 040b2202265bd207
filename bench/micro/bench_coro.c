/* SPDX-License-Identifier: MIT */
/*
 * Coroutine micro-benchmark: ns per context switch (a yield is two switches,
 * coroutine -> scheduler -> coroutine, plus the ready-queue push and pop),
 * and ns per spawn + run + exit. One worker, no I/O.
 *
 * Usage: bench_coro [iterations, default 10000000]
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mica/runtime.h"

static long iters = 10000000;
static double yield_ns, spawn_ns, pair_ns;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void nothing(void *arg)
{
    (*(long *)arg)++;
}

static void yielder(void *arg)
{
    long n = *(long *)arg;
    for (long i = 0; i < n; i++)
        mica_yield();
}

static void run(int worker, void *arg)
{
    /* One coroutine yielding alone: pure switch cost. */
    long n = iters;
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        mica_yield();
    yield_ns = (now_ns() - t0) / (double)n;

    /* Two coroutines alternating: what a ping-pong hand-off costs. */
    long half = iters / 2;
    mica_go(yielder, &half);
    t0 = now_ns();
    for (long i = 0; i < half; i++)
        mica_yield();
    pair_ns = (now_ns() - t0) / (double)half / 2;

    /* Spawn + first run + exit in batches of 1000, stacks from the pool. */
    long ran = 0, spawns = iters / 10 / 1000 * 1000;
    t0 = now_ns();
    for (long i = 0; i < spawns; i += 1000) {
        for (int j = 0; j < 1000; j++)
            mica_go(nothing, &ran);
        mica_yield();
    }
    spawn_ns = (now_ns() - t0) / (double)spawns;
    if (ran != spawns)
        abort();
    mica_runtime_stop(arg);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        iters = strtol(argv[1], NULL, 10);
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    if (mica_runtime_new(&rt, &o) != 0)
        return 1;
    mica_runtime_on_start(rt, run, rt);
    if (mica_runtime_run(rt) != 0)
        return 1;
    mica_runtime_free(rt);
    printf("coroutine yield (2 switches + queue): %6.1f ns\n", yield_ns);
    printf("coroutine switch:                     %6.1f ns\n", yield_ns / 2);
    printf("coroutine hand-off between two:       %6.1f ns\n", pair_ns);
    printf("coroutine spawn + run + exit:         %6.1f ns\n", spawn_ns);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * Balancer and breaker micro-benchmark: ns per pick of each balancer over 3,
 * 100 and 1,000 endpoints (with and without per-endpoint SRE breakers), the
 * done() that follows each call, and a breaker's check (allow + record) on
 * the call path. Runs on a worker, where mica_now_ms() is the loop's cached
 * clock, as on a client's call path. One line per figure:
 *
 *   pick <balancer> n=<endpoints> breaker=<none|sre>: <ns> ns (pick), <ns> ns (pick+done)
 *   breaker <sre|classic>: <ns> ns (allow+record), open: <ns> ns (refused allow)
 *
 * Usage: bench_balancer [scale]   (run it under `taskset -c 0`)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mica/balancer.h"
#include "mica/runtime.h"

static double scale = 1.0;
static mica_runtime_t *rt;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static long loops(long n)
{
    long k = (long)((double)n * scale);
    return k < 1000 ? 1000 : k;
}

#define MAXN 1000

static mica_endpoint_t ep[MAXN];
static mica_picker_endpoint_t pe[MAXN];
static mica_picker_endpoint_t *view[MAXN];
static char addr[MAXN][48];
static char keys[1024][16];

static void table(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(addr[i], sizeof(addr[i]), "10.%zu.%zu.1:50051", i / 256, i % 256);
        ep[i] = (mica_endpoint_t){.addr = addr[i], .weight = 1 + (uint32_t)(i % 3)};
        pe[i] = (mica_picker_endpoint_t){.ep = &ep[i], .state = MICA_ENDPOINT_READY};
        view[i] = &pe[i];
    }
}

static void bench_pick(const char *name, const mica_picker_ops_t *ops, size_t n, bool breakers)
{
    mica_balancer_t *lb;
    mica_balancer_opts_t o = {.breaker.kind = breakers ? MICA_BREAKER_SRE : MICA_BREAKER_NONE};
    if (mica_balancer_new(&lb, rt, &o) != 0)
        exit(1);
    table(n);
    void *st;
    if (ops->create(&st, lb) != 0)
        exit(1);
    if (ops->update)
        ops->update(st, view, n);
    mica_call_policy_t pol[1024];
    mica_pick_info_t info[1024];
    for (int k = 0; k < 1024; k++) {
        pol[k] = (mica_call_policy_t){.hash_key = keys[k]};
        info[k] =
            (mica_pick_info_t){.method = "/b.S/M", .flags = MICA_CALL_POLICY, .policy = &pol[k]};
    }
    long iters = loops(n >= 1000 ? 200000 : 2000000);
    volatile int sink = 0;
    double t0 = now_ns();
    for (long i = 0; i < iters; i++)
        sink += ops->pick(st, view, n, &info[i & 1023]);
    double pick = (now_ns() - t0) / (double)iters;
    t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        int k = ops->pick(st, view, n, &info[i & 1023]);
        view[k]->inflight++;
        view[k]->inflight--;
        if (ops->done)
            ops->done(st, view[k], 0, 150 + (uint32_t)(i & 63));
    }
    double both = (now_ns() - t0) / (double)iters;
    printf("pick %s n=%zu breaker=%s: %.1f ns (pick), %.1f ns (pick+done)\n", name, n,
           breakers ? "sre" : "none", pick, both);
    fflush(stdout);
    ops->destroy(st);
    mica_balancer_free(lb);
    (void)sink;
}

static void bench_breaker(mica_breaker_kind_t kind)
{
    mica_breaker_t *b;
    mica_breaker_opts_t o = {.kind = kind};
    if (mica_breaker_new(&b, "bench", &o) != 0)
        exit(1);
    long iters = loops(5000000);
    double t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        int64_t now = mica_now_ms();
        if (mica_breaker_allow(b, now) == 0)
            mica_breaker_record(b, now, now, false);
    }
    double closed = (now_ns() - t0) / (double)iters;
    for (int i = 0; i < 1000; i++) /* open it */
        mica_breaker_record(b, mica_now_ms(), mica_now_ms(), true);
    t0 = now_ns();
    volatile int sink = 0;
    for (long i = 0; i < iters; i++)
        sink += mica_breaker_allow(b, mica_now_ms());
    double open = (now_ns() - t0) / (double)iters;
    printf("breaker %s: %.1f ns (allow+record), open: %.1f ns (refused allow)\n",
           kind == MICA_BREAKER_SRE ? "sre" : "classic", closed, open);
    fflush(stdout);
    mica_breaker_free(b);
    (void)sink;
}

static void run(int worker, void *arg)
{
    static const struct {
        const char *name;
        const mica_picker_ops_t *ops;
    } lbs[] = {
        {"round_robin(runtime)", &mica_picker_round_robin},
        {"round_robin", &mica_balancer_round_robin},
        {"weighted", &mica_balancer_weighted},
        {"least_request", &mica_balancer_least_request},
        {"random", &mica_balancer_random},
        {"p2c", &mica_balancer_p2c},
        {"ring_hash", &mica_balancer_ring_hash},
    };
    static const size_t sizes[] = {3, 100, 1000};
    for (size_t k = 0; k < 1024; k++)
        snprintf(keys[k], sizeof(keys[k]), "user-%zu", k * 7919);
    for (size_t s = 0; s < 3; s++)
        for (size_t i = 0; i < sizeof(lbs) / sizeof(lbs[0]); i++)
            for (int br = 0; br < 2; br++) {
                if (br && i == 0)
                    continue; /* the runtime's picker has no breakers */
                bench_pick(lbs[i].name, lbs[i].ops, sizes[s], br);
            }
    bench_breaker(MICA_BREAKER_SRE);
    bench_breaker(MICA_BREAKER_CLASSIC);
    mica_runtime_stop(rt);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        scale = strtod(argv[1], NULL);
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    if (mica_runtime_new(&rt, &o) != 0 || mica_runtime_on_start(rt, run, NULL) != 0)
        return 1;
    mica_runtime_run(rt);
    mica_runtime_free(rt);
    return 0;
}

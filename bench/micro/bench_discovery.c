/* SPDX-License-Identifier: MIT */
/*
 * Discovery micro-benchmark: what a call pays to resolve and pick among 3,
 * 100 and 1,000 endpoints with health on, against round robin. The health
 * follows a static target of n endpoints in two zones (half each, the
 * caller in zone "a"); a tenth of them (one of 3) are ejected through
 * mica_picker_failover's done(), in both zones, so the local zone spills a
 * share of the calls to the other. Per call, as a client does: one atomic
 * load of the resolver's generation, then the pick. Runs on a worker, where
 * mica_now_ms() is the loop's cached clock. One line per figure:
 *
 *   <picker> n=<endpoints>: <ns> ns (resolve+pick), <ns> ns (resolve+pick+done)
 *   failover n=<endpoints>: <us> us per list update (update + first pick: the tables' rebuild)
 *
 * Usage: bench_discovery [scale]   (run it under `taskset -c 0`)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mica/health.h"
#include "mica/runtime.h"

#define MAXN 1000

static double scale = 1.0;
static mica_runtime_t *rt;
static const size_t sizes[] = {3, 100, 1000};
static mica_health_t *health[3];
static mica_resolver_t *res[3];

static mica_endpoint_t ep[MAXN];
static mica_picker_endpoint_t pe[MAXN];
static mica_picker_endpoint_t *view[MAXN];
static char addr[MAXN][32];

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

static void table(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ep[i] = (mica_endpoint_t){.addr = addr[i], .zone = i % 2 ? "b" : "a"};
        pe[i] = (mica_picker_endpoint_t){.ep = &ep[i], .state = MICA_ENDPOINT_READY};
        view[i] = &pe[i];
    }
}

static void bench(const char *name, const mica_picker_ops_t *ops, const void *conf, size_t n,
                  mica_resolver_t *r, bool eject)
{
    table(n);
    void *st;
    if (ops->create(&st, conf) != 0)
        exit(1);
    if (ops->update)
        ops->update(st, view, n);
    if (eject) /* a tenth (at least one), alternating zones: ids 0, 10, 20, ... (zone a, b, a..) */
        for (size_t i = 0; i < n; i += n < 10 ? n : 10)
            for (int k = 0; k < 5; k++)
                ops->done(st, view[i + (i / 10) % 2], 14, 100);
    long iters = loops(n >= 1000 ? 2000000 : 5000000);
    uint64_t gen = mica_resolver_generation(r);
    volatile int sink = 0;
    double t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        if (mica_resolver_generation(r) != gen) /* what a client checks on each call */
            gen = mica_resolver_generation(r);
        sink += ops->pick(st, view, n, NULL);
    }
    double pick = (now_ns() - t0) / (double)iters;
    t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        if (mica_resolver_generation(r) != gen)
            gen = mica_resolver_generation(r);
        int k = ops->pick(st, view, n, NULL);
        if (ops->done)
            ops->done(st, view[k], 0, 150);
    }
    double both = (now_ns() - t0) / (double)iters;
    printf("%s n=%zu: %.1f ns (resolve+pick), %.1f ns (resolve+pick+done)\n", name, n, pick, both);
    if (ops == &mica_picker_failover) {
        int ups = 200;
        t0 = now_ns();
        for (int i = 0; i < ups; i++) {
            ops->update(st, view, n);
            sink += ops->pick(st, view, n, NULL);
        }
        printf("%s n=%zu: %.1f us per list update (update + first pick: the tables' rebuild)\n",
               name, n, (now_ns() - t0) / ups / 1000.0);
    }
    fflush(stdout);
    ops->destroy(st);
    (void)sink;
}

static void run(int worker, void *arg)
{
    (void)arg;
    if (worker != 0)
        return;
    for (size_t s = 0; s < 3; s++) {
        /* the health follows its list first: ejections count only listed endpoints */
        mica_health_stats_t st;
        do {
            mica_sleep_ms(1);
            mica_health_stats(health[s], &st);
        } while (st.endpoints < sizes[s]);
        mica_resolver_start(res[s]);
        mica_failover_conf_t fo = {.health = health[s], .zone = "a"};
        bench("failover(health, zones)", &mica_picker_failover, &fo, sizes[s], res[s], true);
        mica_health_stats(health[s], &st);
        printf("  (%llu of %zu ejected)\n", (unsigned long long)st.ejected, sizes[s]);
        bench("round_robin(runtime)", &mica_picker_round_robin, NULL, sizes[s], res[s], false);
    }
    mica_runtime_stop(rt);
}

/*
 * A registry stand-in: "bench:///<n>" resolves to the first n endpoints of
 * the table, in zones a and b (static targets stop at 256 endpoints).
 */
struct bench_res {
    mica_resolver_t *r;
    size_t n;
};

static int br_init(mica_resolver_t *r, const mica_target_t *t, const mica_resolver_opts_t *opts,
                   void **state)
{
    (void)opts;
    struct bench_res *b = calloc(1, sizeof(*b));
    if (!b)
        return MICA_ENOMEM;
    b->r = r;
    b->n = (size_t)strtoul(t->endpoint, NULL, 10);
    if (b->n < 1 || b->n > MAXN) {
        free(b);
        return MICA_EINVAL;
    }
    *state = b;
    return 0;
}

static void br_start(void *state)
{
    struct bench_res *b = state;
    table(b->n);
    mica_resolver_update(b->r, ep, b->n);
}

static void br_destroy(void *state)
{
    free(state);
}

static const mica_resolver_ops_t bench_resolver = {
    .init = br_init, .start = br_start, .destroy = br_destroy};

int main(int argc, char **argv)
{
    if (argc > 1)
        scale = strtod(argv[1], NULL);
    for (size_t i = 0; i < MAXN; i++)
        snprintf(addr[i], sizeof(addr[i]), "10.%zu.%zu.1:50051", i / 256, i % 256);
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    if (mica_runtime_new(&rt, &o) != 0)
        return 1;
    if (mica_resolver_register("bench", &bench_resolver) != 0)
        return 1;
    mica_health_opts_t ho = {.base_ejection_ms = 600000, .max_ejection_pct = 20};
    for (size_t s = 0; s < 3; s++) {
        char target[32];
        snprintf(target, sizeof(target), "bench:///%zu", sizes[s]);
        if (mica_health_new(&health[s], rt, target, &ho) != 0 ||
            mica_resolver_new(&res[s], rt, target, NULL) != 0) {
            fprintf(stderr, "bench_discovery: cannot follow %zu endpoints\n", sizes[s]);
            return 1;
        }
    }
    if (mica_runtime_on_start(rt, run, NULL) != 0)
        return 1;
    mica_runtime_run(rt);
    for (size_t s = 0; s < 3; s++) {
        mica_health_free(health[s]);
        mica_resolver_free(res[s]);
    }
    mica_runtime_free(rt);
    return 0;
}

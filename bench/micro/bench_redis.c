/* SPDX-License-Identifier: MIT */
/*
 * Redis load from mica's client, the counterpart of redis-benchmark for
 * bench/load/redis.sh: `coros` coroutines on one worker each loop on GET (or
 * SET) of redis-benchmark's key with its 3-byte value, auto-pipelined over
 * `conns` shared connections. After a warm-up it counts completed commands
 * for `secs` seconds and prints one line:
 *   ops=<n> secs=<s> rate=<ops/s> cpu_s=<user+sys of this process> errors=<n> batches=<n>
 * Usage: bench_redis <url> <get|set> [coros 256] [conns 1] [secs 5]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "mica/redis.h"
#include "mica/runtime.h"
#include "mica/sync.h"

static mica_runtime_t *rt;
static mica_redis_t *r;
static bool do_set;
static int coros = 256, secs = 5;
static atomic_bool stop;
static uint64_t ops, errors;
static mica_wg_t *wg;

static double cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

static void client(void *arg)
{
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int rc;
        if (do_set) {
            rc = mica_redis_set(r, NULL, "key:__rand_int__", "xxx", 3, 0, 0);
        } else {
            mica_redis_reply_t *v = NULL;
            rc = mica_redis_get(r, NULL, "key:__rand_int__", &v);
            mica_redis_reply_free(v);
        }
        if (rc == 0)
            ops++;
        else
            errors++;
    }
    mica_wg_done(wg);
}

static void run(int worker, void *arg)
{
    if (worker != 0)
        return;
    mica_redis_set(r, NULL, "key:__rand_int__", "xxx", 3, 0, 0);
    mica_wg_new(&wg);
    mica_wg_add(wg, coros);
    for (int i = 0; i < coros; i++)
        mica_go(client, NULL);
    mica_sleep_ms(1000); /* warm-up */
    uint64_t ops0 = ops;
    mica_redis_stats_t st0, st1;
    mica_redis_stats(r, &st0);
    double cpu0 = cpu_s();
    int64_t t0 = mica_now_ms();
    mica_sleep_ms(secs * 1000);
    uint64_t n = ops - ops0;
    double cpu = cpu_s() - cpu0, took = (double)(mica_now_ms() - t0) / 1000;
    mica_redis_stats(r, &st1);
    atomic_store(&stop, true);
    mica_wg_wait(wg, NULL);
    mica_wg_free(wg);
    printf("ops=%llu secs=%.2f rate=%.0f cpu_s=%.2f errors=%llu batches=%llu\n",
           (unsigned long long)n, took, (double)n / took, cpu, (unsigned long long)errors,
           (unsigned long long)(st1.batches - st0.batches));
    mica_runtime_stop(rt);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s <url> <get|set> [coros] [conns] [secs]\n", argv[0]);
        return 2;
    }
    do_set = strcmp(argv[2], "set") == 0;
    int conns = 1;
    if (argc > 3)
        coros = (int)strtol(argv[3], NULL, 10);
    if (argc > 4)
        conns = (int)strtol(argv[4], NULL, 10);
    if (argc > 5)
        secs = (int)strtol(argv[5], NULL, 10);
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    mica_redis_opts_t ro = {.pipelines = conns};
    if (mica_runtime_new(&rt, &o) != 0 || mica_redis_new(&r, rt, argv[1], &ro) != 0)
        return 1;
    mica_runtime_on_start(rt, run, NULL);
    int rc = mica_runtime_run(rt);
    mica_redis_free(r);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : 1;
}

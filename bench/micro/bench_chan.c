/* SPDX-License-Identifier: MIT */
/*
 * Channel micro-benchmark: ns per channel operation, select, spawn and
 * offload round trip, one line per figure as `<name>: <ns> ns`, with names
 * that bench/peers/gochan prints for the same loops in Go (bench/micro/chan.sh
 * puts both in one table).
 *
 *   local (1 worker; run it under `taskset -c 0`):
 *     chan_unbuffered_roundtrip_same_worker   ping -> pong between two coroutines
 *     chan_unbuffered_handoff_same_worker     half of that: one send meeting one receive
 *     chan_buffered_send_recv_same_worker     one coroutine, send then receive, no switch
 *     chan_buffered_stream_same_worker        producer -> consumer through 128 slots, per element
 *     select_2_ready_same_worker              2 receive cases, both ready
 *     select_2_blocking_roundtrip_same_worker a select that parks and is woken by a send, + ack
 *     mutex_handoff_same_worker               two coroutines take turns at a mutex held across
 *                                             a yield: per lock, one park, one hand-off, one yield
 *     spawn_exit_same_worker                  mica_go + run + wg_done + exit, batches of 1000
 *     offload_roundtrip                       mica_offload of an empty function (1 thread)
 *   cross (2 workers, unpinned; the partner coroutine runs on worker 1):
 *     chan_unbuffered_roundtrip_cross_worker
 *     chan_unbuffered_handoff_cross_worker
 *     chan_buffered_stream_cross_worker
 *     select_2_blocking_roundtrip_cross_worker
 *
 * Usage: bench_chan [local|cross|all] [scale]   (scale multiplies the loop counts)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mica/chan.h"
#include "mica/runtime.h"
#include "mica/sync.h"

static double scale = 1.0;

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

static void report(const char *name, double ns)
{
    printf("%s: %.1f ns\n", name, ns);
    fflush(stdout);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_chan: %s: %s\n", what, mica_strerror(rc));
    exit(1);
}

static void check(const char *what, int rc)
{
    if (rc != 0)
        die(what, rc);
}

/* Where the partner coroutine of a two-party figure runs: 0 local, 1 cross. */
static int partner;
static const char *suffix;

static void name_with(char *buf, size_t len, const char *base)
{
    snprintf(buf, len, "%s_%s", base, suffix);
}

/* ---- unbuffered ping-pong ---------------------------------------------------- */

struct pair {
    mica_chan_t *a, *b;
    mica_wg_t *done;
    long n;
};

static void ponger(void *arg)
{
    struct pair *p = arg;
    int v;
    while (mica_chan_recv(p->a, NULL, &v) == 0)
        mica_chan_send(p->b, NULL, &v);
    mica_wg_done(p->done);
}

static void bench_pingpong(long n)
{
    struct pair p = {.n = n};
    check("chan", mica_chan_new(&p.a, sizeof(int), 0));
    check("chan", mica_chan_new(&p.b, sizeof(int), 0));
    check("wg", mica_wg_new(&p.done));
    mica_wg_add(p.done, 1);
    check("spawn", mica_go_on(partner, ponger, &p));
    int v = 0;
    for (long i = 0; i < n / 10; i++) { /* warm-up */
        mica_chan_send(p.a, NULL, &v);
        mica_chan_recv(p.b, NULL, &v);
    }
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        check("send", mica_chan_send(p.a, NULL, &v));
        check("recv", mica_chan_recv(p.b, NULL, &v));
    }
    double rt = (now_ns() - t0) / (double)n;
    mica_chan_close(p.a);
    mica_wg_wait(p.done, NULL);
    char name[96];
    name_with(name, sizeof(name), "chan_unbuffered_roundtrip");
    report(name, rt);
    name_with(name, sizeof(name), "chan_unbuffered_handoff");
    report(name, rt / 2);
    mica_wg_free(p.done);
    mica_chan_free(p.a);
    mica_chan_free(p.b);
}

/* ---- buffered -------------------------------------------------------------------- */

enum { BUF = 128 };

static void bench_buffered_same_coro(long n)
{
    mica_chan_t *ch;
    check("chan", mica_chan_new(&ch, sizeof(int), BUF));
    long batches = n / BUF;
    double t0 = 0;
    for (long b = -batches / 10; b < batches; b++) {
        if (b == 0)
            t0 = now_ns();
        for (int i = 0; i < BUF; i++)
            check("send", mica_chan_send(ch, NULL, &i));
        int v;
        for (int i = 0; i < BUF; i++)
            check("recv", mica_chan_recv(ch, NULL, &v));
    }
    report("chan_buffered_send_recv_same_worker", (now_ns() - t0) / (double)(batches * BUF));
    mica_chan_free(ch);
}

static void streamer(void *arg)
{
    struct pair *p = arg;
    for (long i = 0; i < p->n; i++) {
        int v = (int)i;
        mica_chan_send(p->a, NULL, &v);
    }
    mica_chan_close(p->a);
    mica_wg_done(p->done);
}

static void bench_stream(long n)
{
    struct pair p = {.n = n + n / 10};
    check("chan", mica_chan_new(&p.a, sizeof(int), BUF));
    check("wg", mica_wg_new(&p.done));
    mica_wg_add(p.done, 1);
    check("spawn", mica_go_on(partner, streamer, &p));
    int v;
    for (long i = 0; i < n / 10; i++) /* warm-up */
        check("recv", mica_chan_recv(p.a, NULL, &v));
    double t0 = now_ns();
    long got = 0;
    while (mica_chan_recv(p.a, NULL, &v) == 0)
        got++;
    double ns = (now_ns() - t0) / (double)got;
    mica_wg_wait(p.done, NULL);
    char name[96];
    name_with(name, sizeof(name), "chan_buffered_stream");
    report(name, ns);
    mica_wg_free(p.done);
    mica_chan_free(p.a);
}

/* ---- select ---------------------------------------------------------------------- */

static void bench_select_ready(long n)
{
    enum { FILL = 512 };
    mica_chan_t *a, *b;
    check("chan", mica_chan_new(&a, sizeof(int), FILL));
    check("chan", mica_chan_new(&b, sizeof(int), FILL));
    int va, vb;
    mica_select_case_t cases[] = {{MICA_SELECT_RECV, a, &va, false},
                                  {MICA_SELECT_RECV, b, &vb, false}};
    long batches = n / FILL, fired[2] = {0, 0};
    double total = 0;
    for (long k = -batches / 10; k < batches; k++) {
        /* Refill both (untimed): FILL selects can never find both empty. */
        for (int i = (int)mica_chan_len(a); i < FILL; i++)
            mica_chan_try_send(a, &i);
        for (int i = (int)mica_chan_len(b); i < FILL; i++)
            mica_chan_try_send(b, &i);
        double t0 = now_ns();
        for (int i = 0; i < FILL; i++) {
            int r = mica_select(cases, 2, NULL, MICA_SELECT_FOREVER);
            if (r < 0)
                die("select", r);
            fired[r]++;
        }
        if (k >= 0)
            total += now_ns() - t0;
    }
    if (fired[0] == 0 || fired[1] == 0)
        die("select never chose one case", MICA_EINVAL);
    report("select_2_ready_same_worker", total / (double)(batches * FILL));
    mica_chan_free(a);
    mica_chan_free(b);
}

struct selector {
    mica_chan_t *a, *b, *ack;
    mica_wg_t *done;
};

static void selector(void *arg)
{
    struct selector *s = arg;
    int va, vb;
    mica_select_case_t cases[] = {{MICA_SELECT_RECV, s->a, &va, false},
                                  {MICA_SELECT_RECV, s->b, &vb, false}};
    for (;;) {
        int r = mica_select(cases, 2, NULL, MICA_SELECT_FOREVER);
        if (r < 0 || cases[r].closed)
            break;
        mica_chan_send(s->ack, NULL, NULL);
    }
    mica_wg_done(s->done);
}

static void bench_select_blocking(long n)
{
    struct selector s;
    check("chan", mica_chan_new(&s.a, sizeof(int), 0));
    check("chan", mica_chan_new(&s.b, sizeof(int), 0));
    check("chan", mica_chan_new(&s.ack, 0, 0));
    check("wg", mica_wg_new(&s.done));
    mica_wg_add(s.done, 1);
    check("spawn", mica_go_on(partner, selector, &s));
    double t0 = 0;
    for (long i = -n / 10; i < n; i++) {
        if (i == 0)
            t0 = now_ns();
        int v = (int)i;
        check("send", mica_chan_send(i & 1 ? s.a : s.b, NULL, &v));
        check("recv", mica_chan_recv(s.ack, NULL, NULL));
    }
    double ns = (now_ns() - t0) / (double)n;
    mica_chan_close(s.a);
    mica_wg_wait(s.done, NULL);
    char name[96];
    name_with(name, sizeof(name), "select_2_blocking_roundtrip");
    report(name, ns);
    mica_wg_free(s.done);
    mica_chan_free(s.a);
    mica_chan_free(s.b);
    mica_chan_free(s.ack);
}

/* ---- mutex hand-off ---------------------------------------------------------------- */

struct contender {
    mica_mutex_t *mu;
    mica_wg_t *done;
    long n;
};

/* Holds the lock across a yield, so the other contender is always parked
 * on it when it is released: every unlock is a hand-off to a waiter. */
static void contend(struct contender *c)
{
    for (long i = 0; i < c->n; i++) {
        check("lock", mica_mutex_lock(c->mu, NULL));
        mica_yield();
        check("unlock", mica_mutex_unlock(c->mu));
    }
}

static void contender(void *arg)
{
    struct contender *c = arg;
    contend(c);
    mica_wg_done(c->done);
}

static void bench_mutex(long n)
{
    struct contender c = {.n = n};
    check("mutex", mica_mutex_new(&c.mu));
    check("wg", mica_wg_new(&c.done));
    mica_wg_add(c.done, 1);
    check("spawn", mica_go_on(partner, contender, &c));
    double t0 = now_ns();
    contend(&c);
    check("wait", mica_wg_wait(c.done, NULL));
    double ns = (now_ns() - t0) / (double)(2 * n);
    char name[96];
    name_with(name, sizeof(name), "mutex_handoff");
    report(name, ns);
    mica_wg_free(c.done);
    mica_mutex_free(c.mu);
}

/* ---- spawn and offload ----------------------------------------------------------- */

static void finish(void *arg)
{
    mica_wg_done(arg);
}

static void bench_spawn(long n)
{
    enum { BATCH = 1000 };
    mica_wg_t *wg;
    check("wg", mica_wg_new(&wg));
    long batches = n / BATCH;
    double t0 = 0;
    for (long b = -batches / 10; b < batches; b++) {
        if (b == 0)
            t0 = now_ns();
        mica_wg_add(wg, BATCH);
        for (int i = 0; i < BATCH; i++)
            check("spawn", mica_go(finish, wg));
        check("wait", mica_wg_wait(wg, NULL));
    }
    report("spawn_exit_same_worker", (now_ns() - t0) / (double)(batches * BATCH));
    mica_wg_free(wg);
}

static int empty_job(void *arg)
{
    return 0;
}

static void bench_offload(long n)
{
    int r;
    double t0 = 0;
    for (long i = -n / 10; i < n; i++) {
        if (i == 0)
            t0 = now_ns();
        check("offload", mica_offload(NULL, NULL, empty_job, NULL, &r));
    }
    report("offload_roundtrip", (now_ns() - t0) / (double)n);
}

/* ---- the two runs ---------------------------------------------------------------- */

struct run {
    mica_runtime_t *rt;
    bool cross;
};

static void run_local(void)
{
    partner = 0;
    suffix = "same_worker";
    bench_pingpong(loops(2000000));
    bench_buffered_same_coro(loops(5000000));
    bench_stream(loops(5000000));
    bench_select_ready(loops(2000000));
    bench_select_blocking(loops(1000000));
    bench_mutex(loops(1000000));
    bench_spawn(loops(1000000));
    bench_offload(loops(50000));
}

static void run_cross(void)
{
    partner = 1;
    suffix = "cross_worker";
    bench_pingpong(loops(100000));
    bench_stream(loops(1000000));
    bench_select_blocking(loops(100000));
}

static void on_start(int worker, void *arg)
{
    struct run *r = arg;
    if (worker == 0) {
        if (r->cross)
            run_cross();
        else
            run_local();
        mica_runtime_stop(r->rt);
    }
}

static void run(bool cross)
{
    struct run r = {.cross = cross};
    mica_runtime_opts_t o = {
        .workers = cross ? 2 : 1, .no_signals = true, .offload_threads = 1, .offload_queue = 16};
    check("runtime", mica_runtime_new(&r.rt, &o));
    mica_runtime_on_start(r.rt, on_start, &r);
    check("run", mica_runtime_run(r.rt));
    mica_runtime_free(r.rt);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "all";
    if (argc > 2)
        scale = strtod(argv[2], NULL);
    if (scale <= 0 || (strcmp(mode, "local") && strcmp(mode, "cross") && strcmp(mode, "all"))) {
        fprintf(stderr, "usage: bench_chan [local|cross|all] [scale]\n");
        return 2;
    }
    if (strcmp(mode, "cross") != 0)
        run(false);
    if (strcmp(mode, "local") != 0)
        run(true);
    return 0;
}

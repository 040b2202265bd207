/* SPDX-License-Identifier: MIT */
/*
 * worker_pool: the seed's goroutine pool with a bounded queue (002, 2.2) on mica.
 *
 *     type Pool struct { tasks chan func(); wg sync.WaitGroup }
 *     func NewPool(size int) *Pool {
 *         p := &Pool{tasks: make(chan func(), 100)}        // bounded queue
 *         for i := 0; i < size; i++ {
 *             p.wg.Add(1)
 *             go func() { defer p.wg.Done(); for task := range p.tasks { task() } }()
 *         }
 *         return p
 *     }
 *
 * Go ideas ported:
 *   - a fixed pool of worker coroutines ranging over a buffered channel;
 *   - "queue full? wait or drop": submission with mica_chan_try_send(), which
 *     fails fast with MICA_EAGAIN, i.e. Go's `select { case p.tasks <- t:
 *     default: reject }`, so a burst is shed instead of piling up latency;
 *   - a task that carries a context.WithTimeout and gives up when it ends;
 *   - close(p.tasks) + p.wg.Wait() to stop the pool;
 *   - and what Go does implicitly for a goroutine stuck in a blocking system
 *     call: mica hands such work to its bounded offload thread pool with
 *     mica_offload(), which refuses with MICA_EOVERLOAD when that is full.
 *
 * One worker runs everything, so a burst of submissions runs without
 * interleaving and the accepted/rejected counts are exact.
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mica/chan.h"
#include "mica/ctx.h"
#include "mica/runtime.h"
#include "mica/sync.h"

enum { POOL_SIZE = 2, QUEUE_LEN = 4, BURST = 10, WORK_MS = 50 };

/* ---- the pool -------------------------------------------------------------- */

/* A task is copied into the channel, so it holds only values and pointers
 * that outlive it. */
typedef struct task {
    int id;
    int work_ms;
    mica_ctx_t *ctx; /* NULL: no deadline */
    int *result;     /* the worker stores 0 or the ctx's error here */
} task_t;

typedef struct pool {
    mica_chan_t *tasks;  /* chan task_t, QUEUE_LEN deep */
    mica_wg_t *workers;  /* the pool's coroutines */
    mica_wg_t *inflight; /* accepted tasks not finished yet */
} pool_t;

/* The task body: "work" that takes work_ms unless its ctx ends first, as
 * Go's select { case <-time.After(d): case <-ctx.Done(): return ctx.Err() }. */
static int do_task(const task_t *t)
{
    return mica_ctx_sleep(t->ctx, t->work_ms);
}

static void pool_worker(void *arg)
{
    pool_t *p = arg;
    task_t t;
    while (mica_chan_recv(p->tasks, NULL, &t) == 0) { /* for task := range p.tasks */
        *t.result = do_task(&t);
        mica_wg_done(p->inflight);
    }
    mica_wg_done(p->workers);
}

static int pool_start(pool_t *p, int size, size_t queue_len)
{
    int rc;
    *p = (pool_t){0};
    if ((rc = mica_chan_new(&p->tasks, sizeof(task_t), queue_len)) != 0 ||
        (rc = mica_wg_new(&p->workers)) != 0 || (rc = mica_wg_new(&p->inflight)) != 0)
        return rc;
    for (int i = 0; i < size; i++) {
        mica_wg_add(p->workers, 1); /* p.wg.Add(1); go worker() */
        if ((rc = mica_go(pool_worker, p)) != 0) {
            mica_wg_done(p->workers);
            return rc;
        }
    }
    return 0;
}

/* Queues `t` without waiting: 0, or MICA_EAGAIN when the queue is full. */
static int pool_try_submit(pool_t *p, const task_t *t)
{
    mica_wg_add(p->inflight, 1);
    int rc = mica_chan_try_send(p->tasks, t);
    if (rc != 0)
        mica_wg_done(p->inflight);
    return rc;
}

/* close(p.tasks); p.wg.Wait(): queued tasks still run, then the workers exit. */
static void pool_close(pool_t *p)
{
    if (p->tasks)
        mica_chan_close(p->tasks);
    if (p->workers)
        mica_wg_wait(p->workers, NULL);
    mica_wg_free(p->workers);
    mica_wg_free(p->inflight);
    mica_chan_free(p->tasks);
}

/* ---- blocking work for the offload pool ------------------------------------ */

struct blocking_job {
    int id;
    atomic_bool started;
    int result;
    int rc;
};

/* Stands in for a synchronous driver call: blocks its thread for 150 ms. */
static int blocking_sleep(void *arg)
{
    struct blocking_job *j = arg;
    atomic_store(&j->started, true);
    usleep(150 * 1000);
    return 150;
}

/* A plain blocking read(2): 0 if this program's binary starts with an ELF header. */
static int blocking_read(void *arg)
{
    struct blocking_job *j = arg;
    atomic_store(&j->started, true);
    static const char elf[4] = {0x7f, 'E', 'L', 'F'};
    char magic[4] = {0};
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, magic, sizeof(magic));
    close(fd);
    return n == 4 && memcmp(magic, elf, 4) == 0 ? 0 : -1;
}

struct offload_call {
    mica_offload_fn fn;
    struct blocking_job *job;
    atomic_bool submitted;
    mica_wg_t *wg;
};

static void offload_coro(void *arg)
{
    struct offload_call *c = arg;
    atomic_store(&c->submitted, true);
    c->job->rc = mica_offload(NULL, NULL, c->fn, c->job, &c->job->result);
    mica_wg_done(c->wg);
}

struct ticker {
    atomic_bool stop;
    int ticks;
    mica_wg_t *done; /* the ticker lives on its spawner's stack: join before returning */
};

/* Proves the worker's loop keeps running coroutines while offload threads block. */
static void ticker(void *arg)
{
    struct ticker *t = arg;
    while (!atomic_load(&t->stop)) {
        mica_sleep_ms(10);
        t->ticks++;
    }
    mica_wg_done(t->done);
}

/* ---- the demo -------------------------------------------------------------- */

struct demo {
    mica_runtime_t *rt;
    int failed;
};

static int check(struct demo *d, const char *what, int rc)
{
    if (rc != 0) {
        fprintf(stderr, "worker_pool: %s: %s\n", what, mica_strerror(rc));
        d->failed = 1;
    }
    return rc;
}

static void pool_demo(struct demo *d)
{
    pool_t p;
    if (check(d, "pool", pool_start(&p, POOL_SIZE, QUEUE_LEN)) != 0) {
        pool_close(&p);
        return;
    }
    printf("pool: %d workers, queue of %d\n", POOL_SIZE, QUEUE_LEN);
    mica_yield(); /* the workers start and park in their receive */

    /* A burst: the two idle workers take one task each straight from the
     * sender, four more fill the queue, the rest are shed. */
    int results[BURST + 1];
    int accepted = 0, rejected = 0;
    for (int i = 0; i < BURST; i++) {
        task_t t = {.id = i, .work_ms = WORK_MS, .result = &results[i]};
        int rc = pool_try_submit(&p, &t);
        if (rc == 0)
            accepted++;
        else if (rc == MICA_EAGAIN)
            rejected++;
        else
            check(d, "submit", rc);
    }
    printf("burst of %d tasks: %d accepted, %d rejected (EAGAIN: queue full)\n", BURST, accepted,
           rejected);
    check(d, "wait", mica_wg_wait(p.inflight, NULL));
    int ok = 0;
    for (int i = 0; i < accepted; i++)
        ok += results[i] == 0;
    printf("accepted tasks: %d finished ok\n", ok);

    /* ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond); defer cancel() */
    mica_ctx_t *ctx;
    if (check(d, "ctx", mica_ctx_with_timeout(NULL, 50, &ctx)) == 0) {
        task_t slow = {.id = BURST, .work_ms = 500, .ctx = ctx, .result = &results[BURST]};
        if (check(d, "submit", pool_try_submit(&p, &slow)) == 0) {
            check(d, "wait", mica_wg_wait(p.inflight, NULL));
            printf("task with a 50 ms ctx timeout (needs 500 ms): %s\n",
                   mica_err_name(results[BURST]));
            if (results[BURST] != MICA_ETIMEDOUT)
                d->failed = 1;
        }
        mica_ctx_free(ctx);
    }

    pool_close(&p);
    printf("pool closed: %d workers exited\n", POOL_SIZE);
    if (accepted != POOL_SIZE + QUEUE_LEN || ok != accepted)
        d->failed = 1;
}

static void offload_demo(struct demo *d)
{
    mica_wg_t *wg;
    if (check(d, "wg", mica_wg_new(&wg)) != 0)
        return;
    struct ticker tick = {.done = wg};
    mica_wg_add(wg, 1);
    if (check(d, "spawn", mica_go(ticker, &tick)) != 0)
        mica_wg_done(wg);

    printf("offload: 1 thread, queue of 1\n");
    struct blocking_job j1 = {.id = 1}, j2 = {.id = 2}, j3 = {.id = 3};
    struct offload_call c1 = {.fn = blocking_sleep, .job = &j1, .wg = wg};
    struct offload_call c2 = {.fn = blocking_read, .job = &j2, .wg = wg};

    /* Job 1 occupies the only thread... */
    mica_wg_add(wg, 1);
    check(d, "spawn", mica_go(offload_coro, &c1));
    while (!atomic_load(&j1.started))
        mica_sleep_ms(1);
    printf("offload job 1 (blocking usleep 150 ms): running\n");

    /* ...job 2 takes the only queue slot (its coroutine runs until it suspends
     * in mica_offload before this one resumes)... */
    mica_wg_add(wg, 1);
    check(d, "spawn", mica_go(offload_coro, &c2));
    while (!atomic_load(&c2.submitted))
        mica_yield();
    printf("offload job 2 (blocking file read): queued\n");

    /* ...so job 3 is refused at once instead of waiting behind them. */
    int r3 = 0;
    int rc = mica_offload(NULL, NULL, blocking_read, &j3, &r3);
    printf("offload job 3: %s (thread busy, queue full): shed at once\n", mica_err_name(rc));
    if (rc != MICA_EOVERLOAD)
        d->failed = 1;

    while (j1.result == 0 && tick.ticks < 5)
        mica_sleep_ms(10); /* job 1 still blocks its thread; the ticker goes on */
    int ticks = tick.ticks;
    atomic_store(&tick.stop, true);
    check(d, "wait", mica_wg_wait(wg, NULL));
    printf("offload job 1: %s, returned %d\n", j1.rc == 0 ? "ok" : mica_err_name(j1.rc), j1.result);
    printf("offload job 2: %s, read an ELF header: %s\n", j2.rc == 0 ? "ok" : mica_err_name(j2.rc),
           j2.result == 0 ? "yes" : "no");
    /* 150 ms of blocking work; a blocked loop would not have ticked at all. */
    printf("event loop kept running coroutines meanwhile: %s\n", ticks >= 5 ? "yes" : "no");
    if (j1.rc || j1.result != 150 || j2.rc || j2.result != 0 || ticks < 5)
        d->failed = 1;
    mica_wg_free(wg);
}

static void run(int worker, void *arg)
{
    struct demo *d = arg;
    if (worker != 0)
        return;
    pool_demo(d);
    offload_demo(d);
    mica_runtime_stop(d->rt);
}

int main(void)
{
    struct demo d = {0};
    mica_runtime_opts_t o = {
        .workers = 1, .no_signals = true, .offload_threads = 1, .offload_queue = 1};
    int rc = mica_runtime_new(&d.rt, &o);
    if (rc != 0) {
        fprintf(stderr, "worker_pool: runtime: %s\n", mica_strerror(rc));
        return 1;
    }
    mica_runtime_on_start(d.rt, run, &d);
    rc = mica_runtime_run(d.rt);
    mica_runtime_free(d.rt);
    if (rc != 0)
        fprintf(stderr, "worker_pool: run: %s\n", mica_strerror(rc));
    return rc != 0 || d.failed;
}

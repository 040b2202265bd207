/* SPDX-License-Identifier: MIT */
/*
 * fan_out_fan_in: the seed's Fan-out/Fan-in pattern (chapter 2.5) on mica.
 *
 *     jobs, results := make(chan int, 16), make(chan result, 16)
 *     for w := 0; w < 4; w++ { wg.Add(1); go worker(jobs, results, &wg) }   // fan-out
 *     go func() { wg.Wait(); close(results) }()                          // the closer
 *     go func() { for i := 1; i <= 100; i++ { jobs <- i }; close(jobs) }()
 *     for r := range results { sum += r.value }                           // fan-in
 *
 * Go ideas ported: several goroutines reading one channel (each job goes to
 * exactly one of them), results merged through one channel, and the "close
 * the results once every worker is done" goroutine built on a WaitGroup.
 *
 * The four worker coroutines are spread over the runtime's two workers with
 * mica_go_on(), so jobs and results cross threads. Jobs take 0-2 ms each, so
 * results arrive out of order and the split between workers varies from
 * run to run; what is printed (counts and the sum) does not.
 */
#include <stdio.h>
#include <string.h>

#include "mica/chan.h"
#include "mica/runtime.h"
#include "mica/sync.h"

enum { JOBS = 100, FANOUT = 4, QUEUE = 16 };

struct result {
    int job;
    int worker; /* which coroutine did it: varies between runs, not printed */
    long value;
};

struct demo {
    mica_runtime_t *rt;
    mica_chan_t *jobs;    /* chan int */
    mica_chan_t *results; /* chan struct result */
    mica_wg_t *wg;
    int failed;
};

struct worker {
    struct demo *d;
    int id;
};

static void fail(struct demo *d, const char *what, int rc)
{
    fprintf(stderr, "fan_out_fan_in: %s: %s\n", what, mica_strerror(rc));
    d->failed = 1;
}

static void worker(void *arg)
{
    struct worker *w = arg;
    struct demo *d = w->d;
    int job;
    while (mica_chan_recv(d->jobs, NULL, &job) == 0) {
        mica_sleep_ms(job % 3); /* some jobs take longer: results come back out of order */
        struct result r = {.job = job, .worker = w->id, .value = (long)job * job};
        int rc = mica_chan_send(d->results, NULL, &r);
        if (rc != 0)
            fail(d, "send result", rc);
    }
    mica_wg_done(d->wg);
}

/* go func() { wg.Wait(); close(results) }() */
static void closer(void *arg)
{
    struct demo *d = arg;
    mica_wg_wait(d->wg, NULL);
    mica_chan_close(d->results);
}

static void feeder(void *arg)
{
    struct demo *d = arg;
    for (int i = 1; i <= JOBS; i++) {
        int rc = mica_chan_send(d->jobs, NULL, &i);
        if (rc != 0) {
            fail(d, "send job", rc);
            break;
        }
    }
    mica_chan_close(d->jobs);
}

static void run(int worker_id, void *arg)
{
    struct demo *d = arg;
    if (worker_id != 0)
        return;
    int rc;
    if ((rc = mica_chan_new(&d->jobs, sizeof(int), QUEUE)) != 0 ||
        (rc = mica_chan_new(&d->results, sizeof(struct result), QUEUE)) != 0 ||
        (rc = mica_wg_new(&d->wg)) != 0) {
        fail(d, "setup", rc);
        mica_runtime_stop(d->rt);
        return;
    }

    int nworkers = mica_worker_count();
    struct worker ws[FANOUT];
    mica_wg_add(d->wg, FANOUT);
    for (int i = 0; i < FANOUT; i++) {
        ws[i] = (struct worker){d, i};
        if ((rc = mica_go_on(i % nworkers, worker, &ws[i])) != 0) {
            fail(d, "spawn", rc);
            mica_wg_done(d->wg);
        }
    }
    mica_go(closer, d);
    mica_go(feeder, d);
    printf("fan-out: %d jobs to %d worker coroutines on %d workers\n", JOBS, FANOUT, nworkers);

    /* Fan-in: range over results until the closer closes it. */
    bool seen[JOBS + 1];
    memset(seen, 0, sizeof(seen));
    int count = 0, dup = 0;
    long sum = 0;
    struct result r;
    while (mica_chan_recv(d->results, NULL, &r) == 0) {
        count++;
        sum += r.value;
        if (r.job < 1 || r.job > JOBS || seen[r.job])
            dup++;
        else
            seen[r.job] = true;
    }
    long expected = (long)JOBS * (JOBS + 1) * (2 * JOBS + 1) / 6;
    printf("fan-in: %d results, each job answered once: %s\n", count,
           count == JOBS && dup == 0 ? "yes" : "no");
    printf("sum of squares 1..%d = %ld (expected %ld)\n", JOBS, sum, expected);
    if (count != JOBS || dup || sum != expected)
        d->failed = 1;

    /* Every worker has returned (the closer saw the wait group reach zero). */
    mica_wg_free(d->wg);
    mica_chan_free(d->jobs);
    mica_chan_free(d->results);
    mica_runtime_stop(d->rt);
}

int main(void)
{
    struct demo d = {0};
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true};
    int rc = mica_runtime_new(&d.rt, &o);
    if (rc != 0) {
        fprintf(stderr, "fan_out_fan_in: runtime: %s\n", mica_strerror(rc));
        return 1;
    }
    mica_runtime_on_start(d.rt, run, &d);
    rc = mica_runtime_run(d.rt);
    mica_runtime_free(d.rt);
    if (rc != 0)
        fprintf(stderr, "fan_out_fan_in: run: %s\n", mica_strerror(rc));
    return rc != 0 || d.failed;
}

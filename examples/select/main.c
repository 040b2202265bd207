/* SPDX-License-Identifier: MIT */
/*
 * select: the seed's select multiplexing (chapter 2.2, "Channel 选择机制") on mica.
 *
 *     for {
 *         select {
 *         case v, ok := <-fast: if !ok { fast = nil; continue } ...   // nil: case off
 *         case v, ok := <-slow: ...
 *         case <-quit:          return                                // close = broadcast
 *         case <-time.After(200 * time.Millisecond): fmt.Println("timeout")
 *         }
 *     }
 *
 * Go ideas ported: select over several channels, the `default:` case for a
 * non-blocking poll (MICA_SELECT_DEFAULT), a timeout case (time.After ->
 * the timeout_ms argument), comma-ok on a closed channel (the case's
 * `closed` flag), switching a case off by setting its channel to nil (NULL),
 * a quit channel closed to signal, and `case <-ctx.Done()` (the ctx argument).
 *
 * Two producers on worker 1 send at different rates on an absolute schedule
 * (fast: 100, 200, 300, 400 ms; slow: 250, 500 ms), quit closes at 800 ms.
 * Events are at least 50 ms apart and the 200 ms timeout fires only in the
 * 300 ms gap after 500 ms, so the output is the same on every run.
 */
#include <stdio.h>

#include "mica/chan.h"
#include "mica/ctx.h"
#include "mica/runtime.h"

enum { FAST_MS = 100, FAST_N = 4, SLOW_MS = 250, SLOW_N = 2, IDLE_MS = 200, QUIT_MS = 800 };

struct producer {
    mica_chan_t *ch; /* chan int, unbuffered; this coroutine sends and closes */
    int64_t start_ms;
    int period_ms, count;
};

struct quitter {
    mica_chan_t *quit; /* chan struct{} */
    int64_t at_ms;
};

static void sleep_until(int64_t t_ms)
{
    int64_t d = t_ms - mica_now_ms();
    if (d > 0)
        mica_sleep_ms(d);
}

static void produce(void *arg)
{
    struct producer *p = arg;
    for (int k = 1; k <= p->count; k++) {
        sleep_until(p->start_ms + (int64_t)k * p->period_ms);
        if (mica_chan_send(p->ch, NULL, &k) != 0)
            break;
    }
    mica_chan_close(p->ch);
}

static void quit_later(void *arg)
{
    struct quitter *q = arg;
    sleep_until(q->at_ms);
    mica_chan_close(q->quit); /* wakes every receiver at once: a broadcast */
}

struct demo {
    mica_runtime_t *rt;
    int failed;
};

static void loop(struct demo *d, mica_chan_t *fast, mica_chan_t *slow, mica_chan_t *quit)
{
    int fv = 0, sv = 0;
    mica_select_case_t cases[] = {
        {MICA_SELECT_RECV, fast, &fv, false},
        {MICA_SELECT_RECV, slow, &sv, false},
        {MICA_SELECT_RECV, quit, NULL, false},
    };
    const size_t n = sizeof(cases) / sizeof(cases[0]);
    int rc;

    /* The whole loop also runs under a ctx, as a request would: `case <-ctx.Done()`. */
    mica_ctx_t *ctx;
    if (mica_ctx_with_timeout(NULL, 5000, &ctx) != 0) {
        d->failed = 1;
        return;
    }
    int timeouts = 0;
    for (;;) {
        rc = mica_select(cases, n, ctx, IDLE_MS);
        if (rc == MICA_ETIMEDOUT && mica_ctx_err(ctx) == 0) {
            /* Our own timeout_ms; a ctx that ended would say so in mica_ctx_err(). */
            printf("timeout: nothing for %d ms\n", IDLE_MS);
            timeouts++;
            continue;
        }
        if (rc < 0) {
            printf("ctx done: %s\n", mica_err_name(rc));
            d->failed = 1;
            break;
        }
        if (rc == 2) {
            printf("quit: closed, leaving the loop\n");
            break;
        }
        const char *name = rc == 0 ? "fast" : "slow";
        if (cases[rc].closed) {
            printf("%s: closed (case disabled: nil channel)\n", name);
            cases[rc].ch = NULL; /* fast = nil: a nil channel's case never fires */
        } else {
            printf("%s: %s %d\n", name, rc == 0 ? "tick" : "tock", rc == 0 ? fv : sv);
        }
    }
    mica_ctx_free(ctx);
    if (timeouts != 1)
        d->failed = 1;
}

/* select { case <-ctx.Done(): return ctx.Err() }: no channel is needed, the
 * ctx argument is that case. Every channel case here is nil. */
static void ctx_done(struct demo *d)
{
    mica_ctx_t *ctx;
    if (mica_ctx_with_timeout(NULL, 100, &ctx) != 0) {
        d->failed = 1;
        return;
    }
    mica_select_case_t none[] = {{MICA_SELECT_RECV, NULL, NULL, false}};
    int rc = mica_select(none, 1, ctx, MICA_SELECT_FOREVER);
    printf("ctx.Done(): select returned %s, ctx.Err() is %s after its 100 ms deadline\n",
           mica_err_name(rc), mica_err_name(mica_ctx_err(ctx)));
    if (rc != MICA_ETIMEDOUT || mica_ctx_err(ctx) != MICA_ETIMEDOUT)
        d->failed = 1;
    mica_ctx_free(ctx);
}

static void run(int worker, void *arg)
{
    struct demo *d = arg;
    if (worker != 0)
        return;
    mica_chan_t *fast = NULL, *slow = NULL, *quit = NULL;
    if (mica_chan_new(&fast, sizeof(int), 0) != 0 || mica_chan_new(&slow, sizeof(int), 0) != 0 ||
        mica_chan_new(&quit, 0, 0) != 0) {
        d->failed = 1;
        goto out;
    }
    /* select { case ...: default: }: never waits. Asked before the producers
     * exist, so nothing can be ready however slowly they start (valgrind). */
    mica_select_case_t poll[] = {
        {MICA_SELECT_RECV, fast, NULL, false},
        {MICA_SELECT_RECV, slow, NULL, false},
        {MICA_SELECT_RECV, quit, NULL, false},
    };
    if (mica_select(poll, 3, NULL, MICA_SELECT_DEFAULT) == MICA_EAGAIN)
        printf("poll: nothing ready yet (default case)\n");
    else
        d->failed = 1;
    int64_t start = mica_now_ms();
    struct producer pf = {fast, start, FAST_MS, FAST_N};
    struct producer ps = {slow, start, SLOW_MS, SLOW_N};
    struct quitter q = {quit, start + QUIT_MS};
    int other = 1 % mica_worker_count();
    if (mica_go_on(other, produce, &pf) != 0 || mica_go_on(other, produce, &ps) != 0 ||
        mica_go_on(other, quit_later, &q) != 0) {
        d->failed = 1;
        goto out;
    }
    loop(d, fast, slow, quit);
    ctx_done(d);
out:
    /* Every sender has closed its channel, so nobody uses them any more. */
    mica_chan_free(fast);
    mica_chan_free(slow);
    mica_chan_free(quit);
    mica_runtime_stop(d->rt);
}

int main(void)
{
    struct demo d = {0};
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true};
    int rc = mica_runtime_new(&d.rt, &o);
    if (rc != 0) {
        fprintf(stderr, "select: runtime: %s\n", mica_strerror(rc));
        return 1;
    }
    mica_runtime_on_start(d.rt, run, &d);
    rc = mica_runtime_run(d.rt);
    mica_runtime_free(d.rt);
    if (rc != 0)
        fprintf(stderr, "select: run: %s\n", mica_strerror(rc));
    return rc != 0 || d.failed;
}

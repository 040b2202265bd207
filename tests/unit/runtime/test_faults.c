/* SPDX-License-Identifier: MIT */
/*
 * Allocation failures in the runtime (curl's torture mode, SQLite's OOM
 * tests): for n = 1, 2, ... the nth allocation from mica_runtime_new() on
 * fails (src/common/alloc.h), while a scenario spawns coroutines on two
 * workers, builds a ctx tree, and uses channels, select, sync, offload and
 * events. Every failure must come out as MICA_ENOMEM from the call that
 * needed the memory, or as a documented fallback (a dropped remote spawn
 * counted in spawn_failed, an error log line) -- never a crash, a hang or
 * a leak (ASan, valgrind). The sweep ends with the first run that made all
 * its allocations.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdbool.h>

#include "common/alloc.h"
#include "mica/chan.h"
#include "mica/log.h"
#include "mica/sync.h"
#include "helpers.h"

static atomic_int enomem_seen, errors_logged;

/* True when rc is `want`; MICA_ENOMEM is counted, anything else recorded as a failure. */
static bool ok_(int rc, int want, int line)
{
    if (rc == want)
        return true;
    if (rc == MICA_ENOMEM)
        atomic_fetch_add(&enomem_seen, 1);
    else
        expect_note(0, __FILE__, line, "unexpected result", rc, want);
    return false;
}
#define ok(rc, want) ok_((rc), (want), __LINE__)

static void count_errors(mica_log_level_t level, const char *line, size_t len, void *arg)
{
    if (level >= MICA_LOG_ERROR)
        atomic_fetch_add(&errors_logged, 1);
}

/* ---- pieces of the scenario ------------------------------------------------------ */

struct shared {
    mica_chan_t *ch;
    mica_wg_t *wg;
    mica_ctx_t *ctx;
    mica_event_t ev;
};

static void sender(void *arg)
{
    struct shared *s = arg;
    int v = 42;
    ok(mica_chan_send(s->ch, s->ctx, &v), 0);
    mica_wg_done(s->wg);
}

static void event_waiter(void *arg)
{
    struct shared *s = arg;
    ok(mica_event_wait(&s->ev, s->ctx, MICA_NO_DEADLINE), 0);
    mica_wg_done(s->wg);
}

/* Runs on worker 1 and touches only statics: if its spawn is dropped for
 * want of memory, worker 0 merely stops waiting for it. */
static mica_event_t remote_ran = MICA_EVENT_INIT;

static void remote(void *arg)
{
    mica_event_set(&remote_ran); /* a wake-up from worker 1 to worker 0 */
}

static int job(void *arg)
{
    return 7;
}

static const int key;

static void scenario(void *arg)
{
    mica_runtime_t *rt = arg;
    mica_ctx_t *root = NULL, *child = NULL, *val = NULL;
    if (ok(mica_ctx_with_cancel(NULL, &root), 0) &&
        ok(mica_ctx_with_timeout(root, 10000, &child), 0))
        ok(mica_ctx_with_value(child, &key, rt, &val), 0);
    struct shared s = {.ctx = val ? val : child ? child : root, .ev = MICA_EVENT_INIT};
    mica_chan_t *buf = NULL;
    mica_mutex_t *mu = NULL;
    mica_cond_t *cv = NULL;
    if (!ok(mica_wg_new(&s.wg), 0))
        goto out;
    if (!ok(mica_chan_new(&s.ch, sizeof(int), 0), 0) || !ok(mica_chan_new(&buf, sizeof(int), 4), 0))
        goto out;

    /* coroutines on this worker: a spawn either fails now or runs */
    int senders = 0;
    for (int i = 0; i < 3; i++) {
        mica_wg_add(s.wg, 1);
        if (ok(mica_go(sender, &s), 0))
            senders++;
        else
            mica_wg_done(s.wg);
    }
    for (int i = 0; i < senders; i++) {
        int v = 0;
        if (ok(mica_chan_recv(s.ch, NULL, &v), 0))
            EXPECT_EQ(v, 42);
    }

    /* select: a ready case, then a timeout */
    int one = 1, got = 0, none = 0;
    ok(mica_chan_try_send(buf, &one), 0);
    mica_select_case_t cases[] = {{MICA_SELECT_RECV, s.ch, &none, false},
                                  {MICA_SELECT_RECV, buf, &got, false}};
    ok(mica_select(cases, 2, s.ctx, MICA_SELECT_FOREVER), 1);
    ok(mica_select(cases, 2, s.ctx, 1), MICA_ETIMEDOUT);

    /* an event set for a waiting coroutine */
    mica_wg_add(s.wg, 1);
    if (ok(mica_go(event_waiter, &s), 0)) {
        mica_yield(); /* it waits now */
        mica_event_set(&s.ev);
    } else {
        mica_wg_done(s.wg);
    }

    /* the other worker: a spawn there, and its wake-up back */
    mica_event_reset(&remote_ran);
    if (ok(mica_go_on(1, remote, NULL), 0))
        mica_event_wait(&remote_ran, NULL, mica_deadline_in(300)); /* may be dropped (counted) */

    /* offload, mutex, cond */
    int r = 0;
    if (ok(mica_offload(NULL, s.ctx, job, NULL, &r), 0))
        EXPECT_EQ(r, 7);
    if (ok(mica_mutex_new(&mu), 0) && ok(mica_cond_new(&cv), 0)) {
        ok(mica_mutex_lock(mu, s.ctx), 0);
        mica_cond_signal(cv);
        ok(mica_mutex_unlock(mu), 0);
    }
    ok(mica_wg_wait(s.wg, NULL), 0);

out:
    mica_ctx_cancel(root);
    mica_cond_free(cv);
    mica_mutex_free(mu);
    mica_chan_free(buf);
    mica_chan_free(s.ch);
    mica_wg_free(s.wg);
    mica_ctx_free(val);
    mica_ctx_free(child);
    mica_ctx_free(root);
    mica_runtime_stop(rt);
}

static void start(int worker, void *arg)
{
    if (worker == 0)
        scenario(arg);
}

/* ---- the sweep --------------------------------------------------------------------- */

static void test_every_allocation_failure_is_enomem_or_a_documented_fallback(void **state)
{
    mica_log_set_sink(count_errors, NULL);
    long n;
    for (n = 1; n < 100000; n++) {
        atomic_store(&enomem_seen, 0);
        atomic_store(&errors_logged, 0);
        bool run_enomem = false;
        uint64_t dropped = 0;
        mica__alloc_fail_nth(n);
        mica_runtime_t *rt;
        mica_runtime_opts_t o = {.workers = 2, .no_signals = true, .drain_timeout_ms = 5000,
                                 .offload_threads = 1, .offload_queue = 4};
        int rc = mica_runtime_new(&rt, &o);
        if (rc == 0) {
            rc = mica_runtime_on_start(rt, start, rt);
            if (rc == 0)
                rc = mica_runtime_run(rt);
            mica_runtime_stats_t st;
            mica_runtime_stats(rt, &st, NULL, 0);
            dropped = st.total.spawn_failed;
            mica_runtime_free(rt);
        }
        long made = mica__alloc_count();
        mica__alloc_fail_nth(0);
        if (rc != 0 && rc != MICA_ENOMEM)
            fail_msg("n=%ld: the runtime returned %s", n, mica_err_name(rc));
        run_enomem = rc == MICA_ENOMEM;
        expect_no_failure();
        if (made < n)
            break; /* every allocation succeeded: the sweep is complete */
        if (!run_enomem && atomic_load(&enomem_seen) == 0 && dropped == 0 &&
            atomic_load(&errors_logged) == 0)
            fail_msg("n=%ld: allocation %ld of %ld failed and nobody said so", n, n, made);
    }
    mica_log_set_sink(NULL, NULL);
    assert_true(n > 15); /* the scenario makes ~20 allocations: the sweep covered them */
    print_message("swept %ld allocations\n", n - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_allocation_failure_is_enomem_or_a_documented_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* Wait groups, mutexes, conds, once, ctx trees and the offload pool. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "mica/chan.h"
#include "mica/sync.h"
#include "helpers.h"

/* ---- mutex: many coroutines on two workers increment one counter ---- */

struct counter {
    mica_mutex_t *mu;
    mica_wg_t *wg;
    long value; /* guarded by mu: TSan checks that the mutex orders it */
};

static void incrementer(void *arg)
{
    struct counter *c = arg;
    for (int i = 0; i < 200; i++) {
        EXPECT_EQ(mica_mutex_lock(c->mu, NULL), 0);
        long v = c->value;
        if (i % 7 == 0)
            mica_yield(); /* hold the lock across a suspension */
        c->value = v + 1;
        mica_mutex_unlock(c->mu);
    }
    mica_wg_done(c->wg);
}

static void mutex_body(void *arg)
{
    struct counter c = {0};
    mica_mutex_new(&c.mu);
    mica_wg_new(&c.wg);
    mica_wg_add(c.wg, 50);
    for (int i = 0; i < 50; i++)
        mica_go_on(i % 2, incrementer, &c);
    EXPECT_EQ(mica_wg_wait(c.wg, NULL), 0);
    EXPECT_EQ(c.value, 50 * 200);
    EXPECT_EQ(mica_mutex_try_lock(c.mu), 0);
    EXPECT_EQ(mica_mutex_try_lock(c.mu), MICA_EAGAIN);
    mica_mutex_unlock(c.mu);
    EXPECT_EQ(mica_mutex_unlock(c.mu), MICA_EINVAL);
    EXPECT_EQ(mica_wg_add(c.wg, -1), MICA_EINVAL);
    mica_mutex_free(c.mu);
    mica_wg_free(c.wg);
}

static void test_mutex_serializes_coroutines_across_workers(void **state)
{
    assert_int_equal(run_in_coroutine(2, mutex_body, NULL), 0);
    expect_no_failure();
}

static void lock_timeout_body(void *arg)
{
    mica_mutex_t *mu;
    mica_mutex_new(&mu);
    mica_mutex_lock(mu, NULL);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 20, &ctx);
    EXPECT_EQ(mica_mutex_lock(mu, ctx), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    mica_mutex_unlock(mu);
    EXPECT_EQ(mica_mutex_try_lock(mu), 0); /* the timed-out waiter left no trace */
    mica_mutex_unlock(mu);
    mica_mutex_free(mu);
}

static void test_mutex_lock_times_out_and_leaves_the_queue(void **state)
{
    assert_int_equal(run_in_coroutine(1, lock_timeout_body, NULL), 0);
    expect_no_failure();
}

/* ---- cond: a queue with a consumer waiting for items ---- */

struct queue {
    mica_mutex_t *mu;
    mica_cond_t *cv;
    int items, taken, parked, wakeups; /* guarded by mu */
    mica_wg_t *wg;
};

static void taker(void *arg)
{
    struct queue *q = arg;
    mica_mutex_lock(q->mu, NULL);
    while (q->items == 0) {
        q->parked++;
        mica_cond_wait(q->cv, q->mu, NULL);
        q->parked--;
        q->wakeups++;
    }
    q->items--;
    q->taken++;
    mica_mutex_unlock(q->mu);
    mica_wg_done(q->wg);
}

/* Polls *field under q->mu until it reaches `want` (a few seconds at most):
 * waits for other workers without betting on how fast they run. */
static bool reaches(struct queue *q, int *field, int want)
{
    for (int i = 0; i < 5000; i++) {
        mica_mutex_lock(q->mu, NULL);
        int v = *field;
        mica_mutex_unlock(q->mu);
        if (v == want)
            return true;
        mica_sleep_ms(1);
    }
    return false;
}

static void cond_body(void *arg)
{
    struct queue q = {0};
    mica_mutex_new(&q.mu);
    mica_cond_new(&q.cv);
    mica_wg_new(&q.wg);
    mica_wg_add(q.wg, 6);
    for (int i = 0; i < 6; i++)
        mica_go_on(i % 2, taker, &q);
    EXPECT(reaches(&q, &q.parked, 6));
    mica_mutex_lock(q.mu, NULL);
    q.items = 1;
    mica_cond_signal(q.cv);
    mica_mutex_unlock(q.mu);
    EXPECT(reaches(&q, &q.taken, 1));
    mica_sleep_ms(10); /* a signal that woke more than one would show now */
    mica_mutex_lock(q.mu, NULL);
    EXPECT_EQ(q.wakeups, 1);
    EXPECT_EQ(q.parked, 5);
    q.items = 5;
    mica_cond_broadcast(q.cv);
    mica_mutex_unlock(q.mu);
    EXPECT_EQ(mica_wg_wait(q.wg, NULL), 0);
    EXPECT_EQ(q.taken, 6);
    EXPECT_EQ(q.wakeups, 6);

    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10, &ctx);
    mica_mutex_lock(q.mu, NULL);
    EXPECT_EQ(mica_cond_wait(q.cv, q.mu, ctx), MICA_ETIMEDOUT);
    EXPECT_EQ(mica_mutex_try_lock(q.mu), MICA_EAGAIN); /* relocked on return */
    mica_mutex_unlock(q.mu);
    mica_ctx_free(ctx);
    mica_cond_free(q.cv);
    mica_mutex_free(q.mu);
    mica_wg_free(q.wg);
}

static void test_cond_signal_wakes_one_and_broadcast_wakes_all(void **state)
{
    assert_int_equal(run_in_coroutine(2, cond_body, NULL), 0);
    expect_no_failure();
}

/* ---- once ---- */

static mica_once_t once = MICA_ONCE_INIT;
static atomic_int once_runs;

static void init_once(void *arg)
{
    mica_sleep_ms(10); /* the others must wait, not run it again */
    atomic_fetch_add(&once_runs, 1);
}

static void once_user(void *arg)
{
    EXPECT_EQ(mica_once(&once, NULL, init_once, NULL), 0);
    EXPECT_EQ(atomic_load(&once_runs), 1);
    mica_wg_done(arg);
}

static void once_body(void *arg)
{
    mica_wg_t *wg;
    mica_wg_new(&wg);
    mica_wg_add(wg, 8);
    for (int i = 0; i < 8; i++)
        mica_go_on(i % 2, once_user, wg);
    EXPECT_EQ(mica_wg_wait(wg, NULL), 0);
    EXPECT_EQ(atomic_load(&once_runs), 1);
    mica_wg_free(wg);
}

static void test_once_runs_its_function_once_and_others_wait_for_it(void **state)
{
    assert_int_equal(run_in_coroutine(2, once_body, NULL), 0);
    expect_no_failure();
}

/* ---- every public wait ends with its ctx ---- */

static mica_once_t slow_once = MICA_ONCE_INIT;
static mica_event_t slow_once_done = MICA_EVENT_INIT;

static void init_slowly(void *arg)
{
    mica_event_wait(&slow_once_done, NULL, mica_deadline_in(5000));
}

static void first_once_caller(void *arg)
{
    EXPECT_EQ(mica_once(&slow_once, NULL, init_slowly, NULL), 0);
    mica_wg_done(arg);
}

static atomic_int hold_pool;

static int holding_job(void *arg)
{
    while (atomic_load(&hold_pool))
        usleep(1000);
    return 0;
}

static void holder(void *arg)
{
    int r;
    mica_offload(NULL, NULL, holding_job, NULL, &r);
    mica_wg_done(arg);
}

/*
 * Each waiting call of chan.h, sync.h, runtime.h and ctx.h, made to wait:
 * with a ctx already cancelled it returns MICA_ECANCELED, with a ctx whose
 * deadline passes MICA_ETIMEDOUT, and it leaves no trace (the next
 * operation works). `which` selects the call; `ctx` is the bound.
 */
enum { W_SEND, W_RECV, W_SELECT, W_WG, W_MUTEX, W_COND, W_ONCE, W_OFFLOAD, W_EVENT, W_DONE,
       W_SLEEP, W_COUNT };
static int rc_cancelled[W_COUNT], rc_timed[W_COUNT];

struct waits {
    mica_chan_t *ch;
    mica_wg_t *wg;
    mica_mutex_t *mu;
    mica_cond_t *cv;
    mica_event_t ev;
};

static int wait_with(struct waits *w, int which, mica_ctx_t *ctx)
{
    int v = 1;
    switch (which) {
    case W_SEND: return mica_chan_send(w->ch, ctx, &v);
    case W_RECV: return mica_chan_recv(w->ch, ctx, &v);
    case W_SELECT: {
        mica_select_case_t c[] = {{MICA_SELECT_RECV, w->ch, &v, false}};
        return mica_select(c, 1, ctx, MICA_SELECT_FOREVER);
    }
    case W_WG: return mica_wg_wait(w->wg, ctx);
    case W_MUTEX: return mica_mutex_lock(w->mu, ctx); /* held by the test body */
    case W_COND: {
        mica_mutex_t *m;
        mica_mutex_new(&m);
        mica_mutex_lock(m, NULL);
        int rc = mica_cond_wait(w->cv, m, ctx);
        if (mica_mutex_try_lock(m) != MICA_EAGAIN) /* relocked, whatever the result */
            rc = MICA_EINTERNAL;
        mica_mutex_unlock(m);
        mica_mutex_free(m);
        return rc;
    }
    case W_ONCE: return mica_once(&slow_once, ctx, init_slowly, NULL);
    case W_OFFLOAD: return mica_offload(NULL, ctx, holding_job, NULL, NULL);
    case W_EVENT: return mica_event_wait(&w->ev, ctx, MICA_NO_DEADLINE);
    case W_DONE: return mica_ctx_done(ctx);
    case W_SLEEP: return mica_ctx_sleep(ctx, 60000);
    }
    return MICA_EINVAL;
}

static void waits_body(void *arg)
{
    struct waits w = {.ev = MICA_EVENT_INIT};
    mica_chan_new(&w.ch, sizeof(int), 0);
    mica_wg_new(&w.wg);
    mica_wg_add(w.wg, 1);
    mica_mutex_new(&w.mu);
    mica_mutex_lock(w.mu, NULL);
    mica_cond_new(&w.cv);
    /* once: a first caller is inside fn; offload: both threads of the
     * runtime's pool (helpers.h) are busy, so a job waits in the queue */
    mica_wg_t *first;
    mica_wg_new(&first);
    mica_wg_add(first, 3);
    mica_go(first_once_caller, first);
    atomic_store(&hold_pool, 1);
    mica_go(holder, first);
    mica_go(holder, first);
    mica_yield();

    for (int which = 0; which < W_COUNT; which++) {
        mica_ctx_t *cancelled, *timed;
        mica_ctx_with_cancel(NULL, &cancelled);
        mica_ctx_cancel(cancelled);
        mica_ctx_with_timeout(NULL, 5, &timed);
        rc_cancelled[which] = wait_with(&w, which, cancelled);
        rc_timed[which] = wait_with(&w, which, timed);
        mica_ctx_free(cancelled);
        mica_ctx_free(timed);
    }
    /* No trace left: the waits that ended are off every queue. */
    int v = 7;
    EXPECT_EQ(mica_chan_try_send(w.ch, &v), MICA_EAGAIN);
    mica_mutex_unlock(w.mu);
    EXPECT_EQ(mica_mutex_try_lock(w.mu), 0);
    mica_mutex_unlock(w.mu);
    mica_event_set(&w.ev);
    mica_event_set(&slow_once_done);
    atomic_store(&hold_pool, 0);
    EXPECT_EQ(mica_wg_wait(first, NULL), 0);
    EXPECT_EQ(mica_once(&slow_once, NULL, init_slowly, NULL), 0);
    mica_wg_done(w.wg);
    EXPECT_EQ(mica_wg_wait(w.wg, NULL), 0);
    mica_wg_free(first);
    mica_cond_free(w.cv);
    mica_mutex_free(w.mu);
    mica_wg_free(w.wg);
    mica_chan_free(w.ch);
}

static void test_every_wait_returns_canceled_or_timedout_from_its_ctx(void **state)
{
    assert_int_equal(run_in_coroutine(1, waits_body, NULL), 0);
    expect_no_failure();
    for (int which = 0; which < W_COUNT; which++) {
        if (rc_cancelled[which] != MICA_ECANCELED || rc_timed[which] != MICA_ETIMEDOUT)
            fail_msg("call %d: %d with a cancelled ctx, %d with a deadline", which,
                     rc_cancelled[which], rc_timed[which]);
    }
}

/* ---- ctx ---- */

static const int key_user, key_trace;
static char alice[] = "alice", t1[] = "t1";

static void ctx_body(void *arg)
{
    mica_ctx_t *a, *b, *c;
    EXPECT_EQ(mica_ctx_with_value(NULL, &key_user, alice, &a), 0);
    EXPECT_EQ(mica_ctx_with_timeout(a, 1000, &b), 0);
    EXPECT_EQ(mica_ctx_with_value(b, &key_trace, t1, &c), 0);
    EXPECT(mica_ctx_value(c, &key_user) == alice);
    EXPECT(mica_ctx_value(c, &key_trace) == t1);
    EXPECT((mica_ctx_value(a, &key_trace)) == NULL);
    EXPECT_EQ(mica_ctx_deadline(c), mica_ctx_deadline(b));
    EXPECT_EQ(mica_ctx_err(c), 0);

    mica_ctx_t *short_ctx;
    mica_ctx_with_timeout(c, 15, &short_ctx);
    EXPECT(mica_ctx_deadline(short_ctx) < mica_ctx_deadline(c));
    EXPECT_EQ(mica_ctx_done(short_ctx), MICA_ETIMEDOUT);
    EXPECT_EQ(mica_ctx_err(c), 0); /* a child's end does not reach its parent */

    mica_ctx_free(b); /* cancels b and c; a lives on */
    EXPECT_EQ(mica_ctx_err(c), MICA_ECANCELED);
    EXPECT_EQ(mica_ctx_err(a), 0);
    EXPECT_EQ(mica_ctx_sleep(c, 1000), MICA_ECANCELED);
    mica_ctx_t *late;
    mica_ctx_with_cancel(c, &late); /* born of a cancelled parent: cancelled */
    EXPECT_EQ(mica_ctx_err(late), MICA_ECANCELED);
    mica_ctx_free(late);
    mica_ctx_free(short_ctx);
    mica_ctx_free(c);
    mica_ctx_free(a);
    EXPECT_EQ(mica_ctx_err(mica_ctx_background()), 0);
    EXPECT_EQ(mica_ctx_sleep(NULL, 5), 0);
}

static void test_ctx_tree_values_deadlines_and_cancellation(void **state)
{
    assert_int_equal(run_in_coroutine(1, ctx_body, NULL), 0);
    expect_no_failure();
}

/* ---- offload ---- */

static int slow_square(void *arg)
{
    usleep(20000);
    int *v = arg;
    return *v * *v;
}

struct cancel_job {
    mica_ctx_t *ctx;
    int v;
};

/* Cancels its own submitter's ctx once running, then takes its time. */
static int cancelling_square(void *arg)
{
    struct cancel_job *j = arg;
    mica_ctx_cancel(j->ctx);
    usleep(20000);
    return j->v * j->v;
}

static void offload_body(void *arg)
{
    /* helpers.h runs with 2 offload threads and a queue of 4 */
    int v = 7, result = 0;
    EXPECT_EQ(mica_offload(NULL, NULL, slow_square, &v, &result), 0);
    EXPECT_EQ(result, 49);

    /* A job that has started finishes even when its ctx ends meanwhile. */
    struct cancel_job j = {.v = 3};
    mica_ctx_with_cancel(NULL, &j.ctx);
    EXPECT_EQ(mica_offload(NULL, j.ctx, cancelling_square, &j, &result), 0);
    EXPECT_EQ(result, 9);
    EXPECT_EQ(mica_ctx_err(j.ctx), MICA_ECANCELED);
    mica_ctx_free(j.ctx);
}

static void test_offload_runs_blocking_work_and_returns_its_result(void **state)
{
    assert_int_equal(run_in_coroutine(1, offload_body, NULL), 0);
    expect_no_failure();
}

struct shed {
    mica_offload_pool_t *pool;
    mica_wg_t *wg;
    atomic_int ok, overloaded;
};

static void submitter(void *arg)
{
    struct shed *s = arg;
    int v = 2, result;
    int rc = mica_offload(s->pool, NULL, slow_square, &v, &result);
    if (rc == 0 && result == 4)
        atomic_fetch_add(&s->ok, 1);
    else if (rc == MICA_EOVERLOAD)
        atomic_fetch_add(&s->overloaded, 1);
    mica_wg_done(s->wg);
}

static atomic_int release_blocker, blocker_started;

static int blocker(void *arg)
{
    atomic_store(&blocker_started, 1);
    while (!atomic_load(&release_blocker))
        usleep(1000);
    return 0;
}

static void block_pool(void *arg)
{
    struct shed *s = arg;
    int result;
    mica_offload(s->pool, NULL, blocker, NULL, &result);
    mica_wg_done(s->wg);
}

/* Waits (a few seconds at most) until the pool's only thread runs the blocker. */
static void block_the_pool(struct shed *s)
{
    atomic_store(&release_blocker, 0);
    atomic_store(&blocker_started, 0);
    mica_go(block_pool, s);
    for (int i = 0; i < 5000 && !atomic_load(&blocker_started); i++)
        mica_sleep_ms(1);
    EXPECT(atomic_load(&blocker_started));
}

static void shed_body(void *arg)
{
    struct shed s = {0};
    mica_offload_pool_new(&s.pool, 1, 2);
    mica_wg_new(&s.wg);
    mica_wg_add(s.wg, 11);
    block_the_pool(&s);
    for (int i = 0; i < 10; i++)
        mica_go(submitter, &s);
    mica_sleep_ms(20); /* the submitters run on this worker: all have tried by now */
    /* Two fit in the queue; the other eight were refused at once. */
    EXPECT_EQ(atomic_load(&s.overloaded), 8);
    atomic_store(&release_blocker, 1);
    EXPECT_EQ(mica_wg_wait(s.wg, NULL), 0);
    EXPECT_EQ(atomic_load(&s.ok), 2);
    mica_wg_free(s.wg);
    mica_offload_pool_free(s.pool);
}

static void test_full_offload_queue_refuses_with_eoverload(void **state)
{
    assert_int_equal(run_in_coroutine(1, shed_body, NULL), 0);
    expect_no_failure();
}

static void cancel_queued_body(void *arg)
{
    struct shed s = {0};
    mica_offload_pool_new(&s.pool, 1, 4);
    mica_wg_new(&s.wg);
    mica_wg_add(s.wg, 1);
    block_the_pool(&s);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5, &ctx);
    int v = 5, result = 0;
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_offload(s.pool, ctx, slow_square, &v, &result), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 1000); /* withdrawn, not run after the blocker */
    EXPECT_EQ(result, 0);
    mica_ctx_free(ctx);
    atomic_store(&release_blocker, 1);
    mica_wg_wait(s.wg, NULL);
    mica_wg_free(s.wg);
    mica_offload_pool_free(s.pool);
}

static void test_queued_offload_job_is_withdrawn_when_its_ctx_ends(void **state)
{
    assert_int_equal(run_in_coroutine(1, cancel_queued_body, NULL), 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_serializes_coroutines_across_workers),
        cmocka_unit_test(test_mutex_lock_times_out_and_leaves_the_queue),
        cmocka_unit_test(test_cond_signal_wakes_one_and_broadcast_wakes_all),
        cmocka_unit_test(test_once_runs_its_function_once_and_others_wait_for_it),
        cmocka_unit_test(test_every_wait_returns_canceled_or_timedout_from_its_ctx),
        cmocka_unit_test(test_ctx_tree_values_deadlines_and_cancellation),
        cmocka_unit_test(test_offload_runs_blocking_work_and_returns_its_result),
        cmocka_unit_test(test_full_offload_queue_refuses_with_eoverload),
        cmocka_unit_test(test_queued_offload_job_is_withdrawn_when_its_ctx_ends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* Wait groups, mutexes, conds, once, ctx trees and the offload pool. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
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
        assert_int_equal(mica_mutex_lock(c->mu, NULL), 0);
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
    assert_int_equal(mica_wg_wait(c.wg, NULL), 0);
    assert_int_equal(c.value, 50 * 200);
    assert_int_equal(mica_mutex_try_lock(c.mu), 0);
    assert_int_equal(mica_mutex_try_lock(c.mu), MICA_EAGAIN);
    mica_mutex_unlock(c.mu);
    assert_int_equal(mica_mutex_unlock(c.mu), MICA_EINVAL);
    assert_int_equal(mica_wg_add(c.wg, -1), MICA_EINVAL);
    mica_mutex_free(c.mu);
    mica_wg_free(c.wg);
}

static void test_mutex_serializes_coroutines_across_workers(void **state)
{
    assert_int_equal(run_in_coroutine(2, mutex_body, NULL), 0);
}

static void lock_timeout_body(void *arg)
{
    mica_mutex_t *mu;
    mica_mutex_new(&mu);
    mica_mutex_lock(mu, NULL);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 20, &ctx);
    assert_int_equal(mica_mutex_lock(mu, ctx), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    mica_mutex_unlock(mu);
    assert_int_equal(mica_mutex_try_lock(mu), 0); /* the timed-out waiter left no trace */
    mica_mutex_unlock(mu);
    mica_mutex_free(mu);
}

static void test_mutex_lock_times_out_and_leaves_the_queue(void **state)
{
    assert_int_equal(run_in_coroutine(1, lock_timeout_body, NULL), 0);
}

/* ---- cond: a queue with a consumer waiting for items ---- */

struct queue {
    mica_mutex_t *mu;
    mica_cond_t *cv;
    int items, taken;
    mica_wg_t *wg;
};

static void taker(void *arg)
{
    struct queue *q = arg;
    mica_mutex_lock(q->mu, NULL);
    while (q->items == 0)
        mica_cond_wait(q->cv, q->mu, NULL);
    q->items--;
    q->taken++;
    mica_mutex_unlock(q->mu);
    mica_wg_done(q->wg);
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
    mica_sleep_ms(10);
    mica_mutex_lock(q.mu, NULL);
    q.items = 1;
    mica_cond_signal(q.cv);
    mica_mutex_unlock(q.mu);
    mica_sleep_ms(10);
    mica_mutex_lock(q.mu, NULL);
    assert_int_equal(q.taken, 1);
    q.items = 5;
    mica_cond_broadcast(q.cv);
    mica_mutex_unlock(q.mu);
    assert_int_equal(mica_wg_wait(q.wg, NULL), 0);
    assert_int_equal(q.taken, 6);

    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10, &ctx);
    mica_mutex_lock(q.mu, NULL);
    assert_int_equal(mica_cond_wait(q.cv, q.mu, ctx), MICA_ETIMEDOUT);
    assert_int_equal(mica_mutex_try_lock(q.mu), MICA_EAGAIN); /* relocked on return */
    mica_mutex_unlock(q.mu);
    mica_ctx_free(ctx);
    mica_cond_free(q.cv);
    mica_mutex_free(q.mu);
    mica_wg_free(q.wg);
}

static void test_cond_signal_wakes_one_and_broadcast_wakes_all(void **state)
{
    assert_int_equal(run_in_coroutine(2, cond_body, NULL), 0);
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
    mica_once(&once, init_once, NULL);
    assert_int_equal(atomic_load(&once_runs), 1);
    mica_wg_done(arg);
}

static void once_body(void *arg)
{
    mica_wg_t *wg;
    mica_wg_new(&wg);
    mica_wg_add(wg, 8);
    for (int i = 0; i < 8; i++)
        mica_go_on(i % 2, once_user, wg);
    assert_int_equal(mica_wg_wait(wg, NULL), 0);
    assert_int_equal(atomic_load(&once_runs), 1);
    mica_wg_free(wg);
}

static void test_once_runs_its_function_once_and_others_wait_for_it(void **state)
{
    assert_int_equal(run_in_coroutine(2, once_body, NULL), 0);
}

/* ---- ctx ---- */

static const int key_user, key_trace;

static void ctx_body(void *arg)
{
    mica_ctx_t *a, *b, *c;
    assert_int_equal(mica_ctx_with_value(NULL, &key_user, "alice", &a), 0);
    assert_int_equal(mica_ctx_with_timeout(a, 1000, &b), 0);
    assert_int_equal(mica_ctx_with_value(b, &key_trace, "t1", &c), 0);
    assert_string_equal(mica_ctx_value(c, &key_user), "alice");
    assert_string_equal(mica_ctx_value(c, &key_trace), "t1");
    assert_null(mica_ctx_value(a, &key_trace));
    assert_int_equal(mica_ctx_deadline(c), mica_ctx_deadline(b));
    assert_int_equal(mica_ctx_err(c), 0);

    mica_ctx_t *short_ctx;
    mica_ctx_with_timeout(c, 15, &short_ctx);
    assert_true(mica_ctx_deadline(short_ctx) < mica_ctx_deadline(c));
    assert_int_equal(mica_ctx_done(short_ctx), MICA_ETIMEDOUT);
    assert_int_equal(mica_ctx_err(c), 0); /* a child's end does not reach its parent */

    mica_ctx_free(b); /* cancels b and c; a lives on */
    assert_int_equal(mica_ctx_err(c), MICA_ECANCELED);
    assert_int_equal(mica_ctx_err(a), 0);
    assert_int_equal(mica_ctx_sleep(c, 1000), MICA_ECANCELED);
    mica_ctx_t *late;
    mica_ctx_with_cancel(c, &late); /* born of a cancelled parent: cancelled */
    assert_int_equal(mica_ctx_err(late), MICA_ECANCELED);
    mica_ctx_free(late);
    mica_ctx_free(short_ctx);
    mica_ctx_free(c);
    mica_ctx_free(a);
    assert_int_equal(mica_ctx_err(mica_ctx_background()), 0);
    assert_int_equal(mica_ctx_sleep(NULL, 5), 0);
}

static void test_ctx_tree_values_deadlines_and_cancellation(void **state)
{
    assert_int_equal(run_in_coroutine(1, ctx_body, NULL), 0);
}

/* ---- offload ---- */

static int slow_square(void *arg)
{
    usleep(20000);
    int *v = arg;
    return *v * *v;
}

static void offload_body(void *arg)
{
    /* helpers.h runs with 2 offload threads and a queue of 4 */
    int v = 7, result = 0;
    assert_int_equal(mica_offload(NULL, NULL, slow_square, &v, &result), 0);
    assert_int_equal(result, 49);

    /* A job that has started finishes even when its ctx ends meanwhile. */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5, &ctx);
    v = 3;
    assert_int_equal(mica_offload(NULL, ctx, slow_square, &v, &result), 0);
    assert_int_equal(result, 9);
    mica_ctx_free(ctx);
}

static void test_offload_runs_blocking_work_and_returns_its_result(void **state)
{
    assert_int_equal(run_in_coroutine(1, offload_body, NULL), 0);
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

static atomic_int release_blocker;

static int blocker(void *arg)
{
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

static void shed_body(void *arg)
{
    struct shed s = {0};
    mica_offload_pool_new(&s.pool, 1, 2);
    mica_wg_new(&s.wg);
    mica_wg_add(s.wg, 11);
    mica_go(block_pool, &s);
    mica_sleep_ms(20); /* the only thread is now busy with the blocker */
    for (int i = 0; i < 10; i++)
        mica_go(submitter, &s);
    mica_sleep_ms(20);
    /* Two fit in the queue; the other eight were refused at once. */
    assert_int_equal(atomic_load(&s.overloaded), 8);
    atomic_store(&release_blocker, 1);
    assert_int_equal(mica_wg_wait(s.wg, NULL), 0);
    assert_int_equal(atomic_load(&s.ok), 2);
    mica_wg_free(s.wg);
    mica_offload_pool_free(s.pool);
}

static void test_full_offload_queue_refuses_with_eoverload(void **state)
{
    assert_int_equal(run_in_coroutine(1, shed_body, NULL), 0);
}

static void cancel_queued_body(void *arg)
{
    struct shed s = {0};
    mica_offload_pool_new(&s.pool, 1, 4);
    mica_wg_new(&s.wg);
    mica_wg_add(s.wg, 1);
    atomic_store(&release_blocker, 0);
    mica_go(block_pool, &s);
    mica_sleep_ms(20); /* the only thread is now busy with the blocker */
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5, &ctx);
    int v = 5, result = 0;
    int64_t t0 = mica_now_ms();
    assert_int_equal(mica_offload(s.pool, ctx, slow_square, &v, &result), MICA_ETIMEDOUT);
    assert_true(mica_now_ms() - t0 < 1000); /* withdrawn, not run after the blocker */
    assert_int_equal(result, 0);
    mica_ctx_free(ctx);
    atomic_store(&release_blocker, 1);
    mica_wg_wait(s.wg, NULL);
    mica_wg_free(s.wg);
    mica_offload_pool_free(s.pool);
}

static void test_queued_offload_job_is_withdrawn_when_its_ctx_ends(void **state)
{
    assert_int_equal(run_in_coroutine(1, cancel_queued_body, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_serializes_coroutines_across_workers),
        cmocka_unit_test(test_mutex_lock_times_out_and_leaves_the_queue),
        cmocka_unit_test(test_cond_signal_wakes_one_and_broadcast_wakes_all),
        cmocka_unit_test(test_once_runs_its_function_once_and_others_wait_for_it),
        cmocka_unit_test(test_ctx_tree_values_deadlines_and_cancellation),
        cmocka_unit_test(test_offload_runs_blocking_work_and_returns_its_result),
        cmocka_unit_test(test_full_offload_queue_refuses_with_eoverload),
        cmocka_unit_test(test_queued_offload_job_is_withdrawn_when_its_ctx_ends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

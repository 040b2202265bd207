/* SPDX-License-Identifier: MIT */
/* Channels and select: buffering, close semantics, timeouts, cross-worker use. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <string.h>

#include "mica/chan.h"
#include "mica/sync.h"
#include "helpers.h"

/* ---- buffered channel: FIFO, then closed and drained ---- */

static void buffered_body(void *arg)
{
    mica_chan_t *ch;
    EXPECT_EQ(mica_chan_new(&ch, sizeof(int), 3), 0);
    for (int i = 1; i <= 3; i++)
        EXPECT_EQ(mica_chan_send(ch, NULL, &i), 0);
    int four = 4;
    EXPECT_EQ(mica_chan_try_send(ch, &four), MICA_EAGAIN);
    EXPECT_EQ(mica_chan_len(ch), 3);
    EXPECT_EQ(mica_chan_close(ch), 0);
    EXPECT_EQ(mica_chan_close(ch), MICA_ECLOSED);
    EXPECT_EQ(mica_chan_send(ch, NULL, &four), MICA_ECLOSED);
    int v = 0;
    for (int i = 1; i <= 3; i++) {
        EXPECT_EQ(mica_chan_recv(ch, NULL, &v), 0);
        EXPECT_EQ(v, i);
    }
    v = 99;
    EXPECT_EQ(mica_chan_recv(ch, NULL, &v), MICA_ECLOSED);
    EXPECT_EQ(v, 0);
    mica_chan_free(ch);
}

static void test_buffered_channel_is_fifo_and_drains_before_reporting_closed(void **state)
{
    assert_int_equal(run_in_coroutine(1, buffered_body, NULL), 0);
    expect_no_failure();
}

/* ---- unbuffered: a send waits for its receiver ---- */

struct pp {
    mica_chan_t *ping, *pong;
    int rounds;
};

static void ponger(void *arg)
{
    struct pp *p = arg;
    int v;
    while (mica_chan_recv(p->ping, NULL, &v) == 0) {
        v++;
        mica_chan_send(p->pong, NULL, &v);
    }
    mica_chan_close(p->pong);
}

static void pingpong_body(void *arg)
{
    struct pp *p = arg;
    mica_chan_new(&p->ping, sizeof(int), 0);
    mica_chan_new(&p->pong, sizeof(int), 0);
    EXPECT_EQ(mica_go_on(mica_worker_count() - 1, ponger, p), 0);
    int v = 0;
    for (int i = 0; i < p->rounds; i++) {
        EXPECT_EQ(mica_chan_send(p->ping, NULL, &v), 0);
        EXPECT_EQ(mica_chan_recv(p->pong, NULL, &v), 0);
    }
    EXPECT_EQ(v, p->rounds);
    mica_chan_close(p->ping);
    EXPECT_EQ(mica_chan_recv(p->pong, NULL, &v), MICA_ECLOSED);
    mica_chan_free(p->ping);
    mica_chan_free(p->pong);
}

static void test_unbuffered_ping_pong_on_one_worker(void **state)
{
    struct pp p = {.rounds = 10000};
    assert_int_equal(run_in_coroutine(1, pingpong_body, &p), 0);
    expect_no_failure();
}

static void test_unbuffered_ping_pong_across_workers(void **state)
{
    struct pp p = {.rounds = 10000};
    assert_int_equal(run_in_coroutine(2, pingpong_body, &p), 0);
    expect_no_failure();
}

/* ---- waits end with the ctx ---- */

static void timeout_body(void *arg)
{
    mica_chan_t *ch;
    mica_chan_new(&ch, sizeof(int), 0);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 30, &ctx);
    int64_t t0 = mica_now_ms();
    int v;
    EXPECT_EQ(mica_chan_recv(ch, ctx, &v), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 >= 30);
    EXPECT_EQ(mica_chan_send(ch, ctx, &v), MICA_ETIMEDOUT);
    EXPECT_EQ(mica_chan_try_recv(ch, &v), MICA_EAGAIN);
    mica_ctx_free(ctx);
    mica_chan_free(ch);
}

static void test_recv_and_send_time_out_with_their_ctx(void **state)
{
    assert_int_equal(run_in_coroutine(1, timeout_body, NULL), 0);
    expect_no_failure();
}

struct cancel_arg {
    mica_ctx_t *ctx;
};

static void canceller(void *arg)
{
    mica_sleep_ms(20);
    mica_ctx_cancel(((struct cancel_arg *)arg)->ctx);
}

static void cancel_body(void *arg)
{
    struct cancel_arg a;
    mica_ctx_t *parent;
    mica_ctx_with_cancel(NULL, &parent);
    mica_ctx_with_timeout(parent, 10000, &a.ctx);
    mica_chan_t *ch;
    mica_chan_new(&ch, 0, 0);
    struct cancel_arg pa = {parent};
    mica_go_on(1, canceller, &pa); /* the parent is cancelled from the other worker */
    EXPECT_EQ(mica_chan_recv(ch, a.ctx, NULL), MICA_ECANCELED);
    EXPECT_EQ(mica_ctx_err(a.ctx), MICA_ECANCELED);
    mica_ctx_free(a.ctx);
    mica_ctx_free(parent);
    mica_chan_free(ch);
}

static void test_cancelling_a_parent_on_another_worker_wakes_the_waiter(void **state)
{
    assert_int_equal(run_in_coroutine(2, cancel_body, NULL), 0);
    expect_no_failure();
}

/* ---- close wakes every waiting receiver ---- */

struct closer {
    mica_chan_t *ch;
    mica_wg_t *wg;
    atomic_int closed_seen;
};

static void waiting_receiver(void *arg)
{
    struct closer *c = arg;
    int v = 7;
    if (mica_chan_recv(c->ch, NULL, &v) == MICA_ECLOSED && v == 0)
        atomic_fetch_add(&c->closed_seen, 1);
    mica_wg_done(c->wg);
}

static void close_body(void *arg)
{
    struct closer c = {0};
    mica_chan_new(&c.ch, sizeof(int), 0);
    mica_wg_new(&c.wg);
    mica_wg_add(c.wg, 10);
    for (int i = 0; i < 10; i++)
        mica_go_on(i % 2, waiting_receiver, &c);
    mica_sleep_ms(20);
    mica_chan_close(c.ch);
    EXPECT_EQ(mica_wg_wait(c.wg, NULL), 0);
    EXPECT_EQ(atomic_load(&c.closed_seen), 10);
    mica_wg_free(c.wg);
    mica_chan_free(c.ch);
}

static void test_close_wakes_every_receiver_with_eclosed_and_a_zero_value(void **state)
{
    assert_int_equal(run_in_coroutine(2, close_body, NULL), 0);
    expect_no_failure();
}

/* ---- select ---- */

static void sender_after(void *arg)
{
    mica_sleep_ms(10);
    int v = 42;
    mica_chan_send(arg, NULL, &v);
}

static void select_body(void *arg)
{
    mica_chan_t *a, *b;
    mica_chan_new(&a, sizeof(int), 0);
    mica_chan_new(&b, sizeof(int), 1);
    int va = 0, vb = 0;
    mica_select_case_t cases[] = {
        {MICA_SELECT_RECV, a, &va, false},
        {MICA_SELECT_RECV, b, &vb, false},
        {MICA_SELECT_RECV, NULL, NULL, false}, /* nil channel: never fires */
    };
    EXPECT_EQ(mica_select(cases, 3, NULL, MICA_SELECT_DEFAULT), MICA_EAGAIN);
    EXPECT_EQ(mica_select(cases, 3, NULL, 20), MICA_ETIMEDOUT);

    mica_go(sender_after, a);
    EXPECT_EQ(mica_select(cases, 3, NULL, MICA_SELECT_FOREVER), 0);
    EXPECT_EQ(va, 42);

    int seven = 7;
    mica_select_case_t send[] = {{MICA_SELECT_SEND, b, &seven, false}};
    EXPECT_EQ(mica_select(send, 1, NULL, MICA_SELECT_DEFAULT), 0);
    EXPECT_EQ(mica_select(send, 1, NULL, MICA_SELECT_DEFAULT), MICA_EAGAIN);
    EXPECT_EQ(mica_select(cases, 3, NULL, MICA_SELECT_FOREVER), 1);
    EXPECT_EQ(vb, 7);

    mica_chan_close(a);
    EXPECT_EQ(mica_select(cases, 3, NULL, MICA_SELECT_FOREVER), 0);
    EXPECT(cases[0].closed);
    mica_chan_free(a);
    mica_chan_free(b);
}

static void test_select_default_timeout_ready_case_and_closed_case(void **state)
{
    assert_int_equal(run_in_coroutine(1, select_body, NULL), 0);
    expect_no_failure();
}

static void fairness_body(void *arg)
{
    mica_chan_t *a, *b;
    mica_chan_new(&a, 0, 1000);
    mica_chan_new(&b, 0, 1000);
    for (int i = 0; i < 1000; i++) {
        mica_chan_try_send(a, NULL);
        mica_chan_try_send(b, NULL);
    }
    int hits[2] = {0, 0};
    mica_select_case_t cases[] = {{MICA_SELECT_RECV, a, NULL, false},
                                  {MICA_SELECT_RECV, b, NULL, false}};
    for (int i = 0; i < 1000; i++)
        hits[mica_select(cases, 2, NULL, MICA_SELECT_DEFAULT)]++;
    EXPECT(hits[0] > 350 && hits[1] > 350);
    mica_chan_free(a);
    mica_chan_free(b);
}

static void test_select_picks_randomly_among_ready_cases(void **state)
{
    assert_int_equal(run_in_coroutine(1, fairness_body, NULL), 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buffered_channel_is_fifo_and_drains_before_reporting_closed),
        cmocka_unit_test(test_unbuffered_ping_pong_on_one_worker),
        cmocka_unit_test(test_unbuffered_ping_pong_across_workers),
        cmocka_unit_test(test_recv_and_send_time_out_with_their_ctx),
        cmocka_unit_test(test_cancelling_a_parent_on_another_worker_wakes_the_waiter),
        cmocka_unit_test(test_close_wakes_every_receiver_with_eclosed_and_a_zero_value),
        cmocka_unit_test(test_select_default_timeout_ready_case_and_closed_case),
        cmocka_unit_test(test_select_picks_randomly_among_ready_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

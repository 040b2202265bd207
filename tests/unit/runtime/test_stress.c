/* SPDX-License-Identifier: MIT */
/*
 * Stress: thousands of coroutines on every worker hammer a few channels
 * with sends, receives and selects under random timeouts, cancellations
 * and closes. Invariant (conservation): every element whose send returned 0
 * is received exactly once, or is still buffered at the end; each element
 * carries a unique id, so a duplicate or a loss is caught, not averaged out.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mica/chan.h"
#include "mica/sync.h"
#include "helpers.h"

#define NCHANS 6
#define NCOROS 2000
#define OPS 60
#define MAX_IDS (NCOROS * OPS)

struct stress {
    mica_chan_t *ch[NCHANS];
    mica_wg_t *wg;
    mica_ctx_t *shared; /* cancelled midway by one coroutine */
    atomic_uchar seen[MAX_IDS]; /* 1: sent ok, 2: received */
    atomic_long sent, received, dup_or_ghost;
};

static uint32_t next_rand(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static void got(struct stress *s, int64_t id)
{
    if (id < 0 || id >= MAX_IDS) {
        atomic_fetch_add(&s->dup_or_ghost, 1);
        return;
    }
    unsigned char expected = 1;
    if (!atomic_compare_exchange_strong(&s->seen[id], &expected, 2))
        atomic_fetch_add(&s->dup_or_ghost, 1);
    atomic_fetch_add(&s->received, 1);
}

struct actor {
    struct stress *s;
    int id;
};

static void actor_main(void *arg)
{
    struct actor *a = arg;
    struct stress *s = a->s;
    uint32_t r = (uint32_t)a->id * 2654435761u + 1;
    for (int op = 0; op < OPS; op++) {
        mica_chan_t *ch = s->ch[next_rand(&r) % NCHANS];
        mica_ctx_t *ctx = NULL;
        uint32_t t = next_rand(&r) % 4;
        if (t == 1)
            mica_ctx_with_timeout(NULL, next_rand(&r) % 3, &ctx);
        else if (t == 2)
            mica_ctx_with_timeout(s->shared, 1 + next_rand(&r) % 5, &ctx);
        int64_t id = (int64_t)a->id * OPS + op, v = -1;
        switch (next_rand(&r) % 5) {
        case 0:
        case 1:
            atomic_store(&s->seen[id], 1); /* before the send: a receiver may see it at once */
            if (mica_chan_send(ch, ctx, &id) == 0)
                atomic_fetch_add(&s->sent, 1);
            else
                atomic_store(&s->seen[id], 0);
            break;
        case 2:
        case 3:
            if (mica_chan_recv(ch, ctx, &v) == 0)
                got(s, v);
            break;
        default: {
            mica_chan_t *other = s->ch[next_rand(&r) % NCHANS];
            atomic_store(&s->seen[id], 1);
            mica_select_case_t cases[2] = {{MICA_SELECT_SEND, ch, &id, false},
                                           {MICA_SELECT_RECV, other, &v, false}};
            int i = mica_select(cases, 2, ctx, 1 + (int)(next_rand(&r) % 3));
            if (i != 0)
                atomic_store(&s->seen[id], 0);
            if (i == 0 && !cases[0].closed)
                atomic_fetch_add(&s->sent, 1);
            else if (i == 1 && !cases[1].closed)
                got(s, v);
            break;
        }
        }
        mica_ctx_free(ctx);
        if (a->id == 7 && op == OPS / 2)
            mica_ctx_cancel(s->shared);
        if (a->id == 11 && op == OPS - 5)
            mica_chan_close(s->ch[0]); /* one channel closes while others still use it */
    }
    mica_wg_done(s->wg);
    free(a);
}

static void stress_body(void *arg)
{
    struct stress *s = arg;
    for (int i = 0; i < NCHANS; i++)
        EXPECT_EQ(mica_chan_new(&s->ch[i], sizeof(int64_t), (size_t)(i % 3) * 4), 0);
    mica_wg_new(&s->wg);
    mica_ctx_with_cancel(NULL, &s->shared);
    mica_wg_add(s->wg, NCOROS);
    int workers = mica_worker_count();
    for (int i = 0; i < NCOROS; i++) {
        struct actor *a = malloc(sizeof(*a));
        *a = (struct actor){s, i};
        EXPECT_EQ(mica_go_on(i % workers, actor_main, a), 0);
    }
    /* Unbuffered senders may be left waiting forever: close everything
     * after a while so they finish, then wait for all. */
    mica_sleep_ms(300);
    for (int i = 0; i < NCHANS; i++)
        mica_chan_close(s->ch[i]);
    EXPECT_EQ(mica_wg_wait(s->wg, NULL), 0);
    int64_t v;
    for (int i = 0; i < NCHANS; i++) {
        while (mica_chan_try_recv(s->ch[i], &v) == 0)
            got(s, v);
        mica_chan_free(s->ch[i]);
    }
    mica_ctx_free(s->shared);
    mica_wg_free(s->wg);
}

static void run_stress(int workers)
{
    struct stress *s = calloc(1, sizeof(*s));
    assert_int_equal(run_in_coroutine(workers, stress_body, s), 0);
    assert_int_equal(atomic_load(&s->dup_or_ghost), 0);
    assert_true(atomic_load(&s->sent) > 1000);
    assert_int_equal(atomic_load(&s->sent), atomic_load(&s->received));
    free(s);
    expect_no_failure();
}

static void test_no_element_is_lost_or_duplicated_on_one_worker(void **state)
{
    run_stress(1);
}

static void test_no_element_is_lost_or_duplicated_across_four_workers(void **state)
{
    run_stress(4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_element_is_lost_or_duplicated_on_one_worker),
        cmocka_unit_test(test_no_element_is_lost_or_duplicated_across_four_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

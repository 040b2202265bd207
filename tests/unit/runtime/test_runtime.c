/* SPDX-License-Identifier: MIT */
/* Runtime: coroutines, yield, sleep, sockets, drain and cancel on shutdown. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mica/chan.h"
#include "mica/net.h"
#include "mica/runtime.h"
#include "mica/sync.h"

#include "helpers.h"

static mica_runtime_t *new_rt(int workers, int drain_ms)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = workers, .drain_timeout_ms = drain_ms, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    return rt;
}

/* ---- yield interleaves coroutines in spawn order ---- */

struct order {
    char log[64];
    int len;
    mica_runtime_t *rt;
    int done;
};

static void step(void *arg)
{
    struct order *o = arg;
    char me = (char)('a' + o->done++ % 26);
    for (int i = 0; i < 3; i++) {
        o->log[o->len++] = me;
        mica_yield();
    }
    if (o->len == 9)
        mica_runtime_stop(o->rt);
}

static void spawn_three(int worker, void *arg)
{
    for (int i = 0; i < 3; i++)
        EXPECT_EQ(mica_go(step, arg), 0);
}

static void test_yield_round_robins_coroutines_in_spawn_order(void **state)
{
    struct order o = {.rt = new_rt(1, 1000)};
    mica_runtime_on_start(o.rt, spawn_three, &o);
    assert_int_equal(mica_runtime_run(o.rt), 0);
    o.log[o.len] = '\0';
    assert_string_equal(o.log, "abcabcabc");
    mica_runtime_free(o.rt);
    expect_no_failure();
}

/* ---- what a coroutine spawns runs right after it; a yield waits a round ---- */

static struct order spawn_order;

static void log_char(char c)
{
    spawn_order.log[spawn_order.len++] = c;
}

static void child_a(void *arg)
{
    (void)arg;
    log_char('a');
    mica_yield(); /* behind everything runnable: Q first */
    log_char('A');
    mica_runtime_stop(spawn_order.rt);
}

static void child_b(void *arg)
{
    (void)arg;
    log_char('b');
}

static void parent_p(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    log_char('p');
    EXPECT_EQ(mica_go(child_a, NULL), 0);
    EXPECT_EQ(mica_go(child_b, NULL), 0);
}

static void other_q(int worker, void *arg)
{
    (void)worker;
    (void)arg;
    log_char('q');
}

static void test_spawned_coroutines_run_before_the_rest_of_the_round(void **state)
{
    memset(&spawn_order, 0, sizeof(spawn_order));
    spawn_order.rt = new_rt(1, 1000);
    /* P and Q are both runnable when the first round starts. */
    mica_runtime_on_start(spawn_order.rt, parent_p, NULL);
    mica_runtime_on_start(spawn_order.rt, other_q, NULL);
    assert_int_equal(mica_runtime_run(spawn_order.rt), 0);
    assert_string_equal(spawn_order.log, "pabqA");
    mica_runtime_free(spawn_order.rt);
    expect_no_failure();
}

/* ---- a burst of spawns shares one stack: each takes it when it first runs ---- */

#define BURST 6000 /* more than the 4096 free stacks a loop keeps */

static uintptr_t burst_stack[8];
static int burst_distinct, burst_ran;

static void burst_child(void *arg)
{
    (void)arg;
    char here;
    uintptr_t page = (uintptr_t)&here >> 16; /* the 64 KiB stack it runs on */
    int i;
    for (i = 0; i < burst_distinct; i++)
        if (burst_stack[i] == page)
            break;
    if (i == burst_distinct && burst_distinct < 8)
        burst_stack[burst_distinct++] = page;
    burst_ran++;
}

static void burst_parent(void *arg)
{
    (void)arg;
    /* Each spawn reserves a stack, but none is taken before it runs: they
     * run one after the other on the one most recently freed. */
    for (int i = 0; i < BURST; i++)
        EXPECT_EQ(mica_go(burst_child, NULL), 0);
    while (burst_ran < BURST) /* before the stop, which unmaps freed stacks */
        mica_yield();
}

static void test_a_burst_of_spawns_runs_on_one_reused_stack(void **state)
{
    burst_distinct = burst_ran = 0;
    assert_int_equal(run_in_coroutine(1, burst_parent, NULL), 0);
    assert_int_equal(burst_ran, BURST);
    assert_true(burst_distinct <= 2); /* a page boundary may split one stack */
    expect_no_failure();
}

/* ---- coroutines that keep waking each other do not starve timers ---- */

/*
 * The pair below never stops being runnable; the loop must still get to its
 * timers. Measured in rounds of the pair, not in ms, so that a loaded
 * machine (or TSan) cannot fail it: once the sleeper's deadline has passed
 * by the clock, the loop polls within POLL_EVERY_RUNS (256) coroutine runs,
 * i.e. ~128 rounds, and the woken sleeper runs within one more batch.
 */
#define OVERDUE_BOUND 1000   /* rounds after the deadline before the sleeper runs */
#define OVERDUE_GIVE_UP 100000 /* a broken loop: stop the pair so the test ends */

static mica_chan_t *ping, *pong;
static atomic_bool pair_stop;
static int64_t sleep_deadline; /* CLOCK_MONOTONIC ms, 0: not sleeping */
static long overdue_rounds, max_overdue;

static int64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pinger(void *arg)
{
    (void)arg;
    int v = 0;
    while (!atomic_load(&pair_stop) && mica_chan_send(ping, NULL, &v) == 0 &&
           mica_chan_recv(pong, NULL, &v) == 0) {
        if (sleep_deadline && clock_ms() >= sleep_deadline &&
            ++overdue_rounds >= OVERDUE_GIVE_UP)
            break;
    }
}

static void ponger(void *arg)
{
    (void)arg;
    int v;
    while (mica_chan_recv(ping, NULL, &v) == 0 && mica_chan_send(pong, NULL, &v) == 0)
        ;
}

static void sleeper_beside_a_pair(void *arg)
{
    (void)arg;
    EXPECT_EQ(mica_chan_new(&ping, sizeof(int), 0), 0);
    EXPECT_EQ(mica_chan_new(&pong, sizeof(int), 0), 0);
    atomic_store(&pair_stop, false);
    max_overdue = 0;
    EXPECT_EQ(mica_go(pinger, NULL), 0);
    EXPECT_EQ(mica_go(ponger, NULL), 0);
    for (int i = 0; i < 9; i++) {
        overdue_rounds = 0;
        sleep_deadline = mica_now_ms() + 10;
        EXPECT_EQ(mica_sleep_ms(10), 0);
        sleep_deadline = 0;
        if (overdue_rounds > max_overdue)
            max_overdue = overdue_rounds;
    }
    atomic_store(&pair_stop, true);
    mica_chan_close(ping);
    mica_chan_close(pong);
}

static void test_a_busy_pair_of_coroutines_does_not_delay_timers(void **state)
{
    assert_int_equal(run_in_coroutine(1, sleeper_beside_a_pair, NULL), 0);
    mica_chan_free(ping);
    mica_chan_free(pong);
    expect_no_failure();
    assert_in_range(max_overdue, 0, OVERDUE_BOUND);
}

/* ---- sleep waits at least its time, on every worker ---- */

static atomic_int slept_ok;

static void sleeper(int worker, void *arg)
{
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_sleep_ms(30), 0);
    if (mica_now_ms() - t0 >= 30)
        atomic_fetch_add(&slept_ok, 1);
    if (atomic_load(&slept_ok) == 2)
        mica_runtime_stop(arg);
}

static void test_sleep_suspends_for_at_least_the_time_on_each_worker(void **state)
{
    mica_runtime_t *rt = new_rt(2, 1000);
    mica_runtime_on_start(rt, sleeper, rt);
    assert_int_equal(mica_runtime_run(rt), 0);
    assert_int_equal(atomic_load(&slept_ok), 2);
    mica_runtime_free(rt);
    expect_no_failure();
}

/* ---- drain deadline cancels a stuck wait ---- */

static int stuck_rc;

static void stuck(int worker, void *arg)
{
    mica_runtime_stop(arg);
    stuck_rc = mica_sleep_ms(60000);
}

static void test_drain_deadline_cancels_waits_with_ecanceled(void **state)
{
    mica_runtime_t *rt = new_rt(1, 50);
    mica_runtime_on_start(rt, stuck, rt);
    assert_int_equal(mica_runtime_run(rt), MICA_ETIMEDOUT);
    assert_int_equal(stuck_rc, MICA_ECANCELED);
    mica_runtime_free(rt);
    expect_no_failure();
}

/* ---- shutdown phases run, in order, before the stop hooks ---- */

static struct {
    pthread_mutex_t lock;
    char log[32];
    int len;
    atomic_int workers_serving;
} sd = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void note(char c)
{
    pthread_mutex_lock(&sd.lock);
    if (sd.len < (int)sizeof(sd.log) - 1)
        sd.log[sd.len++] = c;
    pthread_mutex_unlock(&sd.lock);
}

static void echo_on_worker1(void *arg)
{
    EXPECT(!mica_worker_stopping());
    mica_wg_done(arg);
}

static void unready_slow(mica_ctx_t *ctx, void *arg)
{
    EXPECT_EQ(mica_worker_id(), 0);
    EXPECT(mica_ctx_deadline(ctx) != MICA_NO_DEADLINE);
    EXPECT(!mica_worker_stopping()); /* still serving */
    note('a');
    EXPECT_EQ(mica_ctx_sleep(ctx, 50), 0); /* delays everything after this phase */
    note('A');
}

static void unready_quick(mica_ctx_t *ctx, void *arg)
{
    note('c'); /* started with 'a', returns before it */
}

static void deregister(mica_ctx_t *ctx, void *arg)
{
    note('b');
    /* worker 1 still runs coroutines while the phases run */
    mica_wg_t *wg;
    mica_wg_new(&wg);
    mica_wg_add(wg, 1);
    EXPECT_EQ(mica_go_on(1, echo_on_worker1, wg), 0);
    EXPECT_EQ(mica_wg_wait(wg, ctx), 0);
    mica_wg_free(wg);
}

static void stop_hook(int worker, void *arg)
{
    note('s');
}

static void stop_at_once(int worker, void *arg)
{
    if (worker == 0)
        mica_runtime_stop(arg);
}

static void test_shutdown_phases_run_in_order_before_the_stop_hooks(void **state)
{
    sd.len = 0;
    mica_runtime_t *rt = new_rt(2, 5000);
    assert_int_equal(mica_runtime_on_shutdown(rt, 7, unready_quick, NULL), MICA_EINVAL);
    /* registered out of order: phases, not registration, decide */
    assert_int_equal(mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_DEREGISTER, deregister, NULL), 0);
    assert_int_equal(mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_UNREADY, unready_slow, NULL), 0);
    assert_int_equal(mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_UNREADY, unready_quick, NULL), 0);
    mica_runtime_on_stop(rt, stop_hook, NULL);
    mica_runtime_on_start(rt, stop_at_once, rt);
    assert_int_equal(mica_runtime_run(rt), 0);
    expect_no_failure();
    sd.log[sd.len] = '\0';
    assert_string_equal(sd.log, "acAbss"); /* one 's' per worker, after every phase */
    mica_runtime_free(rt);
}

/* ---- a hook that never returns is cancelled at the drain deadline ---- */

static int stuck_hook_rc = 1;
static atomic_int stop_hooks_ran;

static void never_returns(mica_ctx_t *ctx, void *arg)
{
    static mica_event_t never = MICA_EVENT_INIT;
    stuck_hook_rc = mica_event_wait(&never, NULL, MICA_NO_DEADLINE); /* ignores its ctx */
}

static void not_reached(mica_ctx_t *ctx, void *arg)
{
    note('x');
}

static void count_stop(int worker, void *arg)
{
    atomic_fetch_add(&stop_hooks_ran, 1);
}

static void test_a_shutdown_hook_that_never_returns_is_cancelled_at_the_deadline(void **state)
{
    sd.len = 0;
    mica_runtime_t *rt = new_rt(2, 200);
    mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_UNREADY, never_returns, NULL);
    mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_DEREGISTER, not_reached, NULL);
    mica_runtime_on_stop(rt, count_stop, NULL);
    mica_runtime_on_start(rt, stop_at_once, rt);
    assert_int_equal(mica_runtime_run(rt), MICA_ETIMEDOUT);
    expect_no_failure();
    assert_int_equal(stuck_hook_rc, MICA_ECANCELED);
    assert_int_equal(sd.len, 0); /* the later phase was skipped */
    assert_int_equal(atomic_load(&stop_hooks_ran), 2);
    mica_runtime_free(rt);
}

/* ---- sockets: echo over loopback, read deadline ---- */

struct echo {
    mica_runtime_t *rt;
    int lfd;
    char got[16];
    int read_timeout_rc;
};

static void echo_server(void *arg)
{
    struct echo *e = arg;
    int c = mica_net_accept(e->lfd, NULL, mica_deadline_in(2000));
    if (!EXPECT(c >= 0))
        return;
    char buf[16];
    ssize_t n = mica_net_read(c, buf, sizeof(buf), NULL, mica_deadline_in(2000));
    if (EXPECT(n > 0))
        EXPECT_EQ(mica_net_write(c, buf, (size_t)n, NULL, mica_deadline_in(2000)), 0);
    mica_net_close(c);
}

static void echo_client(int worker, void *arg)
{
    struct echo *e = arg;
    e->lfd = mica_net_listen("127.0.0.1:0", 16, 0);
    if (!EXPECT(e->lfd >= 0)) {
        mica_runtime_stop(e->rt);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    getsockname(e->lfd, (struct sockaddr *)&ss, &len);
    char addr[64];
    EXPECT_EQ(mica_net_format_addr((struct sockaddr *)&ss, addr, sizeof(addr)), 0);
    EXPECT_EQ(mica_go(echo_server, e), 0);

    int fd = mica_net_connect(addr, NULL, mica_deadline_in(2000));
    if (!EXPECT(fd >= 0)) {
        mica_net_close(e->lfd);
        mica_runtime_stop(e->rt);
        return;
    }
    e->read_timeout_rc = (int)mica_net_read(fd, e->got, sizeof(e->got), NULL, mica_deadline_in(20));
    EXPECT_EQ(mica_net_write(fd, "ping", 4, NULL, mica_deadline_in(2000)), 0);
    ssize_t n = mica_net_read(fd, e->got, sizeof(e->got) - 1, NULL, mica_deadline_in(2000));
    if (EXPECT_EQ(n, 4))
        e->got[n] = '\0';
    mica_net_close(fd);
    mica_net_close(e->lfd);
    mica_runtime_stop(e->rt);
}

static void test_sockets_echo_over_loopback_and_reads_time_out(void **state)
{
    struct echo e = {.rt = new_rt(1, 1000)};
    mica_runtime_on_start(e.rt, echo_client, &e);
    assert_int_equal(mica_runtime_run(e.rt), 0);
    assert_int_equal(e.read_timeout_rc, MICA_ETIMEDOUT);
    assert_string_equal(e.got, "ping");
    mica_runtime_free(e.rt);
    expect_no_failure();
}

static void test_bad_addresses_are_einval(void **state)
{
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(mica_net_parse_addr("127.0.0.1:99999", &ss, &len), MICA_EINVAL);
    assert_int_equal(mica_net_parse_addr("nohost:80", &ss, &len), MICA_EINVAL);
    assert_int_equal(mica_net_parse_addr("[::1:80", &ss, &len), MICA_EINVAL);
    assert_int_equal(mica_net_parse_addr("127.0.0.1:", &ss, &len), MICA_EINVAL);
    assert_int_equal(mica_net_parse_addr("[::1]:80", &ss, &len), 0);
    assert_int_equal(mica_net_parse_addr(":8080", &ss, &len), 0);
    assert_int_equal(mica_net_parse_addr("8080", &ss, &len), 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yield_round_robins_coroutines_in_spawn_order),
        cmocka_unit_test(test_spawned_coroutines_run_before_the_rest_of_the_round),
        cmocka_unit_test(test_a_burst_of_spawns_runs_on_one_reused_stack),
        cmocka_unit_test(test_a_busy_pair_of_coroutines_does_not_delay_timers),
        cmocka_unit_test(test_sleep_suspends_for_at_least_the_time_on_each_worker),
        cmocka_unit_test(test_drain_deadline_cancels_waits_with_ecanceled),
        cmocka_unit_test(test_shutdown_phases_run_in_order_before_the_stop_hooks),
        cmocka_unit_test(test_a_shutdown_hook_that_never_returns_is_cancelled_at_the_deadline),
        cmocka_unit_test(test_sockets_echo_over_loopback_and_reads_time_out),
        cmocka_unit_test(test_bad_addresses_are_einval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

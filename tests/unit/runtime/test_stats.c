/* SPDX-License-Identifier: MIT */
/* mica_runtime_stats() and mica_runtime_on_poll(), read from workers and from another thread. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mica/chan.h"
#include "mica/net.h"
#include "mica/sync.h"
#include "helpers.h"

static mica_runtime_t *the_rt;

static mica_runtime_stats_t stats_now(mica_worker_stats_t *w0)
{
    mica_runtime_stats_t s;
    mica_worker_stats_t per[4];
    mica_runtime_stats(the_rt, &s, per, 4);
    if (w0)
        *w0 = per[0];
    return s;
}

/* Yields, then sleeps (so the loop polls and publishes, and other threads
 * run), until cond holds; gives up after 10 s, however loaded the machine. */
#define EVENTUALLY(cond)                                                                          \
    ({                                                                                            \
        bool ok_ = false;                                                                         \
        int64_t until_ = mica_deadline_in(10000);                                                 \
        for (int i_ = 0; !(ok_ = (cond)) && mica_now_ms() < until_; i_++)                         \
            i_ < 1000 ? mica_yield() : (void)mica_sleep_ms(1);                                    \
        ok_;                                                                                      \
    })

/* ---- gauges and counters, seen from a coroutine ---------------------------------- */

static atomic_bool spinners_stop;

static void spinner(void *arg)
{
    while (!atomic_load(&spinners_stop))
        mica_yield();
    mica_wg_done(arg);
}

static void parked(void *arg)
{
    mica_chan_recv(arg, NULL, NULL); /* until the channel closes */
}

static atomic_int release_job, job_started;

static int blocking_job(void *arg)
{
    atomic_store(&job_started, 1);
    while (!atomic_load(&release_job))
        usleep(1000);
    return 0;
}

static void offloader(void *arg)
{
    int r;
    EXPECT_EQ(mica_offload(NULL, NULL, blocking_job, NULL, &r), 0);
    mica_wg_done(arg);
}

static void blocker(void *arg)
{
    usleep(30000); /* holds the worker: the sleeper's timer comes due meanwhile */
}

static void gauges_body(void *arg)
{
    mica_worker_stats_t w;
    mica_runtime_stats_t s = stats_now(&w);
    EXPECT_EQ(s.workers, 1);
    uint64_t spawned0 = w.spawned;

    /* 100 coroutines parked on a channel: live, not runnable */
    mica_chan_t *ch;
    mica_chan_new(&ch, 0, 0);
    for (int i = 0; i < 100; i++)
        EXPECT_EQ(mica_go(parked, ch), 0);
    EXPECT(EVENTUALLY((stats_now(&w), w.coroutines >= 101 && w.spawned >= spawned0 + 100)));

    /* 10 coroutines that keep yielding: runnable */
    mica_wg_t *wg;
    mica_wg_new(&wg);
    mica_wg_add(wg, 10);
    atomic_store(&spinners_stop, false);
    for (int i = 0; i < 10; i++)
        mica_go(spinner, wg);
    EXPECT(EVENTUALLY((stats_now(&w), w.runnable >= 10)));
    atomic_store(&spinners_stop, true);
    EXPECT_EQ(mica_wg_wait(wg, NULL), 0);

    /* a watched fd */
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv);
    uint64_t fds0 = (stats_now(&w), w.watched_fds);
    EXPECT_EQ(mica_net_wait(sv[0], MICA_NET_WRITABLE, NULL, mica_deadline_in(1000)), 0);
    EXPECT(EVENTUALLY((stats_now(&w), w.watched_fds == fds0 + 1)));
    mica_net_close(sv[0]);
    close(sv[1]);
    EXPECT(EVENTUALLY((stats_now(&w), w.watched_fds == fds0)));

    /* the offload pool (2 threads, queue of 4): two running, one queued */
    atomic_store(&release_job, 0);
    mica_wg_add(wg, 3);
    for (int i = 0; i < 3; i++)
        mica_go(offloader, wg);
    EXPECT(EVENTUALLY((s = stats_now(NULL), s.offload_busy == 2 && s.offload_queued == 1)));
    EXPECT_EQ(s.offload_threads, 2);
    atomic_store(&release_job, 1);
    EXPECT_EQ(mica_wg_wait(wg, NULL), 0);
    s = stats_now(NULL);
    EXPECT_EQ(s.offload_busy, 0);
    EXPECT_EQ(s.offload_queued, 0);

    /* loop lag: a timer due in 5 ms fires only after a 30 ms blocking call */
    uint64_t fired0 = (stats_now(&w), w.timers_fired);
    EXPECT_EQ(mica_go(blocker, NULL), 0); /* runs as soon as we sleep */
    EXPECT_EQ(mica_sleep_ms(5), 0);
    EXPECT(EVENTUALLY((stats_now(&w), w.timers_fired > fired0)));
    EXPECT(w.lag_us_max >= 20000);
    EXPECT(w.lag_us_sum >= w.lag_us_max);

    mica_chan_close(ch);
    mica_wg_free(wg);
    mica_chan_free(ch);
}

static void test_stats_count_coroutines_runnable_fds_offload_and_lag(void **state)
{
    struct run_once r = {.body = gauges_body};
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .offload_threads = 2,
                             .offload_queue = 4};
    assert_int_equal(mica_runtime_new(&the_rt, &o), 0);
    r.rt = the_rt;
    mica_runtime_on_start(the_rt, run_once_start, &r);
    assert_int_equal(mica_runtime_run(the_rt), 0);
    expect_no_failure();
    mica_runtime_stats_t s;
    mica_runtime_stats(the_rt, &s, NULL, 0);
    assert_int_equal(s.total.coroutines, 0); /* the final counts stay readable */
    assert_true(s.total.spawned >= 114);
    assert_int_equal(s.offload_threads, 0); /* the pool is gone */
    mica_runtime_free(the_rt);
}

/* ---- poll hooks, and a reader on another thread -------------------------------- */

static atomic_long before_calls[2], after_calls[2];
static atomic_int hook_wrong_thread, hook_out_of_order;

static void before_poll(int worker, void *arg)
{
    if (worker != mica_worker_id() || arg != &before_calls)
        atomic_store(&hook_wrong_thread, 1);
    if (atomic_load(&before_calls[worker]) != atomic_load(&after_calls[worker]))
        atomic_store(&hook_out_of_order, 1);
    atomic_fetch_add(&before_calls[worker], 1);
}

static void after_poll(int worker, void *arg)
{
    if (worker != mica_worker_id())
        atomic_store(&hook_wrong_thread, 1);
    atomic_fetch_add(&after_calls[worker], 1);
    if (atomic_load(&before_calls[worker]) != atomic_load(&after_calls[worker]))
        atomic_store(&hook_out_of_order, 1);
}

static atomic_bool reader_stop;
static atomic_long reads;

/* Reads every 50 us, as an eager scraper would. Under valgrind one thread
 * runs at a time: a reader that never pauses takes half the turns even with
 * --fair-sched=yes (23 s here against 1 s), and without it starved the
 * workers until the run overran its 10 s drain. */
static void *stats_reader(void *arg)
{
    while (!atomic_load(&reader_stop)) {
        mica_runtime_stats_t s;
        mica_worker_stats_t per[2];
        mica_runtime_stats(arg, &s, per, 2);
        atomic_fetch_add(&reads, 1);
        nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
    }
    return NULL;
}

struct chat {
    mica_chan_t *ch;
    mica_wg_t *done;
};

static void chatter(void *arg)
{
    struct chat *c = arg;
    int v;
    while (mica_chan_recv(c->ch, NULL, &v) == 0)
        ;
    mica_wg_done(c->done);
}

static void busy_body(void *arg)
{
    struct chat c;
    mica_chan_new(&c.ch, sizeof(int), 0);
    mica_wg_new(&c.done);
    mica_wg_add(c.done, 1);
    mica_go_on(1, chatter, &c); /* cross-worker traffic: both loops poll */
    for (int i = 0; i < 2000; i++) {
        EXPECT_EQ(mica_chan_send(c.ch, NULL, &i), 0);
        if (i % 100 == 0)
            mica_sleep_ms(1);
    }
    mica_chan_close(c.ch);
    EXPECT_EQ(mica_wg_wait(c.done, NULL), 0);
    mica_wg_free(c.done);
    mica_chan_free(c.ch);
}

static void test_poll_hooks_run_around_every_poll_while_another_thread_reads_stats(void **state)
{
    struct run_once r = {.body = busy_body};
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true};
    assert_int_equal(mica_runtime_new(&r.rt, &o), 0);
    assert_int_equal(mica_runtime_on_poll(r.rt, NULL, NULL, NULL), MICA_EINVAL);
    assert_int_equal(mica_runtime_on_poll(r.rt, before_poll, after_poll, &before_calls), 0);
    mica_runtime_on_start(r.rt, run_once_start, &r);
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, stats_reader, r.rt), 0);
    assert_int_equal(mica_runtime_run(r.rt), 0);
    atomic_store(&reader_stop, true);
    pthread_join(reader, NULL);
    expect_no_failure();
    assert_int_equal(atomic_load(&hook_wrong_thread), 0);
    assert_int_equal(atomic_load(&hook_out_of_order), 0);
    mica_runtime_stats_t s;
    mica_worker_stats_t per[2];
    assert_int_equal(mica_runtime_stats(r.rt, &s, per, 2), 2);
    for (int i = 0; i < 2; i++) {
        assert_true(per[i].polls > 0);
        assert_int_equal(atomic_load(&before_calls[i]), per[i].polls);
        assert_int_equal(atomic_load(&after_calls[i]), per[i].polls);
    }
    assert_int_equal(s.total.polls, per[0].polls + per[1].polls);
    assert_true(atomic_load(&reads) > 0);
    mica_runtime_free(r.rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_count_coroutines_runnable_fds_offload_and_lag),
        cmocka_unit_test(test_poll_hooks_run_around_every_poll_while_another_thread_reads_stats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

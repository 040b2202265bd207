/* SPDX-License-Identifier: MIT */
/* Test helper: run `body` as a coroutine on a fresh runtime, then stop it. */
#ifndef MICA_TEST_HELPERS_H
#define MICA_TEST_HELPERS_H

#include <stdatomic.h>
#include <stdio.h>

#include "mica/runtime.h"

/*
 * Expectations inside coroutines. cmocka's assertions longjmp out of the
 * test, which from a coroutine on a worker thread is undefined behaviour;
 * so coroutines only record the first failed expectation here, and the test
 * (on the main thread) reports it with expect_no_failure() once the runtime
 * has returned. EXPECT evaluates to the condition, so a body can bail out:
 *     if (!EXPECT_EQ(mica_event_wait(&ev, NULL, d), 0)) return;
 */
static struct {
    atomic_int failed;
    char what[256];
} test_failure;

static inline int expect_note(int ok, const char *file, int line, const char *text, long long a,
                              long long b)
{
    if (!ok && atomic_exchange(&test_failure.failed, 1) == 0)
        snprintf(test_failure.what, sizeof(test_failure.what), "%s:%d: %s (%lld vs %lld)", file,
                 line, text, a, b);
    return ok;
}
static inline int expect_eq(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
/* Each argument is evaluated once: EXPECT_EQ(mica_chan_send(...), 0) sends once. */
#define EXPECT(cond) expect_note(!!(cond), __FILE__, __LINE__, #cond, 0, 0)
#define EXPECT_EQ(a, b)                                                                           \
    expect_eq((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

/* On the main thread, after the runtime returned: fails the test with the first recorded failure. */
#define expect_no_failure()                                                                       \
    do {                                                                                          \
        if (atomic_exchange(&test_failure.failed, 0))                                             \
            fail_msg("%s", test_failure.what);                                                    \
    } while (0)

struct run_once {
    mica_runtime_t *rt;
    void (*body)(void *arg);
    void *arg;
};

static void run_once_start(int worker, void *arg)
{
    struct run_once *r = arg;
    if (worker != 0)
        return;
    r->body(r->arg);
    mica_runtime_stop(r->rt);
}

/* Runs body(arg) in a coroutine on worker 0 of a `workers`-worker runtime. Returns run's result. */
static inline int run_in_coroutine(int workers, void (*body)(void *), void *arg)
{
    struct run_once r = {.body = body, .arg = arg};
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true, .drain_timeout_ms = 5000,
                             .offload_threads = 2, .offload_queue = 4};
    if (mica_runtime_new(&r.rt, &o) != 0)
        return -1;
    mica_runtime_on_start(r.rt, run_once_start, &r);
    int rc = mica_runtime_run(r.rt);
    mica_runtime_free(r.rt);
    return rc;
}

#endif

/* SPDX-License-Identifier: MIT */
/* Test helper: run `body` as a coroutine on a fresh runtime, then stop it. */
#ifndef MICA_TEST_HELPERS_H
#define MICA_TEST_HELPERS_H

#include "mica/runtime.h"

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

/* SPDX-License-Identifier: MIT */
/*
 * The mica runtime: N worker threads, each with its own event loop and
 * scheduler of stackful coroutines. Code running in a coroutine reads like
 * Go: socket I/O, sleeps and waits suspend the coroutine, not the thread.
 *
 *     mica_runtime_t *rt;
 *     mica_runtime_new(&rt, NULL);          // MICA_WORKERS or one per CPU
 *     mica_runtime_on_start(rt, setup, arg); // runs in a coroutine on every worker
 *     return mica_runtime_run(rt);          // until SIGTERM/SIGINT, then drains
 *
 * Bounding a wait. Every mica call that can suspend takes a `mica_ctx_t
 * *ctx` (NULL: none) -- channels, select, sync, once, events, offload,
 * sockets, clients. Calls whose callers usually want a per-operation limit
 * as well (sockets, events) also take an absolute `deadline_ms`
 * (mica_deadline_in(ms), or MICA_NO_DEADLINE); select takes a relative
 * `timeout_ms`. The wait ends at the first of: the ctx's cancellation
 * (MICA_ECANCELED), the ctx's deadline or deadline_ms (MICA_ETIMEDOUT), or
 * the worker's drain deadline at shutdown (MICA_ECANCELED). The ctx bounds
 * only the wait: a call that can complete without waiting (a buffered
 * element, a set event, readable bytes) does so whatever its ctx. Two calls
 * take no ctx on purpose: mica_yield() (not a wait) and mica_sleep_ms()
 * (bounded by its own time and the drain; mica_ctx_sleep() is the
 * cancellable sleep).
 */
#ifndef MICA_RUNTIME_H
#define MICA_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/ctx.h"
#include "mica/error.h"

typedef struct mica_runtime mica_runtime_t;

/** A coroutine body. It runs on one worker until it returns. */
typedef void (*mica_coro_fn)(void *arg);

/** Runs on a worker thread; see mica_runtime_on_start() and mica_runtime_on_stop(). */
typedef void (*mica_worker_cb)(int worker_id, void *arg);

/** Deadline meaning "wait forever", for the `deadline_ms` arguments. */
#define MICA_NO_DEADLINE INT64_MAX

typedef struct mica_runtime_opts {
    int workers;              /* 0: $MICA_WORKERS, else the number of online CPUs */
    size_t stack_bytes;       /* coroutine stack, 0: 64 KiB; rounded up to pages */
    int drain_timeout_ms;     /* the whole shutdown (phases included); 0:
                                 $MICA_DRAIN_TIMEOUT_MS, else 10000 */
    bool no_signals;          /* true: don't handle SIGTERM/SIGINT (embedding, tests) */
    int offload_threads;      /* 0: $MICA_OFFLOAD_THREADS, else 4 */
    size_t offload_queue;     /* 0: $MICA_OFFLOAD_QUEUE, else 1024 queued jobs */
} mica_runtime_opts_t;

/**
 * Creates a runtime with `opts` (NULL for defaults and environment). Nothing
 * runs until mica_runtime_run(). Returns 0, MICA_EINVAL on bad options or a
 * bad MICA_* variable, or MICA_ENOMEM.
 */
MICA_API int mica_runtime_new(mica_runtime_t **out, const mica_runtime_opts_t *opts);

/** Returns the number of workers `rt` runs. */
MICA_API int mica_runtime_workers(const mica_runtime_t *rt);

/**
 * Registers `cb` to run in a new coroutine on every worker when it starts,
 * in registration order. Call before mica_runtime_run(). Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_runtime_on_start(mica_runtime_t *rt, mica_worker_cb cb, void *arg);

/**
 * Registers `cb` to run on every worker (on the loop, not in a coroutine:
 * it must not suspend) when the worker starts draining, after the shutdown
 * phases (see "Shutdown" below), so servers can stop accepting and close
 * idle connections. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_runtime_on_stop(mica_runtime_t *rt, mica_worker_cb cb, void *arg);

/*
 * Shutdown, in this order, once a stop is requested (SIGTERM or SIGINT
 * unless opts.no_signals, or mica_runtime_stop()) at time T:
 *
 *  1. The drain deadline is fixed at T + drain_timeout_ms. It bounds all of
 *     what follows.
 *  2. The shutdown phases run one after the other, MICA_SHUTDOWN_UNREADY
 *     then MICA_SHUTDOWN_DEREGISTER. A phase starts all its hooks at once,
 *     each in its own coroutine on worker 0, in registration order, and
 *     ends when they have all returned. The workers go on serving
 *     meanwhile (mica_worker_stopping() is still false). At the drain
 *     deadline the phase running is cut short and the later ones skipped.
 *  3. Every worker drains: its on_stop callbacks run (stop accepting, close
 *     idle connections), then its coroutines have until the drain deadline
 *     to finish. run() returns 0 when all did.
 *  4. At the drain deadline every wait still pending on any worker --
 *     shutdown hooks included -- returns MICA_ECANCELED, and so does every
 *     later one; run() returns MICA_ETIMEDOUT once the coroutines are gone.
 *
 * A second request (a second signal) goes straight to 4.
 */

/** Shutdown phases, in the order they run (see above). */
typedef enum mica_shutdown_phase {
    MICA_SHUTDOWN_UNREADY = 0,    /* mark the service not ready: readiness probes fail */
    MICA_SHUTDOWN_DEREGISTER = 1, /* leave service registries, tell peers */
} mica_shutdown_phase_t;
#define MICA_SHUTDOWN_PHASES 2

/**
 * A shutdown hook. Runs in its own coroutine on worker 0 and may suspend
 * (a call to a registry); `ctx` ends at the drain deadline: pass it on.
 */
typedef void (*mica_shutdown_cb)(mica_ctx_t *ctx, void *arg);

/**
 * Registers fn(ctx, arg) to run in shutdown phase `phase` (see above). Call
 * before mica_runtime_run(). Returns 0, MICA_EINVAL (no fn, no such phase)
 * or MICA_ENOMEM.
 */
MICA_API int mica_runtime_on_shutdown(mica_runtime_t *rt, mica_shutdown_phase_t phase,
                                      mica_shutdown_cb fn, void *arg);

/**
 * Starts the workers and blocks until a stop request has run its course
 * ("Shutdown" above). Returns 0 after a clean drain, MICA_ETIMEDOUT if the
 * drain deadline had to cancel work, MICA_ENOMEM if a worker or a start
 * hook got no memory (it then stops by itself), or a thread-start error.
 */
MICA_API int mica_runtime_run(mica_runtime_t *rt);

/** Asks `rt` to stop, as SIGTERM does. Safe from any thread and from signal handlers. */
MICA_API void mica_runtime_stop(mica_runtime_t *rt);

/** Frees `rt` after mica_runtime_run() has returned. NULL is a no-op. */
MICA_API void mica_runtime_free(mica_runtime_t *rt);

/** Runs on the thread in mica_runtime_run() when a signal given to mica_runtime_on_signal() arrives. */
typedef void (*mica_signal_cb)(int signo, void *arg);

/**
 * Has fn(signo, arg) called, on the thread blocked in mica_runtime_run() (not
 * a worker: it must not suspend, and should only set flags or wake others),
 * each time `signo` arrives while the runtime runs; e.g. SIGHUP to reopen log
 * files. The runtime blocks `signo` in its threads and reads it from its
 * signalfd, also with opts.no_signals. Call before mica_runtime_run().
 * Returns 0, MICA_EINVAL (no fn; SIGTERM/SIGINT, which the runtime owns, or
 * SIGKILL, SIGSTOP, SIGPROF, SIGPIPE or a fault signal) or MICA_ENOMEM.
 */
MICA_API int mica_runtime_on_signal(mica_runtime_t *rt, int signo, mica_signal_cb fn, void *arg);

/** Runs on a worker thread around each wait for events; see mica_runtime_on_poll(). */
typedef void (*mica_poll_cb)(int worker_id, void *arg);

/**
 * Registers before() / after() (either may be NULL) to run on each worker
 * thread right before and after every epoll_wait, on the loop (they must
 * not suspend). Call before mica_runtime_run(); unset, they cost nothing.
 * Returns 0, MICA_EINVAL (both NULL) or MICA_ENOMEM.
 */
MICA_API int mica_runtime_on_poll(mica_runtime_t *rt, mica_poll_cb before, mica_poll_cb after,
                                  void *arg);

/* ---- statistics ------------------------------------------------------------- */

/*
 * One worker's counters. "ever" counters only grow; the others are gauges.
 *
 * Loop lag: for each timer the loop fires (a sleep or a deadline coming due,
 * not a wait that ended otherwise), how long after its due time the loop
 * noticed it -- CLOCK_MONOTONIC right after epoll_wait returned, minus the
 * due time -- in microseconds. Due times have millisecond resolution and
 * epoll_wait sleeps whole milliseconds, so an idle worker shows up to about
 * 1000 us; more means the loop was busy running coroutines (or its thread
 * was not scheduled) when the timer came due. lag_us_sum / timers_fired
 * over an interval is the mean lag in it.
 */
typedef struct mica_worker_stats {
    uint64_t coroutines;   /* live: running, runnable or waiting */
    uint64_t runnable;     /* run-queue length: ready to run, waiting for the CPU */
    uint64_t watched_fds;  /* fds registered with this worker's epoll */
    uint64_t spawned;      /* coroutines created, ever */
    uint64_t spawn_failed; /* spawns refused for want of memory (mica_go: MICA_ENOMEM), ever */
    uint64_t polls;        /* loop iterations (epoll_wait calls), ever */
    uint64_t runs;         /* coroutine switch-ins, ever */
    uint64_t timers_fired; /* timers that came due, ever */
    uint64_t lag_us_last;  /* lag of the most overdue timer of the latest iteration firing any */
    uint64_t lag_us_max;   /* the largest lag seen */
    uint64_t lag_us_sum;   /* sum of the lags of every fired timer, ever */
} mica_worker_stats_t;

typedef struct mica_runtime_stats {
    int workers;               /* how many workers `rt` has */
    mica_worker_stats_t total; /* sums over the workers; lag_us_last and lag_us_max: the largest */
    uint64_t offload_threads;  /* threads of the runtime's offload pool */
    uint64_t offload_queued;   /* jobs waiting for a thread */
    uint64_t offload_busy;     /* threads running a job */
    uint64_t offload_rejected; /* jobs refused with MICA_EOVERLOAD, ever */
} mica_runtime_stats_t;

/**
 * Fills *out, and per_worker[0..n-1] (n = min(max_workers, workers); NULL:
 * none), with `rt`'s counters. Any thread, from new() to free(); takes no
 * lock a worker takes; values may be an iteration old (zero before run(),
 * final after it; offload figures zero outside run()). Returns n.
 */
MICA_API int mica_runtime_stats(mica_runtime_t *rt, mica_runtime_stats_t *out,
                                mica_worker_stats_t *per_worker, int max_workers);

/** Returns the current worker's id (0..workers-1), or -1 outside a worker. */
MICA_API int mica_worker_id(void);

/** Returns the number of workers of the current runtime, or 0 outside a worker. */
MICA_API int mica_worker_count(void);

/** Returns true once the current worker drains (after the shutdown phases). */
MICA_API bool mica_worker_stopping(void);

/**
 * Spawns a coroutine running fn(arg) on the current worker. It starts after
 * the caller next suspends or yields, ahead of coroutines already runnable.
 * Returns 0, MICA_ENOMEM when no stack can be had, or MICA_EINVAL outside a worker.
 */
MICA_API int mica_go(mica_coro_fn fn, void *arg);

/**
 * Spawns fn(arg) on worker `worker` (any worker, this one included); `arg`
 * then belongs to it. Returns 0, MICA_EINVAL (no such worker, or not on a
 * worker) or MICA_ENOMEM. Dropped if that worker has stopped, or has no
 * memory for it when the message arrives (counted in spawn_failed).
 */
MICA_API int mica_go_on(int worker, mica_coro_fn fn, void *arg);

/** Lets the other runnable coroutines of this worker run, then resumes. */
MICA_API void mica_yield(void);

/**
 * Suspends the calling coroutine for `ms` milliseconds, bounded only by the
 * drain (no ctx: use mica_ctx_sleep() for a sleep a ctx can end). Returns 0,
 * MICA_ECANCELED if the worker's drain deadline passed, or MICA_EINVAL outside a coroutine.
 */
MICA_API int mica_sleep_ms(int64_t ms);

/** Returns the worker's monotonic clock in ms, cached per loop iteration (cheap). */
MICA_API int64_t mica_now_ms(void);

/** Returns the deadline `timeout_ms` from now (MICA_NO_DEADLINE for timeout_ms < 0). */
MICA_API int64_t mica_deadline_in(int64_t timeout_ms);

/* ---- offload: blocking work on a bounded thread pool ------------------- */

typedef struct mica_offload_pool mica_offload_pool_t;

/** Blocking work run on an offload thread; its return value is handed back. */
typedef int (*mica_offload_fn)(void *arg);

/**
 * Creates a pool of `threads` threads with room for `queue_len` waiting jobs.
 * Returns 0, MICA_EINVAL (0 threads or 0 queue) or MICA_ENOMEM.
 */
MICA_API int mica_offload_pool_new(mica_offload_pool_t **out, int threads, size_t queue_len);

/** Stops and joins the threads; no job may be pending. NULL is a no-op. */
MICA_API void mica_offload_pool_free(mica_offload_pool_t *pool);

/**
 * Runs fn(arg) on a thread of `pool` (NULL: the runtime's) while the caller
 * suspends; *result gets fn's return. Returns 0, MICA_EOVERLOAD at once on a
 * full queue, or MICA_ETIMEDOUT/MICA_ECANCELED if `ctx` ends while the job is
 * queued (never run then); a started job finishes first, so `arg` may be on the stack.
 */
MICA_API int mica_offload(mica_offload_pool_t *pool, mica_ctx_t *ctx, mica_offload_fn fn,
                          void *arg, int *result);

#endif /* MICA_RUNTIME_H */

/* SPDX-License-Identifier: MIT */
/*
 * Runtime internals shared by the files of src/runtime and the layers above that need
 * the loop directly (the HTTP server waits on fds without the net.h wrappers).
 */
#ifndef MICA_RUNTIME_INTERNAL_H
#define MICA_RUNTIME_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "mica/runtime.h"

typedef struct mica__loop mica__loop_t;
typedef struct mica__coro mica__coro_t;
typedef struct mica__stack mica__stack_t;

/* ---- coroutines (coro.c) ---------------------------------------------- */

struct mica__stack {
    void *base;  /* lowest usable byte (just above the guard page) */
    size_t size; /* usable bytes */
    unsigned valgrind_id;
    mica__stack_t *next_free;
};

struct mica__coro {
    void *sp; /* saved stack pointer while suspended */
    mica__stack_t *stack;
    mica_coro_fn fn;
    void *arg;
    mica__loop_t *loop;

    /* scheduling */
    mica__coro_t *next_ready; /* ready queue link */
    bool queued;
    bool done;

    /* waiting: what woke us and the timer that may */
    int wake_result;      /* 0, MICA_ETIMEDOUT or MICA_ECANCELED */
    int64_t deadline_ms;  /* MICA_NO_DEADLINE when not on the timer heap */
    size_t heap_index;    /* position on the loop's timer heap */
    bool waiting;         /* suspended in mica__wait() */
    mica__coro_t *all_prev, *all_next; /* the loop's list of live coroutines */

    void *asan_fake_stack;
    void *tsan_fiber;
};

/* Switches from the running context saving its sp in *from_sp to `to_sp`. */
void mica__ctx_switch(void **from_sp, void *to_sp);

int mica__coro_new(mica__loop_t *loop, mica_coro_fn fn, void *arg, mica__coro_t **out);
void mica__coro_free(mica__loop_t *loop, mica__coro_t *co);
/* Runs `co` until it suspends or returns; called by the scheduler only. */
void mica__coro_resume(mica__loop_t *loop, mica__coro_t *co);
/* Suspends the running coroutine back to the scheduler. */
void mica__coro_suspend(mica__loop_t *loop);

void mica__stack_pool_init(mica__loop_t *loop, size_t stack_bytes);
void mica__stack_pool_destroy(mica__loop_t *loop);

/* ---- loop (loop.c) ----------------------------------------------------- */

/* Per-fd wait state, indexed by fd in the loop's table. */
typedef struct mica__io {
    mica__coro_t *reader;
    mica__coro_t *writer;
    bool registered; /* added to epoll (edge-triggered, in+out) */
    bool readable;   /* an edge arrived since the last mica__io_clear_* */
    bool writable;
} mica__io_t;

struct mica__loop {
    int id;
    int epfd;
    int wakefd; /* eventfd: cross-thread wake-ups */
    mica_runtime_t *rt;

    void *sched_sp; /* the scheduler's saved context */
    mica__coro_t *current;
    void *sched_asan_fake_stack;
    void *sched_tsan_fiber;
    const void *sched_stack_bottom; /* the thread's own stack, for ASan */
    size_t sched_stack_size;

    mica__coro_t *ready_head, *ready_tail;
    mica__coro_t **heap; /* timer min-heap on deadline_ms */
    size_t heap_len, heap_cap;
    mica__coro_t *all; /* every live coroutine */
    size_t ncoros;

    mica__io_t *io;
    size_t io_cap;

    int64_t now_ms;
    unsigned busy_rounds;
    int64_t now_sec_wall; /* wall-clock second, for Date caches */

    /* stack pool */
    mica__stack_t *free_stacks;
    size_t nfree_stacks, max_free_stacks, stack_bytes, page;

    /* shutdown */
    bool stopping;       /* drain started */
    bool cancel_all;     /* drain deadline passed: every wait returns ECANCELED */
    int64_t drain_deadline_ms;

    /* counters (this worker only; readers on other threads get estimates) */
    uint64_t stat_spawned;
    uint64_t stat_spawn_failed;
};

/* Returns the loop of the calling thread, or NULL outside a worker. */
mica__loop_t *mica__loop_current(void);

int mica__loop_init(mica__loop_t *loop, int id, mica_runtime_t *rt, size_t stack_bytes);
void mica__loop_destroy(mica__loop_t *loop);
/* Runs until `loop->stopping` and no coroutine is left. */
void mica__loop_run(mica__loop_t *loop);
/* Marks `co` runnable with `result` as its wake reason (no-op if queued). */
void mica__loop_wake(mica__loop_t *loop, mica__coro_t *co, int result);
/* Begins the drain on this loop: called on the worker thread. */
void mica__loop_begin_stop(mica__loop_t *loop);

/*
 * Suspends the running coroutine until woken (mica__loop_wake) or until
 * `deadline_ms`. Returns the wake result: 0, MICA_ETIMEDOUT or MICA_ECANCELED.
 */
int mica__wait(mica__loop_t *loop, int64_t deadline_ms);

/* Returns the wait slot of `fd`, growing the table; NULL on ENOMEM. */
mica__io_t *mica__io_get(mica__loop_t *loop, int fd);
/* Registers fd with epoll (edge-triggered) if needed. Returns 0 or -errno. */
int mica__io_watch(mica__loop_t *loop, int fd);
/* Forgets fd (call before close). */
void mica__io_forget(mica__loop_t *loop, int fd);
/* Wakes whoever waits on fd with MICA_ECANCELED (shutdown of idle waits). */
void mica__io_cancel(mica__loop_t *loop, int fd);
/*
 * Waits until fd is readable (`write`=false) or writable. Returns at once if
 * an edge arrived since the flag was last cleared. Returns 0, MICA_ETIMEDOUT,
 * MICA_ECANCELED, or a -errno from epoll registration.
 */
int mica__io_wait(mica__loop_t *loop, int fd, bool write, int64_t deadline_ms);

/* ---- runtime (runtime.c) ----------------------------------------------- */

int64_t mica__runtime_drain_ms(const mica_runtime_t *rt);
/* 0: running, 1: drain requested, 2: cancel everything now. */
int mica__runtime_stop_level(const mica_runtime_t *rt);
void mica__runtime_run_stop_hooks(mica_runtime_t *rt, int worker_id);

/* Reads a non-negative integer from environment variable `name` into *out,
 * leaving it alone when unset. Returns 0 or MICA_EINVAL (and logs why). */
int mica__env_int(const char *name, int64_t min, int64_t max, int64_t *out);

#endif /* MICA_RUNTIME_INTERNAL_H */

/* SPDX-License-Identifier: MIT */
/*
 * Runtime internals shared by the files of src/runtime and the layers above that need
 * the loop directly (the HTTP server waits on fds without the net.h wrappers).
 */
#ifndef MICA_RUNTIME_INTERNAL_H
#define MICA_RUNTIME_INTERNAL_H

/* Direct hand-offs a coroutine chain may make before the scheduler runs again. */
#define MICA__HANDOFF_BUDGET 16

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "mica/runtime.h"
#include "runtime/wait.h"

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
    mica__stack_t *stack; /* NULL until the coroutine first runs */
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
    uint64_t wait_seq;    /* numbers each wait, so a late wake-up cannot end a later one */
    bool zombie;          /* finished, kept until its posted wake-up is delivered */
    mica__coro_t *all_prev, *all_next; /* the loop's list of live coroutines */

    void *asan_fake_stack;
    void *tsan_fiber;

    /* The wake-up other threads post to this coroutine: one per coroutine,
     * so a cross-thread wake never allocates (and never fails). Its fields
     * belong to the loop's remote_lock; wake_posted is also read without it.
     * Last, and left out of the spawn's memset: only a post reads them. */
    atomic_bool wake_posted; /* wake_msg is queued on the loop */
    struct mica__msg {
        struct mica__msg *next;
        mica__coro_t *co; /* NULL: a spawn message (heap-allocated) */
        uint64_t seq;
        int result;
        mica_coro_fn fn;
        void *arg;
    } wake_msg;
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
    mica__waiter_t *reader; /* the coroutine waiting to read, on its stack */
    mica__waiter_t *writer;
    bool registered; /* added to epoll (edge-triggered, in+out) */
    bool readable;   /* an edge arrived since the last mica__io_clear_* */
    bool writable;
    bool hup;        /* the peer shut down or the socket failed: readable for good */
    struct mica_ctx *hup_ctx; /* cancelled when the peer hangs up */
    mica_coro_fn on_read;     /* spawned on the next readable edge (one-shot) */
    void *on_read_arg;
} mica__io_t;

/* A worker's counters as other threads read them: each written (relaxed)
 * by the worker only, read relaxed by mica_runtime_stats(). */
typedef struct mica__loop_stats {
    _Atomic uint64_t coroutines, runnable, watched_fds, spawned, spawn_failed, polls, runs,
        timers_fired, lag_us_last, lag_us_max, lag_us_sum;
} mica__loop_stats_t;

typedef struct mica__poll_hook {
    mica_poll_cb before, after;
    void *arg;
} mica__poll_hook_t;

struct mica__loop {
    int id;
    int epfd;
    int wakefd; /* eventfd: cross-thread wake-ups */
    mica_runtime_t *rt;

    void *sched_sp; /* the scheduler's saved context */
    unsigned handoff_budget; /* direct coroutine-to-coroutine switches left */
    uint64_t runs;           /* coroutine switch-ins (resumes and hand-offs), ever */
    uint64_t runs_at_poll;   /* `runs` at the last epoll_wait */
    mica__coro_t *current;
    void *sched_asan_fake_stack;
    void *sched_tsan_fiber;
    const void *sched_stack_bottom; /* the thread's own stack, for ASan */
    size_t sched_stack_size;

    mica__coro_t *ready_head, *ready_tail;
    mica__coro_t *yield_head, *yield_tail; /* yielded: run in the next round */
    mica__coro_t **heap; /* timer min-heap on deadline_ms */
    size_t heap_len, heap_cap;
    mica__coro_t *all; /* every live coroutine */
    size_t ncoros;

    mica__io_t *io;
    size_t io_cap;

    int64_t now_ms;
    unsigned busy_rounds;
    int64_t now_sec_wall; /* wall-clock second, for Date caches */

    /* stack pool; a coroutine takes its stack when it first runs, and
     * stacks_reserved counts the free stacks promised to coroutines that
     * have not run yet */
    mica__stack_t *free_stacks;
    size_t nfree_stacks, max_free_stacks, stack_bytes, page;
    size_t stacks_reserved;
    mica__coro_t *free_coros; /* finished coroutines' structs, linked by next_ready */
    size_t nfree_coros;

    /* shutdown */
    bool stopping;       /* drain started */
    bool cancel_all;     /* drain deadline passed: every wait returns ECANCELED */
    int64_t drain_deadline_ms;

    /* wake-ups and spawns posted by other threads (mica__loop_post) */
    pthread_mutex_t remote_lock;
    struct mica__msg *remote_head, *remote_tail;
    atomic_bool remote_posted; /* set by post(): a spinning loop looks here */
    int64_t last_remote_ms;    /* when messages last came: spin before sleeping soon after */
    mica__coro_t *zombies;

    /* on_read spawns of this iteration, run one after the other so that
     * each returns its stack to the pool before the next takes one */
    struct mica__spawn { mica_coro_fn fn; void *arg; int fd; } *spawns;
    size_t nspawns, spawns_cap;

    /* counters: plain, written by this worker only, and copied to `stats`
     * once per iteration (publish_stats) for mica_runtime_stats() */
    uint64_t stat_spawned;
    uint64_t stat_spawn_failed;
    size_t nrunnable;  /* on the ready and yield queues */
    size_t nwatched;   /* fds registered with epoll */
    uint64_t polls, timers_fired, lag_us_last, lag_us_max, lag_us_sum;
    int64_t now_us;    /* the clock of now_ms, in us */
    mica__loop_stats_t stats;

    /* mica_runtime_on_poll() hooks, around every epoll_wait */
    const struct mica__poll_hook *poll_hooks;
    size_t npoll_hooks;
};

/* A message from another thread: wake (co, seq) with result (the coroutine's
 * own wake_msg), or spawn fn(arg) (allocated by the poster). */
typedef struct mica__msg mica__msg_t;

/* Grows the timer heap to hold `n` coroutines. Returns 0 or MICA_ENOMEM. */
int mica__loop_reserve_timers(mica__loop_t *loop, size_t n);

static inline bool mica__waiter_init(mica__waiter_t *w)
{
    mica__loop_t *loop = mica__loop_current();
    if (!loop || !loop->current)
        return false;
    mica__waiter_init_seq(w, loop, loop->current, ++loop->current->wait_seq);
    return true;
}

/* Queues the running coroutine behind everything runnable now and suspends it. */
void mica__loop_yield(mica__loop_t *loop);

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
 * Wakers that may run late (other threads, cancellations) use the _seq form:
 * mica__wait_prepare() numbers the coming wait before the coroutine
 * publishes itself as a waiter; mica__wait_seq() then suspends.
 */
int mica__wait(mica__loop_t *loop, int64_t deadline_ms);
uint64_t mica__wait_prepare(mica__loop_t *loop);
int mica__wait_seq(mica__loop_t *loop, int64_t deadline_ms);

/*
 * Wakes wait `seq` of `co` (on `loop`) with `result`, from any thread: on
 * the loop's own thread directly, otherwise through the loop's message queue
 * (the coroutine's own wake_msg: never allocates). A wake for a wait that
 * has already ended is dropped; of two for the same wait, the first wins.
 * The caller must know `co` is alive (it holds the lock of a structure `co`
 * is queued on).
 */
void mica__wake_any(mica__loop_t *loop, mica__coro_t *co, uint64_t seq, int result);
/* Queues fn(arg) to be spawned on `loop` (any thread). Returns 0 or MICA_ENOMEM. */
int mica__loop_post_spawn(mica__loop_t *loop, mica_coro_fn fn, void *arg);
/* Returns the runtime's offload pool (NULL outside mica_runtime_run()). */
mica_offload_pool_t *mica__runtime_offload_pool(mica_runtime_t *rt);
/* Reads a pool's counters for mica_runtime_stats() (relaxed: any thread). */
void mica__offload_stats(mica_offload_pool_t *pool, uint64_t *queued, uint64_t *busy,
                         uint64_t *rejected);
/* Returns worker `id`'s loop, or NULL. */
mica__loop_t *mica__runtime_loop(mica_runtime_t *rt, int id);

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
 * an edge arrived since the flag was last cleared. Returns 0, MICA_ETIMEDOUT
 * (deadline_ms or ctx's deadline), MICA_ECANCELED (ctx cancelled, the fd's
 * waits cancelled, the drain deadline), or a -errno from epoll registration.
 */
int mica__io_wait(mica__loop_t *loop, int fd, bool write, struct mica_ctx *ctx,
                  int64_t deadline_ms);

/* ---- ctx waits (ctx.c) --------------------------------------------------- */

/*
 * Suspends the running coroutine for wait `seq` (from mica__wait_prepare())
 * until woken, until `deadline_ms` or the ctx's deadline, or until `ctx` is
 * cancelled (a waiter on the ctx's wait queue). Returns the wake result: 0,
 * MICA_ETIMEDOUT or MICA_ECANCELED (at once if `ctx` has already ended).
 */
int mica__wait_ctx(mica__loop_t *loop, mica_ctx_t *ctx, int64_t deadline_ms, uint64_t seq);

/* ---- runtime (runtime.c) ----------------------------------------------- */

/* The drain deadline (mica_now_ms() clock), fixed when shutdown began. */
int64_t mica__runtime_drain_deadline(const mica_runtime_t *rt);
/* What workers do: 0 run, 1 drain, 2 cancel everything now. */
int mica__runtime_drain_level(const mica_runtime_t *rt);
void mica__runtime_run_stop_hooks(mica_runtime_t *rt, int worker_id);

/* Reads a non-negative integer from environment variable `name` into *out,
 * leaving it alone when unset. Returns 0 or MICA_EINVAL (and logs why). */
int mica__env_int(const char *name, int64_t min, int64_t max, int64_t *out);

#endif /* MICA_RUNTIME_INTERNAL_H */

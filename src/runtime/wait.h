/* SPDX-License-Identifier: MIT */
/*
 * The one wait primitive of the runtime: a waiter record and a queue of
 * them. Channels, wait groups, mutexes, conds, once, events, the offload
 * pool, ctx cancellation and the per-fd slots of the loop all park their
 * coroutines through it.
 *
 * A queue has no lock of its own: it lives inside the structure it serves
 * and is guarded by that structure's lock (a channel's spinlock, a mutex's
 * pthread mutex, an event's spinlock, ...), which the functions below that
 * touch the queue expect held. Parking releases it and retakes it only
 * when it must, through the lock/unlock pair it is given.
 *
 * The protocol (the same as Go's sudog with its `success` flag):
 *
 *   waiter: init (numbers a new wait) and push under the lock; unlock;
 *           mica__waiter_park(): suspend until woken, the ctx ends or the
 *           deadline passes
 *   waker:  under the lock, take the waiter off the queue, mark it woken,
 *           then wake its coroutine (mica__wake_any: directly on its own
 *           worker, by a message otherwise)
 *
 * A waiter whose wait ended for another reason (ctx, deadline, drain)
 * retakes the lock and either finds itself woken -- the waker won, and the
 * waiter proceeds as if woken (a mutex was handed to it, a value copied
 * into it) -- or unlinks itself and returns the error. A waiter woken by a
 * coroutine of its own worker skips the lock: that waker has finished with
 * the queue (it cannot suspend holding a lock), which keeps a same-worker
 * hand-off at one context switch and no atomic read-modify-write.
 */
#ifndef MICA_RUNTIME_WAIT_H
#define MICA_RUNTIME_WAIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/list.h"
#include "mica/ctx.h"

typedef struct mica__loop mica__loop_t;
typedef struct mica__coro mica__coro_t;

/* Who marked a waiter woken: its own worker (done with the queue) or another thread. */
enum { MICA__WOKEN_HERE = 1, MICA__WOKEN_AWAY = 2 };

/* One coroutine waiting on one queue; lives on the waiter's stack. */
typedef struct mica__waiter {
    mica__loop_t *loop;
    mica__coro_t *co;
    uint64_t seq;     /* the wait it belongs to (mica__wait_prepare) */
    atomic_int woken; /* 0, MICA__WOKEN_HERE or MICA__WOKEN_AWAY; set under the lock */
    mica__list_t link;
} mica__waiter_t;

/* A FIFO of waiters. All-zero memory is a valid empty queue (events and
 * once are statically initialized); mica__waitq_init() makes one too. */
typedef mica__list_t mica__waitq_t;

typedef void (*mica__lock_fn)(void *lock);

/* From loop.c and ctx.c (declared again in internal.h, with their docs). */
mica__loop_t *mica__loop_current(void);
uint64_t mica__wait_prepare(mica__loop_t *loop);
void mica__wake_any(mica__loop_t *loop, mica__coro_t *co, uint64_t seq, int result);
int mica__wait_ctx(mica__loop_t *loop, mica_ctx_t *ctx, int64_t deadline_ms, uint64_t seq);

static inline void mica__waitq_init(mica__waitq_t *q)
{
    mica__list_init(q);
}

static inline bool mica__waitq_empty(const mica__waitq_t *q)
{
    return !q->next || mica__list_empty(q);
}

/* Fills `w` for wait `seq` of coroutine `co` on `loop` (select: several
 * waiters, one wait). */
static inline void mica__waiter_init_seq(mica__waiter_t *w, mica__loop_t *loop, mica__coro_t *co,
                                         uint64_t seq)
{
    w->loop = loop;
    w->co = co;
    w->seq = seq;
    atomic_init(&w->woken, 0);
    mica__list_init(&w->link);
}

/* Fills `w` for the running coroutine and numbers a new wait. Returns false
 * outside a coroutine (callers then return MICA_EINVAL). Defined in
 * internal.h, which knows the loop. */
static inline bool mica__waiter_init(mica__waiter_t *w);

/* Under the queue's lock: appends `w`. */
static inline void mica__waitq_push(mica__waitq_t *q, mica__waiter_t *w)
{
    if (!q->next)
        mica__list_init(q);
    mica__list_push_back(q, &w->link);
}

/* Under the queue's lock: the first waiter, or NULL. */
static inline mica__waiter_t *mica__waitq_first(const mica__waitq_t *q)
{
    return mica__waitq_empty(q) ? NULL : mica__list_entry(q->next, mica__waiter_t, link);
}

/* Under the queue's lock: takes `w` off its queue (a no-op if it is on none). */
static inline void mica__waitq_remove(mica__waiter_t *w)
{
    mica__list_remove(&w->link);
}

/* Under the queue's lock: takes `w` off its queue, marks it woken and
 * wakes its coroutine with `result` (any thread; never allocates). Inline:
 * it is half of every channel hand-off. */
static inline void mica__waiter_wake(mica__waiter_t *w, int result)
{
    mica__waitq_remove(w);
    /* A waiter woken here never looks at its record again; one woken from
     * elsewhere does only after taking the lock we hold. */
    bool here = w->loop == mica__loop_current();
    atomic_store_explicit(&w->woken, here ? MICA__WOKEN_HERE : MICA__WOKEN_AWAY,
                          memory_order_release);
    mica__wake_any(w->loop, w->co, w->seq, result);
}

/* Under the queue's lock: wakes the first waiter. Returns false if there was none. */
bool mica__waitq_wake_one(mica__waitq_t *q, int result);

/* Under the queue's lock: wakes every waiter, in order. Returns how many. */
size_t mica__waitq_wake_all(mica__waitq_t *q, int result);

/*
 * Suspends the coroutine of `w` (pushed on a queue guarded by `lk`, which
 * the caller has released) until a waker takes it, `ctx` ends, or
 * `deadline_ms` passes. Returns 0 when woken -- also when the waker won a
 * race with the ctx -- else MICA_ETIMEDOUT or MICA_ECANCELED with `w`
 * unlinked. Returns with `lk` released.
 */
int mica__waiter_park_slow(mica__waiter_t *w, mica_ctx_t *ctx, int64_t deadline_ms,
                           mica__lock_fn lock, mica__lock_fn unlock, void *lk, int rc);
static inline int mica__waiter_park(mica__waiter_t *w, mica_ctx_t *ctx, int64_t deadline_ms,
                                    mica__lock_fn lock, mica__lock_fn unlock, void *lk)
{
    int rc = mica__wait_ctx(w->loop, ctx, deadline_ms, w->seq);
    if (atomic_load_explicit(&w->woken, memory_order_acquire) == MICA__WOKEN_HERE)
        return 0; /* its waker ran on this worker and is done with the queue */
    return mica__waiter_park_slow(w, ctx, deadline_ms, lock, unlock, lk, rc);
}

#endif /* MICA_RUNTIME_WAIT_H */

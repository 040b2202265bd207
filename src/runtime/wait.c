/* SPDX-License-Identifier: MIT */
/*
 * Waiter records and wait queues (wait.h): the park/wake protocol that every
 * blocking primitive of the runtime shares. The pieces that know the loop
 * (numbering a wait, waking a coroutine on its own worker or by message,
 * bounding a wait by ctx and deadline) stay in loop.c and ctx.c; this file
 * is the queue discipline on top of them.
 */
#include "runtime/internal.h"

bool mica__waitq_wake_one(mica__waitq_t *q, int result)
{
    mica__waiter_t *w = mica__waitq_first(q);
    if (!w)
        return false;
    mica__waiter_wake(w, result);
    return true;
}

size_t mica__waitq_wake_all(mica__waitq_t *q, int result)
{
    size_t n = 0;
    while (mica__waitq_wake_one(q, result))
        n++;
    return n;
}

/* The rest of mica__waiter_park(), after a wait that ended with `rc` and
 * not by a waker of this worker. */
int mica__waiter_park_slow(mica__waiter_t *w, mica_ctx_t *ctx, int64_t deadline_ms,
                           mica__lock_fn lock, mica__lock_fn unlock, void *lk, int rc)
{
    for (;;) {
        /* Woken from another thread (which may still hold the lock, and
         * touch the structure the caller may free next), or not at all. */
        lock(lk);
        if (atomic_load_explicit(&w->woken, memory_order_relaxed)) {
            unlock(lk);
            return 0;
        }
        if (rc != 0) {
            mica__waitq_remove(w);
            unlock(lk);
            return rc;
        }
        /* Woken for nothing (no waker does that today): the same wait, renumbered. */
        w->seq = mica__wait_prepare(w->loop);
        unlock(lk);
        rc = mica__wait_ctx(w->loop, ctx, deadline_ms, w->seq);
        if (atomic_load_explicit(&w->woken, memory_order_acquire) == MICA__WOKEN_HERE)
            return 0;
    }
}

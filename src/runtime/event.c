/* SPDX-License-Identifier: MIT */
/*
 * Events (include/mica/sync.h): a set flag plus a wait queue (wait.h)
 * behind a spinlock held for a few pointer moves. The struct is public and
 * statically initializable, so its queue starts as all-zero memory, which
 * wait.h treats as empty. set() marks each waiter woken under the lock
 * before waking it; a waiter whose wait ended first (ctx, deadline) either
 * finds itself woken (the set won: it returns 0) or unlinks itself.
 */
#include <sched.h>
#include <stdatomic.h>

#include "mica/sync.h"
#include "runtime/internal.h"

static void lock(void *arg)
{
    mica_event_t *ev = arg;
    while (atomic_exchange_explicit(&ev->_lock, 1, memory_order_acquire))
        sched_yield(); /* held for a few pointer moves, by another thread */
}

static void unlock(void *arg)
{
    mica_event_t *ev = arg;
    atomic_store_explicit(&ev->_lock, 0, memory_order_release);
}

void mica_event_set(mica_event_t *ev)
{
    lock(ev);
    atomic_store_explicit(&ev->_set, 1, memory_order_relaxed);
    mica__waitq_wake_all(&ev->_waiters, 0);
    unlock(ev);
}

void mica_event_reset(mica_event_t *ev)
{
    atomic_store_explicit(&ev->_set, 0, memory_order_release);
}

bool mica_event_is_set(mica_event_t *ev)
{
    return atomic_load_explicit(&ev->_set, memory_order_acquire) != 0;
}

int mica_event_wait(mica_event_t *ev, mica_ctx_t *ctx, int64_t deadline_ms)
{
    mica__waiter_t me;
    if (!mica__waiter_init(&me))
        return MICA_EINVAL;
    if (mica_event_is_set(ev))
        return 0;
    lock(ev);
    if (atomic_load_explicit(&ev->_set, memory_order_relaxed)) {
        unlock(ev);
        return 0;
    }
    mica__waitq_push(&ev->_waiters, &me);
    unlock(ev);
    return mica__waiter_park(&me, ctx, deadline_ms, lock, unlock, ev);
}

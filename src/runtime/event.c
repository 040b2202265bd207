/* SPDX-License-Identifier: MIT */
/*
 * Events (include/mica/sync.h): a set flag plus a FIFO of parked coroutines
 * behind a spinlock held for a few pointer moves. set() marks each waiter
 * woken under the lock before waking it; a waiter whose wait ended first
 * (ctx, deadline) retakes the lock and either finds itself woken (the set
 * won: it returns 0) or unlinks itself.
 */
#include <sched.h>
#include <stdatomic.h>

#include "mica/sync.h"
#include "runtime/internal.h"

typedef struct ev_waiter {
    mica__loop_t *loop;
    mica__coro_t *co;
    uint64_t seq;
    bool woken;
    struct ev_waiter *prev, *next;
} ev_waiter_t;

static void lock(mica_event_t *ev)
{
    while (atomic_exchange_explicit(&ev->_lock, 1, memory_order_acquire))
        sched_yield(); /* held for a few pointer moves, by another thread */
}

static void unlock(mica_event_t *ev)
{
    atomic_store_explicit(&ev->_lock, 0, memory_order_release);
}

static void unlink_waiter(mica_event_t *ev, ev_waiter_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        ev->_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        ev->_tail = w->prev;
}

void mica_event_set(mica_event_t *ev)
{
    lock(ev);
    atomic_store_explicit(&ev->_set, 1, memory_order_relaxed);
    ev_waiter_t *w;
    while ((w = ev->_head)) {
        unlink_waiter(ev, w);
        w->woken = true;
        mica__wake_any(w->loop, w->co, w->seq, 0);
    }
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
    mica__loop_t *loop = mica__loop_current();
    if (!loop || !loop->current)
        return MICA_EINVAL;
    if (mica_event_is_set(ev))
        return 0;
    ev_waiter_t me = {.loop = loop, .co = loop->current};
    lock(ev);
    if (atomic_load_explicit(&ev->_set, memory_order_relaxed)) {
        unlock(ev);
        return 0;
    }
    me.seq = mica__wait_prepare(loop);
    me.prev = ev->_tail;
    if (ev->_tail)
        ((ev_waiter_t *)ev->_tail)->next = &me;
    else
        ev->_head = &me;
    ev->_tail = &me;
    unlock(ev);
    for (;;) {
        int rc = mica__wait_ctx(loop, ctx, deadline_ms, me.seq);
        lock(ev);
        if (me.woken) {
            unlock(ev);
            return 0;
        }
        if (rc != 0) {
            unlink_waiter(ev, &me);
            unlock(ev);
            return rc;
        }
        me.seq = mica__wait_prepare(loop); /* woken for nothing: wait again */
        unlock(ev);
    }
}

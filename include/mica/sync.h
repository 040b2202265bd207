/* SPDX-License-Identifier: MIT */
/*
 * Coroutine synchronization, as Go's sync package: wait groups, mutexes,
 * condition variables, once, and events. They suspend the coroutine, never
 * the thread, and work across workers. Every wait takes a ctx (NULL: none)
 * and is bounded the mica way (runtime.h, "Bounding a wait"): it returns
 * MICA_ETIMEDOUT or MICA_ECANCELED when the ctx, a deadline or the drain
 * ends it first. A call that need not wait succeeds whatever its ctx.
 */
#ifndef MICA_SYNC_H
#define MICA_SYNC_H

#include <stdbool.h>
#include <stdint.h>

#include "mica/ctx.h"
#include "mica/error.h"

typedef struct mica_wg mica_wg_t;
typedef struct mica_mutex mica_mutex_t;
typedef struct mica_cond mica_cond_t;

/** Creates a wait group with counter 0. Returns 0 or MICA_ENOMEM. */
MICA_API int mica_wg_new(mica_wg_t **out);
/** Frees `wg`; nobody may wait on it. NULL is a no-op. */
MICA_API void mica_wg_free(mica_wg_t *wg);
/** Adds `delta` (may be negative) to the counter. Returns 0, or MICA_EINVAL if it would go below 0. */
MICA_API int mica_wg_add(mica_wg_t *wg, int64_t delta);
/** Decrements the counter, waking the waiters at 0. Returns 0 or MICA_EINVAL (below 0). */
MICA_API int mica_wg_done(mica_wg_t *wg);
/** Suspends until the counter is 0. Returns 0, MICA_ETIMEDOUT or MICA_ECANCELED. */
MICA_API int mica_wg_wait(mica_wg_t *wg, mica_ctx_t *ctx);

/** Creates an unlocked mutex. Returns 0 or MICA_ENOMEM. */
MICA_API int mica_mutex_new(mica_mutex_t **out);
/** Frees `mu`; it must be unlocked with no waiters. NULL is a no-op. */
MICA_API void mica_mutex_free(mica_mutex_t *mu);
/** Locks `mu`, suspending while another coroutine holds it (FIFO hand-off). 0, MICA_ETIMEDOUT, MICA_ECANCELED. */
MICA_API int mica_mutex_lock(mica_mutex_t *mu, mica_ctx_t *ctx);
/** Locks `mu` if free. Returns 0 or MICA_EAGAIN. Never suspends. */
MICA_API int mica_mutex_try_lock(mica_mutex_t *mu);
/** Unlocks `mu`, handing it to the longest waiter. Returns 0, or MICA_EINVAL if not locked. */
MICA_API int mica_mutex_unlock(mica_mutex_t *mu);

/** Creates a condition variable. Returns 0 or MICA_ENOMEM. */
MICA_API int mica_cond_new(mica_cond_t **out);
/** Frees `cv`; nobody may wait on it. NULL is a no-op. */
MICA_API void mica_cond_free(mica_cond_t *cv);
/**
 * Atomically unlocks `mu` (held by the caller) and suspends until signalled,
 * then relocks `mu` before returning, whatever the result. Returns 0, or
 * MICA_ETIMEDOUT/MICA_ECANCELED when `ctx` ended first.
 */
MICA_API int mica_cond_wait(mica_cond_t *cv, mica_mutex_t *mu, mica_ctx_t *ctx);
/** Wakes one waiter, if any. */
MICA_API void mica_cond_signal(mica_cond_t *cv);
/** Wakes every waiter. */
MICA_API void mica_cond_broadcast(mica_cond_t *cv);

/* Private: an intrusive list link (src/common/list.h), embedded below so
 * that events and once need no allocation and may be zero-initialized. */
#ifndef MICA__LIST_DEFINED
#define MICA__LIST_DEFINED
struct mica__list {
    struct mica__list *prev, *next;
};
#endif

/** Go's sync.Once. Initialize with MICA_ONCE_INIT; fields are private. */
typedef struct mica_once {
    _Atomic int _state;
    struct mica__list _waiters; /* all zero: no waiter yet */
    _Atomic int _lock;
} mica_once_t;
#define MICA_ONCE_INIT {0, {0, 0}, 0}

/**
 * Runs fn(arg) exactly once per `once`; concurrent callers (any worker)
 * suspend until that first call has returned, bounded by `ctx`. Returns 0
 * once fn has returned (here or in an earlier call), or MICA_ETIMEDOUT /
 * MICA_ECANCELED when the wait for another caller's fn ended first.
 */
MICA_API int mica_once(mica_once_t *once, mica_ctx_t *ctx, void (*fn)(void *arg), void *arg);

/**
 * An event: a flag that coroutines wait for, set and reset from any worker
 * or thread (a manual-reset event, Python's asyncio.Event). The building
 * block for "wake me when X changed" in the layers above: reset, check X,
 * wait; a set() between the check and the wait is never lost. Embeddable:
 * zero it or use MICA_EVENT_INIT; the fields are private. Its memory may go
 * only once no coroutine waits on it.
 */
typedef struct mica_event {
    _Atomic int _lock;
    _Atomic int _set;
    struct mica__list _waiters; /* all zero: no waiter yet */
} mica_event_t;
#define MICA_EVENT_INIT {0, 0, {0, 0}}

/** Sets `ev` and wakes every coroutine waiting on it. Never suspends; any thread. */
MICA_API void mica_event_set(mica_event_t *ev);
/** Clears `ev`; later waits suspend until the next set. Never suspends; any thread. */
MICA_API void mica_event_reset(mica_event_t *ev);
/** Returns whether `ev` is set. */
MICA_API bool mica_event_is_set(mica_event_t *ev);
/**
 * Suspends until `ev` is set (returns at once if it is), bounded by `ctx`
 * (NULL: none) and `deadline_ms`. Returns 0, MICA_ETIMEDOUT, MICA_ECANCELED,
 * or MICA_EINVAL outside a coroutine.
 */
MICA_API int mica_event_wait(mica_event_t *ev, mica_ctx_t *ctx, int64_t deadline_ms);

#endif /* MICA_SYNC_H */

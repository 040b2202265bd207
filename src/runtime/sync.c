/* SPDX-License-Identifier: MIT */
/*
 * Wait groups, mutexes, condition variables and once, for coroutines on any
 * worker: each is a little state plus a wait queue (wait.h) behind a
 * pthread mutex (held for a few pointer moves, never across a suspension;
 * once uses a spinlock so that it can be statically initialized).
 *
 * A waker unlinks the waiter and marks it woken under the lock; a waiter
 * whose ctx ended meanwhile finds itself woken and proceeds as if woken.
 * The mutex hands ownership straight to the woken waiter, so it is FIFO-fair
 * and a stream of new lockers cannot starve a parked one.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "mica/sync.h"
#include "runtime/internal.h"

typedef struct lockq {
    pthread_mutex_t lock;
    mica__waitq_t waiters;
} lockq_t;

static void q_init(lockq_t *q)
{
    pthread_mutex_init(&q->lock, NULL);
    mica__waitq_init(&q->waiters);
}

static void q_lock(void *m)
{
    pthread_mutex_lock(m);
}

static void q_unlock(void *m)
{
    pthread_mutex_unlock(m);
}

/*
 * Parks the caller on `q`, whose lock is held on entry and released on
 * return. Returns 0 when woken, else the ctx's error (the caller unlinked).
 */
static int q_park(lockq_t *q, mica_ctx_t *ctx)
{
    mica__waiter_t me;
    if (!mica__waiter_init(&me)) {
        pthread_mutex_unlock(&q->lock);
        return MICA_EINVAL;
    }
    mica__waitq_push(&q->waiters, &me);
    pthread_mutex_unlock(&q->lock);
    return mica__waiter_park(&me, ctx, MICA_NO_DEADLINE, q_lock, q_unlock, &q->lock);
}

/* ---- wait group ---------------------------------------------------------------- */

struct mica_wg {
    lockq_t q;
    int64_t count;
};

int mica_wg_new(mica_wg_t **out)
{
    mica_wg_t *wg = mica__calloc(1, sizeof(*wg));
    if (!wg)
        return MICA_ENOMEM;
    q_init(&wg->q);
    *out = wg;
    return 0;
}

void mica_wg_free(mica_wg_t *wg)
{
    if (!wg)
        return;
    pthread_mutex_destroy(&wg->q.lock);
    mica__free(wg);
}

int mica_wg_add(mica_wg_t *wg, int64_t delta)
{
    pthread_mutex_lock(&wg->q.lock);
    if (wg->count + delta < 0) {
        pthread_mutex_unlock(&wg->q.lock);
        return MICA_EINVAL;
    }
    wg->count += delta;
    if (wg->count == 0)
        mica__waitq_wake_all(&wg->q.waiters, 0);
    pthread_mutex_unlock(&wg->q.lock);
    return 0;
}

int mica_wg_done(mica_wg_t *wg)
{
    return mica_wg_add(wg, -1);
}

int mica_wg_wait(mica_wg_t *wg, mica_ctx_t *ctx)
{
    pthread_mutex_lock(&wg->q.lock);
    if (wg->count != 0)
        return q_park(&wg->q, ctx);
    pthread_mutex_unlock(&wg->q.lock);
    return 0;
}

/* ---- mutex ------------------------------------------------------------------------- */

struct mica_mutex {
    lockq_t q;
    bool locked;
};

int mica_mutex_new(mica_mutex_t **out)
{
    mica_mutex_t *mu = mica__calloc(1, sizeof(*mu));
    if (!mu)
        return MICA_ENOMEM;
    q_init(&mu->q);
    *out = mu;
    return 0;
}

void mica_mutex_free(mica_mutex_t *mu)
{
    if (!mu)
        return;
    pthread_mutex_destroy(&mu->q.lock);
    mica__free(mu);
}

int mica_mutex_lock(mica_mutex_t *mu, mica_ctx_t *ctx)
{
    pthread_mutex_lock(&mu->q.lock);
    if (mu->locked)
        return q_park(&mu->q, ctx); /* woken: the unlocker handed the lock to us */
    mu->locked = true;
    pthread_mutex_unlock(&mu->q.lock);
    return 0;
}

int mica_mutex_try_lock(mica_mutex_t *mu)
{
    pthread_mutex_lock(&mu->q.lock);
    int rc = mu->locked ? MICA_EAGAIN : 0;
    mu->locked = true;
    pthread_mutex_unlock(&mu->q.lock);
    return rc;
}

int mica_mutex_unlock(mica_mutex_t *mu)
{
    pthread_mutex_lock(&mu->q.lock);
    int rc = 0;
    if (!mu->locked)
        rc = MICA_EINVAL;
    else if (!mica__waitq_wake_one(&mu->q.waiters, 0))
        mu->locked = false; /* else the lock passed to the woken waiter */
    pthread_mutex_unlock(&mu->q.lock);
    return rc;
}

/* ---- condition variable --------------------------------------------------------- */

struct mica_cond {
    lockq_t q;
};

int mica_cond_new(mica_cond_t **out)
{
    mica_cond_t *cv = mica__calloc(1, sizeof(*cv));
    if (!cv)
        return MICA_ENOMEM;
    q_init(&cv->q);
    *out = cv;
    return 0;
}

void mica_cond_free(mica_cond_t *cv)
{
    if (!cv)
        return;
    pthread_mutex_destroy(&cv->q.lock);
    mica__free(cv);
}

int mica_cond_wait(mica_cond_t *cv, mica_mutex_t *mu, mica_ctx_t *ctx)
{
    mica__waiter_t me;
    if (!mica__waiter_init(&me))
        return MICA_EINVAL;
    /* Queue first, then unlock: a signal sent after our unlock finds us queued. */
    pthread_mutex_lock(&cv->q.lock);
    mica__waitq_push(&cv->q.waiters, &me);
    pthread_mutex_unlock(&cv->q.lock);
    mica_mutex_unlock(mu);
    int rc = mica__waiter_park(&me, ctx, MICA_NO_DEADLINE, q_lock, q_unlock, &cv->q.lock);
    /* Relock whatever happened: the caller unlocks next. Past the drain
     * deadline every wait fails at once, so wait for the holder by yielding. */
    while (mica_mutex_lock(mu, NULL) != 0)
        mica_yield();
    return rc;
}

void mica_cond_signal(mica_cond_t *cv)
{
    pthread_mutex_lock(&cv->q.lock);
    mica__waitq_wake_one(&cv->q.waiters, 0);
    pthread_mutex_unlock(&cv->q.lock);
}

void mica_cond_broadcast(mica_cond_t *cv)
{
    pthread_mutex_lock(&cv->q.lock);
    mica__waitq_wake_all(&cv->q.waiters, 0);
    pthread_mutex_unlock(&cv->q.lock);
}

/* ---- once ---------------------------------------------------------------------- */

/* _lock is a spinlock over _waiters (a wait queue): mica_once_t must be
 * statically initializable, so it cannot hold a pthread mutex. */
static void once_lock(void *arg)
{
    mica_once_t *o = arg;
    int expected = 0;
    while (!atomic_compare_exchange_weak(&o->_lock, &expected, 1)) {
        expected = 0;
        sched_yield(); /* held for a few pointer moves, by another thread */
    }
}

static void once_unlock(void *arg)
{
    mica_once_t *o = arg;
    atomic_store(&o->_lock, 0);
}

int mica_once(mica_once_t *o, mica_ctx_t *ctx, void (*fn)(void *arg), void *arg)
{
    if (atomic_load_explicit(&o->_state, memory_order_acquire) == 2)
        return 0;
    int expected = 0;
    if (atomic_compare_exchange_strong(&o->_state, &expected, 1)) {
        fn(arg);
        once_lock(o);
        atomic_store_explicit(&o->_state, 2, memory_order_release);
        mica__waitq_wake_all(&o->_waiters, 0);
        once_unlock(o);
        return 0;
    }
    mica__waiter_t me;
    if (!mica__waiter_init(&me)) { /* outside a coroutine: spin until the first call returns */
        while (atomic_load_explicit(&o->_state, memory_order_acquire) != 2)
            sched_yield();
        return 0;
    }
    once_lock(o);
    if (atomic_load(&o->_state) == 2) {
        once_unlock(o);
        return 0;
    }
    mica__waitq_push(&o->_waiters, &me);
    once_unlock(o);
    return mica__waiter_park(&me, ctx, MICA_NO_DEADLINE, once_lock, once_unlock, o);
}

/* SPDX-License-Identifier: MIT */
/*
 * Wait groups, mutexes, condition variables and once, for coroutines on any
 * worker. Each is a little state plus a FIFO of parked coroutines behind a
 * pthread mutex (held for a few pointer moves, never across a suspension).
 *
 * A waker unlinks the waiter and marks it `woken` under the lock before
 * waking it; a waiter whose ctx ended retakes the lock and either finds
 * itself woken (the wake won: it proceeds as if woken) or unlinks itself.
 * The mutex hands ownership straight to the woken waiter, so it is FIFO-fair
 * and a stream of new lockers cannot starve a parked one.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "mica/sync.h"
#include "runtime/internal.h"

typedef struct qwaiter {
    mica__loop_t *loop;
    mica__coro_t *co;
    uint64_t seq;
    bool woken;
    struct qwaiter *prev, *next;
} qwaiter_t;

typedef struct waitq {
    pthread_mutex_t lock;
    qwaiter_t *head, *tail;
} waitq_t;

static void q_init(waitq_t *q)
{
    pthread_mutex_init(&q->lock, NULL);
    q->head = q->tail = NULL;
}

static void q_push(waitq_t *q, qwaiter_t *w)
{
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
}

static void q_unlink(waitq_t *q, qwaiter_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        q->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        q->tail = w->prev;
}

/* Under q->lock: wakes the first waiter. Returns false if there was none. */
static bool q_wake_one(waitq_t *q)
{
    qwaiter_t *w = q->head;
    if (!w)
        return false;
    q_unlink(q, w);
    w->woken = true;
    mica__wake_any(w->loop, w->co, w->seq, 0);
    return true;
}

static void q_wake_all(waitq_t *q)
{
    while (q_wake_one(q))
        ;
}

static mica__loop_t *coro_loop(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop && loop->current ? loop : NULL;
}

/*
 * Parks the caller on `q`, whose lock is held on entry and on return.
 * Returns 0 when woken, else the ctx's error (and the caller is unlinked).
 */
static int q_park(waitq_t *q, mica_ctx_t *ctx)
{
    mica__loop_t *loop = coro_loop();
    if (!loop)
        return MICA_EINVAL;
    qwaiter_t me = {.loop = loop, .co = loop->current};
    me.seq = mica__wait_prepare(loop);
    q_push(q, &me);
    for (;;) {
        pthread_mutex_unlock(&q->lock);
        int rc = mica__wait_ctx(loop, ctx, MICA_NO_DEADLINE, me.seq);
        pthread_mutex_lock(&q->lock);
        if (me.woken)
            return 0;
        if (rc != 0) {
            q_unlink(q, &me);
            return rc;
        }
        me.seq = mica__wait_prepare(loop);
    }
}

/* ---- wait group ---------------------------------------------------------------- */

struct mica_wg {
    waitq_t q;
    int64_t count;
};

int mica_wg_new(mica_wg_t **out)
{
    mica_wg_t *wg = calloc(1, sizeof(*wg));
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
    free(wg);
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
        q_wake_all(&wg->q);
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
    int rc = wg->count == 0 ? 0 : q_park(&wg->q, ctx);
    pthread_mutex_unlock(&wg->q.lock);
    return rc;
}

/* ---- mutex ------------------------------------------------------------------------- */

struct mica_mutex {
    waitq_t q;
    bool locked;
};

int mica_mutex_new(mica_mutex_t **out)
{
    mica_mutex_t *mu = calloc(1, sizeof(*mu));
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
    free(mu);
}

int mica_mutex_lock(mica_mutex_t *mu, mica_ctx_t *ctx)
{
    pthread_mutex_lock(&mu->q.lock);
    int rc = 0;
    if (!mu->locked)
        mu->locked = true;
    else
        rc = q_park(&mu->q, ctx); /* woken: the unlocker handed the lock to us */
    pthread_mutex_unlock(&mu->q.lock);
    return rc;
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
    else if (!q_wake_one(&mu->q))
        mu->locked = false;
    pthread_mutex_unlock(&mu->q.lock);
    return rc;
}

/* ---- condition variable --------------------------------------------------------- */

struct mica_cond {
    waitq_t q;
};

int mica_cond_new(mica_cond_t **out)
{
    mica_cond_t *cv = calloc(1, sizeof(*cv));
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
    free(cv);
}

int mica_cond_wait(mica_cond_t *cv, mica_mutex_t *mu, mica_ctx_t *ctx)
{
    if (!coro_loop())
        return MICA_EINVAL;
    /* Queue first, then unlock: a signal sent after our unlock finds us queued. */
    pthread_mutex_lock(&cv->q.lock);
    mica__loop_t *loop = coro_loop();
    qwaiter_t me = {.loop = loop, .co = loop->current};
    me.seq = mica__wait_prepare(loop);
    q_push(&cv->q, &me);
    pthread_mutex_unlock(&cv->q.lock);
    mica_mutex_unlock(mu);

    int rc;
    for (;;) {
        rc = mica__wait_ctx(loop, ctx, MICA_NO_DEADLINE, me.seq);
        pthread_mutex_lock(&cv->q.lock);
        if (me.woken) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            q_unlink(&cv->q, &me);
            break;
        }
        me.seq = mica__wait_prepare(loop);
        pthread_mutex_unlock(&cv->q.lock);
    }
    pthread_mutex_unlock(&cv->q.lock);
    mica_mutex_lock(mu, NULL);
    return rc;
}

void mica_cond_signal(mica_cond_t *cv)
{
    pthread_mutex_lock(&cv->q.lock);
    q_wake_one(&cv->q);
    pthread_mutex_unlock(&cv->q.lock);
}

void mica_cond_broadcast(mica_cond_t *cv)
{
    pthread_mutex_lock(&cv->q.lock);
    q_wake_all(&cv->q);
    pthread_mutex_unlock(&cv->q.lock);
}

/* ---- once ---------------------------------------------------------------------- */

/* _lock is a spinlock over _waiters (a qwaiter_t list): mica_once_t must be
 * statically initializable, so it cannot hold a pthread mutex. */
static void once_lock(mica_once_t *o)
{
    int expected = 0;
    while (!atomic_compare_exchange_weak(&o->_lock, &expected, 1))
        expected = 0;
}

static void once_unlock(mica_once_t *o)
{
    atomic_store(&o->_lock, 0);
}

void mica_once(mica_once_t *o, void (*fn)(void *arg), void *arg)
{
    if (atomic_load_explicit(&o->_state, memory_order_acquire) == 2)
        return;
    int expected = 0;
    if (atomic_compare_exchange_strong(&o->_state, &expected, 1)) {
        fn(arg);
        once_lock(o);
        atomic_store_explicit(&o->_state, 2, memory_order_release);
        for (qwaiter_t *w = o->_waiters, *next; w; w = next) {
            next = w->next;
            w->woken = true;
            mica__wake_any(w->loop, w->co, w->seq, 0);
        }
        o->_waiters = NULL;
        once_unlock(o);
        return;
    }
    mica__loop_t *loop = coro_loop();
    if (!loop) { /* outside a coroutine: spin until the first call returns */
        while (atomic_load_explicit(&o->_state, memory_order_acquire) != 2)
            sched_yield();
        return;
    }
    qwaiter_t me = {.loop = loop, .co = loop->current};
    once_lock(o);
    while (atomic_load(&o->_state) != 2) {
        me.seq = mica__wait_prepare(loop);
        me.next = o->_waiters;
        o->_waiters = &me;
        once_unlock(o);
        mica__wait_seq(loop, MICA_NO_DEADLINE);
        once_lock(o);
        if (me.woken)
            break;
        /* Only the drain's cancel-all wakes us otherwise: unlink and retry. */
        for (qwaiter_t **pp = (qwaiter_t **)&o->_waiters; *pp; pp = &(*pp)->next)
            if (*pp == &me) {
                *pp = me.next;
                break;
            }
        if (loop->cancel_all)
            break;
    }
    once_unlock(o);
}

/* SPDX-License-Identifier: MIT */
/*
 * Channels and select, following the shape of Go's runtime/chan.go.
 *
 * A channel is a ring buffer plus two queues of parked coroutines (senders,
 * receivers) behind one spinlock; critical sections are a few copies long
 * and never suspend. A waiter points at a `sel` state word shared by all
 * the cases of one select (a plain send or receive is a one-case select):
 *
 *     0 waiting --(counterpart CAS, under that channel's lock)--> 1 claimed
 *     0 waiting --(the waiter itself after a timeout or cancel)--> 2 gave up
 *
 * Exactly one transition wins, so a value is handed over at most once even
 * when a timeout and a sender race on different workers. A claimer copies
 * the element straight into (or out of) the waiter's buffer, then wakes it
 * with mica__wake_any(): directly on the same worker, by message otherwise.
 * The woken coroutine retakes the locks to unlink its other cases, which is
 * also what keeps its stack alive while a claimer still touches it (a plain
 * send or receive woken by its own worker skips that: the claimer is done).
 *
 * Select locks its channels in address order (no deadlock between two
 * selects) and starts its scan at a random case, so no case starves.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mica/chan.h"
#include "runtime/internal.h"

#define MAX_CASES 64

typedef struct sel {
    atomic_int state; /* 0 waiting, 1 claimed, 2 gave up */
    int fired;        /* index of the claimed case */
    bool single;      /* one case: every transition happens under its one lock */
} sel_t;

typedef struct waiter {
    mica__loop_t *loop;
    mica__coro_t *co;
    uint64_t seq;
    sel_t *sel;
    int index;
    void *elem; /* receive: destination (may be NULL); send: source */
    bool closed;
    bool queued;
    bool local_wake; /* claimed and woken by a coroutine of the waiter's own worker */
    struct waiter *prev, *next;
} waiter_t;

typedef struct waitq {
    waiter_t *head, *tail;
} waitq_t;

struct mica_chan {
    atomic_flag lock;
    size_t esize, cap;
    char *buf;
    size_t head, count;
    bool closed;
    waitq_t recvq, sendq;
};

static void lock(mica_chan_t *ch)
{
    while (atomic_flag_test_and_set_explicit(&ch->lock, memory_order_acquire))
        sched_yield(); /* held only for a few copies, by another worker */
}

static void unlock(mica_chan_t *ch)
{
    atomic_flag_clear_explicit(&ch->lock, memory_order_release);
}

static void enqueue(waitq_t *q, waiter_t *w)
{
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    w->queued = true;
}

static void unlink_waiter(waitq_t *q, waiter_t *w)
{
    if (!w->queued)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        q->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        q->tail = w->prev;
    w->queued = false;
}

/* Pops the first waiter whose select can still be claimed, and claims it. */
static waiter_t *claim(waitq_t *q)
{
    waiter_t *w;
    while ((w = q->head)) {
        unlink_waiter(q, w);
        int expected = 0;
        if (w->sel->single) {
            /* No other channel can claim it and its give-up needs our lock. */
            if (atomic_load_explicit(&w->sel->state, memory_order_relaxed) == 0) {
                atomic_store_explicit(&w->sel->state, 1, memory_order_relaxed);
                w->sel->fired = w->index;
                return w;
            }
        } else if (atomic_compare_exchange_strong(&w->sel->state, &expected, 1)) {
            w->sel->fired = w->index;
            return w;
        }
    }
    return NULL;
}

static void wake(waiter_t *w)
{
    w->local_wake = w->loop == mica__loop_current();
    mica__wake_any(w->loop, w->co, w->seq, 0);
}

static char *slot(mica_chan_t *ch, size_t i)
{
    return ch->buf + ((ch->head + i) % ch->cap) * ch->esize;
}

static void copy(mica_chan_t *ch, void *dst, const void *src)
{
    if (!dst)
        return;
    switch (ch->esize) { /* common sizes inline, without a call to memcpy */
    case 0: break;
    case 4: memcpy(dst, src, 4); break;
    case 8: memcpy(dst, src, 8); break;
    case 16: memcpy(dst, src, 16); break;
    default: memcpy(dst, src, ch->esize); break;
    }
}

static void zero(mica_chan_t *ch, void *dst)
{
    if (ch->esize && dst)
        memset(dst, 0, ch->esize);
}

int mica_chan_new(mica_chan_t **out, size_t elem_size, size_t capacity)
{
    if (capacity && elem_size > SIZE_MAX / capacity)
        return MICA_EINVAL;
    mica_chan_t *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return MICA_ENOMEM;
    atomic_flag_clear(&ch->lock);
    ch->esize = elem_size;
    ch->cap = capacity;
    if (capacity && elem_size && !(ch->buf = malloc(capacity * elem_size))) {
        free(ch);
        return MICA_ENOMEM;
    }
    *out = ch;
    return 0;
}

void mica_chan_free(mica_chan_t *ch)
{
    if (!ch)
        return;
    free(ch->buf);
    free(ch);
}

size_t mica_chan_len(mica_chan_t *ch)
{
    lock(ch);
    size_t n = ch->count;
    unlock(ch);
    return n;
}

size_t mica_chan_cap(const mica_chan_t *ch)
{
    return ch->cap;
}

/* Ready-path send under the lock: 1 done, 0 would wait, MICA_ECLOSED. */
static int send_ready(mica_chan_t *ch, const void *elem)
{
    if (ch->closed)
        return MICA_ECLOSED;
    waiter_t *w = claim(&ch->recvq);
    if (w) {
        copy(ch, w->elem, elem);
        w->closed = false;
        wake(w);
        return 1;
    }
    if (ch->count < ch->cap) {
        copy(ch, slot(ch, ch->count), elem);
        ch->count++;
        return 1;
    }
    return 0;
}

/* Ready-path receive under the lock: 1 done, 0 would wait, MICA_ECLOSED (out zeroed). */
static int recv_ready(mica_chan_t *ch, void *out)
{
    waiter_t *w = claim(&ch->sendq);
    if (w) {
        if (ch->cap == 0) {
            copy(ch, out, w->elem);
        } else {
            /* A sender waits only on a full buffer: take the oldest element
             * and put the sender's at the back, keeping FIFO order. */
            copy(ch, out, slot(ch, 0));
            copy(ch, slot(ch, 0), w->elem);
            ch->head = (ch->head + 1) % ch->cap;
        }
        w->closed = false;
        wake(w);
        return 1;
    }
    if (ch->count > 0) {
        copy(ch, out, slot(ch, 0));
        ch->head = (ch->head + 1) % ch->cap;
        ch->count--;
        return 1;
    }
    if (ch->closed) {
        zero(ch, out);
        return MICA_ECLOSED;
    }
    return 0;
}

static mica__loop_t *coro_loop(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop && loop->current ? loop : NULL;
}

/* Parks the caller on one queue of `ch` (locked on entry, unlocked on return). */
static int park(mica_chan_t *ch, waitq_t *q, void *elem, mica_ctx_t *ctx, bool *closed)
{
    mica__loop_t *loop = coro_loop();
    if (!loop) {
        unlock(ch);
        return MICA_EINVAL;
    }
    sel_t sel = {.state = 0, .single = true};
    waiter_t me = {.loop = loop, .co = loop->current, .sel = &sel, .elem = elem};
    me.seq = mica__wait_prepare(loop);
    enqueue(q, &me);
    unlock(ch);
    for (;;) {
        int rc = mica__wait_ctx(loop, ctx, MICA_NO_DEADLINE, me.seq);
        /* Woken by a claimer of this worker: it has finished with the channel
         * and with `me` (it ran until it yielded), so skip the lock. A claimer
         * on another worker may still hold the lock: retake it below before
         * returning, so the caller may free the channel. */
        if (rc == 0 && me.local_wake &&
            atomic_load_explicit(&sel.state, memory_order_relaxed) == 1) {
            *closed = me.closed;
            return 0;
        }
        lock(ch);
        int expected = 0;
        if (rc != 0 && atomic_compare_exchange_strong(&sel.state, &expected, 2)) {
            unlink_waiter(q, &me);
            unlock(ch);
            return rc;
        }
        if (atomic_load(&sel.state) == 1) {
            unlock(ch);
            *closed = me.closed;
            return 0;
        }
        /* Woken for nothing (cannot happen today): wait again for this same wait. */
        me.seq = mica__wait_prepare(loop);
        unlock(ch);
    }
}

static int chan_send(mica_chan_t *ch, mica_ctx_t *ctx, const void *elem, bool block)
{
    lock(ch);
    int r = send_ready(ch, elem);
    if (r != 0) {
        unlock(ch);
        return r < 0 ? r : 0;
    }
    if (!block) {
        unlock(ch);
        return MICA_EAGAIN;
    }
    bool closed = false;
    int rc = park(ch, &ch->sendq, (void *)elem, ctx, &closed);
    return rc ? rc : closed ? MICA_ECLOSED : 0;
}

static int chan_recv(mica_chan_t *ch, mica_ctx_t *ctx, void *out, bool block)
{
    lock(ch);
    int r = recv_ready(ch, out);
    if (r != 0) {
        unlock(ch);
        return r < 0 ? r : 0;
    }
    if (!block) {
        unlock(ch);
        return MICA_EAGAIN;
    }
    bool closed = false;
    int rc = park(ch, &ch->recvq, out, ctx, &closed);
    return rc ? rc : closed ? MICA_ECLOSED : 0;
}

int mica_chan_send(mica_chan_t *ch, mica_ctx_t *ctx, const void *elem)
{
    return chan_send(ch, ctx, elem, true);
}

int mica_chan_recv(mica_chan_t *ch, mica_ctx_t *ctx, void *out)
{
    return chan_recv(ch, ctx, out, true);
}

int mica_chan_try_send(mica_chan_t *ch, const void *elem)
{
    return chan_send(ch, NULL, elem, false);
}

int mica_chan_try_recv(mica_chan_t *ch, void *out)
{
    return chan_recv(ch, NULL, out, false);
}

int mica_chan_close(mica_chan_t *ch)
{
    lock(ch);
    if (ch->closed) {
        unlock(ch);
        return MICA_ECLOSED;
    }
    ch->closed = true;
    waiter_t *w;
    while ((w = claim(&ch->recvq))) {
        zero(ch, w->elem);
        w->closed = true;
        wake(w);
    }
    while ((w = claim(&ch->sendq))) {
        w->closed = true;
        wake(w);
    }
    unlock(ch);
    return 0;
}

/* ---- select ----------------------------------------------------------------- */

static uint32_t rand_below(uint32_t n)
{
    static _Thread_local uint64_t x = 0;
    if (!x)
        x = (uint64_t)(uintptr_t)&x | 1;
    x ^= x << 13; /* xorshift64 */
    x ^= x >> 7;
    x ^= x << 17;
    return (uint32_t)(x % n);
}

/* Distinct channels of the cases in address order: the lock order. */
static size_t lock_order(mica_select_case_t *cases, size_t n, mica_chan_t **order)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        mica_chan_t *ch = cases[i].ch;
        if (!ch)
            continue;
        size_t j = k;
        while (j > 0 && (uintptr_t)order[j - 1] > (uintptr_t)ch)
            j--;
        if (j > 0 && order[j - 1] == ch)
            continue;
        memmove(order + j + 1, order + j, (k - j) * sizeof(*order));
        order[j] = ch;
        k++;
    }
    return k;
}

static void lock_all(mica_chan_t **order, size_t k)
{
    for (size_t i = 0; i < k; i++)
        lock(order[i]);
}

static void unlock_all(mica_chan_t **order, size_t k)
{
    for (size_t i = k; i > 0; i--)
        unlock(order[i - 1]);
}

int mica_select(mica_select_case_t *cases, size_t n, mica_ctx_t *ctx, int64_t timeout_ms)
{
    if (n > MAX_CASES || (n && !cases))
        return MICA_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (cases[i].ch && cases[i].op != MICA_SELECT_RECV && cases[i].op != MICA_SELECT_SEND)
            return MICA_EINVAL;
        cases[i].closed = false;
    }
    mica_chan_t *order[MAX_CASES];
    size_t k = lock_order(cases, n, order);
    lock_all(order, k);

    size_t start = n ? rand_below((uint32_t)n) : 0;
    for (size_t j = 0; j < n; j++) {
        size_t i = (start + j) % n;
        mica_select_case_t *c = &cases[i];
        if (!c->ch)
            continue;
        int r = c->op == MICA_SELECT_RECV ? recv_ready(c->ch, c->elem) : send_ready(c->ch, c->elem);
        if (r != 0) {
            c->closed = r < 0;
            unlock_all(order, k);
            return (int)i;
        }
    }
    if (timeout_ms == MICA_SELECT_DEFAULT) {
        unlock_all(order, k);
        return MICA_EAGAIN;
    }
    mica__loop_t *loop = coro_loop();
    if (!loop) {
        unlock_all(order, k);
        return MICA_EINVAL;
    }
    sel_t sel = {.state = 0};
    waiter_t ws[MAX_CASES];
    uint64_t seq = mica__wait_prepare(loop);
    for (size_t i = 0; i < n; i++) {
        mica_select_case_t *c = &cases[i];
        ws[i] = (waiter_t){.loop = loop, .co = loop->current, .seq = seq, .sel = &sel,
                           .index = (int)i, .elem = c->elem};
        if (c->ch)
            enqueue(c->op == MICA_SELECT_RECV ? &c->ch->recvq : &c->ch->sendq, &ws[i]);
    }
    unlock_all(order, k);

    int64_t deadline = timeout_ms > 0 ? mica_deadline_in(timeout_ms) : MICA_NO_DEADLINE;
    for (;;) {
        int rc = mica__wait_ctx(loop, ctx, deadline, seq);
        lock_all(order, k);
        int expected = 0;
        bool gave_up = rc != 0 && atomic_compare_exchange_strong(&sel.state, &expected, 2);
        bool claimed = atomic_load(&sel.state) == 1;
        if (gave_up || claimed) {
            for (size_t i = 0; i < n; i++)
                if (cases[i].ch)
                    unlink_waiter(cases[i].op == MICA_SELECT_RECV ? &cases[i].ch->recvq
                                                                  : &cases[i].ch->sendq,
                                  &ws[i]);
            unlock_all(order, k);
            if (gave_up)
                return rc;
            cases[sel.fired].closed = ws[sel.fired].closed;
            return sel.fired;
        }
        /* Woken for nothing: renumber the wait for every queued case. */
        seq = mica__wait_prepare(loop);
        for (size_t i = 0; i < n; i++)
            ws[i].seq = seq;
        unlock_all(order, k);
    }
}

/* SPDX-License-Identifier: MIT */
/*
 * Channels and select, following the shape of Go's runtime/chan.go.
 *
 * A channel is a ring buffer plus two wait queues (wait.h: senders,
 * receivers) behind one spinlock; critical sections are a few copies long
 * and never suspend. A plain send or receive parks with the shared
 * primitive: the claimer takes it off the queue and marks it woken under
 * the lock, and a waiter that gave up leaves the queue under the same lock,
 * so exactly one of the two happens. Select adds its claim on top: the
 * waiters of all its cases point at one `sel` state word,
 *
 *     0 waiting --(counterpart CAS, under that channel's lock)--> 1 claimed
 *     0 waiting --(the select itself after a timeout or cancel)--> 2 gave up
 *
 * and exactly one transition wins, so a value is handed over at most once
 * even when a timeout and a sender race on different workers. A claimer
 * copies the element straight into (or out of) the waiter's buffer, then
 * wakes it: directly on the same worker, by message otherwise. A waiter
 * woken from another worker retakes the lock before returning (the claimer
 * may still hold it, and the caller may free the channel next); a select
 * retakes its locks in any case to unlink its other cases.
 *
 * Select locks its channels in address order (no deadlock between two
 * selects) and starts its scan at a random case, so no case starves.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mica/chan.h"
#include "common/alloc.h"
#include "runtime/internal.h"

#define MAX_CASES 64

typedef struct sel {
    atomic_int state; /* 0 waiting, 1 claimed, 2 gave up */
    int fired;        /* index of the claimed case */
} sel_t;

typedef struct waiter {
    mica__waiter_t w; /* the coroutine, its wait, its place in a queue */
    sel_t *sel;       /* NULL: a plain send or receive */
    int index;
    void *elem; /* receive: destination (may be NULL); send: source */
    bool closed;
} waiter_t;

struct mica_chan {
    atomic_flag lock;
    size_t esize, cap;
    char *buf;
    size_t head, count;
    bool closed;
    mica__waitq_t recvq, sendq;
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

static void lock_fn(void *ch)
{
    lock(ch);
}

static void unlock_fn(void *ch)
{
    unlock(ch);
}

/* Pops the first waiter that can still be claimed, and claims it. */
static waiter_t *claim(mica__waitq_t *q)
{
    mica__waiter_t *first;
    while ((first = mica__waitq_first(q))) {
        mica__waitq_remove(first);
        waiter_t *w = mica__list_entry(first, waiter_t, w);
        if (!w->sel)
            return w; /* it gives up only under our lock, by leaving the queue */
        int expected = 0;
        if (atomic_compare_exchange_strong(&w->sel->state, &expected, 1)) {
            w->sel->fired = w->index;
            return w;
        }
    }
    return NULL;
}

static void wake(waiter_t *w)
{
    mica__waiter_wake(&w->w, 0);
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
    mica_chan_t *ch = mica__calloc(1, sizeof(*ch));
    if (!ch)
        return MICA_ENOMEM;
    atomic_flag_clear(&ch->lock);
    mica__waitq_init(&ch->recvq);
    mica__waitq_init(&ch->sendq);
    ch->esize = elem_size;
    ch->cap = capacity;
    if (capacity && elem_size && !(ch->buf = mica__malloc(capacity * elem_size))) {
        mica__free(ch);
        return MICA_ENOMEM;
    }
    *out = ch;
    return 0;
}

void mica_chan_free(mica_chan_t *ch)
{
    if (!ch)
        return;
    mica__free(ch->buf);
    mica__free(ch);
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

/* Parks the caller on one queue of `ch` (locked on entry, unlocked on return). */
static int park(mica_chan_t *ch, mica__waitq_t *q, void *elem, mica_ctx_t *ctx, bool *closed)
{
    waiter_t me = {.elem = elem};
    if (!mica__waiter_init(&me.w)) {
        unlock(ch);
        return MICA_EINVAL;
    }
    mica__waitq_push(q, &me.w);
    unlock(ch);
    int rc = mica__waiter_park(&me.w, ctx, MICA_NO_DEADLINE, lock_fn, unlock_fn, ch);
    *closed = me.closed;
    return rc;
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
    mica__loop_t *loop = mica__loop_current();
    if (!loop || !loop->current) {
        unlock_all(order, k);
        return MICA_EINVAL;
    }
    sel_t sel = {.state = 0};
    waiter_t ws[MAX_CASES];
    uint64_t seq = mica__wait_prepare(loop);
    for (size_t i = 0; i < n; i++) {
        mica_select_case_t *c = &cases[i];
        ws[i] = (waiter_t){.sel = &sel, .index = (int)i, .elem = c->elem};
        mica__waiter_init_seq(&ws[i].w, loop, loop->current, seq);
        if (c->ch)
            mica__waitq_push(c->op == MICA_SELECT_RECV ? &c->ch->recvq : &c->ch->sendq, &ws[i].w);
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
                mica__waitq_remove(&ws[i].w);
            unlock_all(order, k);
            if (gave_up)
                return rc;
            cases[sel.fired].closed = ws[sel.fired].closed;
            return sel.fired;
        }
        /* Woken for nothing: renumber the wait for every queued case. */
        seq = mica__wait_prepare(loop);
        for (size_t i = 0; i < n; i++)
            ws[i].w.seq = seq;
        unlock_all(order, k);
    }
}

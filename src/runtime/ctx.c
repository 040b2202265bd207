/* SPDX-License-Identifier: MIT */
/*
 * Contexts. A ctx is a node in a tree: cancelling one cancels its subtree
 * eagerly (parent lock, then each child's, always downwards, so the locks
 * cannot deadlock) and wakes the coroutines registered as waiting on each
 * node, on whatever worker they run. Deadlines need no timers of their own:
 * a child's deadline is the minimum of its own and its parent's, and every
 * wait arms its coroutine's timer with it, so expiry costs nothing until a
 * wait actually reaches it.
 *
 * Memory: a node is reference-counted by its owner and by each child, so a
 * parent freed before its children stays readable until they go.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "runtime/internal.h"

struct mica_ctx {
    pthread_mutex_t lock;
    atomic_int refs;
    atomic_int err; /* 0 or MICA_ECANCELED */
    int64_t deadline_ms;
    mica_ctx_t *parent;
    const void *key;
    void *value;
    mica_ctx_t *children, *sib_prev, *sib_next;
    mica__waitq_t waiters; /* coroutines whose current wait this ctx bounds */
    bool linked; /* on the parent's children list */
};

static mica_ctx_t background = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .deadline_ms = MICA_NO_DEADLINE,
};

mica_ctx_t *mica_ctx_background(void)
{
    return &background;
}

static bool is_bg(const mica_ctx_t *ctx)
{
    return ctx == NULL || ctx == &background;
}

static int child_new(mica_ctx_t *parent, int64_t deadline_ms, const void *key, void *value,
                     mica_ctx_t **out)
{
    mica_ctx_t *c = mica__calloc(1, sizeof(*c));
    if (!c)
        return MICA_ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    mica__waitq_init(&c->waiters);
    atomic_init(&c->refs, 1);
    c->key = key;
    c->value = value;
    c->deadline_ms = deadline_ms;
    if (!is_bg(parent)) {
        if (parent->deadline_ms < c->deadline_ms)
            c->deadline_ms = parent->deadline_ms;
        atomic_fetch_add(&parent->refs, 1);
        c->parent = parent;
        pthread_mutex_lock(&parent->lock);
        atomic_store(&c->err, atomic_load(&parent->err));
        c->sib_next = parent->children;
        if (parent->children)
            parent->children->sib_prev = c;
        parent->children = c;
        c->linked = true;
        pthread_mutex_unlock(&parent->lock);
    }
    *out = c;
    return 0;
}

int mica_ctx_with_cancel(mica_ctx_t *parent, mica_ctx_t **out)
{
    return child_new(parent, MICA_NO_DEADLINE, NULL, NULL, out);
}

int mica_ctx_with_deadline(mica_ctx_t *parent, int64_t deadline_ms, mica_ctx_t **out)
{
    return child_new(parent, deadline_ms, NULL, NULL, out);
}

int mica_ctx_with_timeout(mica_ctx_t *parent, int64_t timeout_ms, mica_ctx_t **out)
{
    return child_new(parent, mica_deadline_in(timeout_ms), NULL, NULL, out);
}

int mica_ctx_with_value(mica_ctx_t *parent, const void *key, void *value, mica_ctx_t **out)
{
    if (!key)
        return MICA_EINVAL;
    return child_new(parent, MICA_NO_DEADLINE, key, value, out);
}

/* Called with ctx->lock held; takes each child's lock below it. */
static void cancel_locked(mica_ctx_t *ctx)
{
    if (atomic_load(&ctx->err))
        return;
    atomic_store(&ctx->err, MICA_ECANCELED);
    mica__waitq_wake_all(&ctx->waiters, MICA_ECANCELED);
    for (mica_ctx_t *c = ctx->children; c; c = c->sib_next) {
        pthread_mutex_lock(&c->lock);
        cancel_locked(c);
        pthread_mutex_unlock(&c->lock);
    }
}

void mica_ctx_cancel(mica_ctx_t *ctx)
{
    if (is_bg(ctx))
        return;
    pthread_mutex_lock(&ctx->lock);
    cancel_locked(ctx);
    pthread_mutex_unlock(&ctx->lock);
}

static void unref(mica_ctx_t *ctx)
{
    while (ctx && atomic_fetch_sub(&ctx->refs, 1) == 1) {
        mica_ctx_t *parent = ctx->parent;
        pthread_mutex_destroy(&ctx->lock);
        mica__free(ctx);
        ctx = parent;
    }
}

void mica_ctx_free(mica_ctx_t *ctx)
{
    if (is_bg(ctx))
        return;
    mica_ctx_cancel(ctx);
    mica_ctx_t *p = ctx->parent;
    if (p) {
        pthread_mutex_lock(&p->lock);
        if (ctx->linked) {
            if (ctx->sib_prev)
                ctx->sib_prev->sib_next = ctx->sib_next;
            else
                p->children = ctx->sib_next;
            if (ctx->sib_next)
                ctx->sib_next->sib_prev = ctx->sib_prev;
            ctx->linked = false;
        }
        pthread_mutex_unlock(&p->lock);
    }
    unref(ctx);
}

int mica_ctx_err(const mica_ctx_t *ctx)
{
    if (is_bg(ctx))
        return 0;
    int err = atomic_load(&((mica_ctx_t *)ctx)->err);
    if (err)
        return err;
    if (ctx->deadline_ms != MICA_NO_DEADLINE && mica_now_ms() >= ctx->deadline_ms)
        return MICA_ETIMEDOUT;
    return 0;
}

int64_t mica_ctx_deadline(const mica_ctx_t *ctx)
{
    return is_bg(ctx) ? MICA_NO_DEADLINE : ctx->deadline_ms;
}

void *mica_ctx_value(const mica_ctx_t *ctx, const void *key)
{
    for (; !is_bg(ctx); ctx = ctx->parent)
        if (ctx->key == key)
            return ctx->value;
    return NULL;
}

int mica__wait_ctx(mica__loop_t *loop, mica_ctx_t *ctx, int64_t deadline_ms, uint64_t seq)
{
    if (is_bg(ctx))
        return mica__wait_seq(loop, deadline_ms);
    if (ctx->deadline_ms < deadline_ms)
        deadline_ms = ctx->deadline_ms;
    mica__waiter_t w;
    mica__waiter_init_seq(&w, loop, loop->current, seq);
    pthread_mutex_lock(&ctx->lock);
    int err = atomic_load(&ctx->err);
    if (!err)
        mica__waitq_push(&ctx->waiters, &w);
    pthread_mutex_unlock(&ctx->lock);
    if (err)
        return err;
    int rc = mica__wait_seq(loop, deadline_ms);
    /* Still queued, or cancelled from another thread (which may still be
     * walking the queue under the lock): leave under the lock. */
    if (atomic_load_explicit(&w.woken, memory_order_acquire) != MICA__WOKEN_HERE) {
        pthread_mutex_lock(&ctx->lock);
        mica__waitq_remove(&w);
        pthread_mutex_unlock(&ctx->lock);
    }
    return rc;
}

static mica__loop_t *coro_loop(void)
{
    mica__loop_t *loop = mica__loop_current();
    return loop && loop->current ? loop : NULL;
}

int mica_ctx_done(mica_ctx_t *ctx)
{
    mica__loop_t *loop = coro_loop();
    if (!loop)
        return MICA_EINVAL;
    for (;;) {
        int err = mica_ctx_err(ctx);
        if (err)
            return err;
        int rc = mica__wait_ctx(loop, ctx, MICA_NO_DEADLINE, mica__wait_prepare(loop));
        if (rc != 0)
            return rc;
    }
}

int mica_ctx_sleep(mica_ctx_t *ctx, int64_t ms)
{
    mica__loop_t *loop = coro_loop();
    if (!loop)
        return MICA_EINVAL;
    int64_t until = mica_deadline_in(ms < 0 ? 0 : ms);
    for (;;) {
        int err = mica_ctx_err(ctx);
        if (err)
            return err;
        int rc = mica__wait_ctx(loop, ctx, until, mica__wait_prepare(loop));
        if (rc == MICA_ETIMEDOUT)
            return mica_now_ms() >= until ? 0 : MICA_ETIMEDOUT; /* ours, or the ctx's */
        if (rc != 0)
            return rc;
    }
}

/* SPDX-License-Identifier: MIT */
/*
 * Contexts, as Go's context package: a deadline, a cancellation signal and
 * request-scoped values, passed to every call that can wait. A child ends
 * when its parent does. Contexts may be shared across workers; cancelling
 * one wakes every coroutine waiting with it, on any worker.
 *
 *     mica_ctx_t *ctx;
 *     mica_ctx_with_timeout(parent, 800, &ctx);
 *     int rc = mica_chan_recv(ch, ctx, &msg);   // MICA_ETIMEDOUT after 800 ms
 *     mica_ctx_free(ctx);                       // Go's defer cancel()
 *
 * NULL may be passed wherever a ctx is taken: it means the background
 * context (no deadline, never cancelled).
 */
#ifndef MICA_CTX_H
#define MICA_CTX_H

#include <stdint.h>

#include "mica/error.h"

typedef struct mica_ctx mica_ctx_t;

/** Returns the background context: never cancelled, no deadline, no values. Never freed. */
MICA_API mica_ctx_t *mica_ctx_background(void);

/**
 * Creates a child of `parent` (NULL: background) that mica_ctx_cancel() ends.
 * Release it with mica_ctx_free(). Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_ctx_with_cancel(mica_ctx_t *parent, mica_ctx_t **out);

/**
 * Creates a cancellable child that also ends at `deadline_ms` (mica_now_ms()
 * clock), or at the parent's deadline if that is earlier. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_ctx_with_deadline(mica_ctx_t *parent, int64_t deadline_ms, mica_ctx_t **out);

/** As mica_ctx_with_deadline(), `timeout_ms` from now. */
MICA_API int mica_ctx_with_timeout(mica_ctx_t *parent, int64_t timeout_ms, mica_ctx_t **out);

/**
 * Creates a child carrying `value` under `key` (compared by address, like a
 * Go unexported key type). The ctx borrows `value`. Returns 0 or MICA_ENOMEM.
 */
MICA_API int mica_ctx_with_value(mica_ctx_t *parent, const void *key, void *value,
                                 mica_ctx_t **out);

/**
 * Cancels `ctx` and its descendants: their waits return MICA_ECANCELED. Safe
 * from any thread; cancelling twice, or a ctx that has ended, is a no-op.
 */
MICA_API void mica_ctx_cancel(mica_ctx_t *ctx);

/**
 * Cancels `ctx` and drops the caller's reference. Memory goes when the last
 * child has been freed too. NULL and the background context are no-ops.
 */
MICA_API void mica_ctx_free(mica_ctx_t *ctx);

/** Returns 0 while `ctx` is live, else MICA_ECANCELED or MICA_ETIMEDOUT (Go's ctx.Err()). */
MICA_API int mica_ctx_err(const mica_ctx_t *ctx);

/** Returns the deadline of `ctx` (mica_now_ms() clock) or MICA_NO_DEADLINE. */
MICA_API int64_t mica_ctx_deadline(const mica_ctx_t *ctx);

/** Returns the value stored under `key` by `ctx` or its nearest ancestor, or NULL. */
MICA_API void *mica_ctx_value(const mica_ctx_t *ctx, const void *key);

/**
 * Suspends the calling coroutine until `ctx` ends. Returns MICA_ECANCELED
 * or MICA_ETIMEDOUT (Go's <-ctx.Done()); never 0. MICA_EINVAL outside a coroutine.
 */
MICA_API int mica_ctx_done(mica_ctx_t *ctx);

/**
 * Sleeps `ms` milliseconds unless `ctx` ends first. Returns 0 after the full
 * sleep, or the ctx's error.
 */
MICA_API int mica_ctx_sleep(mica_ctx_t *ctx, int64_t ms);

#endif /* MICA_CTX_H */

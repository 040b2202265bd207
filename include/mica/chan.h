/* SPDX-License-Identifier: MIT */
/*
 * Channels, as Go's: typed by element size, buffered or not, closed the Go
 * way, usable between coroutines on one worker or on different workers. A
 * send copies the element in; a receive copies it out.
 *
 *     mica_chan_t *ch;
 *     mica_chan_new(&ch, sizeof(int), 0);      // make(chan int)
 *     mica_chan_send(ch, NULL, &v);            // ch <- v
 *     rc = mica_chan_recv(ch, ctx, &v);        // v, ok := <-ch  (ok: rc == 0)
 *
 * Calls that wait take a ctx (NULL: wait forever) and return MICA_ETIMEDOUT
 * or MICA_ECANCELED when it ends first; they must run in a coroutine.
 */
#ifndef MICA_CHAN_H
#define MICA_CHAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/ctx.h"
#include "mica/error.h"

typedef struct mica_chan mica_chan_t;

/**
 * Creates a channel of `capacity` elements (0: unbuffered) of `elem_size`
 * bytes (0 allowed: a signal channel). Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_chan_new(mica_chan_t **out, size_t elem_size, size_t capacity);

/** Frees `ch`. Nobody may be waiting on it or use it afterwards. NULL is a no-op. */
MICA_API void mica_chan_free(mica_chan_t *ch);

/**
 * Sends a copy of `elem_size` bytes at `elem`, suspending until a receiver
 * takes it or buffer space frees up. Returns 0, MICA_ECLOSED when `ch` is or
 * becomes closed (Go would panic), MICA_ETIMEDOUT or MICA_ECANCELED from `ctx`.
 */
MICA_API int mica_chan_send(mica_chan_t *ch, mica_ctx_t *ctx, const void *elem);

/**
 * Receives one element into `out` (may be NULL to discard), suspending until
 * one is available. Returns 0, MICA_ECLOSED once `ch` is closed and drained
 * (`out` is then zeroed), MICA_ETIMEDOUT or MICA_ECANCELED from `ctx`.
 */
MICA_API int mica_chan_recv(mica_chan_t *ch, mica_ctx_t *ctx, void *out);

/** Sends without suspending. Returns 0, MICA_EAGAIN (would wait) or MICA_ECLOSED. */
MICA_API int mica_chan_try_send(mica_chan_t *ch, const void *elem);

/** Receives without suspending. Returns 0, MICA_EAGAIN (would wait) or MICA_ECLOSED. */
MICA_API int mica_chan_try_recv(mica_chan_t *ch, void *out);

/**
 * Closes `ch`: waiting receivers get MICA_ECLOSED once the buffer is
 * drained, waiting and later senders get MICA_ECLOSED. Never suspends; safe
 * from any coroutine. Returns 0, or MICA_ECLOSED if it was already closed.
 */
MICA_API int mica_chan_close(mica_chan_t *ch);

/** Returns the number of buffered elements (a snapshot). */
MICA_API size_t mica_chan_len(mica_chan_t *ch);

/** Returns the capacity given to mica_chan_new(). */
MICA_API size_t mica_chan_cap(const mica_chan_t *ch);

/* ---- select ------------------------------------------------------------------ */

typedef enum mica_select_op { MICA_SELECT_RECV = 1, MICA_SELECT_SEND = 2 } mica_select_op_t;

/** One case of mica_select(). A case with ch == NULL never fires (Go's nil channel). */
typedef struct mica_select_case {
    mica_select_op_t op;
    mica_chan_t *ch;
    void *elem;  /* RECV: where to copy (or NULL); SEND: what to send */
    bool closed; /* out: RECV fired because ch is closed and drained; SEND: ch was closed */
} mica_select_case_t;

/** Pass as `timeout_ms` to mica_select() for Go's `default:` case. */
#define MICA_SELECT_DEFAULT 0
/** Pass as `timeout_ms` to mica_select() to wait without a timeout of its own. */
#define MICA_SELECT_FOREVER (-1)

/**
 * Waits until one of `n` cases (at most 64) can proceed and performs it,
 * choosing at random among ready ones as Go does. Returns the index of the
 * case that fired (its `closed` says whether it fired by a close); with
 * `timeout_ms` MICA_SELECT_DEFAULT returns MICA_EAGAIN at once when none is
 * ready; after `timeout_ms` > 0 returns MICA_ETIMEDOUT; MICA_ETIMEDOUT or
 * MICA_ECANCELED when `ctx` ends; MICA_EINVAL for bad cases.
 */
MICA_API int mica_select(mica_select_case_t *cases, size_t n, mica_ctx_t *ctx,
                         int64_t timeout_ms);

#endif /* MICA_CHAN_H */

/* SPDX-License-Identifier: MIT */
/*
 * Coroutine-aware TCP sockets. Every call that can wait suspends only the
 * calling coroutine and is bounded the mica way (runtime.h, "Bounding a
 * wait"): by `ctx` (NULL: none) and an absolute `deadline_ms`
 * (mica_deadline_in(ms), or MICA_NO_DEADLINE), whichever ends first. It
 * returns MICA_ETIMEDOUT when a deadline passes and MICA_ECANCELED when ctx
 * is cancelled, mica_net_cancel() is called or the worker's drain deadline
 * passes. Must be called from a coroutine on a worker. Sockets are plain
 * non-blocking fds owned by the caller; close them with mica_net_close().
 */
#ifndef MICA_NET_H
#define MICA_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/runtime.h"

/**
 * Parses "host:port", "[v6]:port", ":port" or "port" into `ss` (IPv4 or
 * IPv6 literals only; an empty host means 0.0.0.0). Returns 0 or MICA_EINVAL.
 */
MICA_API int mica_net_parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len);

/** Formats `sa` as "host:port" ("[v6]:port") into buf. Returns 0 or MICA_ELIMIT. */
MICA_API int mica_net_format_addr(const struct sockaddr *sa, char *buf, size_t size);

/**
 * Opens a non-blocking listening TCP socket on `addr` (see
 * mica_net_parse_addr) with SO_REUSEADDR, and SO_REUSEPORT when `reuseport`.
 * Returns the fd (>= 0) or a negative MICA_E* code (MICA_EADDRINUSE, ...).
 */
MICA_API int mica_net_listen(const char *addr, int backlog, int reuseport);

/**
 * Accepts a connection on listening `fd`, suspending until one arrives or
 * the wait ends (ctx, `deadline_ms`). The new fd is non-blocking with TCP_NODELAY. Returns the fd,
 * MICA_ETIMEDOUT, MICA_ECANCELED on shutdown, MICA_EMFILE/MICA_ENFILE, ...
 */
MICA_API int mica_net_accept(int fd, mica_ctx_t *ctx, int64_t deadline_ms);

/**
 * Connects to `addr` ("host:port" literal), suspending until connected or
 * the wait ends (ctx, `deadline_ms`). Returns a non-blocking fd or a negative MICA_E* code.
 */
MICA_API int mica_net_connect(const char *addr, mica_ctx_t *ctx, int64_t deadline_ms);

/**
 * Reads up to `len` bytes, suspending until some arrive. Returns the count
 * (> 0), 0 at end of stream, MICA_ETIMEDOUT, MICA_ECANCELED, or another error.
 */
MICA_API ssize_t mica_net_read(int fd, void *buf, size_t len, mica_ctx_t *ctx,
                               int64_t deadline_ms);

/**
 * Writes all `len` bytes, suspending while the socket is full. Returns 0,
 * MICA_ETIMEDOUT (some bytes may have been sent), MICA_EPIPE, ...
 */
MICA_API int mica_net_write(int fd, const void *buf, size_t len, mica_ctx_t *ctx,
                            int64_t deadline_ms);

enum { MICA_NET_READABLE = 1, MICA_NET_WRITABLE = 2 };

/**
 * Suspends until `fd` may be readable (MICA_NET_READABLE) or writable, for
 * callers that make their own non-blocking system calls: it can return 0
 * spuriously, so retry the call and wait again on EAGAIN. Returns 0,
 * MICA_ETIMEDOUT, MICA_ECANCELED (mica_net_cancel, shutdown) or MICA_ENOMEM.
 */
MICA_API int mica_net_wait(int fd, int events, mica_ctx_t *ctx, int64_t deadline_ms);

/**
 * Wakes the coroutines of this worker waiting on `fd` (in any call above);
 * their calls return MICA_ECANCELED. Use it to stop an accept loop or close
 * an idle connection from a stop hook. Never suspends.
 */
MICA_API void mica_net_cancel(int fd);

/**
 * Arranges, once, for fn(arg) to be spawned as a new coroutine on this worker
 * when `fd` becomes readable or its peer hangs up, so a connection waiting
 * for its next request needs no coroutine (and no stack) meanwhile. Returns
 * 0; MICA_EAGAIN when fd is already readable (nothing arranged: read now);
 * MICA_ENOMEM. Closing fd with mica_net_close() drops the arrangement.
 */
MICA_API int mica_net_on_readable(int fd, mica_coro_fn fn, void *arg);

/**
 * Cancels `ctx` when the peer of `fd` closes or resets the connection
 * (EPOLLRDHUP/HUP/ERR), until called again with NULL or fd is closed. Used to
 * end a request's work when its client goes away. Never suspends.
 */
MICA_API void mica_net_cancel_on_hup(int fd, mica_ctx_t *ctx);

/** Stops watching and closes `fd`. Returns 0 or a negative MICA_E* code. */
MICA_API int mica_net_close(int fd);

#endif /* MICA_NET_H */

/* SPDX-License-Identifier: MIT */
/*
 * mica error codes. Fallible functions return 0 or a negative MICA_E* code;
 * POSIX codes are reused negated, mica's own live in a reserved range.
 */
#ifndef MICA_ERROR_H
#define MICA_ERROR_H

#include <errno.h>

#ifndef MICA_API
#define MICA_API __attribute__((visibility("default")))
#endif

/* X(name, value, message). One table generates the enum and both lookups. */
#define MICA_ERRNO_MAP(X)                                                      \
    X(EPERM, -EPERM, "operation not permitted")                               \
    X(ENOENT, -ENOENT, "no such file or directory")                           \
    X(EINTR, -EINTR, "interrupted")                                           \
    X(EIO, -EIO, "i/o error")                                                 \
    X(EBADF, -EBADF, "bad file descriptor")                                   \
    X(EAGAIN, -EAGAIN, "resource temporarily unavailable")                    \
    X(ENOMEM, -ENOMEM, "out of memory")                                       \
    X(EACCES, -EACCES, "permission denied")                                   \
    X(EBUSY, -EBUSY, "resource busy")                                         \
    X(EINVAL, -EINVAL, "invalid argument")                                    \
    X(EMFILE, -EMFILE, "too many open files")                                 \
    X(ENFILE, -ENFILE, "file table overflow")                                 \
    X(ENOSPC, -ENOSPC, "no space left on device")                             \
    X(EPIPE, -EPIPE, "broken pipe")                                           \
    X(ENOSYS, -ENOSYS, "function not implemented")                            \
    X(EADDRINUSE, -EADDRINUSE, "address already in use")                      \
    X(EADDRNOTAVAIL, -EADDRNOTAVAIL, "address not available")                 \
    X(ECONNABORTED, -ECONNABORTED, "connection aborted")                      \
    X(ECONNRESET, -ECONNRESET, "connection reset by peer")                    \
    X(ECONNREFUSED, -ECONNREFUSED, "connection refused")                      \
    X(ENOTCONN, -ENOTCONN, "socket is not connected")                         \
    X(ETIMEDOUT, -ETIMEDOUT, "timed out")                                     \
    X(ECANCELED, -ECANCELED, "operation canceled")                            \
    X(EHOSTUNREACH, -EHOSTUNREACH, "host is unreachable")                     \
    X(ENETUNREACH, -ENETUNREACH, "network is unreachable")                    \
    X(EOVERFLOW, -EOVERFLOW, "value too large")                               \
    X(ECLOSED, -4001, "closed")                                               \
    X(ELIMIT, -4002, "limit exceeded")                                        \
    X(EOVERLOAD, -4003, "overloaded")                                         \
    X(EPROTO, -4004, "protocol error")                                        \
    X(ENOTFOUND, -4005, "not found")                                          \
    X(EEXIST, -4006, "already exists")

typedef enum mica_errno {
#define MICA__ERR_ENUM(name, value, msg) MICA_##name = (value),
    MICA_ERRNO_MAP(MICA__ERR_ENUM)
#undef MICA__ERR_ENUM
} mica_errno_t;

/** Returns a static, human-readable message for `err` ("unknown error" if none). */
MICA_API const char *mica_strerror(int err);

/** Returns the static symbolic name of `err` ("EAGAIN", "ELIMIT"; "UNKNOWN" if none). */
MICA_API const char *mica_err_name(int err);

#endif /* MICA_ERROR_H */

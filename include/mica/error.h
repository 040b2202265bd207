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

/*
 * X(name, value, http status, gRPC code, message): one table generates the
 * enum, the messages, and the edge columns -- the HTTP status and gRPC
 * status code a handler's error becomes (mica_err_http_status(),
 * mica_err_grpc_code()); the inverse maps live in error.c.
 */
#define MICA_ERRNO_MAP(X)                                                                         \
    X(EPERM, -EPERM, 403, 7, "operation not permitted")                                           \
    X(ENOENT, -ENOENT, 404, 5, "no such file or directory")                                       \
    X(EINTR, -EINTR, 500, 13, "interrupted")                                                      \
    X(EIO, -EIO, 500, 15, "i/o error")                                                            \
    X(EBADF, -EBADF, 500, 13, "bad file descriptor")                                              \
    X(EAGAIN, -EAGAIN, 503, 14, "resource temporarily unavailable")                               \
    X(ENOMEM, -ENOMEM, 503, 8, "out of memory")                                                   \
    X(EACCES, -EACCES, 403, 7, "permission denied")                                               \
    X(EBUSY, -EBUSY, 503, 14, "resource busy")                                                    \
    X(EINVAL, -EINVAL, 400, 3, "invalid argument")                                                \
    X(EMFILE, -EMFILE, 503, 8, "too many open files")                                             \
    X(ENFILE, -ENFILE, 503, 8, "file table overflow")                                             \
    X(ENOSPC, -ENOSPC, 507, 8, "no space left on device")                                         \
    X(EPIPE, -EPIPE, 502, 14, "broken pipe")                                                      \
    X(ENOSYS, -ENOSYS, 501, 12, "function not implemented")                                       \
    X(EADDRINUSE, -EADDRINUSE, 500, 13, "address already in use")                                 \
    X(EADDRNOTAVAIL, -EADDRNOTAVAIL, 500, 13, "address not available")                            \
    X(ECONNABORTED, -ECONNABORTED, 502, 14, "connection aborted")                                 \
    X(ECONNRESET, -ECONNRESET, 502, 14, "connection reset by peer")                               \
    X(ECONNREFUSED, -ECONNREFUSED, 502, 14, "connection refused")                                 \
    X(ENOTCONN, -ENOTCONN, 502, 14, "socket is not connected")                                    \
    X(ETIMEDOUT, -ETIMEDOUT, 504, 4, "timed out")                                                 \
    X(ECANCELED, -ECANCELED, 503, 1, "operation canceled")                                        \
    X(EHOSTUNREACH, -EHOSTUNREACH, 502, 14, "host is unreachable")                                \
    X(ENETUNREACH, -ENETUNREACH, 502, 14, "network is unreachable")                               \
    X(EOVERFLOW, -EOVERFLOW, 400, 11, "value too large")                                          \
    X(ECLOSED, -4001, 500, 13, "closed")                                                          \
    X(ELIMIT, -4002, 413, 8, "limit exceeded")                                                    \
    X(EOVERLOAD, -4003, 503, 14, "overloaded")                                                    \
    X(EPROTO, -4004, 500, 13, "protocol error")                                                   \
    X(ENOTFOUND, -4005, 404, 5, "not found")                                                      \
    X(EEXIST, -4006, 409, 6, "already exists")                                                    \
    X(EUNAUTHENTICATED, -4007, 401, 16, "unauthenticated")                                        \
    X(EUNAVAILABLE, -4008, 503, 14, "service unavailable")                                        \
    X(EABORTED, -4009, 409, 10, "aborted")                                                        \
    X(EPRECONDITION, -4010, 400, 9, "failed precondition")                                        \
    X(EINTERNAL, -4011, 500, 13, "internal error")                                                \
    X(EUNSUPPORTED, -4012, 415, 3, "unsupported media type")                                      \
    X(EUNKNOWN, -4013, 500, 2, "unknown error")

typedef enum mica_errno {
#define MICA__ERR_ENUM(name, value, http, grpc, msg) MICA_##name = (value),
    MICA_ERRNO_MAP(MICA__ERR_ENUM)
#undef MICA__ERR_ENUM
} mica_errno_t;

/** Returns a static, human-readable message for `err` ("unknown error" if none). */
MICA_API const char *mica_strerror(int err);

/** Returns the static symbolic name of `err` ("EAGAIN", "ELIMIT"; "UNKNOWN" if none). */
MICA_API const char *mica_err_name(int err);

/**
 * Returns the HTTP status an error becomes at the HTTP edge (MICA_ENOTFOUND
 * 404, MICA_EUNAUTHENTICATED 401, MICA_EPERM 403, MICA_ETIMEDOUT 504, ...;
 * 500 for unknown codes, 200 for 0).
 */
MICA_API int mica_err_http_status(int err);

/**
 * Returns the gRPC status code (0..16) an error becomes at the gRPC edge
 * (MICA_ETIMEDOUT DEADLINE_EXCEEDED, MICA_EUNAUTHENTICATED UNAUTHENTICATED,
 * ...; INTERNAL for unknown codes, OK for 0).
 */
MICA_API int mica_err_grpc_code(int err);

/**
 * Inverse map: the MICA_E* code that stands for gRPC status `code` (OK: 0,
 * CANCELLED: MICA_ECANCELED, UNAVAILABLE: MICA_EUNAVAILABLE, ...; an
 * unknown code: MICA_EINTERNAL). Round-trips with mica_err_grpc_code().
 */
MICA_API int mica_err_from_grpc(int code);

/**
 * Inverse map: the MICA_E* code that stands for HTTP status `status`
 * (2xx/3xx: 0; 401 MICA_EUNAUTHENTICATED, 404 MICA_ENOTFOUND, 429
 * MICA_EOVERLOAD, 503 MICA_EUNAVAILABLE, ...; other 4xx MICA_EINVAL,
 * other 5xx MICA_EINTERNAL).
 */
MICA_API int mica_err_from_http(int status);

#endif /* MICA_ERROR_H */

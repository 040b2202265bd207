/* SPDX-License-Identifier: MIT */
/*
 * Structured logging: one JSON object per line, on stderr unless a sink is
 * set. Every line has "ts" (UTC, RFC 3339 with ms), "level", "service" (once
 * mica_log_set_service() named it) and "msg"; lines logged with a ctx
 * (mica_log_ctx()) carry "trace_id" and "span_id" when a span is active in
 * it (see mica_log_set_trace()); then the caller's key/value pairs in order:
 *
 *     {"ts":"2026-12-02T10:00:00.123Z","level":"info","service":"user","msg":"listening","addr":":8080"}
 *
 *     mica_log_info("listening", "addr", ":8080");          // string values
 *     mica_log_fields(MICA_LOG_WARN, "slow call",           // typed values
 *                     (mica_log_field_t[]){MICA_LOG_STR("method", m),
 *                                          MICA_LOG_INT("ms", 812)}, 2);
 *
 * The level comes from $MICA_LOG_LEVEL (debug, info, warn, error, off;
 * default info) until mica_log_set_level() is called. Lines below the level
 * cost one relaxed load. A line is built in a stack buffer (no allocation)
 * and handed over whole, so lines of different threads never interleave;
 * one longer than MICA_LOG_LINE_MAX bytes is cut, and stays valid JSON.
 * Everything here is safe from any thread.
 */
#ifndef MICA_LOG_H
#define MICA_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mica/error.h"

typedef struct mica_ctx mica_ctx_t; /* include/mica/ctx.h */

typedef enum mica_log_level {
    MICA_LOG_DEBUG = 0,
    MICA_LOG_INFO = 1,
    MICA_LOG_WARN = 2,
    MICA_LOG_ERROR = 3,
    MICA_LOG_OFF = 4, /* as a threshold: log nothing */
} mica_log_level_t;

/** The longest line handed to a sink, the newline excluded. */
#define MICA_LOG_LINE_MAX 2046

/**
 * Receives each line at or above the level: `line` is one JSON object,
 * NUL-terminated, without the newline; `len` its length. It is borrowed for
 * the call. Runs on the logging thread, possibly on several at once.
 */
typedef void (*mica_log_sink_fn)(mica_log_level_t level, const char *line, size_t len,
                                 void *arg);

/**
 * Sends every later line to fn(arg) instead of stderr; NULL restores stderr.
 * A line being logged concurrently may still reach the previous sink, so
 * keep its `arg` alive until the threads that log have stopped.
 */
MICA_API void mica_log_set_sink(mica_log_sink_fn fn, void *arg);

/** Sets the threshold: lines below `level` are dropped (MICA_LOG_OFF: all). */
MICA_API void mica_log_set_level(mica_log_level_t level);

/** Returns the threshold (read from $MICA_LOG_LEVEL on first use). */
MICA_API mica_log_level_t mica_log_level(void);

/** Returns whether a line at `level` would be logged: guard costly field computations. */
MICA_API bool mica_log_enabled(mica_log_level_t level);

/**
 * Parses a level name (debug, info, warn, error, off; "warning" too) into
 * *out. Returns 0 or MICA_EINVAL.
 */
MICA_API int mica_log_parse_level(const char *name, mica_log_level_t *out);

/** Returns the level's name as it appears in lines ("info", ...; "off"). */
MICA_API const char *mica_log_level_name(mica_log_level_t level);

/**
 * Logs `msg` with string key/value pairs given after it, ended by a NULL
 * key (the mica_log_<level>() macros add it). A NULL value logs as "".
 */
MICA_API void mica_log(mica_log_level_t level, const char *msg, ...);

/** As mica_log(), with the pairs in a va_list. */
MICA_API void mica_logv(mica_log_level_t level, const char *msg, va_list pairs);

typedef enum mica_log_type {
    MICA_LOG_T_STR,   /* JSON string (NULL: "") */
    MICA_LOG_T_INT,   /* JSON integer */
    MICA_LOG_T_FLOAT, /* JSON number (non-finite: null) */
    MICA_LOG_T_BOOL,  /* true / false */
} mica_log_type_t;

/** One typed key/value pair for mica_log_fields(); build it with MICA_LOG_STR() etc. */
typedef struct mica_log_field {
    const char *key;
    mica_log_type_t type;
    union {
        const char *s;
        int64_t i;
        double f;
        bool b;
    } v;
} mica_log_field_t;

/** Logs `msg` with `n` typed fields (numbers and booleans are not quoted). */
MICA_API void mica_log_fields(mica_log_level_t level, const char *msg,
                              const mica_log_field_t *fields, size_t n);

#define MICA_LOG_STR(k, val) ((mica_log_field_t){.key = (k), .type = MICA_LOG_T_STR, .v.s = (val)})
#define MICA_LOG_INT(k, val)                                                                      \
    ((mica_log_field_t){.key = (k), .type = MICA_LOG_T_INT, .v.i = (int64_t)(val)})
#define MICA_LOG_FLOAT(k, val)                                                                    \
    ((mica_log_field_t){.key = (k), .type = MICA_LOG_T_FLOAT, .v.f = (double)(val)})
#define MICA_LOG_BOOL(k, val)                                                                     \
    ((mica_log_field_t){.key = (k), .type = MICA_LOG_T_BOOL, .v.b = (val)})

/**
 * Names the service in every later line ("service":"user"; the OTel
 * resource's service.name); the name is copied. NULL or "" drops the field.
 * Returns 0, MICA_EINVAL (longer than 128 bytes) or MICA_ENOMEM.
 */
MICA_API int mica_log_set_service(const char *name);

/**
 * The seam between logs and tracing: fills `trace_id` (32 lower-case hex
 * digits) and `span_id` (16), NUL-terminated, with the span active in `ctx`
 * and returns true, or returns false when it has none. Runs on the logging
 * thread for every line logged with a ctx; it must not suspend or log.
 */
typedef bool (*mica_log_trace_fn)(mica_ctx_t *ctx, char trace_id[33], char span_id[17], void *arg);

/**
 * Installs the tracing layer's `fn` (NULL: none, the default), so lines
 * logged with a ctx carry "trace_id" and "span_id". Keep `arg` alive while
 * any thread may log.
 */
MICA_API void mica_log_set_trace(mica_log_trace_fn fn, void *arg);

/** Returns whether a trace function is installed (callers skip making a ctx when not). */
MICA_API bool mica_log_has_trace(void);

/**
 * As mica_log(), with the span active in `ctx` (NULL: none) as "trace_id"
 * and "span_id" -- Go's slog.InfoContext(). Pass the request's ctx
 * (mica_http_req_ctx(), mica_grpc_call_ctx()).
 */
MICA_API void mica_log_ctx(mica_ctx_t *ctx, mica_log_level_t level, const char *msg, ...);

/** As mica_log_fields(), with the trace ids of `ctx` (NULL: none). */
MICA_API void mica_log_ctx_fields(mica_ctx_t *ctx, mica_log_level_t level, const char *msg,
                                  const mica_log_field_t *fields, size_t n);

/**
 * Builds the line mica_log_ctx_fields() would log -- whatever the level and
 * sink -- into `buf` (room for `cap` bytes; MICA_LOG_LINE_MAX + 1 holds any
 * line), NUL-terminated, without a newline. Returns its length, or 0 when
 * it does not fit. For logs of one's own (access logs) in the same format.
 */
MICA_API size_t mica_log_format(char *buf, size_t cap, mica_ctx_t *ctx, mica_log_level_t level,
                                const char *msg, const mica_log_field_t *fields, size_t n);

#define mica_log_debug(...) mica_log(MICA_LOG_DEBUG, __VA_ARGS__, (const char *)0)
#define mica_log_info(...) mica_log(MICA_LOG_INFO, __VA_ARGS__, (const char *)0)
#define mica_log_warn(...) mica_log(MICA_LOG_WARN, __VA_ARGS__, (const char *)0)
#define mica_log_error(...) mica_log(MICA_LOG_ERROR, __VA_ARGS__, (const char *)0)
#define mica_log_debug_ctx(ctx, ...) mica_log_ctx((ctx), MICA_LOG_DEBUG, __VA_ARGS__, (const char *)0)
#define mica_log_info_ctx(ctx, ...) mica_log_ctx((ctx), MICA_LOG_INFO, __VA_ARGS__, (const char *)0)
#define mica_log_warn_ctx(ctx, ...) mica_log_ctx((ctx), MICA_LOG_WARN, __VA_ARGS__, (const char *)0)
#define mica_log_error_ctx(ctx, ...) mica_log_ctx((ctx), MICA_LOG_ERROR, __VA_ARGS__, (const char *)0)

#endif /* MICA_LOG_H */

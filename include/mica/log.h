/* SPDX-License-Identifier: MIT */
/*
 * Structured logging: one JSON object per line, on stderr unless a sink is
 * set. Every line has "ts" (UTC, ms), "level" and "msg", then the caller's
 * key/value pairs in order:
 *
 *     {"ts":"2026-12-02T10:00:00.123Z","level":"info","msg":"listening","addr":":8080"}
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

#define mica_log_debug(...) mica_log(MICA_LOG_DEBUG, __VA_ARGS__, (const char *)0)
#define mica_log_info(...) mica_log(MICA_LOG_INFO, __VA_ARGS__, (const char *)0)
#define mica_log_warn(...) mica_log(MICA_LOG_WARN, __VA_ARGS__, (const char *)0)
#define mica_log_error(...) mica_log(MICA_LOG_ERROR, __VA_ARGS__, (const char *)0)

#endif /* MICA_LOG_H */

/* SPDX-License-Identifier: MIT */
/*
 * The runtime's and the protocol layers' own log calls: the public logger
 * (include/mica/log.h), with string key/value pairs given after the message
 * and the terminating NULL added here.
 */
#ifndef MICA_COMMON_LOG_H
#define MICA_COMMON_LOG_H

#include "mica/log.h"

#define mica__log_debug(...) mica_log(MICA_LOG_DEBUG, __VA_ARGS__, (const char *)0)
#define mica__log_info(...) mica_log(MICA_LOG_INFO, __VA_ARGS__, (const char *)0)
#define mica__log_warn(...) mica_log(MICA_LOG_WARN, __VA_ARGS__, (const char *)0)
#define mica__log_error(...) mica_log(MICA_LOG_ERROR, __VA_ARGS__, (const char *)0)

/* The level by name ("info", ...): kept for callers from before mica_log(). */
void mica__log(const char *level, const char *msg, ...);

#endif /* MICA_COMMON_LOG_H */

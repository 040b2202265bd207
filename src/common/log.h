/* SPDX-License-Identifier: MIT */
/*
 * Internal JSON-lines logger: one object per line on stderr,
 * {"ts":"…","level":"info","msg":"…","key":"value",…}. Keys and values are
 * C strings given in pairs after the message; the list ends at the first NULL.
 */
#ifndef MICA_COMMON_LOG_H
#define MICA_COMMON_LOG_H

void mica__log(const char *level, const char *msg, ...);

#define mica__log_info(...) mica__log("info", __VA_ARGS__, (const char *)0)
#define mica__log_warn(...) mica__log("warn", __VA_ARGS__, (const char *)0)
#define mica__log_error(...) mica__log("error", __VA_ARGS__, (const char *)0)

#endif /* MICA_COMMON_LOG_H */

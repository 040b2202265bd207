/* SPDX-License-Identifier: MIT */
/* The observe layer's internals, shared by the files of src/observe. */
#ifndef MICA_OBSERVE_INTERNAL_H
#define MICA_OBSERVE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "mica/log.h"
#include "mica/metrics.h"
#include "mica/observe.h"

/* ---- metrics.c ----------------------------------------------------------------------- */

/* Appends `v` as Prometheus writes a float (shortest round trip; +Inf, -Inf, NaN). */
int mica__metrics_put_double(mica__buf_t *b, double v);

/* ---- logwriter.c: the asynchronous log writer ---------------------------------------- */

/* Where a queued line goes. */
enum { MICA__LOG_MAIN = 0, MICA__LOG_ACCESS = 1 };

/*
 * Starts the writer thread and installs it as the logger's sink: main lines
 * go to `log_file` (NULL or "": stderr), access lines to `access_log` ("-":
 * stdout, a path, NULL or "": none). Per thread, `ring_bytes` of queue.
 * Returns 0, MICA_EINVAL (a file that cannot be opened: logged), MICA_EBUSY
 * (already started) or MICA_ENOMEM.
 */
int mica__logw_start(const char *log_file, const char *access_log, size_t ring_bytes);
/* Restores the stderr sink, writes what is queued (bounded wait), stops the thread. */
void mica__logw_stop(void);
/* Queues one line (no newline) for `dest` without blocking; false: dropped (full or off). */
bool mica__logw_push(int dest, mica_log_level_t level, const char *line, size_t len);
/* Whether access lines have somewhere to go. */
bool mica__logw_access_on(void);
/* Asks the writer to reopen its files (SIGHUP): safe from any thread. */
void mica__logw_reopen(void);
/* Registers the writer's counters (written, dropped) in `reg`. 0 or MICA_ENOMEM. */
int mica__logw_metrics(mica_metrics_t *reg);

/* ---- process.c: runtime and process collectors ---------------------------------------- */

/* Adds the runtime's (rt) and the process's collectors to `reg`. */
int mica__process_collectors(mica_metrics_t *reg, mica_runtime_t *rt);
/* Removes rt's collector (the process's stays). */
void mica__process_collectors_remove(mica_metrics_t *reg, mica_runtime_t *rt);

/* ---- instrument.c ------------------------------------------------------------------ */

/* Adds the HTTP servers' connection collector to `reg` (once). */
int mica__instrument_collectors(mica_metrics_t *reg);
/* Forgets every instrumented server for scrapes (they may be freed next). */
void mica__instrument_detach(void);

/* ---- profile.c --------------------------------------------------------------------- */

/* Serves GET /debug/pprof/profile on the admin server (arg: max seconds as intptr_t). */
int mica__profile_handler(mica_http_req_t *req, mica_http_resp_t *resp, void *arg);
/* Serves GET and POST /debug/pprof/symbol (pprof's symbolz protocol). */
int mica__symbol_handler(mica_http_req_t *req, mica_http_resp_t *resp, void *arg);

#endif /* MICA_OBSERVE_INTERNAL_H */

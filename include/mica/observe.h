/* SPDX-License-Identifier: MIT */
/*
 * Observability on by default: metrics of every request, JSON logs written
 * off the workers, and an admin listener apart from the service ports.
 *
 *     mica_observe_opts_t oo = {0};           // or mica_observe_settings() in a config table
 *     mica_observe_http_server(srv);          // before attaching srv: RED metrics per route
 *     mica_observe_grpc_server(gs);           // grpc_server_handled_total, ..._handling_seconds
 *     mica_http_server_attach(srv, rt);
 *     mica_observe_t *obs;
 *     mica_observe_enable(&obs, rt, &oo);     // logs, runtime metrics, admin on 127.0.0.1:6060
 *     mica_runtime_run(rt);
 *     mica_observe_free(obs);
 *
 * The admin listener (MICA_ADMIN_LISTEN; "off" or "" turns it off) is a mica HTTP
 * server on the same runtime serving:
 *   GET /metrics                       Prometheus text format 0.0.4
 *   GET /healthz                       200 while the process serves (liveness)
 *   GET /readyz                        200 once started, 503 from the first stop
 *                                      request on and while a ready check fails
 *   GET /debug/pprof/profile?seconds=N a CPU profile (gperftools; `go tool pprof`)
 *   GET /debug/runtime                 mica_runtime_stats() per worker, as JSON
 *
 * Logs: the logger's sink becomes a bounded queue per thread that a writer
 * thread drains, so logging never blocks a worker; lines that find it full
 * are dropped and counted (mica_log_dropped_lines_total). SIGHUP reopens
 * the log files (logrotate's convention).
 */
#ifndef MICA_OBSERVE_H
#define MICA_OBSERVE_H

#include <stdbool.h>
#include <stddef.h>

#include "mica/config.h"
#include "mica/ctx.h"
#include "mica/error.h"
#include "mica/grpc.h"
#include "mica/http.h"
#include "mica/metrics.h"
#include "mica/runtime.h"

typedef struct mica_observe mica_observe_t;

/* Settings; NULL/0 picks the default shown (unready_delay_ms excepted). */
typedef struct mica_observe_opts {
    const char *admin_listen; /* admin listener: "127.0.0.1:6060"; "" or "off": none */
    const char *service;      /* the "service" of every log line: the program's name */
    const char *log_level;    /* debug, info, warn, error, off: $MICA_LOG_LEVEL, else info */
    const char *log_file;     /* log lines go to this file (reopened on SIGHUP): stderr */
    const char *access_log;   /* a JSON line per request: "" none, "-" stdout, or a file */
    int unready_delay_ms;     /* at a stop, how long /readyz answers 503 before the drain
                                 begins (with an admin listener): 0 none; the setting's
                                 default is 1 s */
    int profile_max_seconds;  /* the longest /debug/pprof/profile: 60 */
    size_t log_queue_bytes;   /* queued log bytes per thread, beyond: dropped: 256 KiB */
} mica_observe_opts_t;

/* Room enough for every setting mica_observe_settings() describes. */
#define MICA_OBSERVE_SETTINGS 6

/**
 * Describes the settings -- admin_listen, service, log_level, log_file,
 * access_log, unready_delay_ms, i.e. MICA_ADMIN_LISTEN ... -- bound to
 * `opts`' fields, into `out` (room for `cap`), for an app's
 * mica_config_load() table. Returns how many there are.
 */
MICA_API size_t mica_observe_settings(mica_observe_opts_t *opts, mica_setting_t *out, size_t cap);

/**
 * Turns observability on for `rt` (before mica_runtime_run(), after the
 * service's own listeners are attached): the log writer and its settings,
 * the runtime's and the process's metrics, SIGHUP, and the admin listener.
 * `opts` NULL: the MICA_* variables, else the defaults. One at a time per
 * process. Returns 0 with *out, MICA_EINVAL (a bad setting or file:
 * logged), MICA_EBUSY (already on), MICA_EADDRINUSE and the other errors
 * of mica_http_server_attach() for the admin listener -- then nothing is
 * left on.
 */
MICA_API int mica_observe_enable(mica_observe_t **out, mica_runtime_t *rt,
                                 const mica_observe_opts_t *opts);

/**
 * Turns it off after mica_runtime_run() returned: writes what the log queues
 * hold (at most 2 s), restores the stderr logger, frees the admin server.
 * NULL is a no-op.
 */
MICA_API void mica_observe_free(mica_observe_t *obs);

/** Returns the admin listener's port (useful with ":0"), or MICA_ENOTFOUND when it is off. */
MICA_API int mica_observe_admin_port(const mica_observe_t *obs);

/**
 * A readiness check: returns 0 when the service can take traffic, else a
 * MICA_E* code (logged on a change). Runs in the /readyz handler's
 * coroutine and may suspend; `ctx` ends after 1 s.
 */
typedef int (*mica_ready_check_fn)(mica_ctx_t *ctx, void *arg);

/**
 * Adds a check /readyz runs (`name`, copied, says which failed). Call
 * before mica_runtime_run(). Returns 0, MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_observe_ready_check(mica_observe_t *obs, const char *name,
                                      mica_ready_check_fn fn, void *arg);

/* ---- instrumentation: call before the server is attached / the client's first call ---- */

/**
 * Measures every request of `srv` in the default registry (an observer and
 * a middleware): http_server_request_duration_seconds,
 * http_server_request_size_bytes and http_server_response_size_bytes by
 * http_request_method, http_route (the pattern; "unmatched" when no route
 * did) and http_response_status_code; http_server_active_requests; the
 * connection counters; and the access log when one is set. `srv` must
 * outlive every scrape until mica_observe_free(). Returns 0, MICA_EINVAL
 * (attached already, or instrumented twice) or MICA_ENOMEM.
 */
MICA_API int mica_observe_http_server(mica_http_server_t *srv);

/**
 * Measures `gs`'s calls as go-grpc-prometheus does: grpc_server_handled_total
 * by grpc_type, grpc_service, grpc_method, grpc_code, and
 * grpc_server_handling_seconds; instruments its HTTP server as above if not
 * yet (gRPC calls leave the http_server_* metrics to REST). Returns 0,
 * MICA_EINVAL or MICA_ENOMEM.
 */
MICA_API int mica_observe_grpc_server(mica_grpc_server_t *gs);

/**
 * Measures `c`'s calls (an interceptor): grpc_client_started_total,
 * grpc_client_handled_total and grpc_client_handling_seconds (grpc_type
 * "unary" or "stream"). Returns the errors of mica_grpc_client_intercept().
 */
MICA_API int mica_observe_grpc_client(mica_grpc_client_t *c);

#endif /* MICA_OBSERVE_H */

/* SPDX-License-Identifier: MIT */
/*
 * mica_observe_enable(): the settings, the log writer, the runtime's and
 * the process's metrics, SIGHUP, and the admin listener -- a mica HTTP
 * server of its own on the service's runtime, apart from its ports.
 *
 * Readiness follows the runtime's life: not ready until every worker has
 * run its start hooks (ours is registered after the service's listeners,
 * so theirs have started); not ready from the first stop request on -- a
 * hook of the runtime's first shutdown phase (MICA_SHUTDOWN_UNREADY) says
 * so, then holds the phase for unready_delay_ms so load balancers notice
 * before the listeners close -- and not ready while an app's check fails.
 * Every change is a log line.
 *
 * A scrape runs on the offload pool (collectors read /proc and take the
 * registry's lock), so the admin worker keeps serving meanwhile.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/alloc.h"
#include "common/log.h"
#include "observe/internal.h"

#define DEFAULT_ADMIN "127.0.0.1:6060"
#define DEFAULT_QUEUE_BYTES (256 * 1024)
#define DEFAULT_PROFILE_MAX_S 60
#define CHECK_TIMEOUT_MS 1000

typedef struct check {
    char *name;
    mica_ready_check_fn fn;
    void *arg;
} check_t;

struct mica_observe {
    mica_runtime_t *rt;
    mica_http_server_t *admin; /* NULL: no admin listener */
    int unready_delay_ms;
    int profile_max_s;
    atomic_int started_workers;
    atomic_bool draining;
    atomic_int last_ready; /* -1 unknown, 0 not ready, 1 ready: for logging changes */
    check_t *checks;
    size_t nchecks;
};

static atomic_bool enabled;

size_t mica_observe_settings(mica_observe_opts_t *o, mica_setting_t *out, size_t cap)
{
    const mica_setting_t all[] = {
        {"admin_listen", MICA_SETTING_STR, DEFAULT_ADMIN,
         "admin listener (/metrics, /healthz, /readyz, /debug/pprof); off: none",
         &o->admin_listen, 0, 0, NULL},
        {"service", MICA_SETTING_STR, NULL, "service name in log lines (default: the program's)",
         &o->service, 0, 0, NULL},
        {"log_level", MICA_SETTING_STR, NULL, "debug, info, warn, error or off (default info)",
         &o->log_level, 0, 0, NULL},
        {"log_file", MICA_SETTING_STR, NULL, "write log lines to this file (default stderr)",
         &o->log_file, 0, 0, NULL},
        {"access_log", MICA_SETTING_STR, NULL,
         "one JSON line per request: - for stdout, or a file (default none)", &o->access_log, 0,
         0, NULL},
        {"unready_delay_ms", MICA_SETTING_MS, "1s",
         "at SIGTERM, how long /readyz answers 503 before connections close", &o->unready_delay_ms,
         0, 3600 * 1000, NULL},
    };
    size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = all[i];
    return n;
}

/* ---- readiness ------------------------------------------------------------------------ */

static void worker_started(int id, void *arg)
{
    mica_observe_t *obs = arg;
    if (atomic_fetch_add(&obs->started_workers, 1) + 1 == mica_runtime_workers(obs->rt))
        mica__log_info("ready", "reason", "started");
}

static void unready(mica_ctx_t *ctx, void *arg)
{
    mica_observe_t *obs = arg;
    atomic_store(&obs->draining, true);
    char ms[16];
    snprintf(ms, sizeof(ms), "%d", obs->unready_delay_ms);
    mica__log_info("not ready", "reason", "stopping", "delay_ms", ms);
    if (obs->unready_delay_ms > 0)
        mica_ctx_sleep(ctx, obs->unready_delay_ms);
}

static int readyz(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_observe_t *obs = arg;
    const char *why = NULL;
    char detail[160];
    if (atomic_load(&obs->draining))
        why = "stopping";
    else if (atomic_load(&obs->started_workers) < mica_runtime_workers(obs->rt))
        why = "starting";
    for (size_t i = 0; !why && i < obs->nchecks; i++) {
        mica_ctx_t *ctx;
        int rc = mica_ctx_with_timeout(mica_http_req_ctx(req), CHECK_TIMEOUT_MS, &ctx);
        if (rc == 0) {
            rc = obs->checks[i].fn(ctx, obs->checks[i].arg);
            mica_ctx_free(ctx);
        }
        if (rc != 0) {
            snprintf(detail, sizeof(detail), "check %s: %s", obs->checks[i].name,
                     mica_strerror(rc));
            why = detail;
        }
    }
    int now = why ? 0 : 1;
    if (atomic_exchange(&obs->last_ready, now) != now && obs->nchecks && !atomic_load(&obs->draining))
        mica__log_info(now ? "ready" : "not ready", "reason", why ? why : "checks pass");
    if (why) {
        char body[200];
        snprintf(body, sizeof(body), "not ready: %s\n", why);
        return mica_http_resp_text(resp, 503, body);
    }
    return mica_http_resp_text(resp, 200, "ready\n");
}

static int healthz(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_text(resp, 200, "ok\n");
}

/* ---- /metrics and /debug/runtime ---------------------------------------------------- */

typedef struct scrape {
    char *text;
    size_t len;
} scrape_t;

static int scrape_job(void *arg)
{
    scrape_t *s = arg;
    return mica_metrics_write(NULL, &s->text, &s->len);
}

static int metrics(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    scrape_t s = {0};
    int res = 0, rc = mica_offload(NULL, mica_http_req_ctx(req), scrape_job, &s, &res);
    if (rc == 0)
        rc = res;
    if (rc != 0) {
        mica__log_warn("scrape failed", "error", mica_strerror(rc));
        return rc; /* MICA_EOVERLOAD: 503 */
    }
    rc = mica_http_resp_send(resp, 200, MICA_METRICS_CONTENT_TYPE, s.text, s.len);
    mica_metrics_text_free(s.text);
    return rc;
}

static json_t *worker_json(const mica_worker_stats_t *w)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "coroutines",
                     (json_int_t)w->coroutines, "runnable", (json_int_t)w->runnable, "watched_fds",
                     (json_int_t)w->watched_fds, "spawned", (json_int_t)w->spawned,
                     "spawn_failed", (json_int_t)w->spawn_failed, "polls", (json_int_t)w->polls,
                     "runs", (json_int_t)w->runs, "timers_fired", (json_int_t)w->timers_fired,
                     "lag_us_last", (json_int_t)w->lag_us_last, "lag_us_max",
                     (json_int_t)w->lag_us_max, "lag_us_sum", (json_int_t)w->lag_us_sum);
}

static int runtime_json(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_observe_t *obs = arg;
    int nw = mica_runtime_workers(obs->rt);
    mica_worker_stats_t *per = mica_http_req_alloc(req, (size_t)nw * sizeof(*per));
    if (!per)
        return MICA_ENOMEM;
    mica_runtime_stats_t s;
    int n = mica_runtime_stats(obs->rt, &s, per, nw);
    json_t *workers = json_array();
    for (int i = 0; workers && i < n; i++)
        json_array_append_new(workers, worker_json(&per[i]));
    json_t *doc = json_pack("{s:i, s:o, s:o, s:{s:I, s:I, s:I, s:I}}", "workers", s.workers,
                            "total", worker_json(&s.total), "per_worker", workers, "offload",
                            "threads", (json_int_t)s.offload_threads, "queued",
                            (json_int_t)s.offload_queued, "busy", (json_int_t)s.offload_busy,
                            "rejected", (json_int_t)s.offload_rejected);
    if (!doc)
        return MICA_ENOMEM;
    int rc = mica_http_resp_json(resp, 200, doc);
    json_decref(doc);
    return rc;
}

static int index_page(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_text(resp, 200,
                               "mica admin\n/metrics\n/healthz\n/readyz\n"
                               "/debug/pprof/profile?seconds=30\n/debug/runtime\n");
}

/* ---- enable and free -------------------------------------------------------------------- */

static void on_sighup(int signo, void *arg)
{
    mica__logw_reopen();
}

static int apply_logging(const mica_observe_opts_t *o)
{
    if (o->log_level && *o->log_level) {
        mica_log_level_t l;
        if (mica_log_parse_level(o->log_level, &l) != 0) {
            mica__log_error("invalid setting", "name", "log_level", "value", o->log_level);
            return MICA_EINVAL;
        }
        mica_log_set_level(l);
    }
    const char *svc = o->service && *o->service ? o->service : program_invocation_short_name;
    if (mica_log_set_service(svc) != 0) {
        mica__log_error("invalid setting", "name", "service", "value", svc);
        return MICA_EINVAL;
    }
    return 0;
}

static int start_admin(mica_observe_t *obs, const char *listen)
{
    mica_http_server_opts_t ho = {
        .max_conns = 1024,
        .request_timeout_ms = (obs->profile_max_s + 30) * 1000,
    };
    mica_http_server_t *srv;
    int rc = mica_http_server_new(&srv, &ho);
    if (rc != 0)
        return rc;
    struct {
        const char *path;
        mica_http_handler_fn fn;
        void *arg;
    } routes[] = {
        {"/", index_page, obs},
        {"/metrics", metrics, obs},
        {"/healthz", healthz, obs},
        {"/readyz", readyz, obs},
        {"/debug/runtime", runtime_json, obs},
        {"/debug/pprof/profile", mica__profile_handler, (void *)(intptr_t)obs->profile_max_s},
    };
    for (size_t i = 0; rc == 0 && i < sizeof(routes) / sizeof(routes[0]); i++)
        rc = mica_http_route(srv, "GET", routes[i].path, routes[i].fn, routes[i].arg);
    if (rc == 0)
        rc = mica_http_route(srv, "GET", "/debug/pprof/symbol", mica__symbol_handler, NULL);
    if (rc == 0)
        rc = mica_http_route(srv, "POST", "/debug/pprof/symbol", mica__symbol_handler, NULL);
    if (rc == 0 && (rc = mica_http_server_listen_list(srv, listen)) != 0)
        mica__log_error("invalid setting", "name", "admin_listen", "value", listen);
    if (rc == 0)
        rc = mica_http_server_attach(srv, obs->rt);
    if (rc != 0) {
        mica_http_server_free(srv);
        return rc;
    }
    obs->admin = srv;
    return 0;
}

int mica_observe_enable(mica_observe_t **out, mica_runtime_t *rt, const mica_observe_opts_t *opts)
{
    mica_observe_opts_t o = {0};
    mica_setting_t set[MICA_OBSERVE_SETTINGS];
    if (opts) {
        o = *opts;
    } else { /* the variables over the settings' defaults */
        size_t n = mica_observe_settings(&o, set, MICA_OBSERVE_SETTINGS);
        for (size_t i = 0; i < n; i++)
            if (set[i].def && mica_config_parse(set[i].type, set[i].def, set[i].min, set[i].max,
                                                set[i].out) != 0)
                return MICA_EINVAL;
        if (mica_config_from_env(set, n) != 0)
            return MICA_EINVAL;
    }
    const char *listen = o.admin_listen ? o.admin_listen : DEFAULT_ADMIN;
    if (strcmp(listen, "off") == 0)
        listen = "";
    if (atomic_exchange(&enabled, true))
        return MICA_EBUSY;
    int rc = apply_logging(&o);
    mica_observe_t *obs = rc == 0 ? mica__calloc(1, sizeof(*obs)) : NULL;
    if (rc == 0 && !obs)
        rc = MICA_ENOMEM;
    if (rc != 0) {
        atomic_store(&enabled, false);
        return rc;
    }
    obs->rt = rt;
    obs->unready_delay_ms = o.unready_delay_ms > 0 ? o.unready_delay_ms : 0;
    obs->profile_max_s = o.profile_max_seconds > 0 ? o.profile_max_seconds : DEFAULT_PROFILE_MAX_S;
    atomic_init(&obs->last_ready, -1);
    mica_metrics_t *reg = mica_metrics_default();
    if ((rc = mica__logw_metrics(reg)) != 0 || (rc = mica__instrument_collectors(reg)) != 0 ||
        (rc = mica__process_collectors(reg, rt)) != 0)
        goto fail;
    rc = mica__logw_start(o.log_file, o.access_log,
                          o.log_queue_bytes ? o.log_queue_bytes : DEFAULT_QUEUE_BYTES);
    if (rc != 0)
        goto fail_collectors;
    /* Stays registered if a later step fails: it only asks the writer to reopen. */
    if ((rc = mica_runtime_on_signal(rt, SIGHUP, on_sighup, NULL)) != 0 ||
        (*listen && (rc = start_admin(obs, listen)) != 0))
        goto fail_logs;
    /* Past the attach nothing can be undone: the hooks hold obs, which then
     * stays (leaked) should registering them run out of memory. */
    if (obs->admin && ((rc = mica_runtime_on_start(rt, worker_started, obs)) != 0 ||
                       (rc = mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_UNREADY, unready, obs)) != 0))
        return rc;
    *out = obs;
    return 0;

fail_logs:
    mica__logw_stop();
fail_collectors:
    mica__process_collectors_remove(reg, rt);
fail:
    mica__free(obs);
    atomic_store(&enabled, false);
    return rc;
}

void mica_observe_free(mica_observe_t *obs)
{
    if (!obs)
        return;
    mica__logw_stop();
    mica__process_collectors_remove(mica_metrics_default(), obs->rt);
    mica__instrument_detach();
    mica_http_server_free(obs->admin);
    for (size_t i = 0; i < obs->nchecks; i++)
        mica__free(obs->checks[i].name);
    mica__free(obs->checks);
    mica__free(obs);
    atomic_store(&enabled, false);
}

int mica_observe_admin_port(const mica_observe_t *obs)
{
    return obs && obs->admin ? mica_http_server_port(obs->admin, 0) : MICA_ENOTFOUND;
}

int mica_observe_ready_check(mica_observe_t *obs, const char *name, mica_ready_check_fn fn,
                             void *arg)
{
    if (!obs || !name || !fn)
        return MICA_EINVAL;
    check_t *c = mica__realloc(obs->checks, (obs->nchecks + 1) * sizeof(*c));
    if (!c)
        return MICA_ENOMEM;
    obs->checks = c;
    if (!(c[obs->nchecks].name = mica__strdup(name)))
        return MICA_ENOMEM;
    c[obs->nchecks].fn = fn;
    c[obs->nchecks].arg = arg;
    obs->nchecks++;
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * hello: the seed's first service (chapter 1) on mica.
 *
 *   GET /health -> {"status":"ok"}
 *   GET /data   -> {"message":"success","data":"processed quickly"}
 *
 * Listens on :8080, or on $PORT, or on the comma-separated --listen /
 * $MICA_LISTEN; with tls_listen, tls_cert and tls_key ($MICA_TLS_*) also
 * over TLS. --workers / MICA_WORKERS sets the worker threads (default: one
 * per CPU); the http_* settings (MICA_HTTP_*) set limits and timeouts.
 * `hello --help` lists every setting. SIGTERM or Ctrl-C drains in-flight
 * requests and exits 0.
 *
 * Observability is on unless --observe=false (MICA_OBSERVE): request
 * metrics, JSON logs written off the workers, and the admin listener
 * (--admin-listen, default 127.0.0.1:6060). bench/load/observe.sh compares
 * the two.
 *
 * Load shedding and X-Request-Timeout deadlines are on (MICA_SHED=off: no
 * shedding; docs/guide/resilience.md).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "mica/config.h"
#include "mica/http.h"
#include "mica/limit.h"
#include "mica/log.h"
#include "mica/observe.h"
#include "mica/runtime.h"

static int health(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_json_str(resp, 200, "{\"status\":\"ok\"}");
}

static int data(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    json_t *body = json_pack("{s:s, s:s}", "message", "success", "data", "processed quickly");
    if (!body)
        return MICA_ENOMEM;
    int rc = mica_http_resp_json(resp, 200, body);
    json_decref(body);
    return rc;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "hello: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    const char *listen = NULL, *port = NULL;
    mica_runtime_opts_t ropts = {0};
    mica_http_server_opts_t opts = {0};
    mica_http_tls_settings_t tls = {0};
    mica_observe_opts_t oopts = {0};
    mica_shed_opts_t so = {0};
    bool observe = true, shed_on = true;
    mica_setting_t settings[5 + MICA_HTTP_SETTINGS + MICA_OBSERVE_SETTINGS + MICA_SHED_SETTINGS] = {
        {"listen", MICA_SETTING_STR, NULL, "listen addresses, comma-separated (default :$PORT)",
         &listen, 0, 0, NULL},
        {"port", MICA_SETTING_STR, "8080", "port to listen on when listen is unset", &port, 0, 0,
         "PORT"},
        {"workers", MICA_SETTING_INT, "0", "worker threads (0: one per CPU)", &ropts.workers, 0,
         4096, NULL},
        {"drain_timeout_ms", MICA_SETTING_MS, "10000", "how long SIGTERM lets in-flight work finish",
         &ropts.drain_timeout_ms, 1, 3600 * 1000, NULL},
        {"observe", MICA_SETTING_BOOL, "true", "metrics, async logs and the admin listener",
         &observe, 0, 0, NULL},
    };
    size_t n = 5 + mica_http_server_settings(&opts, &tls, settings + 5, MICA_HTTP_SETTINGS);
    n += mica_observe_settings(&oopts, settings + n, MICA_OBSERVE_SETTINGS);
    n += mica_shed_settings(&so, &shed_on, settings + n, MICA_SHED_SETTINGS);
    mica_config_t *cfg;
    int rc = mica_config_load(&cfg, settings, n, argc, argv);
    if (rc != 0)
        return rc == MICA_CONFIG_HELP ? 0 : 2;

    mica_runtime_t *rt;
    if ((rc = mica_runtime_new(&rt, &ropts)) != 0)
        return fail("runtime", rc);
    mica_http_server_t *srv;
    if ((rc = mica_http_server_new(&srv, &opts)) != 0)
        return fail("server options", rc);

    mica_http_route(srv, "GET", "/health", health, NULL);
    mica_http_route(srv, "GET", "/data", data, NULL);
    if (observe && (rc = mica_observe_http_server(srv)) != 0)
        return fail("metrics", rc);

    /* What a mica service gets by default: adaptive load shedding (503 / UNAVAILABLE
     * when a worker is saturated; --shed=off / MICA_SHED=off opts out) and deadlines
     * taken from X-Request-Timeout / grpc-timeout (docs/guide/resilience.md). */
    so.disabled = !shed_on;
    mica_shed_t *shed;
    if ((rc = mica_shed_new(&shed, &so)) != 0 ||
        (rc = mica_shed_attach(shed, srv)) != 0 || (rc = mica_deadline_http(srv)) != 0)
        return fail("resilience settings", rc);

    char addr[64];
    if (!listen || !*listen) {
        snprintf(addr, sizeof(addr), ":%s", port);
        listen = addr;
    }
    if ((rc = mica_http_server_listen_list(srv, listen)) != 0)
        return fail("bad listen address", rc);
    if ((rc = mica_http_server_tls_apply(srv, &tls)) != 0) /* tls_listen, tls_cert, tls_key */
        return fail("TLS settings", rc);
    if ((rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);

    mica_observe_t *obs = NULL;
    if (observe && (rc = mica_observe_enable(&obs, rt, &oopts)) == MICA_EADDRINUSE) {
        mica_log_warn("admin listener off: address in use", "addr", oopts.admin_listen);
        oopts.admin_listen = "";
        rc = mica_observe_enable(&obs, rt, &oopts);
    }
    if (observe && rc != 0)
        return fail("observability", rc);

    rc = mica_runtime_run(rt);
    mica_observe_free(obs);
    mica_http_server_free(srv);
    mica_shed_free(shed);
    mica_runtime_free(rt);
    mica_config_free(cfg);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

/* SPDX-License-Identifier: MIT */
/*
 * hello: the seed's first service (chapter 1) on mica.
 *
 *   GET /health -> {"status":"ok"}
 *   GET /data   -> {"message":"success","data":"processed quickly"}
 *
 * Listens on :8080, or on $PORT, or on the comma-separated $MICA_LISTEN;
 * with $MICA_TLS_LISTEN, $MICA_TLS_CERT and $MICA_TLS_KEY also over TLS.
 * MICA_WORKERS sets the worker threads (default: one per CPU); the
 * MICA_HTTP_* variables set limits and timeouts (include/mica/http.h); load
 * shedding and X-Request-Timeout deadlines are on (MICA_SHED=off: no shedding).
 * SIGTERM or Ctrl-C drains in-flight requests and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>

#include "mica/http.h"
#include "mica/limit.h"
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

int main(void)
{
    mica_runtime_t *rt;
    int rc = mica_runtime_new(&rt, NULL);
    if (rc != 0)
        return fail("runtime", rc);

    mica_http_server_opts_t opts = {0};
    mica_http_server_t *srv;
    if ((rc = mica_http_server_opts_from_env(&opts)) != 0 ||
        (rc = mica_http_server_new(&srv, &opts)) != 0)
        return fail("server options", rc);

    mica_http_route(srv, "GET", "/health", health, NULL);
    mica_http_route(srv, "GET", "/data", data, NULL);

    /* What a mica service gets by default: adaptive load shedding (503 / UNAVAILABLE
     * when a worker is saturated; MICA_SHED=off opts out) and deadlines taken from
     * X-Request-Timeout / grpc-timeout (docs/guide/resilience.md). */
    mica_shed_opts_t so = {0};
    mica_shed_t *shed;
    if ((rc = mica_shed_opts_from_env(&so)) != 0 || (rc = mica_shed_new(&shed, &so)) != 0 ||
        (rc = mica_shed_attach(shed, srv)) != 0 || (rc = mica_deadline_http(srv)) != 0)
        return fail("resilience settings", rc);

    const char *listen = getenv("MICA_LISTEN");
    const char *port = getenv("PORT");
    char addr[64];
    if (!listen || !*listen) {
        snprintf(addr, sizeof(addr), ":%s", port && *port ? port : "8080");
        listen = addr;
    }
    if ((rc = mica_http_server_listen_list(srv, listen)) != 0)
        return fail("bad listen address", rc);
    if ((rc = mica_http_server_tls_from_env(srv)) != 0) /* MICA_TLS_LISTEN, _CERT, _KEY */
        return fail("TLS settings", rc);
    if ((rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);

    rc = mica_runtime_run(rt);
    mica_http_server_free(srv);
    mica_shed_free(shed);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

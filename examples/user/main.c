/* SPDX-License-Identifier: MIT */
/*
 * user: the seed's dual-protocol UserService (000, 3.1 and 4.1) on mica.
 *
 *   gRPC  user.UserService/GetUser(UserRequest{user_id}) -> UserResponse{name, age}
 *   REST  GET /users/{id} -> {"id":"1001","name":"Alice","age":30}
 *         GET /health     -> {"status":"ok"}
 *         GET /data       -> {"message":"success","data":"processed quickly"}
 *   plus the standard grpc.health.v1.Health service.
 *
 * Both protocols answer on every listener: :8080 (REST, the seed's HTTP
 * port) and :50051 (gRPC) by default, or the comma-separated --listen /
 * $MICA_LISTEN; with tls_listen, tls_cert and tls_key ($MICA_TLS_*) also
 * over TLS (ALPN: h2 for gRPC, http/1.1 for REST).
 * Unknown id: NOT_FOUND / 404; empty id: INVALID_ARGUMENT / 400.
 * Settings come from flags, MICA_* variables or a --config JSON file;
 * `user --help` lists them all. SIGTERM or Ctrl-C drains and exits 0.
 *
 * Observability is on: request metrics per route and gRPC method, JSON
 * logs, and the admin listener on 127.0.0.1:6060 (--admin-listen) with
 * /metrics, /healthz, /readyz, /debug/pprof/profile and /debug/runtime.
 * With otlp_endpoint ($MICA_OTLP_ENDPOINT) every request is traced (W3C
 * traceparent honoured, spans exported over OTLP/HTTP; trace_sample sets
 * the ratio of new traces kept), and log lines carry trace_id/span_id.
 *
 * Discovery (off by default): with registry ($MICA_REGISTRY) set to
 * "etcd://127.0.0.1:2379" or "file:///path/registry.json", the service
 * registers itself as "user" (registry_service) once it listens, at
 * registry_addr (default 127.0.0.1 and the last listener's port), its id
 * that address. At SIGTERM: /readyz 503 -> deregister -> wait
 * registry_deregister_wait_ms for peers to see it -> drain -> exit 0.
 * A killed instance leaves when its lease expires (registry_ttl_s).
 * docs/guide/discovery.md tells the whole story.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/config.h"
#include "mica/grpc.h"
#include "mica/http.h"
#include "mica/limit.h"
#include "mica/log.h"
#include "mica/observe.h"
#include "mica/registry.h"
#include "mica/runtime.h"
#include "mica/trace.h"
#include "user.pb-c.h"

typedef struct user {
    const char *id;
    const char *name;
    int age;
} user_t;

/* The in-memory table the seed's handler reads from. */
static const user_t users[] = {
    {"1001", "Alice", 30},
    {"1002", "Bob", 25},
    {"1003", "Carol", 35},
    {"1004", "Dave", 41},
};

static const user_t *find_user(const char *id)
{
    for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++)
        if (strcmp(users[i].id, id) == 0)
            return &users[i];
    return NULL;
}

/* ---- gRPC ---------------------------------------------------------------- */

static int get_user(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const User__UserRequest *req = (const User__UserRequest *)in;
    if (!*req->user_id)
        return mica_grpc_status(call, MICA_GRPC_INVALID_ARGUMENT, "user_id is empty");
    const user_t *u = find_user(req->user_id);
    if (!u)
        return mica_grpc_status(call, MICA_GRPC_NOT_FOUND, "user %s not found", req->user_id);
    User__UserResponse out = USER__USER_RESPONSE__INIT;
    out.name = (char *)u->name;
    out.age = u->age;
    return mica_grpc_send(call, &out.base);
}

/* ---- REST ---------------------------------------------------------------- */

static int rest_user(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const char *id = mica_http_req_param(req, "id");
    const user_t *u = find_user(id);
    if (!u)
        return mica_http_resp_error(resp, 404, "user not found");
    json_t *body = json_pack("{s:s, s:s, s:i}", "id", u->id, "name", u->name, "age", u->age);
    if (!body)
        return MICA_ENOMEM;
    int rc = mica_http_resp_json(resp, 200, body);
    json_decref(body);
    return rc;
}

/* GET /users/ (no id): the REST face of INVALID_ARGUMENT. */
static int rest_no_id(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_error(resp, 400, "user id is empty");
}

static int health(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_json_str(resp, 200, "{\"status\":\"ok\"}");
}

static int data(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_json_str(resp, 200,
                                   "{\"message\":\"success\",\"data\":\"processed quickly\"}");
}

/* Registration once the listeners are up: a start hook on worker 0. */
typedef struct reg_app {
    mica_registry_t *reg;
    mica_instance_t inst;
    char addr[64];
} reg_app_t;

static void register_start(int worker, void *arg)
{
    reg_app_t *a = arg;
    if (worker != 0)
        return;
    /* Waits for the first write; if the registry is down it goes on trying by itself,
     * and a shutdown before then ends the wait (MICA_ECANCELED). */
    int rc = mica_registry_register(a->reg, NULL, &a->inst);
    if (rc != 0 && rc != MICA_ECANCELED)
        mica_log_error("registry: cannot register", "error", mica_strerror(rc));
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "user: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    /* Every setting, declared once: flags, then MICA_* variables, then a
     * --config JSON file, then these defaults; --help lists them all. */
    const char *listen = NULL;
    const char *registry = NULL, *reg_service = NULL, *reg_addr = NULL, *reg_zone = NULL;
    mica_registry_opts_t regopts = {0};
    mica_runtime_opts_t ropts = {0};
    mica_http_server_opts_t opts = {0};
    mica_http_tls_settings_t tls = {0};
    mica_grpc_server_opts_t gopts = {0};
    mica_trace_opts_t topts = {0};
    mica_observe_opts_t oopts = {0};
    mica_shed_opts_t so = {0};
    bool shed_on = true;
    mica_setting_t settings[9 + MICA_HTTP_SETTINGS + MICA_GRPC_SETTINGS + MICA_TRACE_SETTINGS +
                            MICA_OBSERVE_SETTINGS + MICA_SHED_SETTINGS] = {
        {"listen", MICA_SETTING_STR, ":8080,:50051", "listen addresses, comma-separated", &listen,
         0, 0, NULL},
        {"workers", MICA_SETTING_INT, "0", "worker threads (0: one per CPU)", &ropts.workers, 0,
         4096, NULL},
        {"drain_timeout_ms", MICA_SETTING_MS, "10000", "how long SIGTERM lets in-flight work finish",
         &ropts.drain_timeout_ms, 1, 3600 * 1000, NULL},
        {"registry", MICA_SETTING_STR, "",
         "register in this registry: etcd://ip:port[/prefix] or file:///path (\"\": off)",
         &registry, 0, 0, NULL},
        {"registry_service", MICA_SETTING_STR, "user", "the service name registered",
         &reg_service, 0, 0, NULL},
        {"registry_addr", MICA_SETTING_STR, "",
         "the address registered (\"\": 127.0.0.1 and the last listener's port)", &reg_addr, 0,
         0, NULL},
        {"registry_zone", MICA_SETTING_STR, "", "the zone registered (\"\": none)", &reg_zone, 0,
         0, NULL},
        {"registry_ttl_s", MICA_SETTING_INT, "10", "etcd lease TTL: a killed instance's lifetime",
         &regopts.ttl_s, 2, 3600, NULL},
        {"registry_deregister_wait_ms", MICA_SETTING_MS, "1s",
         "at SIGTERM, the wait between deregistering and draining", &regopts.deregister_wait_ms, 1,
         600 * 1000, NULL},
    };
    size_t n = 9;
    n += mica_http_server_settings(&opts, &tls, settings + n, MICA_HTTP_SETTINGS);
    n += mica_grpc_server_settings(&gopts, settings + n, MICA_GRPC_SETTINGS);
    n += mica_trace_settings(&topts, settings + n, MICA_TRACE_SETTINGS);
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
    mica_grpc_server_t *gs;
    if ((rc = mica_http_server_new(&srv, &opts)) != 0 ||
        (rc = mica_grpc_server_new(&gs, srv, &gopts)) != 0)
        return fail("server options", rc);
    /* Tracing first, so its server span covers every other middleware. */
    mica_tracer_t *tracer = NULL;
    if (topts.endpoint && *topts.endpoint && (rc = mica_trace_enable(&tracer, rt, srv, &topts)) != 0)
        return fail("tracing", rc);

    if ((rc = mica_grpc_register(gs, &user__user_service__descriptor, "GetUser", MICA_GRPC_UNARY,
                                 get_user, NULL)) != 0 ||
        (rc = mica_grpc_enable_health(gs)) != 0)
        return fail("gRPC", rc);
    mica_http_route(srv, "GET", "/users/{id}", rest_user, NULL);
    mica_http_route(srv, "GET", "/users/", rest_no_id, NULL);
    mica_http_route(srv, "GET", "/health", health, NULL);
    mica_http_route(srv, "GET", "/data", data, NULL);

    /* Metrics of every request and call: before the server is attached. */
    if ((rc = mica_observe_http_server(srv)) != 0 || (rc = mica_observe_grpc_server(gs)) != 0)
        return fail("metrics", rc);

    /* What a mica service gets by default: adaptive load shedding (503 / UNAVAILABLE
     * when a worker is saturated; --shed=off / MICA_SHED=off opts out) and deadlines
     * taken from X-Request-Timeout / grpc-timeout (docs/guide/resilience.md). */
    so.disabled = !shed_on;
    mica_shed_t *shed;
    if ((rc = mica_shed_new(&shed, &so)) != 0 ||
        (rc = mica_shed_attach(shed, srv)) != 0 || (rc = mica_deadline_http(srv)) != 0)
        return fail("resilience settings", rc);

    if ((rc = mica_http_server_listen_list(srv, listen)) != 0)
        return fail("bad listen address", rc);
    if ((rc = mica_http_server_tls_apply(srv, &tls)) != 0) /* tls_listen, tls_cert, tls_key */
        return fail("TLS settings", rc);
    if ((rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);

    /* Logs, runtime metrics and the admin listener. A busy admin port (a
     * second copy on this machine) leaves the service running without it. */
    mica_observe_t *obs;
    if ((rc = mica_observe_enable(&obs, rt, &oopts)) == MICA_EADDRINUSE) {
        mica_log_warn("admin listener off: address in use", "addr", oopts.admin_listen);
        oopts.admin_listen = "";
        rc = mica_observe_enable(&obs, rt, &oopts);
    }
    if (rc != 0)
        return fail("observability", rc);

    /* Discovery: registered once the workers run (the listeners are bound by now). */
    mica_registry_t *reg = NULL;
    reg_app_t app = {0};
    if (registry && *registry) {
        if ((rc = mica_registry_new(&reg, rt, registry, &regopts)) != 0)
            return fail("registry", rc);
        if (reg_addr && *reg_addr) {
            snprintf(app.addr, sizeof(app.addr), "%s", reg_addr);
        } else {
            size_t last = 0;
            for (const char *p = listen; *p; p++)
                last += *p == ',';
            int port = mica_http_server_port(srv, last);
            if (port < 0)
                return fail("registry_addr", port);
            snprintf(app.addr, sizeof(app.addr), "127.0.0.1:%d", port);
        }
        app.reg = reg;
        app.inst = (mica_instance_t){.service = reg_service, .addr = app.addr,
                                     .zone = reg_zone && *reg_zone ? reg_zone : NULL};
        if ((rc = mica_runtime_on_start(rt, register_start, &app)) != 0)
            return fail("registry", rc);
    }

    rc = mica_runtime_run(rt);
    mica_registry_free(reg);
    mica_observe_free(obs);
    mica_grpc_server_free(gs);
    mica_http_server_free(srv);
    mica_tracer_free(tracer);
    mica_shed_free(shed);
    mica_runtime_free(rt);
    mica_config_free(cfg);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

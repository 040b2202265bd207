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
 * port) and :50051 (gRPC) by default, or the comma-separated $MICA_LISTEN;
 * with $MICA_TLS_LISTEN, $MICA_TLS_CERT and $MICA_TLS_KEY also over TLS
 * (ALPN: h2 for gRPC, http/1.1 for REST).
 * Unknown id: NOT_FOUND / 404; empty id: INVALID_ARGUMENT / 400.
 * MICA_WORKERS, MICA_HTTP_* and MICA_GRPC_MAX_MESSAGE_BYTES as everywhere;
 * SIGTERM or Ctrl-C drains and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/grpc.h"
#include "mica/http.h"
#include "mica/limit.h"
#include "mica/runtime.h"
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

static int fail(const char *what, int rc)
{
    fprintf(stderr, "user: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

int main(void)
{
    mica_runtime_t *rt;
    int rc = mica_runtime_new(&rt, NULL);
    if (rc != 0)
        return fail("runtime", rc);

    mica_http_server_opts_t opts = {0};
    mica_grpc_server_opts_t gopts = {0};
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    if ((rc = mica_http_server_opts_from_env(&opts)) != 0 ||
        (rc = mica_grpc_server_opts_from_env(&gopts)) != 0 ||
        (rc = mica_http_server_new(&srv, &opts)) != 0 ||
        (rc = mica_grpc_server_new(&gs, srv, &gopts)) != 0)
        return fail("server options", rc);

    if ((rc = mica_grpc_register(gs, &user__user_service__descriptor, "GetUser", MICA_GRPC_UNARY,
                                 get_user, NULL)) != 0 ||
        (rc = mica_grpc_enable_health(gs)) != 0)
        return fail("gRPC", rc);
    mica_http_route(srv, "GET", "/users/{id}", rest_user, NULL);
    mica_http_route(srv, "GET", "/users/", rest_no_id, NULL);
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
    if (!listen || !*listen)
        listen = ":8080,:50051";
    if ((rc = mica_http_server_listen_list(srv, listen)) != 0)
        return fail("bad listen address", rc);
    if ((rc = mica_http_server_tls_from_env(srv)) != 0) /* MICA_TLS_LISTEN, _CERT, _KEY */
        return fail("TLS settings", rc);
    if ((rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);

    rc = mica_runtime_run(rt);
    mica_grpc_server_free(gs);
    mica_http_server_free(srv);
    mica_shed_free(shed);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

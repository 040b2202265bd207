/* SPDX-License-Identifier: MIT */
/*
 * grpc.health.v1.Health: what load balancers, Kubernetes gRPC probes and
 * grpc-health-probe ask. A service is SERVING when the server has a method of
 * it ("" stands for the whole server), NOT_SERVING once the worker drains.
 * Watch re-checks every WATCH_MS and sends each change; it ends with the
 * drain, after sending NOT_SERVING.
 */
#include "grpc/internal.h"
#include "health.pb-c.h"
#include "mica/runtime.h"

#define WATCH_MS 500

typedef Grpc__Health__V1__HealthCheckRequest health_req_t;
typedef Grpc__Health__V1__HealthCheckResponse health_resp_t;

/* The status of `service`, or -1 when the server does not know it. */
static int status_of(const mica_grpc_server_t *gs, const char *service)
{
    if (*service && !mica__grpc_has_service(gs, service))
        return -1;
    return mica_worker_stopping() ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                                  : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static int send_status(mica_grpc_call_t *call, int status)
{
    health_resp_t out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    out.status = status;
    return mica_grpc_send(call, &out.base);
}

static int check(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const health_req_t *req = (const health_req_t *)in;
    int st = status_of(arg, req->service);
    if (st < 0)
        return mica_grpc_status(call, MICA_GRPC_NOT_FOUND, "unknown service %s", req->service);
    return send_status(call, st);
}

static int watch(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const health_req_t *req = (const health_req_t *)in;
    int last = -2;
    for (;;) {
        int st = status_of(arg, req->service);
        if (st < 0)
            st = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
        if (st != last) {
            int rc = send_status(call, st);
            if (rc != 0)
                return rc;
            last = st;
        }
        if (mica_worker_stopping())
            return MICA_GRPC_OK;
        int rc = mica_ctx_sleep(mica_grpc_call_ctx(call), WATCH_MS);
        if (rc != 0)
            return mica_worker_stopping() ? MICA_GRPC_OK : rc;
    }
}

int mica_grpc_enable_health(mica_grpc_server_t *gs)
{
    const ProtobufCServiceDescriptor *d = &grpc__health__v1__health__descriptor;
    int rc = mica_grpc_register(gs, d, "Check", MICA_GRPC_UNARY, check, gs);
    if (rc == 0)
        rc = mica_grpc_register(gs, d, "Watch", MICA_GRPC_SERVER_STREAM, watch, gs);
    return rc;
}

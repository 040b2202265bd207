/* SPDX-License-Identifier: MIT */
/*
 * Deadlines across hops. A caller's remaining time arrives as grpc-timeout
 * (gRPC) or X-Request-Timeout (HTTP, decimal milliseconds: what Envoy's
 * x-envoy-expected-rq-timeout-ms carries, under a name that says what it
 * is); it becomes the request's deadline, counted from the head's arrival,
 * so time spent reading the body and queueing counts against it. Calls made
 * under the request's ctx pass on what is left: mica's gRPC client sends
 * the ctx's deadline as grpc-timeout, and an HTTP client sends
 * X-Request-Timeout from mica_http_timeout_header(). Each hop's budget thus
 * shrinks by the time the hops before it took.
 *
 * Work whose caller has already given up is waste, so a request is refused
 * without its handler when its deadline has passed: at the head (a budget
 * of 0: the caller ran out on the way), and again just before the handler (after the body, for buffered routes; after the request message,
 * for gRPC calls). 504 for HTTP, DEADLINE_EXCEEDED for gRPC.
 */
#include "resilience/limit_internal.h"

typedef struct dstripe {
    _Atomic uint64_t propagated, expired, malformed;
} __attribute__((aligned(64))) dstripe_t;

static dstripe_t stripes[MICA__STRIPES]; /* process-wide: one per worker (mod 64) */

static const char expired_msg[] = "deadline exceeded before the request was served";

/* gRPC calls carry grpc-timeout, anything else X-Request-Timeout: one header looked up. */
static int gate_admit(mica_http_req_t *req, int64_t now_ns, void *arg)
{
    bool grpc = mica__is_grpc(req);
    const char *v = mica_http_req_header(req, grpc ? "grpc-timeout" : MICA_HTTP_TIMEOUT_HEADER);
    if (!v)
        return 0;
    dstripe_t *s = &stripes[mica__stripe()];
    int64_t t;
    if (mica_http_timeout_parse(v, &t) != 0) {
        if (grpc)
            return 0; /* a malformed grpc-timeout is the gRPC server's to answer (INTERNAL) */
        mica__add(&s->malformed, 1);
        return MICA_EINVAL;
    }
    mica__add(&s->propagated, 1);
    if (t <= 0) {
        mica__add(&s->expired, 1);
        return MICA_ETIMEDOUT;
    }
    /* On the deadline clock, mica_now_ms(): it may lag the true time by a loop iteration,
     * which moves the deadline earlier, never later, as every later reading sees it. */
    mica_http_req_set_deadline(req, mica_now_ms() + t); /* no ctx yet: cannot fail */
    return 0;
}

static int gate_refuse(mica_http_req_t *req, mica_http_resp_t *resp, int why, void *arg)
{
    if (why == MICA_EINVAL)
        return mica_http_resp_error(resp, 400, "malformed " MICA_HTTP_TIMEOUT_HEADER);
    return mica__refuse(req, resp, 504, MICA_GRPC_DEADLINE_EXCEEDED, expired_msg, -1);
}

static const mica_http_gate_ops_t gate_ops = {gate_admit, gate_refuse, NULL};

static bool past(mica_http_req_t *req)
{
    int64_t d = mica_http_req_deadline(req);
    if (d == MICA_NO_DEADLINE || mica_now_ms() < d)
        return false;
    mica__add(&stripes[mica__stripe()].expired, 1);
    return true;
}

static int deadline_mw(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next,
                       void *arg)
{
    if (past(req))
        return mica__refuse(req, resp, 504, MICA_GRPC_DEADLINE_EXCEEDED, expired_msg, -1);
    return mica_http_next(next);
}

static int deadline_ic(mica_grpc_call_t *call, const ProtobufCMessage *in, mica_grpc_next_t *next,
                       void *arg)
{
    if (past(mica_grpc_call_req(call)))
        return mica_grpc_status(call, MICA_GRPC_DEADLINE_EXCEEDED, "%s", expired_msg);
    return mica_grpc_next(next, in);
}

int mica_deadline_http(mica_http_server_t *srv)
{
    if (!srv)
        return MICA_EINVAL;
    int rc = mica_http_gate(srv, &gate_ops, NULL);
    return rc ? rc : mica_http_use(srv, deadline_mw, NULL);
}

int mica_deadline_grpc(mica_grpc_server_t *gs)
{
    return gs ? mica_grpc_use(gs, deadline_ic, NULL) : MICA_EINVAL;
}

void mica_deadline_stats(mica_deadline_stats_t *st)
{
    *st = (mica_deadline_stats_t){0};
    for (int i = 0; i < MICA__STRIPES; i++) {
        st->propagated += mica__get(&stripes[i].propagated);
        st->expired += mica__get(&stripes[i].expired);
        st->malformed += mica__get(&stripes[i].malformed);
    }
}

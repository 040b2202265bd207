/* SPDX-License-Identifier: MIT */
/*
 * Rate limiters at the server's edge: an HTTP middleware and a gRPC server
 * interceptor that key a request by its class (client IP, principal, route,
 * or one global budget) and refuse what does not fit -- 429 with
 * Retry-After, or a gRPC RESOURCE_EXHAUSTED status whose message says when
 * to retry (the middleware, which writes the response itself, also sends
 * grpc-retry-pushback-ms; an interceptor may not set grpc-* trailers). Classes never share a budget (the class seeds the
 * key's hash), so one limiter may serve several rules.
 *
 * Also here: answering a refused request in its own protocol (gRPC calls
 * get a trailers-only gRPC status, since a gRPC client reads an HTTP 429 or
 * 503 as UNAVAILABLE and loses the message), which the shedder and the
 * deadline checks share.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "resilience/limit_internal.h"

/* ---- refusing in the request's protocol ------------------------------------------------ */

bool mica__is_grpc(mica_http_req_t *req)
{
    if (mica_http_req_version(req) != 20)
        return false;
    const char *ct = mica_http_req_header(req, "content-type");
    return ct && strncmp(ct, "application/grpc", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == '+' || ct[16] == ';');
}

int mica__refuse(mica_http_req_t *req, mica_http_resp_t *resp, int http_status, int grpc_code,
                 const char *msg, int64_t pushback_ms)
{
    if (!mica__is_grpc(req))
        return mica_http_resp_error(resp, http_status, msg);
    char code[4], pb[24];
    snprintf(code, sizeof(code), "%d", grpc_code);
    int rc = mica_http_resp_start(resp, 200, "application/grpc");
    if (rc == 0)
        rc = mica_http_resp_trailer(resp, "grpc-status", code);
    if (rc == 0) /* our messages are plain ASCII without '%': already percent-encoded */
        rc = mica_http_resp_trailer(resp, "grpc-message", msg);
    if (rc == 0 && pushback_ms >= 0) {
        snprintf(pb, sizeof(pb), "%lld", (long long)pushback_ms);
        rc = mica_http_resp_trailer(resp, "grpc-retry-pushback-ms", pb);
    }
    return rc == 0 ? mica_http_resp_end(resp) : rc;
}

/* ---- rules -------------------------------------------------------------------------------- */

typedef struct rule {
    mica_limiter_t *l;
    mica_limit_by_t by;
    const void *principal_key;
} rule_t;

static const char *const class_name[MICA_LIMIT_BY_COUNT] = {"global", "ip", "principal", "route"};

/* The key of a request of `r`'s class; *cls is the class that decides (principal -> ip). */
static const char *key_of(const rule_t *r, mica_http_req_t *req, const char *route, int *cls)
{
    *cls = r->by;
    switch (r->by) {
    case MICA_LIMIT_BY_PRINCIPAL: {
        const char *p = mica_http_req_value(req, r->principal_key);
        if (p)
            return p;
        *cls = MICA_LIMIT_BY_IP; /* no principal (not signed in): the client's address */
        return mica_http_req_peer_addr(req);
    }
    case MICA_LIMIT_BY_IP:
        return mica_http_req_peer_addr(req);
    case MICA_LIMIT_BY_ROUTE:
        return route ? route : "";
    default:
        return "";
    }
}

/* Decides one request; on refusal fills `msg` and *retry_ms. */
static int decide(const rule_t *r, mica_http_req_t *req, const char *route, char *msg,
                  size_t size, int64_t *retry_ms)
{
    int cls;
    const char *key = key_of(r, req, route, &cls);
    int64_t retry_us = 0;
    int rc = mica__limiter_take_class(r->l, cls, key, strlen(key), 1, &retry_us);
    if (rc == 0)
        return 0;
    mica__limiter_count_rule(r->l, cls);
    *retry_ms = (retry_us + 999) / 1000;
    snprintf(msg, size, "rate limit exceeded (per %s): retry in %lld ms", class_name[cls],
             (long long)*retry_ms);
    return rc;
}

static int limit_mw(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next,
                    void *arg)
{
    char msg[96];
    int64_t retry_ms;
    if (decide(arg, req, mica_http_req_route(req), msg, sizeof(msg), &retry_ms) == 0)
        return mica_http_next(next);
    if (!mica__is_grpc(req)) {
        char secs[24]; /* RFC 9110 §10.2.3: whole seconds; rounded up, at least 1 */
        int64_t s = (retry_ms + 999) / 1000;
        snprintf(secs, sizeof(secs), "%lld", (long long)(s > 0 ? s : 1));
        mica_http_resp_header(resp, "Retry-After", secs);
    }
    return mica__refuse(req, resp, 429, MICA_GRPC_RESOURCE_EXHAUSTED, msg, retry_ms);
}

static int limit_ic(mica_grpc_call_t *call, const ProtobufCMessage *in, mica_grpc_next_t *next,
                    void *arg)
{
    char msg[96];
    int64_t retry_ms;
    if (decide(arg, mica_grpc_call_req(call), mica_grpc_call_method(call), msg, sizeof(msg),
               &retry_ms) == 0)
        return mica_grpc_next(next, in);
    /* grpc-* trailers are the gRPC server's own: the wait goes in the message only. */
    return mica_grpc_status(call, MICA_GRPC_RESOURCE_EXHAUSTED, "%s", msg);
}

static rule_t *new_rule(mica_limiter_t *l, mica_limit_by_t by, const void *principal_key, int *err)
{
    *err = MICA_EINVAL;
    if (!l || (unsigned)by >= MICA_LIMIT_BY_COUNT || (by == MICA_LIMIT_BY_PRINCIPAL && !principal_key))
        return NULL;
    rule_t *r = mica__limiter_rule_slot(l, sizeof(*r), err);
    if (r)
        *r = (rule_t){l, by, principal_key};
    return r;
}

int mica_limit_http(mica_http_server_t *srv, mica_limiter_t *l, mica_limit_by_t by,
                    const void *principal_key)
{
    int rc;
    rule_t *r = new_rule(l, by, principal_key, &rc);
    return r && srv ? mica_http_use(srv, limit_mw, r) : rc;
}

int mica_limit_grpc(mica_grpc_server_t *gs, mica_limiter_t *l, mica_limit_by_t by,
                    const void *principal_key)
{
    int rc;
    rule_t *r = new_rule(l, by, principal_key, &rc);
    return r && gs ? mica_grpc_use(gs, limit_ic, r) : rc;
}

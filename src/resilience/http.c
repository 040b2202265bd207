/* SPDX-License-Identifier: MIT */
/*
 * The HTTP adapter: one interceptor of the HTTP client (include/mica/
 * http_client.h) that runs a call through the policy set, as grpc.c does
 * for gRPC: the client's breaker, then retries (gRFC A6's backoff) within
 * the retry budget.
 *
 * What may be repeated is HTTP's rule: a request whose method is idempotent
 * (RFC 9110 9.2.2), or one the caller flagged MICA_CALL_IDEMPOTENT, and only
 * when its body can be sent again (a body in one buffer; a body_fn is read
 * once). An attempt is retried when it got no response (refused, reset,
 * timed out per try) or a 502, 503 or 504; a 503 or 429's Retry-After (in
 * seconds) is the server's pushback. A failed attempt's response is freed
 * before the next one. mica_http_client_open() calls are retried the same
 * way: a failed open returned no response, so nothing was handed out.
 *
 * Every call of the client shares one breaker (one downstream service);
 * its key is opts->breaker_key, "http" by default. Failures for it: no
 * response, or a 5xx.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resilience/internal.h"

/* A Retry-After of delay-seconds on a 429 or 503, in ms; MICA_RETRY_NO_PUSHBACK otherwise. */
static int64_t pushback(const mica_http_response_t *r)
{
    int st = r ? mica_http_response_status(r) : 0;
    const char *v = (st == 503 || st == 429) ? mica_http_response_header(r, "retry-after") : NULL;
    if (!v || *v < '0' || *v > '9')
        return MICA_RETRY_NO_PUSHBACK;
    char *end;
    long s = strtol(v, &end, 10);
    if (*end != '\0' || s < 0 || s > 3600)
        return MICA_RETRY_NO_PUSHBACK; /* an HTTP-date, or nonsense: ignored */
    return (int64_t)s * 1000;
}

static int intercept(mica_http_call_info_t *call, mica_http_client_next_fn next, void *arg)
{
    mica_resilience_t *r = arg;
    mica__res_worker_t *w = mica__res_worker(r);
    if (!w)
        return next(call);
    mica__ctr_add(&w->calls, 1);
    uint32_t flags = call->opts.flags;
    const mica_call_policy_t *cp = flags & MICA_CALL_POLICY ? call->opts.policy : NULL;
    mica_breaker_t *br = mica__res_breaker(r, w, r->http_key, r->http_key);
    if (br && mica_breaker_allow(br, mica_now_ms()) != 0) {
        mica__ctr_add(&w->rejected, 1);
        call->res->error = MICA_EUNAVAILABLE;
        return MICA_EUNAVAILABLE;
    }
    const mica_http_request_t *req = call->req;
    bool may_retry = !(flags & MICA_CALL_NO_RETRY) && !req->body_fn &&
                     (mica_resilience_http_idempotent(req->method ? req->method : "GET") ||
                      (flags & MICA_CALL_IDEMPOTENT));
    const mica_retry_policy_t *policy = cp && cp->retry ? cp->retry : &r->o.retry;
    int64_t overall = mica__res_call_deadline(call->ctx, call->opts.deadline_ms),
            saved = call->opts.deadline_ms;
    mica_retry_t rt;
    mica_retry_begin(&rt, policy, overall);
    if (w->budget)
        mica_budget_call_begin(w->budget);
    int rc;
    for (;;) {
        int64_t now = mica_now_ms(), d = mica_retry_attempt_deadline(&rt, now);
        call->opts.deadline_ms = d == MICA_NO_DEADLINE ? 0 : d;
        rc = next(call);
        int status = rc == 0 ? mica_http_response_status(*call->resp) : 0;
        if (br)
            mica_breaker_record(br, mica_now_ms(), now,
                                rc != 0 || mica_resilience_http_failure(status));
        if (mica_retry_attempts(&rt) > 1 && w->budget)
            mica_budget_retry_end(w->budget);
        if (!may_retry || (rc == 0 && !mica_resilience_http_retryable(status)))
            break;
        if (rc == MICA_EINVAL || rc == MICA_ELIMIT || rc == MICA_ENOMEM || rc == MICA_ECANCELED)
            break; /* the request's own fault, or the caller's: another try changes nothing */
        now = mica_now_ms();
        /* A per-try timeout that ran out is retried while the call has time. */
        bool retryable = rc != MICA_ETIMEDOUT || (d < overall && now < overall);
        int64_t pb = rc == 0 ? pushback(*call->resp) : MICA_RETRY_NO_PUSHBACK, delay;
        if (pb != MICA_RETRY_NO_PUSHBACK)
            mica__ctr_add(&w->pushbacks, 1);
        if (mica_retry_next(&rt, now, retryable, pb, &delay) != 0)
            break;
        if (w->budget && mica_budget_retry_begin(w->budget) != 0)
            break;
        if (mica__res_backoff(call->ctx, delay) != 0 ||
            (br && mica_breaker_allow(br, mica_now_ms()) != 0)) {
            if (w->budget)
                mica_budget_retry_end(w->budget);
            break;
        }
        mica__ctr_add(&w->retries, 1);
        if (rc == 0) { /* the answer we drop for another try */
            mica_http_response_free(*call->resp);
            *call->resp = NULL;
        }
    }
    if (w->budget)
        mica_budget_call_end(w->budget);
    call->opts.deadline_ms = saved;
    return rc;
}

int mica_resilience_http_attach(mica_resilience_t *r, mica_http_client_t *c,
                                const mica_resilience_http_opts_t *opts)
{
    if (!r || !c)
        return MICA_EINVAL;
    if (r->attached)
        return MICA_EBUSY;
    const char *key = opts && opts->breaker_key && *opts->breaker_key ? opts->breaker_key : "http";
    snprintf(r->http_key, sizeof(r->http_key), "%s", key);
    int rc = mica_http_client_intercept(c, intercept, r);
    if (rc == 0)
        r->attached = true;
    return rc;
}

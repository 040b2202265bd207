/* SPDX-License-Identifier: MIT */
/*
 * The gRPC adapter: one client interceptor that runs a call through the
 * policy set -- the method's breaker, then retries (gRFC A6) within the
 * retry budget, or hedging -- using only the interceptor seam of
 * include/mica/grpc.h. The policies themselves know nothing of gRPC; this
 * file maps status codes onto "failure" and "retryable".
 *
 * Unary calls: each attempt is one next(call). A retry reuses the call
 * info with a per-attempt deadline (opts.deadline_ms) and waits the
 * backoff or the server's pushback on the call's ctx. Hedged attempts run
 * concurrently, each in a coroutine of its own with a copy of the call info
 * (so each walks the interceptors below with its own position), its own
 * child ctx, result and response; the first OK or fatal answer wins, the
 * others are cancelled through their ctx, and the interceptor returns only
 * once every attempt has ended (they point into its stack).
 *
 * Streaming calls: next() only opens the stream; what follows (messages,
 * the end) belongs to the caller, so only a failed open is retried (nothing
 * was sent: safe even for a call that is not idempotent) -- never a stream
 * after its response headers, as A6 requires; and the breaker hears of the
 * stream's end through mica_grpc_stream_on_finish().
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "resilience/internal.h"

#define MAX_HEDGE 5

static bool has(uint32_t mask, int code)
{
    return code >= 0 && code < 32 && (mask >> code & 1);
}

static void record(mica_breaker_t *br, int64_t started_ms, bool failure)
{
    if (br)
        mica_breaker_record(br, mica_now_ms(), started_ms, failure);
}

/* ---- unary calls with retries -------------------------------------------------------- */

static int retried(mica_resilience_t *r, mica__res_worker_t *w, mica_breaker_t *br,
                   mica_grpc_call_info_t *call, mica_grpc_next_fn next,
                   const mica_retry_policy_t *policy, bool may_retry)
{
    const mica_resilience_grpc_opts_t *g = &r->g;
    int64_t overall = mica__res_call_deadline(call->ctx, call->opts.deadline_ms),
            saved = call->opts.deadline_ms;
    mica_retry_t rt;
    mica_retry_begin(&rt, policy, overall);
    int code;
    for (;;) {
        int64_t now = mica_now_ms(), d = mica_retry_attempt_deadline(&rt, now);
        call->opts.deadline_ms = d == MICA_NO_DEADLINE ? 0 : d;
        call->res->retry_pushback_ms = MICA_RETRY_NO_PUSHBACK;
        code = next(call);
        record(br, now, has(g->failure_codes, code));
        if (mica_retry_attempts(&rt) > 1 && w->budget)
            mica_budget_retry_end(w->budget);
        if (code == MICA_GRPC_OK || !may_retry)
            break;
        now = mica_now_ms();
        /* A per-try timeout that ran out is retried while the call has time. */
        bool retryable = has(g->retry_codes, code) ||
                         (code == MICA_GRPC_DEADLINE_EXCEEDED && d < overall && now < overall);
        int64_t pb = call->res->retry_pushback_ms, delay;
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
        if (*call->resp) { /* not after a failure, but keep next()'s contract */
            protobuf_c_message_free_unpacked(*call->resp, NULL);
            *call->resp = NULL;
        }
    }
    call->opts.deadline_ms = saved;
    return code;
}

/* ---- unary calls, hedged ------------------------------------------------------------- */

typedef struct hedge hedge_t;

typedef struct attempt {
    hedge_t *h;
    mica_grpc_call_info_t info;
    ProtobufCMessage *resp;
    mica_grpc_result_t res;
    mica_ctx_t *ctx;
    int code;
    int64_t started_ms;
    bool done, seen, budgeted;
} attempt_t;

struct hedge {
    mica_resilience_t *r;
    mica__res_worker_t *w;
    mica_breaker_t *br;
    mica_grpc_next_fn next;
    mica_event_t ev;
    int running;
    bool cancelling;
    attempt_t att[MAX_HEDGE];
};

static void attempt_main(void *arg)
{
    attempt_t *a = arg;
    hedge_t *h = a->h;
    a->code = h->next(&a->info);
    /* Losers we cancelled say nothing about the backend. */
    if (!(h->cancelling && a->code == MICA_GRPC_CANCELLED))
        record(h->br, a->started_ms, has(h->r->g.failure_codes, a->code));
    if (a->budgeted)
        mica_budget_retry_end(h->w->budget);
    a->done = true;
    h->running--;
    mica_event_set(&h->ev);
}

static int launch(hedge_t *h, mica_grpc_call_info_t *call, int i)
{
    attempt_t *a = &h->att[i];
    *a = (attempt_t){.h = h, .info = *call, .code = -1};
    a->res.retry_pushback_ms = MICA_RETRY_NO_PUSHBACK;
    int rc = mica_ctx_with_cancel(call->ctx, &a->ctx);
    if (rc != 0)
        return rc;
    a->info.ctx = a->ctx;
    a->info.resp = &a->resp;
    a->info.res = &a->res;
    a->started_ms = mica_now_ms();
    if ((rc = mica_go(attempt_main, a)) != 0) {
        mica_ctx_free(a->ctx);
        a->ctx = NULL;
        return rc;
    }
    h->running++;
    return 0;
}

static int hedged(mica_resilience_t *r, mica__res_worker_t *w, mica_breaker_t *br,
                  mica_grpc_call_info_t *call, mica_grpc_next_fn next,
                  const mica_hedge_policy_t *policy)
{
    hedge_t h = {.r = r, .w = w, .br = br, .next = next, .ev = MICA_EVENT_INIT};
    int max = policy->max_attempts > MAX_HEDGE ? MAX_HEDGE : policy->max_attempts;
    uint32_t non_fatal =
        policy->non_fatal_codes ? policy->non_fatal_codes : 1u << MICA_GRPC_UNAVAILABLE;
    if (launch(&h, call, 0) != 0) { /* no coroutine to spare: one plain attempt */
        int64_t t0 = mica_now_ms();
        int code = next(call);
        record(br, t0, has(r->g.failure_codes, code));
        return code;
    }
    int n = 1, winner = -1, last = -1;
    bool more = max > 1;
    int64_t next_at = mica_now_ms() + policy->delay_ms;
    while (winner < 0) {
        mica_event_reset(&h.ev);
        for (int i = 0; i < n && winner < 0; i++) {
            attempt_t *a = &h.att[i];
            if (!a->done || a->seen)
                continue;
            a->seen = true;
            last = i;
            if (a->code == MICA_GRPC_OK || !has(non_fatal, a->code)) {
                winner = i; /* an answer, or a fatal failure: commit to it */
                break;
            }
            /* Non-fatal: the next attempt goes now, or after the server's pushback. */
            int64_t pb = a->res.retry_pushback_ms;
            if (pb != MICA_RETRY_NO_PUSHBACK)
                mica__ctr_add(&w->pushbacks, 1);
            if (pb == MICA_RETRY_PUSHBACK_STOP)
                more = false;
            else
                next_at = pb >= 0 ? mica_now_ms() + pb : mica_now_ms();
        }
        if (winner >= 0)
            break;
        int64_t deadline = mica__res_call_deadline(call->ctx, call->opts.deadline_ms);
        if (more && (n >= max || next_at >= deadline))
            more = false;
        if (!h.running && !more) {
            winner = last;
            break;
        }
        if (more && mica_now_ms() >= next_at) {
            if (w->budget && mica_budget_retry_begin(w->budget) != 0) {
                more = false;
                continue;
            }
            if ((br && mica_breaker_allow(br, mica_now_ms()) != 0) || launch(&h, call, n) != 0) {
                if (w->budget)
                    mica_budget_retry_end(w->budget);
                more = false;
                continue;
            }
            h.att[n].budgeted = w->budget != NULL;
            n++;
            mica__ctr_add(&w->hedges, 1);
            next_at = mica_now_ms() + policy->delay_ms;
            continue;
        }
        int rc = mica_event_wait(&h.ev, NULL, more ? next_at : MICA_NO_DEADLINE);
        if (rc != 0 && rc != MICA_ETIMEDOUT)
            mica_yield(); /* the worker is draining: the attempts end by themselves */
    }
    /* Cancel the others and wait for every attempt: they live in our frame. */
    h.cancelling = true;
    for (int i = 0; i < n; i++)
        if (i != winner && !h.att[i].done)
            mica_ctx_cancel(h.att[i].ctx);
    while (h.running) {
        mica_event_reset(&h.ev);
        if (h.running && mica_event_wait(&h.ev, NULL, mica_deadline_in(1000)) == MICA_ECANCELED)
            mica_yield();
    }
    for (int i = 0; i < n; i++) {
        attempt_t *a = &h.att[i];
        if (i == winner) {
            *call->resp = a->resp;
            *call->res = a->res;
        } else if (a->resp) {
            protobuf_c_message_free_unpacked(a->resp, NULL);
        }
        mica_ctx_free(a->ctx);
    }
    if (winner > 0)
        mica__ctr_add(&w->hedge_wins, 1);
    return h.att[winner].code;
}

/* ---- streaming calls ----------------------------------------------------------------- */

typedef struct stream_watch {
    mica_breaker_t *br;
    uint32_t failure_codes;
    int64_t started_ms;
} stream_watch_t;

static void stream_end(const mica_grpc_result_t *res, void *arg)
{
    stream_watch_t *sw = arg;
    /* A stream's length says nothing of the backend's speed: never "slow". */
    int64_t now = mica_now_ms();
    mica_breaker_record(sw->br, now, now, has(sw->failure_codes, res->code));
    mica__free(sw);
}

static int streamed(mica_resilience_t *r, mica__res_worker_t *w, mica_breaker_t *br,
                    mica_grpc_call_info_t *call, mica_grpc_next_fn next,
                    const mica_retry_policy_t *policy)
{
    mica_retry_t rt;
    mica_retry_begin(&rt, policy, mica__res_call_deadline(call->ctx, call->opts.deadline_ms));
    int code;
    for (;;) {
        code = next(call);
        if (code == MICA_GRPC_OK && call->stream) {
            stream_watch_t *sw = br ? mica__malloc(sizeof(*sw)) : NULL;
            if (sw) {
                *sw = (stream_watch_t){br, r->g.failure_codes, mica_now_ms()};
                if (mica_grpc_stream_on_finish(call->stream, stream_end, sw) != 0)
                    mica__free(sw);
            }
        } else {
            record(br, mica_now_ms(), has(r->g.failure_codes, code));
        }
        if (mica_retry_attempts(&rt) > 1 && w->budget)
            mica_budget_retry_end(w->budget);
        if (code == MICA_GRPC_OK)
            break;
        int64_t delay;
        if (mica_retry_next(&rt, mica_now_ms(), has(r->g.retry_codes, code), MICA_RETRY_NO_PUSHBACK,
                            &delay) != 0)
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
        call->_err = 0;
    }
    return code;
}

/* ---- the interceptor ------------------------------------------------------------------ */

/* A refused or failed call: the fallback's answer, or `code` with `msg`. */
static int give_up(mica_resilience_t *r, mica__res_worker_t *w, mica_grpc_call_info_t *call,
                   int code, const char *msg)
{
    if (r->g.fallback && !call->streaming) {
        mica__ctr_add(&w->fallbacks, 1);
        return r->g.fallback(call, code, r->g.fallback_arg);
    }
    if (msg) {
        call->res->code = code;
        snprintf(call->res->message, sizeof(call->res->message), "%s", msg);
        call->res->retry_pushback_ms = MICA_RETRY_NO_PUSHBACK;
    }
    return code;
}

static int intercept(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    mica_resilience_t *r = arg;
    mica__res_worker_t *w = mica__res_worker(r);
    if (!w)
        return next(call);
    mica__ctr_add(&w->calls, 1);
    uint32_t flags = call->opts.flags;
    const void *saved_policy = call->opts.policy;
    const mica_call_policy_t *cp = flags & MICA_CALL_POLICY ? call->opts.policy : NULL;

    /* The ring-hash key from metadata, for the balancer below. */
    mica_call_policy_t keyed;
    if (r->g.hash_metadata && !(cp && cp->hash_key)) {
        for (size_t i = 0; i < call->opts.nmd; i++)
            if (strcmp(call->opts.md[i].key, r->g.hash_metadata) == 0) {
                keyed = cp ? *cp : (mica_call_policy_t){0};
                keyed.hash_key = call->opts.md[i].value;
                keyed.hash_key_len = 0;
                call->opts.policy = cp = &keyed;
                call->opts.flags |= MICA_CALL_POLICY;
                break;
            }
    }

    mica_breaker_t *br = mica__res_breaker(r, w, call->method, call->path);
    int code;
    if (br && mica_breaker_allow(br, mica_now_ms()) != 0) {
        mica__ctr_add(&w->rejected, 1);
        call->_err = MICA_EUNAVAILABLE;
        code = give_up(r, w, call, MICA_GRPC_UNAVAILABLE, "circuit breaker is open");
    } else {
        bool may_retry = !(flags & MICA_CALL_NO_RETRY) &&
                         (!r->g.idempotent_only || (flags & MICA_CALL_IDEMPOTENT));
        const mica_retry_policy_t *rp = cp && cp->retry ? cp->retry : &r->o.retry;
        const mica_hedge_policy_t *hp = cp && cp->hedge ? cp->hedge : &r->o.hedge;
        if (w->budget)
            mica_budget_call_begin(w->budget);
        if (call->streaming)
            code = streamed(r, w, br, call, next, rp); /* only opens: nothing sent yet */
        else if (may_retry && hp->max_attempts >= 2)
            code = hedged(r, w, br, call, next, hp);
        else
            code = retried(r, w, br, call, next, rp, may_retry);
        if (w->budget)
            mica_budget_call_end(w->budget);
        if (code != MICA_GRPC_OK && has(r->g.failure_codes, code))
            code = give_up(r, w, call, code, NULL);
    }
    call->opts.flags = flags;
    call->opts.policy = saved_policy;
    return code;
}

int mica_resilience_grpc_attach(mica_resilience_t *r, mica_grpc_client_t *c,
                                const mica_resilience_grpc_opts_t *opts)
{
    if (!r || !c)
        return MICA_EINVAL;
    if (r->attached)
        return MICA_EBUSY;
    mica_resilience_grpc_opts_t g = opts ? *opts : (mica_resilience_grpc_opts_t){0};
    if (!g.failure_codes)
        g.failure_codes = MICA_RESILIENCE_GRPC_FAILURES;
    if (!g.retry_codes)
        g.retry_codes = 1u << MICA_GRPC_UNAVAILABLE;
    r->g = g;
    int rc = mica_grpc_client_intercept(c, intercept, r);
    if (rc == 0)
        r->attached = true;
    return rc;
}

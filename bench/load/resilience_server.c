/* SPDX-License-Identifier: MIT */
/*
 * The resilience layer on the wire, for tests/integration/test_limits.py
 * and bench/load/shed.sh (built in every build: <build>/bench/resilience_server).
 * One process, four HTTP servers on 127.0.0.1 ports it prints on stdout as
 * one JSON line {"l1000":P,"l15000":P,"main":P,"admin":P}:
 *
 * - l1000, l15000: GET /r -> "ok", limited to 1000/s and 15000/s per client
 *   IP by the algorithm named by --algo=bucket|gcra|window (default gcra).
 * - main: adaptive shedding (the default settings and MICA_SHED*),
 *   deadlines (X-Request-Timeout, grpc-timeout), and
 *     GET /work?us=N  burns N microseconds of the worker's CPU, then "ok";
 *     GET /chain      calls Chain/Relay (bench/load/hop.proto) on --next
 *                     under the request's ctx, answers its message;
 *     Chain/Relay     with --next: waits --hop-ms, then relays; without:
 *                     answers "left=<ms>", the budget it was given.
 * - admin (no limits, no shedding): GET /stats, the limiters', shedder's and
 *   deadlines' counters (the limiters' also at their latest refusal), the
 *   monotonic clock, and the server-side latency
 *   of main's 200 answers to /work (p50, p99: from the head's arrival to the
 *   response queued, by a completion observer); /stats?reset=1 restarts it.
 *
 * MICA_WORKERS sets the workers; SIGTERM drains.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hop.pb-c.h"
#include "mica/grpc.h"
#include "mica/limit.h"

typedef Mica__Bench__Hop hop_t;
static const ProtobufCServiceDescriptor *chain_svc = &mica__bench__chain__descriptor;

static mica_limiter_t *lim1000, *lim15000;
static mica_shed_t *shed;
static mica_grpc_client_t *next_hop;
static int hop_ms = 50;

static int64_t mono_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * The limiters' counters at their latest refusal. A refusal means the budget
 * was spent at that instant, so between two of these, admitted / elapsed is
 * the limiter's rate exactly -- whatever stalls of the machine left budget
 * unspent at other moments (what a snapshot at an arbitrary time would see).
 */
struct at_refusal {
    atomic_flag busy; /* one writer at a time; a busy one skips (another records) */
    atomic_uint seq;  /* odd while written (a seqlock for the reader) */
    _Atomic int64_t us;
    _Atomic uint64_t admitted;
};
static struct at_refusal refusal[2]; /* l1000, l15000 */

static void note_refusal(const mica_http_completion_t *c, void *arg)
{
    struct at_refusal *r = &refusal[arg == lim1000 ? 0 : 1];
    if (c->status != 429 || atomic_flag_test_and_set(&r->busy))
        return;
    mica_limiter_stats_t st;
    mica_limiter_stats(arg, &st);
    atomic_fetch_add(&r->seq, 1);
    atomic_store(&r->us, mono_us(CLOCK_MONOTONIC));
    atomic_store(&r->admitted, st.admitted);
    atomic_fetch_add(&r->seq, 1);
    atomic_flag_clear(&r->busy);
}

static void read_refusal(int i, int64_t *us, uint64_t *admitted)
{
    struct at_refusal *r = &refusal[i];
    unsigned s0, s1;
    do {
        s0 = atomic_load(&r->seq);
        *us = atomic_load(&r->us);
        *admitted = atomic_load(&r->admitted);
        s1 = atomic_load(&r->seq);
    } while (s0 != s1 || (s0 & 1));
}

static int ok(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return mica_http_resp_text(resp, 200, "ok");
}

/* A handler of fixed CPU cost: spins on this thread's CPU clock. */
static int work(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const char *q = mica_http_req_query(req);
    long us = q && strncmp(q, "us=", 3) == 0 ? strtol(q + 3, NULL, 10) : 1000;
    int64_t end = mono_us(CLOCK_THREAD_CPUTIME_ID) + us;
    while (mono_us(CLOCK_THREAD_CPUTIME_ID) < end)
        ;
    return mica_http_resp_text(resp, 200, "ok");
}

/* Server-side latency of /work's 200s: 100 µs buckets to 100 ms, then 10 ms to 10 s. */
#define FINE 1000
#define COARSE 1000
static _Atomic uint64_t lat[FINE + COARSE + 1];

static void observe(const mica_http_completion_t *c, void *arg)
{
    if (c->status != 200 || !c->route || strcmp(c->route, "/work") != 0)
        return;
    int64_t us = c->duration_us;
    size_t i = us < 100000 ? (size_t)(us / 100) : FINE + (size_t)((us - 100000) / 10000);
    atomic_fetch_add_explicit(&lat[i < FINE + COARSE ? i : FINE + COARSE], 1,
                              memory_order_relaxed);
}

/* The q-th percentile of the latency histogram, in ms (-1: empty); its count in *n. */
static double percentile(int q, uint64_t *n)
{
    uint64_t total = 0, seen = 0;
    for (size_t i = 0; i <= FINE + COARSE; i++)
        total += atomic_load(&lat[i]);
    *n = total;
    for (size_t i = 0; total && i <= FINE + COARSE; i++) {
        seen += atomic_load(&lat[i]);
        if (seen * 100 >= total * (uint64_t)q) /* the bucket's upper edge */
            return i < FINE ? (double)(i + 1) / 10 : 100 + (double)(i - FINE + 1) * 10;
    }
    return -1;
}

static int stats(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    uint64_t n;
    double p50 = percentile(50, &n), p99 = percentile(99, &n);
    const char *q = mica_http_req_query(req);
    if (q && strcmp(q, "reset=1") == 0)
        for (size_t i = 0; i <= FINE + COARSE; i++)
            atomic_store(&lat[i], 0);
    mica_limiter_stats_t a, b;
    mica_shed_stats_t s;
    mica_deadline_stats_t d;
    mica_limiter_stats(lim1000, &a);
    mica_limiter_stats(lim15000, &b);
    mica_shed_stats(shed, &s);
    mica_deadline_stats(&d);
    int64_t r0_us, r1_us;
    uint64_t r0_n, r1_n;
    read_refusal(0, &r0_us, &r0_n);
    read_refusal(1, &r1_us, &r1_n);
    char body[1280];
    snprintf(body, sizeof(body),
             "{\"now_us\":%lld,\"work\":{\"count\":%llu,\"p50_ms\":%.1f,\"p99_ms\":%.1f},"
             "\"l1000\":{\"admitted\":%llu,\"limited\":%llu,"
             "\"at_refusal\":{\"us\":%lld,\"admitted\":%llu}},"
             "\"l15000\":{\"admitted\":%llu,\"limited\":%llu,"
             "\"at_refusal\":{\"us\":%lld,\"admitted\":%llu}},"
             "\"shed\":{\"admitted\":%llu,\"shed\":%llu,\"episodes\":%llu,\"inflight\":%llu,"
             "\"limit\":%llu,\"cpu_pct\":%d,\"min_rt_us\":%lld,\"max_pass\":%llu,"
             "\"shedding\":%s},"
             "\"deadline\":{\"propagated\":%llu,\"expired\":%llu,\"malformed\":%llu}}",
             (long long)mono_us(CLOCK_MONOTONIC), (unsigned long long)n, p50, p99,
             (unsigned long long)a.admitted, (unsigned long long)a.limited, (long long)r0_us,
             (unsigned long long)r0_n, (unsigned long long)b.admitted,
             (unsigned long long)b.limited, (long long)r1_us, (unsigned long long)r1_n,
             (unsigned long long)s.admitted,
             (unsigned long long)s.shed, (unsigned long long)s.episodes,
             (unsigned long long)s.inflight, (unsigned long long)s.limit, s.cpu_pct,
             (long long)s.min_rt_us, (unsigned long long)s.max_pass,
             s.shedding ? "true" : "false", (unsigned long long)d.propagated,
             (unsigned long long)d.expired, (unsigned long long)d.malformed);
    return mica_http_resp_json_str(resp, 200, body);
}

/* Calls the next hop under `ctx`; its message (or the status) into msg. */
static int forward(mica_ctx_t *ctx, char *msg, size_t size)
{
    hop_t req = MICA__BENCH__HOP__INIT;
    req.message = "relay";
    ProtobufCMessage *out = NULL;
    mica_grpc_result_t res;
    int code = mica_grpc_unary(next_hop, ctx, chain_svc, "Relay", NULL, &req.base, &out, &res);
    snprintf(msg, size, "%s", code == MICA_GRPC_OK ? ((hop_t *)out)->message : res.message);
    protobuf_c_message_free_unpacked(out, NULL);
    return code;
}

static int chain(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    if (!next_hop)
        return MICA_ENOTFOUND;
    char msg[128];
    int code = forward(mica_http_req_ctx(req), msg, sizeof(msg));
    if (code != MICA_GRPC_OK)
        return mica_http_resp_error(resp, 504, msg);
    return mica_http_resp_text(resp, 200, msg);
}

static int relay(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    mica_ctx_t *ctx = mica_grpc_call_ctx(call);
    char msg[128];
    if (next_hop) {
        int rc = mica_ctx_sleep(ctx, hop_ms);
        if (rc != 0)
            return rc;
        int code = forward(ctx, msg, sizeof(msg));
        if (code != MICA_GRPC_OK)
            return mica_grpc_status(call, code, "%s", msg);
    } else {
        int64_t d = mica_ctx_deadline(ctx);
        snprintf(msg, sizeof(msg), "left=%lld",
                 (long long)(d == MICA_NO_DEADLINE ? -1 : d - mica_now_ms()));
    }
    hop_t out = MICA__BENCH__HOP__INIT;
    out.message = msg;
    return mica_grpc_send(call, &out.base);
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "resilience_server: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

static int limited(mica_runtime_t *rt, mica_http_server_t **srv, mica_limiter_t *l)
{
    int rc;
    if ((rc = mica_http_server_new(srv, NULL)) != 0 ||
        (rc = mica_limit_http(*srv, l, MICA_LIMIT_BY_IP, NULL)) != 0 ||
        (rc = mica_http_observe(*srv, note_refusal, l)) != 0 ||
        (rc = mica_http_route(*srv, "GET", "/r", ok, NULL)) != 0 ||
        (rc = mica_http_server_listen(*srv, "127.0.0.1:0")) != 0)
        return rc;
    return mica_http_server_attach(*srv, rt);
}

int main(int argc, char **argv)
{
    mica_limit_algo_t algo = MICA_LIMIT_GCRA;
    const char *next = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--algo=bucket"))
            algo = MICA_LIMIT_TOKEN_BUCKET;
        else if (!strcmp(argv[i], "--algo=window"))
            algo = MICA_LIMIT_SLIDING_WINDOW;
        else if (!strcmp(argv[i], "--algo=gcra"))
            algo = MICA_LIMIT_GCRA;
        else if (!strncmp(argv[i], "--next=", 7))
            next = argv[i] + 7;
        else if (!strncmp(argv[i], "--hop-ms=", 9))
            hop_ms = (int)strtol(argv[i] + 9, NULL, 10);
        else
            return fprintf(stderr, "usage: %s [--algo=bucket|gcra|window] [--next=ADDR] "
                                   "[--hop-ms=N]\n", argv[0]), 2;
    }
    mica_runtime_t *rt;
    int rc = mica_runtime_new(&rt, NULL);
    if (rc != 0)
        return fail("runtime", rc);
    mica_shed_opts_t so = {0};
    if ((rc = mica_shed_opts_from_env(&so)) != 0 || (rc = mica_shed_new(&shed, &so)) != 0)
        return fail("shedding settings", rc);
    if ((rc = mica_limiter_new(&lim1000, &(mica_limiter_opts_t){.algo = algo, .rate = 1000})) ||
        (rc = mica_limiter_new(&lim15000, &(mica_limiter_opts_t){.algo = algo, .rate = 15000})))
        return fail("limiters", rc);

    mica_http_server_t *l1, *l2, *srv;
    mica_grpc_server_t *gs;
    if ((rc = limited(rt, &l1, lim1000)) != 0 || (rc = limited(rt, &l2, lim15000)) != 0)
        return fail("limited servers", rc);
    if ((rc = mica_http_server_new(&srv, NULL)) != 0 ||
        (rc = mica_grpc_server_new(&gs, srv, NULL)) != 0 ||
        (rc = mica_shed_attach(shed, srv)) != 0 || /* the first gate: shedding costs least */
        (rc = mica_deadline_http(srv)) != 0 || (rc = mica_deadline_grpc(gs)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/work", work, NULL)) != 0 ||
        (rc = mica_http_observe(srv, observe, NULL)) != 0 ||
        (rc = mica_http_route(srv, "GET", "/chain", chain, NULL)) != 0 ||
        (rc = mica_grpc_register(gs, chain_svc, "Relay", MICA_GRPC_UNARY, relay, NULL)) != 0 ||
        (rc = mica_http_server_listen(srv, "127.0.0.1:0")) != 0 ||
        (rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("main server", rc);
    mica_http_server_t *admin;
    if ((rc = mica_http_server_new(&admin, NULL)) != 0 ||
        (rc = mica_http_route(admin, "GET", "/stats", stats, NULL)) != 0 ||
        (rc = mica_http_server_listen(admin, "127.0.0.1:0")) != 0 ||
        (rc = mica_http_server_attach(admin, rt)) != 0)
        return fail("admin server", rc);
    if (next && (rc = mica_grpc_client_new(&next_hop, rt, next, NULL)) != 0)
        return fail("next hop", rc);
    printf("{\"l1000\":%d,\"l15000\":%d,\"main\":%d,\"admin\":%d}\n",
           mica_http_server_port(l1, 0), mica_http_server_port(l2, 0),
           mica_http_server_port(srv, 0), mica_http_server_port(admin, 0));
    fflush(stdout);

    rc = mica_runtime_run(rt);
    mica_grpc_client_free(next_hop);
    mica_grpc_server_free(gs);
    mica_http_server_free(srv);
    mica_http_server_free(admin);
    mica_http_server_free(l1);
    mica_http_server_free(l2);
    mica_runtime_free(rt);
    mica_shed_free(shed);
    mica_limiter_free(lim1000);
    mica_limiter_free(lim15000);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

/* SPDX-License-Identifier: MIT */
/*
 * The load generator of the resilience tests (tests/integration/
 * test_resilience.py) and of the client benchmark (docs/benchmarks.md): a
 * mica gRPC client calling Echo/Unary on a set of backends (fault_server or
 * the grpc-go fault server) under a chosen balancer and policy set, paced or
 * flat out, printing what happened as JSON lines on stdout.
 *
 * Every -interval ms: {"t":ms,"ok":N,"fail":N,"fast_fail":N,"by":[per backend],
 * "picks":[per endpoint],"ep_state":[...],"retries":N,...} (cumulative), and at
 * the end {"final":1,...,"p50_us":..,"p99_us":..,"cpu_s":..,"keys":[...]}.
 * A backend is known by the name it answers with ("b0", "b1", ...).
 *
 * Options (all "-name value"):
 *   -endpoints a:1,b:2=3   the backends (=W: a weight)      -lb rr|wrr|least|random|p2c|ring
 *   -ep-breaker sre|classic|none (per endpoint: none)        -breaker sre|classic|none (per method:
 * sre) -open-ms N (classic)   -retry N (max attempts: 3)        -budget 0|1 (1), -budget-min N (3)
 *   -per-try ms            -hedge-delay ms (0: no hedging)   -hedge-max N (2)
 *   -fallback 0|1          -idempotent 0|1                   -policies 0|1 (0: no interceptor)
 *   -conc N (16)           -rate calls/s (0: flat out)       -duration ms (3000)
 *   -deadline ms (1000)    -keys K (ring: keys sent as x-key) -drop-at ms:index
 *   -workers N (1)         -interval ms (100)
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "echo.pb-c.h"
#include "mica/balancer.h"
#include "mica/grpc.h"
#include "mica/resilience.h"
#include "mica/sync.h"

#define MAXB 8
#define MAXKEYS 4096

static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

static struct {
    char addrs[MAXB][64];
    uint32_t weights[MAXB];
    int n;
    const char *lb, *ep_breaker, *breaker;
    int64_t open_ms, per_try, hedge_delay, duration, deadline, interval, drop_at;
    int retry, budget, budget_min, hedge_max, fallback, idempotent, policies, conc, workers, keys,
        drop_idx;
    double rate;
} O = {.lb = "rr",
       .ep_breaker = "none",
       .breaker = "sre",
       .retry = 3,
       .budget = 1,
       .hedge_max = 2,
       .policies = 1,
       .conc = 16,
       .duration = 3000,
       .deadline = 1000,
       .interval = 100,
       .workers = 1,
       .drop_idx = -1};

static mica_runtime_t *rt;
static mica_grpc_client_t *client;
static mica_resilience_t *res;
static mica_balancer_t *lb;
static int64_t t_start;

static atomic_long ok, failed, fast_fail, fallbacks, by[MAXB + 1], codes[17];
static atomic_int done_coros;
static atomic_uint lat_n;
static uint32_t *lat; /* us, one per call */
static size_t lat_cap;
/* per key: the backend before the drop, after it, and how often it changed in each phase */
static atomic_int key_before[MAXKEYS], key_after[MAXKEYS], key_moves_before[MAXKEYS],
    key_moves_after[MAXKEYS];
static _Atomic int64_t dropped_at; /* ms, when the endpoint was dropped (0: not yet) */

static mica_breaker_kind_t kind_of(const char *s)
{
    return strcmp(s, "classic") == 0 ? MICA_BREAKER_CLASSIC
           : strcmp(s, "none") == 0  ? MICA_BREAKER_NONE
                                     : MICA_BREAKER_SRE;
}

static const mica_picker_ops_t *picker_of(const char *s)
{
    return strcmp(s, "wrr") == 0       ? &mica_balancer_weighted
           : strcmp(s, "least") == 0   ? &mica_balancer_least_request
           : strcmp(s, "random") == 0  ? &mica_balancer_random
           : strcmp(s, "p2c") == 0     ? &mica_balancer_p2c
           : strcmp(s, "ring") == 0    ? &mica_balancer_ring_hash
           : strcmp(s, "default") == 0 ? &mica_picker_round_robin
                                       : &mica_balancer_round_robin;
}

static int backend_of(const char *msg)
{
    if (msg && msg[0] == 'b' && msg[1] >= '0' && msg[1] <= '9')
        return (int)strtol(msg + 1, NULL, 10) % MAXB;
    return MAXB; /* the fallback's answer */
}

/* Records who served key k in a call from t0 to t1 (ms): before the drop, or
 * (starting 100 ms after it, once every worker applied the new list) after. */
static void note_key(int k, int b, int64_t t0, int64_t t1)
{
    int64_t at = atomic_load(&dropped_at);
    if (k < 0 || k >= MAXKEYS || (at && t1 >= at && t0 < at + 100))
        return;
    bool after = at && t0 >= at + 100;
    atomic_int *where = after ? &key_after[k] : &key_before[k];
    atomic_int *moves = after ? &key_moves_after[k] : &key_moves_before[k];
    int was = atomic_exchange(where, b + 1);
    if (was && was != b + 1)
        atomic_fetch_add(moves, 1);
}

static int fallback(mica_grpc_call_info_t *call, int code, void *arg)
{
    Mica__Interop__EchoResponse *out = malloc(sizeof(*out));
    mica__interop__echo_response__init(out);
    out->message = strdup("fallback");
    *call->resp = &out->base;
    call->res->code = MICA_GRPC_OK;
    snprintf(call->res->message, sizeof(call->res->message), "fallback");
    atomic_fetch_add(&fallbacks, 1);
    return MICA_GRPC_OK;
}

static void one_call(int seq)
{
    Mica__Interop__EchoRequest req = MICA__INTEROP__ECHO_REQUEST__INIT;
    req.message = "x";
    char key[16];
    mica_grpc_md_t md[1];
    mica_grpc_call_opts_t o = {.deadline_ms = mica_deadline_in(O.deadline)};
    if (O.idempotent)
        o.flags |= MICA_CALL_IDEMPOTENT;
    int k = -1;
    if (O.keys > 0) {
        k = seq % O.keys;
        snprintf(key, sizeof(key), "k%d", k);
        md[0] = (mica_grpc_md_t){"x-key", key};
        o.md = md;
        o.nmd = 1;
    }
    ProtobufCMessage *out = NULL;
    mica_grpc_result_t r;
    int64_t t0 = mica_now_ms();
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int code = mica_grpc_unary(client, NULL, echo, "Unary", &o, &req.base, &out, &r);
    clock_gettime(CLOCK_MONOTONIC, &b);
    int64_t us = (b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
    unsigned i = atomic_fetch_add(&lat_n, 1);
    if (i < lat_cap)
        lat[i] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    atomic_fetch_add(&codes[code >= 0 && code <= 16 ? code : 2], 1);
    if (code == MICA_GRPC_OK) {
        atomic_fetch_add(&ok, 1);
        int bk = backend_of(((Mica__Interop__EchoResponse *)out)->message);
        atomic_fetch_add(&by[bk], 1);
        if (bk < MAXB)
            note_key(k, bk, t0, mica_now_ms());
    } else {
        atomic_fetch_add(&failed, 1);
        if (mica_now_ms() - t0 < 10)
            atomic_fetch_add(&fast_fail, 1);
    }
    protobuf_c_message_free_unpacked(out, NULL);
}

static atomic_int next_seq;

static void caller(void *arg)
{
    double every = O.rate > 0 ? O.conc * 1000.0 / O.rate : 0;
    double next = (double)mica_now_ms() + every * (double)(intptr_t)arg / O.conc;
    while (mica_now_ms() - t_start < O.duration && !mica_worker_stopping()) {
        if (every > 0) {
            int64_t wait = (int64_t)next - mica_now_ms();
            if (wait > 0)
                mica_sleep_ms(wait);
            next += every;
        }
        one_call(atomic_fetch_add(&next_seq, 1));
        if (every <= 0 && (atomic_load(&next_seq) & 63) == 0)
            mica_yield();
    }
    atomic_fetch_add(&done_coros, 1);
}

static int cmp(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

static void print_state(bool final)
{
    printf("{\"t\":%lld,\"ok\":%ld,\"fail\":%ld,\"fast_fail\":%ld,\"fallback\":%ld,\"by\":[",
           (long long)(mica_now_ms() - t_start), atomic_load(&ok), atomic_load(&failed),
           atomic_load(&fast_fail), atomic_load(&fallbacks));
    for (int i = 0; i < O.n; i++)
        printf("%s%ld", i ? "," : "", atomic_load(&by[i]));
    printf("],\"picks\":[");
    for (int i = 0; lb && i < O.n; i++) {
        mica_balancer_endpoint_stats_t s = {0};
        mica_balancer_endpoint_stats(lb, O.addrs[i], &s);
        printf("%s%llu", i ? "," : "", (unsigned long long)s.picks);
    }
    printf("],\"ep_state\":[");
    for (int i = 0; lb && i < O.n; i++) {
        mica_balancer_endpoint_stats_t s = {0};
        mica_balancer_endpoint_stats(lb, O.addrs[i], &s);
        printf("%s\"%s\"", i ? "," : "", mica_breaker_state_name(s.breaker.state));
    }
    printf("],\"ep_breaker\":[");
    for (int i = 0; lb && i < O.n; i++) {
        mica_balancer_endpoint_stats_t s = {0};
        mica_balancer_endpoint_stats(lb, O.addrs[i], &s);
        printf("%s[%u,%llu,%llu,%llu]", i ? "," : "", s.breaker.drop_ppm,
               (unsigned long long)s.breaker.calls, (unsigned long long)s.breaker.failures,
               (unsigned long long)s.breaker.rejections);
    }
    printf("],\"ewma_us\":[");
    for (int i = 0; lb && i < O.n; i++) {
        mica_balancer_endpoint_stats_t s = {0};
        mica_balancer_endpoint_stats(lb, O.addrs[i], &s);
        printf("%s%u", i ? "," : "", s.latency_ewma_us);
    }
    printf("]");
    if (res) {
        mica_resilience_stats_t s;
        mica_resilience_stats(res, &s);
        mica_breaker_stats_t b = {0};
        mica_resilience_breaker_stats(res, "/mica.interop.Echo/Unary", &b);
        printf(",\"retries\":%llu,\"budget_exhausted\":%llu,\"peak_retries\":%u,\"hedges\":%llu,"
               "\"hedge_wins\":%llu,\"rejected\":%llu,\"pushbacks\":%llu,\"m_state\":\"%s\","
               "\"m_drop_ppm\":%u",
               (unsigned long long)s.retries, (unsigned long long)s.budget_exhausted,
               s.peak_retries, (unsigned long long)s.hedges, (unsigned long long)s.hedge_wins,
               (unsigned long long)s.rejected, (unsigned long long)s.pushbacks,
               mica_breaker_state_name(b.state), b.drop_ppm);
    }
    if (final) {
        unsigned n = atomic_load(&lat_n);
        if (n > lat_cap)
            n = (unsigned)lat_cap;
        qsort(lat, n, sizeof(*lat), cmp);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
        printf(",\"final\":1,\"calls\":%u,\"p50_us\":%u,\"p99_us\":%u,\"p999_us\":%u,"
               "\"max_us\":%u,\"cpu_s\":%.3f,\"codes\":[",
               n, n ? lat[n / 2] : 0, n ? lat[(size_t)n * 99 / 100] : 0,
               n ? lat[(size_t)n * 999 / 1000] : 0, n ? lat[n - 1] : 0, cpu);
        for (int i = 0; i <= 16; i++)
            printf("%s%ld", i ? "," : "", atomic_load(&codes[i]));
        printf("],\"keys\":[");
        for (int k = 0; k < O.keys && k < MAXKEYS; k++)
            printf("%s[%d,%d,%d,%d]", k ? "," : "", atomic_load(&key_before[k]) - 1,
                   atomic_load(&key_after[k]) - 1, atomic_load(&key_moves_before[k]),
                   atomic_load(&key_moves_after[k]));
        printf("]");
    }
    printf("}\n");
    fflush(stdout);
}

static void drop_endpoint(void)
{
    mica_endpoint_t eps[MAXB];
    int n = 0;
    for (int i = 0; i < O.n; i++)
        if (i != O.drop_idx)
            eps[n++] = (mica_endpoint_t){.addr = O.addrs[i], .weight = O.weights[i]};
    atomic_store(&dropped_at, mica_now_ms());
    mica_resolver_update(mica_grpc_client_resolver(client), eps, (size_t)n);
}

static void reporter(void *arg)
{
    bool drop_pending = O.drop_at > 0 && O.drop_idx >= 0;
    while (atomic_load(&done_coros) < O.conc * O.workers) {
        int64_t now = mica_now_ms() - t_start;
        if (drop_pending && now >= O.drop_at) {
            drop_endpoint();
            drop_pending = false;
        }
        mica_sleep_ms(O.interval);
        print_state(false);
    }
    print_state(true);
    mica_runtime_stop(rt);
}

static void start(int worker, void *arg)
{
    if (worker == 0) {
        t_start = mica_now_ms();
        mica_go(reporter, NULL);
    }
    for (int i = 0; i < O.conc; i++)
        mica_go(caller, (void *)(intptr_t)i);
}

static void parse_endpoints(const char *s)
{
    while (*s && O.n < MAXB) {
        size_t len = strcspn(s, ",");
        char tok[sizeof(O.addrs[0])];
        snprintf(tok, sizeof(tok), "%.*s", (int)(len < sizeof(tok) ? len : sizeof(tok) - 1), s);
        char *eq = strchr(tok, '=');
        O.weights[O.n] = eq ? (uint32_t)strtoul(eq + 1, NULL, 10) : 1;
        if (eq)
            *eq = '\0';
        snprintf(O.addrs[O.n], sizeof(O.addrs[O.n]), "%s", tok);
        O.n++;
        s += len + (s[len] == ',');
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        long n = strtol(v, NULL, 10);
        if (!strcmp(k, "-endpoints"))
            parse_endpoints(v);
        else if (!strcmp(k, "-lb"))
            O.lb = v;
        else if (!strcmp(k, "-ep-breaker"))
            O.ep_breaker = v;
        else if (!strcmp(k, "-breaker"))
            O.breaker = v;
        else if (!strcmp(k, "-open-ms"))
            O.open_ms = n;
        else if (!strcmp(k, "-retry"))
            O.retry = (int)n;
        else if (!strcmp(k, "-budget"))
            O.budget = (int)n;
        else if (!strcmp(k, "-budget-min"))
            O.budget_min = (int)n;
        else if (!strcmp(k, "-per-try"))
            O.per_try = n;
        else if (!strcmp(k, "-hedge-delay"))
            O.hedge_delay = n;
        else if (!strcmp(k, "-hedge-max"))
            O.hedge_max = (int)n;
        else if (!strcmp(k, "-fallback"))
            O.fallback = (int)n;
        else if (!strcmp(k, "-idempotent"))
            O.idempotent = (int)n;
        else if (!strcmp(k, "-policies"))
            O.policies = (int)n;
        else if (!strcmp(k, "-conc"))
            O.conc = (int)n;
        else if (!strcmp(k, "-rate"))
            O.rate = strtod(v, NULL);
        else if (!strcmp(k, "-duration"))
            O.duration = n;
        else if (!strcmp(k, "-deadline"))
            O.deadline = n;
        else if (!strcmp(k, "-keys"))
            O.keys = (int)n;
        else if (!strcmp(k, "-workers"))
            O.workers = (int)n;
        else if (!strcmp(k, "-interval"))
            O.interval = n;
        else if (!strcmp(k, "-drop-at")) {
            O.drop_at = n;
            O.drop_idx = strchr(v, ':') ? (int)strtol(strchr(v, ':') + 1, NULL, 10) : -1;
        } else {
            fprintf(stderr, "resilience_client: unknown option %s\n", k);
            return 2;
        }
    }
    if (O.n == 0) {
        fprintf(stderr, "resilience_client: -endpoints needed\n");
        return 2;
    }
    lat_cap = (size_t)(O.rate > 0 ? O.rate * (double)O.duration / 1000 * 1.5 : 4e6) + 1024;
    lat = malloc(lat_cap * sizeof(*lat));
    mica_runtime_opts_t ro = {.workers = O.workers, .no_signals = true, .drain_timeout_ms = 3000};
    if (!lat || mica_runtime_new(&rt, &ro) != 0)
        return 1;
    char target[1024] = "static:///";
    for (int i = 0; i < O.n; i++) {
        size_t len = strlen(target);
        snprintf(target + len, sizeof(target) - len, "%s%s", i ? "," : "", O.addrs[i]);
    }
    mica_balancer_opts_t bo = {.breaker.kind = kind_of(O.ep_breaker)};
    if (O.open_ms)
        bo.breaker.open_ms = O.open_ms;
    mica_grpc_client_opts_t co = {.picker = picker_of(O.lb)};
    if (strcmp(O.lb, "default") != 0) {
        if (mica_balancer_new(&lb, rt, &bo) != 0)
            return 1;
        co.picker_conf = lb;
    }
    if (mica_grpc_client_new(&client, rt, target, &co) != 0)
        return 1;
    mica_endpoint_t eps[MAXB];
    for (int i = 0; i < O.n; i++)
        eps[i] = (mica_endpoint_t){.addr = O.addrs[i], .weight = O.weights[i]};
    mica_resolver_update(mica_grpc_client_resolver(client), eps, (size_t)O.n); /* weights */
    if (O.policies) {
        mica_resilience_opts_t po = {
            .breaker.kind = kind_of(O.breaker),
            .retry = {.max_attempts = O.retry, .per_try_timeout_ms = O.per_try},
            .no_budget = !O.budget,
            .budget.min_concurrency = (uint32_t)O.budget_min};
        if (O.open_ms)
            po.breaker.open_ms = O.open_ms;
        if (O.hedge_delay > 0)
            po.hedge =
                (mica_hedge_policy_t){.max_attempts = O.hedge_max, .delay_ms = O.hedge_delay};
        mica_resilience_grpc_opts_t go = {.hash_metadata = "x-key"};
        if (O.fallback)
            go.fallback = fallback;
        if (mica_resilience_new(&res, rt, &po) != 0 ||
            mica_resilience_grpc_attach(res, client, &go) != 0)
            return 1;
    }
    if (mica_runtime_on_start(rt, start, NULL) != 0)
        return 1;
    int rc = mica_runtime_run(rt);
    mica_grpc_client_free(client);
    mica_resilience_free(res);
    mica_balancer_free(lb);
    mica_runtime_free(rt);
    free(lat);
    return rc == 0 || rc == MICA_ETIMEDOUT ? 0 : 1;
}

/* SPDX-License-Identifier: MIT */
/*
 * The load client of tests/integration/test_discovery.py: a mica gRPC
 * client of a service addressed by name ("etcd:///user" through an etcd
 * registry, or "file:///path#user"), calling user.UserService/GetUser at a
 * steady rate from a few coroutines, and saying every -interval ms, as one
 * JSON line on stdout, what it saw:
 *
 *   {"t":ms,"ok":N,"fail":N,"eps":["addr",...],"picks":{"addr":N,...},"last":{"addr":ms,...}}
 *
 * ok/fail/picks are cumulative; eps is the endpoint list the picker has now;
 * last is when (ms since start) each address was last picked. Failures are
 * also logged on stderr with their status, the first 20 of them.
 *
 * Options ("-name value"): -target T (needed)  -registry URL (for etcd:/// targets)
 *   -conc N (8)  -rate calls/s (400)  -duration ms (10000)  -interval ms (50)
 *   -deadline ms (1000)  -resolve-ms ms (dns targets' re-resolution period: 30000)
 *   -retries N (0: none; else the resilience layer's retries, N attempts, no breaker)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/grpc.h"
#include "mica/registry.h"
#include "mica/resilience.h"
#include "mica/resolver.h"
#include "user.pb-c.h"

#define MAXA 16

static struct {
    const char *target, *registry;
    int conc, retries;
    double rate;
    int64_t duration, interval, deadline, resolve_ms;
} O = {.conc = 8, .rate = 400, .duration = 10000, .interval = 50, .deadline = 1000};

static mica_runtime_t *rt;
static mica_grpc_client_t *client;
static int64_t t_start;
static atomic_long ok, failed;
static atomic_int done_coros;

/* What the picker saw: one worker, so plain fields under a lock for the printer. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char addr[64];
    uint64_t picks;
    int64_t last_ms;
} seen[MAXA];
static int nseen;
static char eps_now[MAXA][64];
static int neps;

static int slot(const char *addr)
{
    for (int i = 0; i < nseen; i++)
        if (strcmp(seen[i].addr, addr) == 0)
            return i;
    if (nseen == MAXA)
        return -1;
    snprintf(seen[nseen].addr, sizeof(seen[nseen].addr), "%s", addr);
    return nseen++;
}

/* ---- a round-robin picker that counts its picks per address ------------------------------ */

static int cp_create(void **state, const void *conf)
{
    return mica_picker_round_robin.create(state, conf);
}

static void cp_update(void *state, mica_picker_endpoint_t *const *eps, size_t n)
{
    pthread_mutex_lock(&mu);
    neps = 0;
    for (size_t i = 0; i < n && neps < MAXA; i++)
        snprintf(eps_now[neps++], sizeof(eps_now[0]), "%s", eps[i]->ep->addr);
    pthread_mutex_unlock(&mu);
    if (mica_picker_round_robin.update)
        mica_picker_round_robin.update(state, eps, n);
}

static int cp_pick(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                   const mica_pick_info_t *info)
{
    int i = mica_picker_round_robin.pick(state, eps, n, info);
    if (i >= 0 && (size_t)i < n) {
        pthread_mutex_lock(&mu);
        int s = slot(eps[i]->ep->addr);
        if (s >= 0) {
            seen[s].picks++;
            seen[s].last_ms = mica_now_ms() - t_start;
        }
        pthread_mutex_unlock(&mu);
    }
    return i;
}

static void cp_done(void *state, mica_picker_endpoint_t *ep, int code, uint32_t latency_us)
{
    if (mica_picker_round_robin.done)
        mica_picker_round_robin.done(state, ep, code, latency_us);
}

static void cp_destroy(void *state)
{
    mica_picker_round_robin.destroy(state);
}

static const mica_picker_ops_t counting_picker = {
    .name = "counting-rr",
    .create = cp_create,
    .update = cp_update,
    .pick = cp_pick,
    .done = cp_done,
    .destroy = cp_destroy,
};

/* ---- load ------------------------------------------------------------------------------- */

static void caller(void *arg)
{
    int64_t period_ms = (int64_t)(O.conc * 1000.0 / O.rate);
    if (period_ms < 1)
        period_ms = 1;
    int64_t end = t_start + O.duration, next = mica_now_ms();
    while (mica_now_ms() < end && !mica_worker_stopping()) {
        User__UserRequest req = USER__USER_REQUEST__INIT;
        req.user_id = "1001";
        mica_grpc_call_opts_t o = {.deadline_ms = mica_deadline_in(O.deadline)};
        ProtobufCMessage *resp = NULL;
        mica_grpc_result_t res;
        int code = mica_grpc_unary(client, NULL, &user__user_service__descriptor, "GetUser", &o,
                                   &req.base, &resp, &res);
        if (code == MICA_GRPC_OK) {
            atomic_fetch_add(&ok, 1);
        } else {
            long n = atomic_fetch_add(&failed, 1);
            if (n < 20)
                fprintf(stderr, "discovery_client: call failed at %lld ms: %s: %s\n",
                        (long long)(mica_now_ms() - t_start), mica_grpc_code_name(code),
                        res.message);
        }
        protobuf_c_message_free_unpacked(resp, NULL);
        next += period_ms;
        int64_t wait = next - mica_now_ms();
        if (wait > 0)
            mica_sleep_ms(wait);
        else
            next = mica_now_ms();
    }
    if (atomic_fetch_add(&done_coros, 1) + 1 == O.conc)
        mica_runtime_stop(rt);
}

static void report(void)
{
    pthread_mutex_lock(&mu);
    printf("{\"t\":%lld,\"ok\":%ld,\"fail\":%ld,\"eps\":[", (long long)(mica_now_ms() - t_start),
           atomic_load(&ok), atomic_load(&failed));
    for (int i = 0; i < neps; i++)
        printf("%s\"%s\"", i ? "," : "", eps_now[i]);
    printf("],\"picks\":{");
    for (int i = 0; i < nseen; i++)
        printf("%s\"%s\":%llu", i ? "," : "", seen[i].addr, (unsigned long long)seen[i].picks);
    printf("},\"last\":{");
    for (int i = 0; i < nseen; i++)
        printf("%s\"%s\":%lld", i ? "," : "", seen[i].addr, (long long)seen[i].last_ms);
    printf("}}\n");
    pthread_mutex_unlock(&mu);
    fflush(stdout);
}

static void reporter(void *arg)
{
    while (mica_sleep_ms(O.interval) == 0 && !mica_worker_stopping())
        report();
}

static void start(int worker, void *arg)
{
    t_start = mica_now_ms();
    for (int i = 0; i < O.conc; i++)
        mica_go(caller, NULL);
    mica_go(reporter, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "-target") == 0)
            O.target = v;
        else if (strcmp(k, "-registry") == 0)
            O.registry = v;
        else if (strcmp(k, "-conc") == 0)
            O.conc = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "-rate") == 0)
            O.rate = strtod(v, NULL);
        else if (strcmp(k, "-duration") == 0)
            O.duration = strtoll(v, NULL, 10);
        else if (strcmp(k, "-interval") == 0)
            O.interval = strtoll(v, NULL, 10);
        else if (strcmp(k, "-deadline") == 0)
            O.deadline = strtoll(v, NULL, 10);
        else if (strcmp(k, "-retries") == 0)
            O.retries = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "-resolve-ms") == 0)
            O.resolve_ms = strtoll(v, NULL, 10);
        else {
            fprintf(stderr, "discovery_client: unknown option %s\n", k);
            return 2;
        }
    }
    if (!O.target || O.conc < 1 || O.rate <= 0) {
        fprintf(stderr, "discovery_client: -target needed (and -conc, -rate > 0)\n");
        return 2;
    }
    /* one worker: the picker's view is one list, the printer's */
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
    if (mica_runtime_new(&rt, &ro) != 0)
        return 1;
    mica_registry_t *reg = NULL;
    mica_registry_schemes_init();
    if (O.registry && mica_registry_new(&reg, rt, O.registry, NULL) != 0)
        return 1;
    mica_grpc_client_opts_t co = {.picker = &counting_picker,
                                  .conns_per_worker = 1,
                                  .connect_timeout_ms = 500,
                                  .backoff_max_ms = 500,
                                  .resolve_interval_ms = O.resolve_ms};
    if (mica_grpc_client_new(&client, rt, O.target, &co) != 0) {
        fprintf(stderr, "discovery_client: bad target %s\n", O.target);
        return 2;
    }
    mica_resilience_t *res = NULL;
    if (O.retries > 0) {
        mica_resilience_opts_t rso = {.breaker = {.kind = MICA_BREAKER_NONE},
                                      .retry = {.max_attempts = O.retries,
                                                .initial_backoff_ms = 10}};
        if (mica_resilience_new(&res, rt, &rso) != 0 ||
            mica_resilience_grpc_attach(res, client, NULL) != 0)
            return 1;
    }
    if (mica_runtime_on_start(rt, start, NULL) != 0)
        return 1;
    int rc = mica_runtime_run(rt);
    report();
    mica_grpc_client_free(client);
    mica_resilience_free(res);
    mica_registry_free(reg);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : 1;
}

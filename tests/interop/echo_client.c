/* SPDX-License-Identifier: MIT */
/*
 * mica's gRPC client driving the interop matrix against any Echo server
 * (tests/interop/proto/echo.proto): the grpc-go and grpc-js servers of
 * tests/interop, or mica's own. Same case names and output as the Go and JS
 * clients: one `PASS <case> (<ms> ms)` or `FAIL <case>: <reason>` line each,
 * exit status 0 only if every selected case passed.
 *
 * Usage: echo_client -addr TARGET [-cases a,b,c] [-ca ca.pem (TLS)
 *        [-cert cert.pem -key key.pem (mTLS)]]
 *
 * TARGET is any client target: 127.0.0.1:PORT, dns:///localhost:PORT,
 * static:///A,B. Three cases run only when named in -cases, for checks
 * made from the servers' side (tests/integration/test_grpc.py): `spread`
 * (-n N unary calls, all OK), `update` (N calls, then the static list
 * becomes -update A,B, then N more) and `unavailable` (a call must fail
 * UNAVAILABLE). -resolve-ms sets the DNS re-resolution interval.
 *
 * -bench N [-conc C]: instead of the cases, N unary calls ("hello", from C
 * coroutines, default 1) on one worker; prints calls/s and the client's own
 * CPU time per call (user + system), e.g. for `taskset -c 1`.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "echo.pb-c.h"
#include "mica/grpc.h"
#include "mica/runtime.h"
#include "mica/sync.h"

typedef Mica__Interop__EchoRequest req_t;
typedef Mica__Interop__EchoResponse resp_t;
#define REQ_INIT MICA__INTEROP__ECHO_REQUEST__INIT
static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

static mica_grpc_client_t *client, *big; /* big: a raised message limit */
static const char *ca_file; /* -ca: TLS with this CA, else cleartext */
static const char *cert_file, *key_file; /* -cert, -key: mTLS client certificate */
static mica_runtime_t *rt;
static const char *only;
static int failures;
static long spread_n = 100;       /* -n */
static const char *update_list;   /* -update */
static int64_t resolve_ms;        /* -resolve-ms */

/* A case's failure: formats the reason into `why` and returns -1. */
static char why[512];
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return -1;
}

static int expect_code(int got, int want, const mica_grpc_result_t *r)
{
    if (got != want)
        return fail("status %s (%s), want %s", mica_grpc_code_name(got), r->message,
                    mica_grpc_code_name(want));
    return 0;
}

static int unary_call(int64_t timeout_ms, const req_t *req, resp_t **out, mica_grpc_result_t *r)
{
    mica_ctx_t *ctx = NULL;
    mica_ctx_with_timeout(NULL, timeout_ms, &ctx);
    int code = mica_grpc_unary(client, ctx, echo, "Unary", NULL, &req->base, (ProtobufCMessage **)out, r);
    mica_ctx_free(ctx);
    return code;
}

/* ---- cases ----------------------------------------------------------------- */

static int c_unary(void)
{
    req_t req = REQ_INIT;
    req.message = "hello";
    resp_t *out;
    mica_grpc_result_t r;
    int code = unary_call(5000, &req, &out, &r);
    if (expect_code(code, MICA_GRPC_OK, &r))
        return -1;
    int rc = strcmp(out->message, "hello") ? fail("message %s", out->message) : 0;
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return rc;
}

static int c_unary_metadata(void)
{
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5000, &ctx);
    mica_grpc_md_t md[] = {{"x-echo-in", "v1"}};
    mica_grpc_call_opts_t o = {.md = md, .nmd = 1};
    mica_grpc_stream_t *st;
    int rc = mica_grpc_stream_open(client, ctx, echo, "Unary", &o, &st);
    if (rc != 0) {
        mica_ctx_free(ctx);
        return fail("open: %s", mica_strerror(rc));
    }
    req_t req = REQ_INIT;
    req.message = "md";
    ProtobufCMessage *out = NULL;
    mica_grpc_stream_send(st, &req.base);
    mica_grpc_stream_close_send(st);
    mica_grpc_stream_recv(st, &out);
    ProtobufCMessage *none = NULL;
    int end = mica_grpc_stream_recv(st, &none);
    const char *h = mica_grpc_stream_header(st, "x-echo-header");
    const char *t = mica_grpc_stream_trailer(st, "x-echo-trailer");
    char hv[32] = "", tv[32] = "";
    snprintf(hv, sizeof(hv), "%s", h ? h : "(none)");
    snprintf(tv, sizeof(tv), "%s", t ? t : "(none)");
    mica_grpc_result_t r;
    int code = mica_grpc_stream_finish(st, &r);
    mica_ctx_free(ctx);
    protobuf_c_message_free_unpacked(out, NULL);
    if (expect_code(code, MICA_GRPC_OK, &r))
        return -1;
    if (!out || end != MICA_ECLOSED)
        return fail("no response, or more than one");
    if (strcmp(hv, "v1") || strcmp(tv, "v1"))
        return fail("header %s, trailer %s", hv, tv);
    return 0;
}

static int c_unary_error(void)
{
    req_t req = REQ_INIT;
    req.status = MICA_GRPC_NOT_FOUND;
    req.status_message = "no such thing";
    resp_t *out;
    mica_grpc_result_t r;
    int code = unary_call(5000, &req, &out, &r);
    if (expect_code(code, MICA_GRPC_NOT_FOUND, &r))
        return -1;
    return strcmp(r.message, "no such thing") ? fail("message '%s'", r.message) : 0;
}

static int c_unary_deadline(void)
{
    req_t req = REQ_INIT;
    req.delay_ms = 5000;
    resp_t *out;
    mica_grpc_result_t r;
    int64_t t0 = mica_now_ms();
    int code = unary_call(300, &req, &out, &r);
    if (expect_code(code, MICA_GRPC_DEADLINE_EXCEEDED, &r))
        return -1;
    return mica_now_ms() - t0 > 2000 ? fail("took %lld ms", (long long)(mica_now_ms() - t0)) : 0;
}

struct canceller {
    mica_ctx_t *ctx;
    mica_wg_t *wg;
};

static void cancel_later(void *arg)
{
    struct canceller *k = arg;
    mica_sleep_ms(200);
    mica_ctx_cancel(k->ctx);
    mica_wg_done(k->wg);
}

static int c_unary_cancel(void)
{
    struct canceller k;
    mica_ctx_with_cancel(NULL, &k.ctx);
    mica_wg_new(&k.wg);
    mica_wg_add(k.wg, 1);
    mica_go(cancel_later, &k);
    req_t req = REQ_INIT;
    req.delay_ms = 5000;
    ProtobufCMessage *out;
    mica_grpc_result_t r;
    int64_t t0 = mica_now_ms();
    int code = mica_grpc_unary(client, k.ctx, echo, "Unary", NULL, &req.base, &out, &r);
    int64_t took = mica_now_ms() - t0;
    mica_wg_wait(k.wg, NULL);
    mica_wg_free(k.wg);
    mica_ctx_free(k.ctx);
    if (expect_code(code, MICA_GRPC_CANCELLED, &r))
        return -1;
    return took > 2000 ? fail("took %lld ms", (long long)took) : 0;
}

static int c_unary_large(void)
{
    size_t n = 3 << 20;
    uint8_t *p = malloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 7);
    req_t req = REQ_INIT;
    req.payload = (ProtobufCBinaryData){n, p};
    resp_t *out;
    mica_grpc_result_t r;
    int code = unary_call(10000, &req, &out, &r);
    int rc = expect_code(code, MICA_GRPC_OK, &r);
    if (rc == 0) {
        if (out->payload.len != n || memcmp(out->payload.data, p, n) != 0)
            rc = fail("payload differs (%zu bytes back)", out->payload.len);
        protobuf_c_message_free_unpacked(&out->base, NULL);
    }
    free(p);
    return rc;
}

static int c_unary_too_large(void)
{
    /* mica's client enforces the limit on what it sends, too: raise it here
     * so the server's limit is the one tested. */
    mica_grpc_client_opts_t o = {.max_message_bytes = 8 << 20, .tls_ca_file = ca_file,
                                 .tls_cert_file = cert_file, .tls_key_file = key_file};
    char target[64];
    snprintf(target, sizeof(target), "%s", getenv("ECHO_ADDR"));
    if (!big && mica_grpc_client_new(&big, rt, target, &o) != 0)
        return fail("client");
    size_t n = 5 << 20;
    uint8_t *p = calloc(1, n);
    req_t req = REQ_INIT;
    req.payload = (ProtobufCBinaryData){n, p};
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10000, &ctx);
    ProtobufCMessage *out;
    mica_grpc_result_t r;
    int code = mica_grpc_unary(big, ctx, echo, "Unary", NULL, &req.base, &out, &r);
    mica_ctx_free(ctx);
    free(p);
    return expect_code(code, MICA_GRPC_RESOURCE_EXHAUSTED, &r);
}

static int c_response_too_large(void)
{
    req_t req = REQ_INIT;
    req.response_size = 5 << 20;
    resp_t *out;
    mica_grpc_result_t r;
    return expect_code(unary_call(10000, &req, &out, &r), MICA_GRPC_RESOURCE_EXHAUSTED, &r);
}

/* Opens a call, sends `reqs` (then half-closes), collects the responses. */
static int stream_call(const char *method, const req_t *reqs, int nreq, int *nresp,
                       resp_t **resps, int max, mica_grpc_result_t *r)
{
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5000, &ctx);
    mica_grpc_stream_t *st;
    int rc = mica_grpc_stream_open(client, ctx, echo, method, NULL, &st);
    if (rc != 0) {
        mica_ctx_free(ctx);
        snprintf(r->message, sizeof(r->message), "open: %s", mica_strerror(rc));
        return MICA_GRPC_UNAVAILABLE;
    }
    for (int i = 0; i < nreq; i++)
        if (mica_grpc_stream_send(st, &reqs[i].base) != 0)
            break;
    mica_grpc_stream_close_send(st);
    *nresp = 0;
    ProtobufCMessage *m;
    while (mica_grpc_stream_recv(st, &m) == 0) {
        if (*nresp < max)
            resps[(*nresp)++] = (resp_t *)m;
        else
            protobuf_c_message_free_unpacked(m, NULL);
    }
    int code = mica_grpc_stream_finish(st, r);
    mica_ctx_free(ctx);
    return code;
}

static void free_all(resp_t **r, int n)
{
    for (int i = 0; i < n; i++)
        protobuf_c_message_free_unpacked(&r[i]->base, NULL);
}

static int c_server_stream(void)
{
    req_t req = REQ_INIT;
    req.message = "s";
    req.count = 5;
    resp_t *out[8];
    int n;
    mica_grpc_result_t r;
    int code = stream_call("ServerStream", &req, 1, &n, out, 8, &r);
    int rc = expect_code(code, MICA_GRPC_OK, &r);
    for (int i = 0; rc == 0 && i < n; i++)
        if (out[i]->index != i)
            rc = fail("message %d has index %d", i, out[i]->index);
    if (rc == 0 && n != 5)
        rc = fail("%d messages", n);
    free_all(out, n);
    return rc;
}

static int c_server_stream_error(void)
{
    req_t req = REQ_INIT;
    req.count = 3;
    req.status = MICA_GRPC_FAILED_PRECONDITION;
    req.status_message = "stop";
    resp_t *out[8];
    int n;
    mica_grpc_result_t r;
    int code = stream_call("ServerStream", &req, 1, &n, out, 8, &r);
    free_all(out, n);
    if (expect_code(code, MICA_GRPC_FAILED_PRECONDITION, &r))
        return -1;
    if (n != 3 || strcmp(r.message, "stop"))
        return fail("%d messages, message '%s'", n, r.message);
    return 0;
}

static int c_client_stream(void)
{
    static uint8_t kib[1024];
    req_t reqs[3];
    const char *msgs[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        reqs[i] = (req_t)REQ_INIT;
        reqs[i].message = (char *)msgs[i];
        reqs[i].payload = (ProtobufCBinaryData){sizeof(kib), kib};
    }
    resp_t *out[2];
    int n;
    mica_grpc_result_t r;
    int code = stream_call("ClientStream", reqs, 3, &n, out, 2, &r);
    int rc = expect_code(code, MICA_GRPC_OK, &r);
    if (rc == 0 && (n != 1 || strcmp(out[0]->message, "a,b,c") || out[0]->index != 3 ||
                    out[0]->payload.len != 4 || memcmp(out[0]->payload.data, "3072", 4)))
        rc = fail("%d responses, first '%s' index %d", n, n ? out[0]->message : "",
                  n ? out[0]->index : -1);
    free_all(out, n);
    return rc;
}

/* Bidi in lock step: each answer is read before the next request goes out. */
static int bidi(int nreq, int fail_at, int want_code, int want_answers)
{
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 5000, &ctx);
    mica_grpc_stream_t *st;
    int rc = mica_grpc_stream_open(client, ctx, echo, "Bidi", NULL, &st);
    if (rc != 0) {
        mica_ctx_free(ctx);
        return fail("open: %s", mica_strerror(rc));
    }
    int answers = 0;
    rc = 0;
    for (int i = 0; i < nreq && rc == 0; i++) {
        char msg[16];
        snprintf(msg, sizeof(msg), "m%d", i);
        req_t req = REQ_INIT;
        req.message = msg;
        if (i == fail_at)
            req.status = want_code;
        if (mica_grpc_stream_send(st, &req.base) != 0)
            break;
        ProtobufCMessage *m;
        if (mica_grpc_stream_recv(st, &m) != 0)
            break;
        resp_t *resp = (resp_t *)m;
        if (resp->index != i || strcmp(resp->message, msg))
            rc = fail("answer %d: index %d message %s", i, resp->index, resp->message);
        answers++;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    mica_grpc_stream_close_send(st);
    ProtobufCMessage *m;
    while (mica_grpc_stream_recv(st, &m) == 0)
        protobuf_c_message_free_unpacked(m, NULL);
    mica_grpc_result_t r;
    int code = mica_grpc_stream_finish(st, &r);
    mica_ctx_free(ctx);
    if (rc != 0)
        return rc;
    if (expect_code(code, want_code, &r))
        return -1;
    return answers != want_answers ? fail("%d answers", answers) : 0;
}

static int c_bidi(void)
{
    return bidi(10, -1, MICA_GRPC_OK, 10);
}

static int c_bidi_error(void)
{
    return bidi(3, 1, MICA_GRPC_RESOURCE_EXHAUSTED, 1);
}

static int c_unimplemented(void)
{
    /* A method the server does not have: a descriptor that claims it. */
    ProtobufCMethodDescriptor m = echo->methods[0];
    m.name = "Nope";
    ProtobufCServiceDescriptor svc = *echo;
    svc.methods = &m;
    svc.n_methods = 1;
    req_t req = REQ_INIT;
    ProtobufCMessage *out;
    mica_grpc_result_t r;
    return expect_code(mica_grpc_unary(client, NULL, &svc, "Nope", NULL, &req.base, &out, &r),
                       MICA_GRPC_UNIMPLEMENTED, &r);
}

static int c_unknown_service(void)
{
    ProtobufCServiceDescriptor svc = *echo;
    svc.name = "mica.interop.Nope";
    req_t req = REQ_INIT;
    ProtobufCMessage *out;
    mica_grpc_result_t r;
    return expect_code(mica_grpc_unary(client, NULL, &svc, "Unary", NULL, &req.base, &out, &r),
                       MICA_GRPC_UNIMPLEMENTED, &r);
}

struct many {
    int ok;
    mica_wg_t *wg;
};

static void one_of_many(void *arg)
{
    struct many *m = arg;
    req_t req = REQ_INIT;
    req.message = "many";
    resp_t *out;
    mica_grpc_result_t r;
    if (unary_call(10000, &req, &out, &r) == MICA_GRPC_OK) {
        m->ok++;
        protobuf_c_message_free_unpacked(&out->base, NULL);
    }
    mica_wg_done(m->wg);
}

static int c_many_streams(void)
{
    struct many m = {0};
    mica_wg_new(&m.wg);
    for (int i = 0; i < 100; i++) {
        mica_wg_add(m.wg, 1);
        mica_go(one_of_many, &m);
    }
    mica_wg_wait(m.wg, NULL);
    mica_wg_free(m.wg);
    return m.ok == 100 ? 0 : fail("%d of 100 OK", m.ok);
}

/* ---- cases checked from the servers' side ------------------------------------------ */

static int n_calls(long n)
{
    for (long i = 0; i < n; i++) {
        req_t req = REQ_INIT;
        req.message = "spread";
        resp_t *out;
        mica_grpc_result_t r;
        if (expect_code(unary_call(5000, &req, &out, &r), MICA_GRPC_OK, &r))
            return -1;
        protobuf_c_message_free_unpacked(&out->base, NULL);
    }
    return 0;
}

static int c_spread(void)
{
    return n_calls(spread_n);
}

static int c_update(void)
{
    if (!update_list)
        return fail("-update A,B is needed");
    if (n_calls(spread_n))
        return -1;
    char list[512];
    snprintf(list, sizeof(list), "%s", update_list);
    mica_endpoint_t eps[16];
    size_t n = 0;
    for (char *p = list, *next; p && n < 16; p = next) {
        if ((next = strchr(p, ',')))
            *next++ = '\0';
        eps[n++] = (mica_endpoint_t){.addr = p, .weight = 1};
    }
    int rc = mica_resolver_update(mica_grpc_client_resolver(client), eps, n);
    if (rc != 0)
        return fail("update: %s", mica_strerror(rc));
    return n_calls(spread_n);
}

static int c_unavailable(void)
{
    req_t req = REQ_INIT;
    resp_t *out;
    mica_grpc_result_t r;
    return expect_code(unary_call(5000, &req, &out, &r), MICA_GRPC_UNAVAILABLE, &r);
}

static const struct {
    const char *name;
    int (*fn)(void);
} cases[] = {
    {"unary", c_unary},
    {"unary_metadata", c_unary_metadata},
    {"unary_error", c_unary_error},
    {"unary_deadline", c_unary_deadline},
    {"unary_cancel", c_unary_cancel},
    {"unary_large", c_unary_large},
    {"unary_too_large", c_unary_too_large},
    {"response_too_large", c_response_too_large},
    {"server_stream", c_server_stream},
    {"server_stream_error", c_server_stream_error},
    {"client_stream", c_client_stream},
    {"bidi", c_bidi},
    {"bidi_error", c_bidi_error},
    {"unimplemented", c_unimplemented},
    {"unknown_service", c_unknown_service},
    {"many_streams", c_many_streams},
    /* only when named in -cases: */
    {"spread", c_spread},
    {"update", c_update},
    {"unavailable", c_unavailable},
};
#define DEFAULT_CASES 16 /* the matrix: the cases above the named-only ones */

/* ---- -bench ------------------------------------------------------------------- */

static long bench_calls, bench_conc = 1;

struct bench {
    long left, failed;
    mica_wg_t *wg;
};

static void bench_worker(void *arg)
{
    struct bench *b = arg;
    req_t req = REQ_INIT;
    req.message = "hello";
    while (b->left > 0) {
        b->left--;
        ProtobufCMessage *out;
        if (mica_grpc_unary(client, NULL, echo, "Unary", NULL, &req.base, &out, NULL) == MICA_GRPC_OK)
            protobuf_c_message_free_unpacked(out, NULL);
        else
            b->failed++;
    }
    mica_wg_done(b->wg);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static void bench(void)
{
    struct bench b = {.left = bench_calls / 10};
    mica_wg_new(&b.wg);
    for (int round = 0; round < 2; round++) { /* a warm-up tenth, then the run */
        mica_wg_add(b.wg, bench_conc);
        int64_t t0 = mica_now_ms();
        double c0 = cpu_s();
        for (long i = 0; i < bench_conc; i++)
            mica_go(bench_worker, &b);
        mica_wg_wait(b.wg, NULL);
        if (round == 0) {
            b.left = bench_calls;
            continue;
        }
        double secs = (double)(mica_now_ms() - t0) / 1e3, cpu = cpu_s() - c0;
        printf("bench: %ld unary calls, %ld concurrent: %.0f calls/s, %.2f us client CPU per "
               "call, %ld failed\n",
               bench_calls, bench_conc, (double)bench_calls / (secs > 0 ? secs : 1e-3),
               cpu * 1e6 / (double)bench_calls, b.failed);
        if (b.failed)
            failures++;
    }
    mica_wg_free(b.wg);
}

static bool selected(size_t i, const char *name)
{
    if (!only)
        return i < DEFAULT_CASES;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

static void run(int worker, void *arg)
{
    if (worker != 0)
        return;
    if (bench_calls > 0) {
        bench();
        mica_runtime_stop(rt);
        return;
    }
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (!selected(i, cases[i].name))
            continue;
        why[0] = '\0';
        int64_t t0 = mica_now_ms();
        if (cases[i].fn() == 0) {
            printf("PASS %s (%lld ms)\n", cases[i].name, (long long)(mica_now_ms() - t0));
        } else {
            printf("FAIL %s: %s\n", cases[i].name, why);
            failures++;
        }
        fflush(stdout);
    }
    mica_runtime_stop(rt);
}

int main(int argc, char **argv)
{
    const char *addr = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "-addr") == 0)
            addr = argv[i + 1];
        else if (strcmp(argv[i], "-cases") == 0)
            only = argv[i + 1];
        else if (strcmp(argv[i], "-ca") == 0)
            ca_file = argv[i + 1];
        else if (strcmp(argv[i], "-cert") == 0)
            cert_file = argv[i + 1];
        else if (strcmp(argv[i], "-key") == 0)
            key_file = argv[i + 1];
        else if (strcmp(argv[i], "-bench") == 0)
            bench_calls = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "-conc") == 0)
            bench_conc = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "-n") == 0)
            spread_n = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "-update") == 0)
            update_list = argv[i + 1];
        else if (strcmp(argv[i], "-resolve-ms") == 0)
            resolve_ms = strtoll(argv[i + 1], NULL, 10);
    }
    if (!addr) {
        fprintf(stderr, "usage: echo_client -addr TARGET [-cases a,b,c] [-ca ca.pem "
                        "[-cert cert.pem -key key.pem]] [-n N] [-update A,B] [-resolve-ms MS] "
                        "[-bench N [-conc C]]\n");
        return 2;
    }
    setenv("ECHO_ADDR", addr, 1);
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    mica_grpc_client_opts_t co = {.tls_ca_file = ca_file, .tls_cert_file = cert_file,
                                  .tls_key_file = key_file, .resolve_interval_ms = resolve_ms};
    if (mica_runtime_new(&rt, &o) != 0 || mica_grpc_client_new(&client, rt, addr, &co) != 0) {
        fprintf(stderr, "echo_client: setup failed\n");
        return 2;
    }
    mica_runtime_on_start(rt, run, NULL);
    int rc = mica_runtime_run(rt);
    mica_grpc_client_free(client);
    mica_grpc_client_free(big);
    mica_runtime_free(rt);
    if (rc != 0)
        fprintf(stderr, "echo_client: runtime: %s\n", mica_strerror(rc));
    return failures || rc ? 1 : 0;
}

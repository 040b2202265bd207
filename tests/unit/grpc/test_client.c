/* SPDX-License-Identifier: MIT */
/*
 * The gRPC client against in-process Echo servers (tests/interop/proto):
 * call options, interceptors, endpoints from static and DNS targets, the
 * round-robin picker, resolver updates, refusing endpoints, and allocation
 * failures. Each backend is its own server counting the calls it served,
 * so spreading is checked from the servers' side.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "../runtime/helpers.h"
#include "common/alloc.h"
#include "echo.pb-c.h"
#include "mica/grpc.h"
#include "mica/net.h"
#include "mica/sync.h"

/* helpers.h's EXPECT_EQ evaluates its arguments twice; calls with effects
 * (a gRPC call, an update) must run once, so this file evaluates once. */
static inline int expect_eq1(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b) expect_eq1((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

typedef Mica__Interop__EchoRequest req_t;
typedef Mica__Interop__EchoResponse resp_t;
#define REQ_INIT MICA__INTEROP__ECHO_REQUEST__INIT
static const ProtobufCServiceDescriptor *echo = &mica__interop__echo__descriptor;

/* ---- backends ------------------------------------------------------------------------ */

#define NB 3

struct backend {
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    char addr[64];
    atomic_int calls;
    atomic_int fail_first; /* answer UNAVAILABLE to this many calls first */
    bool record;           /* one worker: the two below are written by one thread */
    char trace[64];        /* the last call's x-trace-id */
    int64_t left_ms;       /* the last call's deadline as the handler saw it (-1: none) */
};

static int unary(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    struct backend *b = arg;
    const req_t *req = (const req_t *)in;
    atomic_fetch_add(&b->calls, 1);
    if (b->record) {
        const char *t = mica_grpc_call_metadata(call, "x-trace-id");
        snprintf(b->trace, sizeof(b->trace), "%s", t ? t : "");
        int64_t d = mica_ctx_deadline(mica_grpc_call_ctx(call));
        b->left_ms = d == MICA_NO_DEADLINE ? -1 : d - mica_now_ms();
    }
    if (atomic_load(&b->fail_first) > 0) {
        atomic_fetch_sub(&b->fail_first, 1);
        return mica_grpc_status(call, MICA_GRPC_UNAVAILABLE, "not yet");
    }
    int rc;
    if (req->delay_ms > 0 && (rc = mica_ctx_sleep(mica_grpc_call_ctx(call), req->delay_ms)) != 0)
        return rc;
    resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
    out.message = req->message;
    return mica_grpc_send(call, &out.base);
}

static int server_stream(mica_grpc_call_t *call, const ProtobufCMessage *in, void *arg)
{
    const req_t *req = (const req_t *)in;
    for (int i = 0; i < req->count; i++) {
        resp_t out = MICA__INTEROP__ECHO_RESPONSE__INIT;
        out.index = i;
        int rc = mica_grpc_send(call, &out.base);
        if (rc != 0)
            return rc;
    }
    return req->status;
}

struct fx {
    mica_runtime_t *rt;
    struct backend b[NB];
    char dead[64]; /* refuses connections */
    mica_grpc_client_t *c, *c2;
    char target[256];
};

/* A loopback port nobody listens on (bound, then closed). */
static void dead_addr(char *buf, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(buf, size, "127.0.0.1:%d", ntohs(sa.sin_port));
    close(fd);
}

/* Starts backend `b` of `f` on `listen`; returns attach's result. */
static int backend_start(struct fx *f, struct backend *b, const char *listen)
{
    assert_int_equal(mica_http_server_new(&b->srv, NULL), 0);
    assert_int_equal(mica_grpc_server_new(&b->gs, b->srv, NULL), 0);
    assert_int_equal(mica_grpc_register(b->gs, echo, "Unary", MICA_GRPC_UNARY, unary, b), 0);
    assert_int_equal(mica_grpc_register(b->gs, echo, "ServerStream", MICA_GRPC_SERVER_STREAM,
                                        server_stream, b),
                     0);
    assert_int_equal(mica_http_server_listen(b->srv, listen), 0);
    int rc = mica_http_server_attach(b->srv, f->rt);
    if (rc != 0) {
        mica_grpc_server_free(b->gs);
        mica_http_server_free(b->srv);
        b->srv = NULL;
        b->gs = NULL;
        return rc;
    }
    snprintf(b->addr, sizeof(b->addr), "%.*s:%d", (int)(strrchr(listen, ':') - listen), listen,
             mica_http_server_port(b->srv, 0));
    return 0;
}

/* A runtime of `workers` with NB Echo servers on 127.0.0.1 ports. */
static void fx_start(struct fx *f, int workers)
{
    memset(f, 0, sizeof(*f));
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&f->rt, &o), 0);
    for (int i = 0; i < NB; i++) {
        f->b[i].record = workers == 1;
        assert_int_equal(backend_start(f, &f->b[i], "127.0.0.1:0"), 0);
    }
    dead_addr(f->dead, sizeof(f->dead));
}

static void fx_client(struct fx *f, const mica_grpc_client_opts_t *opts)
{
    assert_int_equal(mica_grpc_client_new(&f->c, f->rt, f->target, opts), 0);
}

/* Runs body(f) in a coroutine on worker 0, then frees everything. */
static void fx_run(struct fx *f, void (*body)(void *))
{
    struct run_once ro = {.rt = f->rt, .body = body, .arg = f};
    mica_runtime_on_start(f->rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(f->rt), 0);
    mica_grpc_client_free(f->c);
    mica_grpc_client_free(f->c2);
    for (int i = 0; i < NB; i++) {
        mica_grpc_server_free(f->b[i].gs);
        mica_http_server_free(f->b[i].srv);
    }
    mica_runtime_free(f->rt);
    expect_no_failure();
}

/* One unary Echo call; returns its code. */
static int call(mica_grpc_client_t *c, mica_ctx_t *ctx, const mica_grpc_call_opts_t *o,
                int delay_ms, mica_grpc_result_t *res)
{
    req_t req = REQ_INIT;
    req.message = "hi";
    req.delay_ms = delay_ms;
    ProtobufCMessage *out = NULL;
    mica_grpc_result_t local;
    int code = mica_grpc_unary(c, ctx, echo, "Unary", o, &req.base, &out, res ? res : &local);
    if (code == MICA_GRPC_OK)
        EXPECT(out && strcmp(((resp_t *)out)->message, "hi") == 0);
    else
        EXPECT(out == NULL);
    protobuf_c_message_free_unpacked(out, NULL);
    return code;
}

/* ---- call options ----------------------------------------------------------------------- */

static void opts_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    mica_grpc_md_t md[] = {{"x-trace-id", "4bf92f3577b34da6"}};
    mica_grpc_call_opts_t o = {.md = md, .nmd = 1, .deadline_ms = mica_deadline_in(3000)};
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10000, &ctx);
    EXPECT_EQ(call(f->c, ctx, &o, 0, NULL), MICA_GRPC_OK);
    EXPECT(strcmp(b->trace, "4bf92f3577b34da6") == 0);
    EXPECT(b->left_ms > 2000 && b->left_ms <= 3000); /* the option's, earlier than the ctx's */
    mica_ctx_free(ctx);

    mica_ctx_with_timeout(NULL, 1000, &ctx); /* now the ctx's is the earlier */
    EXPECT_EQ(call(f->c, ctx, &o, 0, NULL), MICA_GRPC_OK);
    EXPECT(b->left_ms > 0 && b->left_ms <= 1000);
    mica_ctx_free(ctx);

    EXPECT_EQ(call(f->c, NULL, NULL, 0, NULL), MICA_GRPC_OK); /* none at all */
    EXPECT_EQ(b->left_ms, -1);
    EXPECT(strcmp(b->trace, "") == 0);

    o = (mica_grpc_call_opts_t){.deadline_ms = mica_deadline_in(100)};
    mica_grpc_result_t res;
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f->c, NULL, &o, 2000, &res), MICA_GRPC_DEADLINE_EXCEEDED);
    EXPECT(mica_now_ms() - t0 < 1000);

    mica_grpc_md_t many[MICA_GRPC_MAX_METADATA + 1];
    for (int i = 0; i <= MICA_GRPC_MAX_METADATA; i++)
        many[i] = (mica_grpc_md_t){"x-n", "1"};
    o = (mica_grpc_call_opts_t){.md = many, .nmd = MICA_GRPC_MAX_METADATA + 1};
    EXPECT_EQ(call(f->c, NULL, &o, 0, NULL), MICA_GRPC_RESOURCE_EXHAUSTED);
}

static void test_call_options_carry_metadata_and_the_earlier_deadline(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    snprintf(f.target, sizeof(f.target), "%s", f.b[0].addr);
    fx_client(&f, NULL);
    fx_run(&f, opts_body);
}

/* ---- interceptors ------------------------------------------------------------------------- */

struct trace {
    char log[128];
};

static void note(struct trace *t, const char *s)
{
    size_t n = strlen(t->log);
    snprintf(t->log + n, sizeof(t->log) - n, "%s", s);
}

static struct trace order;

/* Adds x-trace-id on a larger metadata array that lives until next() returns. */
static int add_trace(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    note(&order, "a>");
    mica_grpc_md_t md[MICA_GRPC_MAX_METADATA];
    size_t n = call->opts.nmd < MICA_GRPC_MAX_METADATA - 1 ? call->opts.nmd : 0;
    if (n)
        memcpy(md, call->opts.md, n * sizeof(md[0]));
    md[n++] = (mica_grpc_md_t){"x-trace-id", arg};
    call->opts.md = md;
    call->opts.nmd = n;
    int code = next(call);
    note(&order, "<a");
    return code;
}

static int observe(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    note(&order, "b>");
    EXPECT(strcmp(call->path, "/mica.interop.Echo/Unary") == 0 || call->streaming);
    EXPECT(call->opts.nmd >= 1 && strcmp(call->opts.md[call->opts.nmd - 1].key, "x-trace-id") == 0);
    int code = next(call);
    EXPECT_EQ(code, call->res->code);
    note(&order, code == MICA_GRPC_OK ? "ok" : "err");
    note(&order, "<b");
    return code;
}

static void chain_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(call(f->c, NULL, NULL, 0, NULL), MICA_GRPC_OK);
    if (!EXPECT(strcmp(order.log, "a>b>ok<b<a") == 0))
        fprintf(stderr, "order: %s\n", order.log);
    EXPECT(strcmp(f->b[0].trace, "from-interceptor") == 0);
    EXPECT_EQ(mica_grpc_client_intercept(f->c, observe, NULL), MICA_EBUSY); /* after first use */
}

static void test_interceptors_run_outermost_first_and_can_add_metadata(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    snprintf(f.target, sizeof(f.target), "%s", f.b[0].addr);
    fx_client(&f, NULL);
    order.log[0] = '\0';
    assert_int_equal(mica_grpc_client_intercept(f.c, add_trace, "from-interceptor"), 0);
    assert_int_equal(mica_grpc_client_intercept(f.c, observe, NULL), 0);
    fx_run(&f, chain_body);
}

static int deny(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    call->res->code = MICA_GRPC_PERMISSION_DENIED;
    snprintf(call->res->message, sizeof(call->res->message), "no token");
    return MICA_GRPC_PERMISSION_DENIED;
}

static void deny_body(void *arg)
{
    struct fx *f = arg;
    mica_grpc_result_t res;
    EXPECT_EQ(call(f->c, NULL, NULL, 0, &res), MICA_GRPC_PERMISSION_DENIED);
    EXPECT(strcmp(res.message, "no token") == 0);
    mica_grpc_stream_t *st = NULL;
    EXPECT_EQ(mica_grpc_stream_open(f->c, NULL, echo, "ServerStream", NULL, &st), MICA_EPERM);
    EXPECT_EQ(atomic_load(&f->b[0].calls), 0); /* nothing went out */
}

static void test_an_interceptor_can_answer_without_a_call(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    snprintf(f.target, sizeof(f.target), "%s", f.b[0].addr);
    fx_client(&f, NULL);
    assert_int_equal(mica_grpc_client_intercept(f.c, deny, NULL), 0);
    fx_run(&f, deny_body);
}

/* Retries UNAVAILABLE up to 3 times, each attempt with its own second. */
static int retry(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    int64_t overall = call->opts.deadline_ms;
    int code = MICA_GRPC_UNAVAILABLE;
    for (int attempt = 0; attempt < 3 && code == MICA_GRPC_UNAVAILABLE; attempt++) {
        int64_t per = mica_deadline_in(1000);
        call->opts.deadline_ms = overall && overall < per ? overall : per;
        code = next(call);
    }
    call->opts.deadline_ms = overall;
    return code;
}

static int attempts;

/* Inside the retry interceptor: sees every attempt. */
static int count_attempts(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    attempts++;
    return next(call);
}

static void retry_body(void *arg)
{
    struct fx *f = arg;
    struct backend *b = &f->b[0];
    atomic_store(&b->fail_first, 2);
    EXPECT_EQ(call(f->c, NULL, NULL, 0, NULL), MICA_GRPC_OK);
    EXPECT_EQ(atomic_load(&b->calls), 3);
    EXPECT_EQ(attempts, 3);
    EXPECT(b->left_ms > 0 && b->left_ms <= 1000); /* the per-attempt deadline went out */
    mica_grpc_result_t res;
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f->c, NULL, NULL, 5000, &res), MICA_GRPC_DEADLINE_EXCEEDED);
    EXPECT(mica_now_ms() - t0 < 4000);
}

static void test_an_interceptor_can_retry_with_a_deadline_of_its_own(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    snprintf(f.target, sizeof(f.target), "%s", f.b[0].addr);
    fx_client(&f, NULL);
    assert_int_equal(mica_grpc_client_intercept(f.c, retry, NULL), 0);
    assert_int_equal(mica_grpc_client_intercept(f.c, count_attempts, NULL), 0);
    fx_run(&f, retry_body);
}

static struct {
    int opened, ended, code;
} seen;

static void on_end(const mica_grpc_result_t *res, void *arg)
{
    seen.ended++;
    seen.code = res->code;
}

static int watch_streams(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    int code = next(call);
    if (call->streaming && code == MICA_GRPC_OK) {
        seen.opened++;
        EXPECT_EQ(mica_grpc_stream_on_finish(call->stream, on_end, NULL), 0);
    }
    return code;
}

static void stream_body(void *arg)
{
    struct fx *f = arg;
    mica_grpc_stream_t *st;
    if (!EXPECT_EQ(mica_grpc_stream_open(f->c, NULL, echo, "ServerStream", NULL, &st), 0))
        return;
    req_t req = REQ_INIT;
    req.count = 3;
    req.status = MICA_GRPC_ABORTED;
    EXPECT_EQ(mica_grpc_stream_send(st, &req.base), 0);
    EXPECT_EQ(mica_grpc_stream_close_send(st), 0);
    ProtobufCMessage *m;
    int n = 0;
    while (mica_grpc_stream_recv(st, &m) == 0) {
        protobuf_c_message_free_unpacked(m, NULL);
        n++;
    }
    EXPECT_EQ(seen.ended, 0);
    EXPECT_EQ(mica_grpc_stream_finish(st, NULL), MICA_GRPC_ABORTED);
    EXPECT_EQ(n, 3);
    EXPECT_EQ(seen.opened, 1);
    EXPECT_EQ(seen.ended, 1);
    EXPECT_EQ(seen.code, MICA_GRPC_ABORTED);
}

static void test_stream_interceptors_see_the_open_and_the_end(void **state)
{
    struct fx f;
    fx_start(&f, 1);
    snprintf(f.target, sizeof(f.target), "%s", f.b[0].addr);
    fx_client(&f, NULL);
    assert_int_equal(mica_grpc_client_intercept(f.c, watch_streams, NULL), 0);
    fx_run(&f, stream_body);
}

/* ---- endpoints: spreading, updates, refusals --------------------------------------------- */

struct many {
    mica_grpc_client_t *c;
    mica_wg_t *wg;
    int calls;
    atomic_int ok;
};

static void caller(void *arg)
{
    struct many *m = arg;
    for (int i = 0; i < m->calls; i++)
        if (call(m->c, NULL, NULL, 0, NULL) == MICA_GRPC_OK)
            atomic_fetch_add(&m->ok, 1);
    mica_wg_done(m->wg);
}

/* `per_worker` calls from a coroutine on each worker. Returns how many were OK. */
static int calls_on_every_worker(mica_grpc_client_t *c, int per_worker)
{
    struct many m = {.c = c, .calls = per_worker};
    mica_wg_new(&m.wg);
    mica_wg_add(m.wg, mica_worker_count());
    for (int w = 0; w < mica_worker_count(); w++)
        mica_go_on(w, caller, &m);
    EXPECT_EQ(mica_wg_wait(m.wg, NULL), 0);
    mica_wg_free(m.wg);
    return atomic_load(&m.ok);
}

static void spread_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(calls_on_every_worker(f->c, 30), 60);
    for (int i = 0; i < NB; i++) /* round robin on each worker: 10 + 10 */
        EXPECT_EQ(atomic_load(&f->b[i].calls), 20);
}

static void test_round_robin_spreads_calls_over_every_endpoint(void **state)
{
    struct fx f;
    fx_start(&f, 2);
    snprintf(f.target, sizeof(f.target), "static:///%s,%s,%s", f.b[0].addr, f.b[1].addr,
             f.b[2].addr);
    fx_client(&f, NULL);
    fx_run(&f, spread_body);
}

static void update_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(calls_on_every_worker(f->c, 10), 20);
    EXPECT_EQ(atomic_load(&f->b[0].calls) + atomic_load(&f->b[1].calls), 20);
    EXPECT_EQ(atomic_load(&f->b[2].calls), 0);
    mica_endpoint_t e = {f->b[2].addr, 1, NULL, NULL};
    EXPECT_EQ(mica_resolver_update(mica_grpc_client_resolver(f->c), &e, 1), 0);
    EXPECT_EQ(calls_on_every_worker(f->c, 10), 20);
    EXPECT_EQ(atomic_load(&f->b[2].calls), 20); /* all of the new traffic */
    EXPECT_EQ(atomic_load(&f->b[0].calls) + atomic_load(&f->b[1].calls), 20);
}

static void test_a_resolver_update_moves_traffic(void **state)
{
    struct fx f;
    fx_start(&f, 2);
    snprintf(f.target, sizeof(f.target), "static:///%s,%s", f.b[0].addr, f.b[1].addr);
    fx_client(&f, NULL);
    fx_run(&f, update_body);
}

static void refuse_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(calls_on_every_worker(f->c, 20), 40); /* none fails */
    EXPECT_EQ(atomic_load(&f->b[0].calls), 40);

    /* Only the refusing endpoint left: UNAVAILABLE, at once during its back-off. */
    mica_endpoint_t e = {f->dead, 1, NULL, NULL};
    EXPECT_EQ(mica_resolver_update(mica_grpc_client_resolver(f->c), &e, 1), 0);
    mica_grpc_result_t res;
    EXPECT_EQ(call(f->c, NULL, NULL, 0, &res), MICA_GRPC_UNAVAILABLE);
    EXPECT(strstr(res.message, "refused") != NULL);
    int64_t t0 = mica_now_ms();
    for (int i = 0; i < 100; i++) /* no wait: fail fast in back-off, or a refused connect */
        EXPECT_EQ(call(f->c, NULL, NULL, 0, NULL), MICA_GRPC_UNAVAILABLE);
    EXPECT(mica_now_ms() - t0 < 3000);
    mica_grpc_stream_t *st;
    EXPECT_EQ(mica_grpc_stream_open(f->c, NULL, echo, "Unary", NULL, &st), MICA_ECONNREFUSED);
}

static void test_a_refusing_endpoint_is_skipped_and_alone_fails_unavailable(void **state)
{
    struct fx f;
    fx_start(&f, 2);
    snprintf(f.target, sizeof(f.target), "static:///%s,%s", f.dead, f.b[0].addr);
    fx_client(&f, NULL);
    fx_run(&f, refuse_body);
}

static void dns_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(calls_on_every_worker(f->c, 5), 10);
    EXPECT_EQ(atomic_load(&f->b[0].calls), 10);
}

static void test_a_dns_target_resolves_and_calls(void **state)
{
    struct fx f;
    fx_start(&f, 2);
    /* localhost is 127.0.0.1 in every /etc/hosts; ::1 may be absent or refuse */
    snprintf(f.target, sizeof(f.target), "dns:///localhost:%s", strrchr(f.b[0].addr, ':') + 1);
    fx_client(&f, NULL);
    fx_run(&f, dns_body);
    mica_grpc_client_t *c;
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    /* a name without a port asks for SRV records (the records give the ports) */
    assert_int_equal(mica_grpc_client_new(&c, rt, "dns:///localhost", NULL), 0);
    mica_grpc_client_free(c);
    /* still invalid: an empty host, an empty port, a port out of range */
    assert_int_equal(mica_grpc_client_new(&c, rt, "dns:///:50051", NULL), MICA_EINVAL);
    assert_int_equal(mica_grpc_client_new(&c, rt, "dns:///localhost:", NULL), MICA_EINVAL);
    assert_int_equal(mica_grpc_client_new(&c, rt, "dns:///localhost:65536", NULL), MICA_EINVAL);
    assert_int_equal(mica_grpc_client_new(&c, rt, "nope:///x", NULL), MICA_EINVAL);
    mica_runtime_free(rt);
}

/* ---- DNS re-resolution, in a private mount namespace with our own /etc/hosts ----------- */

static char hosts_path[64], nss_path[64];

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w"); /* in place: the bind mount shows the same inode */
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* Gives this process its own /etc/hosts and "hosts: files" (no DNS server
 * asked). Returns false when not permitted (not root): the test is skipped. */
static bool private_hosts(void)
{
    snprintf(hosts_path, sizeof(hosts_path), "/tmp/mica-hosts-%d", (int)getpid());
    snprintf(nss_path, sizeof(nss_path), "/tmp/mica-nss-%d", (int)getpid());
    write_file(hosts_path, "127.0.0.1 localhost\n");
    write_file(nss_path, "hosts: files\n");
    /* "none": the kernel ignores the type of these mounts; valgrind wants a string */
    if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount(hosts_path, "/etc/hosts", "none", MS_BIND, NULL) != 0 ||
        mount(nss_path, "/etc/nsswitch.conf", "none", MS_BIND, NULL) != 0) {
        print_message("skipped: no private mount namespace (%s); run as root\n", strerror(errno));
        return false;
    }
    return true;
}

static void reresolve_body(void *arg)
{
    struct fx *f = arg;
    /* the name has only the IPv4 address: b[0] gets everything */
    EXPECT_EQ(calls_on_every_worker(f->c, 10), 20);
    EXPECT_EQ(atomic_load(&f->b[0].calls), 20);
    /* now only the IPv6 one: the next refresh (100 ms) moves the traffic */
    write_file(hosts_path, "::1 mica-test-name\n");
    mica_sleep_ms(400);
    EXPECT_EQ(calls_on_every_worker(f->c, 10), 20);
    EXPECT_EQ(atomic_load(&f->b[1].calls), 20);
    EXPECT_EQ(atomic_load(&f->b[0].calls), 20);
    /* the name disappears: lookups fail, the last good list stays */
    write_file(hosts_path, "127.0.0.1 localhost\n");
    mica_sleep_ms(400);
    EXPECT_EQ(calls_on_every_worker(f->c, 10), 20);
    EXPECT_EQ(atomic_load(&f->b[1].calls), 40);
    /* a name that never resolved: UNAVAILABLE, not a wait */
    mica_grpc_result_t res;
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(call(f->c2, NULL, NULL, 0, &res), MICA_GRPC_UNAVAILABLE);
    EXPECT(mica_now_ms() - t0 < 3000);
}

static void test_dns_targets_follow_the_records_and_keep_the_last_good_list(void **state)
{
    if (!private_hosts())
        return;
    struct fx f;
    memset(&f, 0, sizeof(f));
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&f.rt, &o), 0);
    assert_int_equal(backend_start(&f, &f.b[0], "127.0.0.1:0"), 0);
    const char *port = strrchr(f.b[0].addr, ':') + 1;
    char v6[64];
    snprintf(v6, sizeof(v6), "[::1]:%s", port);
    if (backend_start(&f, &f.b[1], v6) != 0) { /* taken on ::1: give up quietly */
        print_message("skipped: port %s is taken on ::1\n", port);
        mica_grpc_server_free(f.b[0].gs);
        mica_http_server_free(f.b[0].srv);
        mica_runtime_free(f.rt);
        return;
    }
    char hosts[64];
    snprintf(hosts, sizeof(hosts), "127.0.0.1 mica-test-name\n");
    write_file(hosts_path, hosts);
    snprintf(f.target, sizeof(f.target), "dns:///mica-test-name:%s", port);
    mica_grpc_client_opts_t co = {.resolve_interval_ms = 100};
    fx_client(&f, &co);
    assert_int_equal(mica_grpc_client_new(&f.c2, f.rt, "no-such-name:1", NULL), 0);
    fx_run(&f, reresolve_body);
    unlink(hosts_path);
    unlink(nss_path);
}

/* ---- allocation failures: every one ends the call with a status --------------------------- */

/* An Echo server in a child process, so that injected failures hit the client only. */
static pid_t server_child(char *addr, size_t size)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        mica_runtime_t *rt;
        mica_runtime_opts_t o = {.workers = 1, .drain_timeout_ms = 1000};
        struct backend b = {0};
        if (mica_runtime_new(&rt, &o) != 0 || mica_http_server_new(&b.srv, NULL) != 0 ||
            mica_grpc_server_new(&b.gs, b.srv, NULL) != 0 ||
            mica_grpc_register(b.gs, echo, "Unary", MICA_GRPC_UNARY, unary, &b) != 0 ||
            mica_http_server_listen(b.srv, "127.0.0.1:0") != 0 ||
            mica_http_server_attach(b.srv, rt) != 0)
            _exit(1);
        int port = mica_http_server_port(b.srv, 0);
        if (write(p[1], &port, sizeof(port)) != sizeof(port))
            _exit(1);
        close(p[1]);
        int rc = mica_runtime_run(rt);
        mica_grpc_server_free(b.gs);
        mica_http_server_free(b.srv);
        mica_runtime_free(rt);
        _exit(rc == 0 ? 0 : 1);
    }
    close(p[1]);
    int port = 0;
    assert_int_equal(read(p[0], &port, sizeof(port)), sizeof(port));
    close(p[0]);
    snprintf(addr, size, "127.0.0.1:%d", port);
    return pid;
}

struct oom_case {
    mica_grpc_client_t *c;
    long nth;
    long used; /* allocations the call made */
    int code;
};

static void oom_body(void *arg)
{
    struct oom_case *k = arg;
    mica__alloc_fail_nth(k->nth);
    k->code = call(k->c, NULL, NULL, 0, NULL);
    k->used = mica__alloc_count();
    mica__alloc_fail_nth(0);
    if (k->code != MICA_GRPC_OK) /* the client is still usable afterwards */
        EXPECT_EQ(call(k->c, NULL, NULL, 0, NULL), MICA_GRPC_OK);
}

static void test_allocation_failures_end_calls_with_a_status(void **state)
{
    char addr[64];
    pid_t pid = server_child(addr, sizeof(addr));
    int failed = 0;
    for (long nth = 1;; nth++) {
        struct oom_case k = {.nth = nth};
        struct run_once ro = {.body = oom_body, .arg = &k};
        mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
        assert_int_equal(mica_runtime_new(&ro.rt, &o), 0);
        assert_int_equal(mica_grpc_client_new(&k.c, ro.rt, addr, NULL), 0);
        mica_runtime_on_start(ro.rt, run_once_start, &ro);
        mica_runtime_run(ro.rt); /* a failed spawn may leave work to cancel: any result */
        mica_grpc_client_free(k.c);
        mica_runtime_free(ro.rt);
        expect_no_failure();
        failed += k.code != MICA_GRPC_OK;
        if (k.used < nth) /* the call made fewer allocations: all were covered */
            break;
        assert_true(nth < 2000);
    }
    print_message("%d of the call's allocations failed in turn, each with a status\n", failed);
    assert_true(failed > 0);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_options_carry_metadata_and_the_earlier_deadline),
        cmocka_unit_test(test_interceptors_run_outermost_first_and_can_add_metadata),
        cmocka_unit_test(test_an_interceptor_can_answer_without_a_call),
        cmocka_unit_test(test_an_interceptor_can_retry_with_a_deadline_of_its_own),
        cmocka_unit_test(test_stream_interceptors_see_the_open_and_the_end),
        cmocka_unit_test(test_round_robin_spreads_calls_over_every_endpoint),
        cmocka_unit_test(test_a_resolver_update_moves_traffic),
        cmocka_unit_test(test_a_refusing_endpoint_is_skipped_and_alone_fails_unavailable),
        cmocka_unit_test(test_a_dns_target_resolves_and_calls),
        cmocka_unit_test(test_dns_targets_follow_the_records_and_keep_the_last_good_list),
        cmocka_unit_test(test_allocation_failures_end_calls_with_a_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * Spans and their export, with real components on loopback: a traced
 * server, and an OTLP receiver -- a mica route that decodes what arrives
 * with the same .proto -- in one runtime. The exporter against a receiver
 * that answers 503 then 200 (delivered once), and one that hangs (requests
 * unaffected, drops counted); the sampler's ratio; the span API's limits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "mica/sync.h"
#include "mica/trace.h"
#include "otlp_trace.pb-c.h"

#define TID "12345678901234567890123456789012"
#define SID "1234567890123456"
#define MAX_SPANS 256

typedef struct seen_span {
    char name[64];
    uint8_t trace_id[16], span_id[8], parent[8];
    bool has_parent;
    int kind, status, nattrs, nevents, dropped_attrs;
    char attrs[512]; /* "key=value;" for each attribute */
    char event[32];
} seen_span_t;

struct rx {
    mica_runtime_t *rt;
    mica_http_server_t *app, *recv;
    mica_tracer_t *tracer;
    char app_addr[64], recv_addr[64], endpoint[96];
    int answer_first; /* this status to the first post, then 200 */
    bool hang;        /* hold each post until `release` */
    mica_event_t release;
    int posts;    /* every post received */
    int accepted; /* posts answered 200 */
    char resource[128];
    seen_span_t spans[MAX_SPANS];
    int nspans;
    int64_t slowest_ms;        /* the slowest app request, seen by the client */
    mica_trace_stats_t st;     /* after the run */
    mica_trace_stats_t during; /* read by a client during the run */
    int workers;
    bool want_client;           /* make `hc`, a traced HTTP client of the app */
    mica_http_client_t *hc;
    pthread_mutex_t lock; /* the receiver may run on either worker */
};

static void attr_text(char *out, size_t size, Mica__Otlp__KeyValue *const *kv, size_t n)
{
    size_t w = strlen(out);
    for (size_t i = 0; i < n && w < size; i++) {
        const Mica__Otlp__AnyValue *v = kv[i]->value;
        if (v->value_case == MICA__OTLP__ANY_VALUE__VALUE_INT_VALUE)
            w += (size_t)snprintf(out + w, size - w, "%s=%lld;", kv[i]->key,
                                  (long long)v->int_value);
        else if (v->value_case == MICA__OTLP__ANY_VALUE__VALUE_BOOL_VALUE)
            w += (size_t)snprintf(out + w, size - w, "%s=%s;", kv[i]->key,
                                  v->bool_value ? "true" : "false");
        else
            w += (size_t)snprintf(out + w, size - w, "%s=%s;", kv[i]->key,
                                  v->string_value ? v->string_value : "?");
    }
}

static int receive(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    struct rx *x = arg;
    pthread_mutex_lock(&x->lock);
    int post = ++x->posts;
    pthread_mutex_unlock(&x->lock);
    if (x->hang)
        mica_event_wait(&x->release, NULL, mica_deadline_in(20000));
    if (x->answer_first && post == 1) {
        mica_http_resp_header(resp, "Retry-After", "0");
        return mica_http_resp_text(resp, x->answer_first, "not now");
    }
    size_t len;
    const char *body = mica_http_req_body(req, &len);
    Mica__Otlp__ExportTraceServiceRequest *m =
        mica__otlp__export_trace_service_request__unpack(NULL, len, (const uint8_t *)body);
    if (!EXPECT(m != NULL) || !EXPECT_EQ(m->n_resource_spans, 1))
        return mica_http_resp_text(resp, 400, "bad");
    const Mica__Otlp__ResourceSpans *rs = m->resource_spans[0];
    pthread_mutex_lock(&x->lock);
    x->resource[0] = '\0';
    attr_text(x->resource, sizeof(x->resource), rs->resource->attributes,
              rs->resource->n_attributes);
    for (size_t s = 0; s < rs->n_scope_spans; s++)
        for (size_t i = 0; i < rs->scope_spans[s]->n_spans && x->nspans < MAX_SPANS; i++) {
            const Mica__Otlp__Span *sp = rs->scope_spans[s]->spans[i];
            seen_span_t *o = &x->spans[x->nspans++];
            memset(o, 0, sizeof(*o));
            snprintf(o->name, sizeof(o->name), "%s", sp->name);
            EXPECT_EQ(sp->trace_id.len, 16);
            EXPECT_EQ(sp->span_id.len, 8);
            memcpy(o->trace_id, sp->trace_id.data, 16);
            memcpy(o->span_id, sp->span_id.data, 8);
            if ((o->has_parent = sp->parent_span_id.len == 8))
                memcpy(o->parent, sp->parent_span_id.data, 8);
            o->kind = sp->kind;
            o->status = sp->status ? sp->status->code : 0;
            o->nattrs = (int)sp->n_attributes;
            o->nevents = (int)sp->n_events;
            o->dropped_attrs = (int)sp->dropped_attributes_count;
            attr_text(o->attrs, sizeof(o->attrs), sp->attributes, sp->n_attributes);
            if (sp->n_events)
                snprintf(o->event, sizeof(o->event), "%s", sp->events[0]->name);
            EXPECT(sp->end_time_unix_nano >= sp->start_time_unix_nano);
            EXPECT(sp->start_time_unix_nano > 1700000000ull * 1000000000ull);
        }
    x->accepted++;
    pthread_mutex_unlock(&x->lock);
    mica__otlp__export_trace_service_request__free_unpacked(m, NULL);
    return mica_http_resp_send(resp, 200, "application/x-protobuf", NULL, 0);
}

/* GET /users/{id}: a child span with attributes, an event and an error status. */
static int user(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_ctx_t *ctx;
    mica_span_t *sp;
    if (mica_trace_start(mica_http_req_ctx(req), "load user", MICA_SPAN_INTERNAL, &ctx, &sp) != 0)
        return MICA_ENOMEM;
    mica_span_set_int(sp, "user.id", 7);
    mica_span_set_str(sp, "db.system", "memory");
    mica_span_add_event(sp, "cache miss",
                        (mica_log_field_t[]){MICA_LOG_STR("key", "u:7"), MICA_LOG_BOOL("hit", 0)},
                        2);
    mica_span_set_status(sp, MICA_SPAN_ERROR, "not in cache");
    EXPECT(mica_trace_span(ctx) == sp);
    mica_ctx_t *inner;
    mica_span_t *sp2;
    if (EXPECT_EQ(mica_trace_start(ctx, "too many", MICA_SPAN_INTERNAL, &inner, &sp2), 0)) {
        for (int i = 0; i < 40; i++) {
            char k[16];
            snprintf(k, sizeof(k), "k%d", i);
            mica_span_set_int(sp2, k, i);
        }
        mica_span_end(sp2);
    }
    mica_span_end(sp);
    return mica_http_resp_text(resp, 200, "alice");
}

static int failing(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    return MICA_EINTERNAL;
}

static void start(struct rx *x, int workers, const mica_trace_opts_t *o, mica_worker_cb client)
{
    mica_runtime_opts_t ro = {.workers = workers, .no_signals = true, .drain_timeout_ms = 5000};
    pthread_mutex_init(&x->lock, NULL);
    assert_int_equal(mica_runtime_new(&x->rt, &ro), 0);
    assert_int_equal(mica_http_server_new(&x->recv, NULL), 0);
    assert_int_equal(mica_http_route(x->recv, "POST", "/v1/traces", receive, x), 0);
    assert_int_equal(mica_http_server_listen(x->recv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(x->recv, x->rt), 0);
    snprintf(x->recv_addr, sizeof(x->recv_addr), "127.0.0.1:%d", mica_http_server_port(x->recv, 0));
    snprintf(x->endpoint, sizeof(x->endpoint), "http://%s", x->recv_addr); /* + /v1/traces */
    mica_trace_opts_t to = *o;
    to.endpoint = x->endpoint;
    assert_int_equal(mica_http_server_new(&x->app, NULL), 0);
    assert_int_equal(mica_trace_enable(&x->tracer, x->rt, x->app, &to), 0);
    assert_int_equal(mica_http_route(x->app, "GET", "/users/{id}", user, x), 0);
    assert_int_equal(mica_http_route(x->app, "GET", "/fail", failing, x), 0);
    assert_int_equal(mica_http_server_listen(x->app, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(x->app, x->rt), 0);
    snprintf(x->app_addr, sizeof(x->app_addr), "127.0.0.1:%d", mica_http_server_port(x->app, 0));
    if (x->want_client) {
        char target[96];
        snprintf(target, sizeof(target), "http://%s", x->app_addr);
        assert_int_equal(mica_http_client_new(&x->hc, x->rt, target, NULL), 0);
        assert_int_equal(mica_trace_http_client(x->tracer, x->hc), 0);
    }
    mica_runtime_on_start(x->rt, client, x);
    assert_int_equal(mica_runtime_run(x->rt), 0);
    mica_trace_stats(x->tracer, &x->st);
    x->workers = workers;
    mica_http_client_free(x->hc);
    mica_http_server_free(x->app);
    mica_http_server_free(x->recv);
    mica_tracer_free(x->tracer);
    mica_runtime_free(x->rt);
    expect_no_failure();
}

/* GET path (with extra header lines) on the app; returns the status, records the slowest. */
static int get(struct rx *x, const char *path, const char *extra)
{
    char req[512], reply[2048];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n",
                     path, x->app_addr, extra);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    ssize_t got = wire_exchange(x->app_addr, req, (size_t)n, reply, sizeof(reply), 3000);
    clock_gettime(CLOCK_MONOTONIC, &b);
    int64_t ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    if (ms > x->slowest_ms)
        x->slowest_ms = ms;
    int status = 0;
    if (got > 12)
        sscanf(reply, "HTTP/1.1 %d", &status);
    return status;
}

/* Waits (up to 10 s) until the tracer has exported `n` spans. */
static void wait_exported(struct rx *x, uint64_t n)
{
    int64_t end = mica_deadline_in(10000);
    mica_trace_stats_t st;
    do {
        mica_sleep_ms(10);
        mica_trace_stats(x->tracer, &st);
    } while (st.exported < n && mica_now_ms() < end);
    EXPECT_EQ(st.exported, n);
}

static const seen_span_t *find(const struct rx *x, const char *name)
{
    for (int i = 0; i < x->nspans; i++)
        if (strcmp(x->spans[i].name, name) == 0)
            return &x->spans[i];
    return NULL;
}

static void export_client(int worker, void *arg)
{
    struct rx *x = arg;
    if (worker != 0)
        return; /* the other worker serves and exports, and ends spans of its own */
    EXPECT_EQ(get(x, "/users/7", "traceparent: 00-" TID "-" SID "-01\r\nUser-Agent: t/1\r\n"), 200);
    EXPECT_EQ(get(x, "/fail", ""), 500);
    EXPECT_EQ(get(x, "/nope", ""), 404);
    wait_exported(x, 5); /* 3 server spans, 2 children */
    mica_runtime_stop(x->rt);
}

static void test_spans_reach_the_receiver_with_their_attributes_and_parents(void **state)
{
    static struct rx x;
    memset(&x, 0, sizeof(x));
    mica_trace_opts_t o = {.schedule_delay_ms = 50, .service_name = "users"};
    start(&x, 2, &o, export_client); /* two workers: queues, exporters and stats across threads */
    assert_int_equal(x.nspans, 5);
    assert_non_null(strstr(x.resource, "service.name=users;"));
    assert_non_null(strstr(x.resource, "telemetry.sdk.name=mica;"));

    const seen_span_t *srv = find(&x, "GET /users/{id}");
    assert_non_null(srv);
    assert_int_equal(srv->kind, MICA__OTLP__SPAN__SPAN_KIND__SPAN_KIND_SERVER);
    uint8_t tid[16] = {0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56,
                       0x78, 0x90, 0x12, 0x34, 0x56, 0x78, 0x90, 0x12};
    uint8_t sid[8] = {0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56};
    assert_memory_equal(srv->trace_id, tid, 16);
    assert_true(srv->has_parent);
    assert_memory_equal(srv->parent, sid, 8); /* the caller's span */
    assert_non_null(strstr(srv->attrs, "http.request.method=GET;"));
    assert_non_null(strstr(srv->attrs, "http.route=/users/{id};"));
    assert_non_null(strstr(srv->attrs, "url.path=/users/7;"));
    assert_non_null(strstr(srv->attrs, "http.response.status_code=200;"));
    assert_non_null(strstr(srv->attrs, "network.protocol.version=1.1;"));
    assert_non_null(strstr(srv->attrs, "server.address=127.0.0.1;"));
    assert_non_null(strstr(srv->attrs, "server.port="));
    assert_non_null(strstr(srv->attrs, "user_agent.original=t/1;"));
    assert_int_equal(srv->status, 0);

    const seen_span_t *child = find(&x, "load user");
    assert_non_null(child);
    assert_int_equal(child->kind, MICA__OTLP__SPAN__SPAN_KIND__SPAN_KIND_INTERNAL);
    assert_memory_equal(child->trace_id, tid, 16);
    assert_memory_equal(child->parent, srv->span_id, 8);
    assert_string_equal(child->attrs, "user.id=7;db.system=memory;");
    assert_int_equal(child->nevents, 1);
    assert_string_equal(child->event, "cache miss");
    assert_int_equal(child->status, MICA__OTLP__STATUS__STATUS_CODE__STATUS_CODE_ERROR);

    const seen_span_t *many = find(&x, "too many");
    assert_non_null(many);
    assert_memory_equal(many->parent, child->span_id, 8);
    assert_int_equal(many->nattrs, 32);
    assert_int_equal(many->dropped_attrs, 8);

    const seen_span_t *f = find(&x, "GET /fail");
    assert_non_null(f);
    assert_false(f->has_parent); /* a root */
    assert_int_equal(f->status, MICA__OTLP__STATUS__STATUS_CODE__STATUS_CODE_ERROR);
    assert_non_null(strstr(f->attrs, "error.type=500;"));
    const seen_span_t *nf = find(&x, "GET");
    if (!nf)
        fail_msg("no span named \"GET\" (a request without a route)");
    const char *nfa = nf ? nf->attrs : "";
    assert_non_null(strstr(nfa, "http.response.status_code=404;"));
    assert_null(strstr(nfa, "http.route"));
    assert_int_equal(nf ? nf->status : -1, 0); /* a 4xx is not a server's error */

    assert_int_equal(x.st.started, 5);
    assert_int_equal(x.st.exported, 5);
    assert_int_equal(x.st.dropped, 0);
}

/* A call of the traced HTTP client under a span of the caller's own. */
static void http_client_client(int worker, void *arg)
{
    struct rx *x = arg;
    if (worker != 0)
        return;
    mica_ctx_t *ctx;
    mica_span_t *sp;
    if (EXPECT_EQ(mica_trace_start(mica_ctx_background(), "caller", MICA_SPAN_INTERNAL, &ctx, &sp),
                  0)) {
        mica_http_response_t *r = NULL;
        if (EXPECT_EQ(mica_http_client_get(x->hc, ctx, "/users/7?x=1", NULL, &r), 0))
            EXPECT_EQ(mica_http_response_status(r), 200);
        mica_http_response_free(r);
        r = NULL;
        if (EXPECT_EQ(mica_http_client_get(x->hc, ctx, "/fail", NULL, &r), 0))
            EXPECT_EQ(mica_http_response_status(r), 500);
        mica_http_response_free(r);
        mica_span_end(sp);
    }
    wait_exported(x, 7); /* caller, 2 client spans, 2 server spans, 2 children */
    mica_runtime_stop(x->rt);
}

static void test_the_http_client_sends_traceparent_and_records_client_spans(void **state)
{
    static struct rx x;
    memset(&x, 0, sizeof(x));
    x.want_client = true;
    mica_trace_opts_t o = {.schedule_delay_ms = 50};
    start(&x, 2, &o, http_client_client);
    assert_int_equal(x.nspans, 7);
    const seen_span_t *caller = find(&x, "caller");
    const seen_span_t *srv = find(&x, "GET /users/{id}");
    const seen_span_t *fail = find(&x, "GET /fail");
    assert_non_null(caller);
    assert_non_null(srv);
    assert_non_null(fail);
    int nclient = 0;
    const seen_span_t *get_span = NULL, *fail_span = NULL;
    for (int i = 0; i < x.nspans; i++) {
        const seen_span_t *c = &x.spans[i];
        if (c->kind != MICA__OTLP__SPAN__SPAN_KIND__SPAN_KIND_CLIENT)
            continue;
        nclient++;
        assert_string_equal(c->name, "GET");
        assert_memory_equal(c->trace_id, caller->trace_id, 16);
        assert_true(c->has_parent);
        assert_memory_equal(c->parent, caller->span_id, 8); /* the span in the call's ctx */
        if (strstr(c->attrs, "url.path=/users/7;"))
            get_span = c;
        else if (strstr(c->attrs, "url.path=/fail;"))
            fail_span = c;
    }
    assert_int_equal(nclient, 2);
    assert_non_null(get_span);
    assert_non_null(fail_span);
    /* the server continued the trace the client sent: its parent is the client span */
    assert_memory_equal(srv->trace_id, caller->trace_id, 16);
    assert_memory_equal(srv->parent, get_span->span_id, 8);
    assert_memory_equal(fail->parent, fail_span->span_id, 8);
    const char *ga = get_span ? get_span->attrs : "", *fa = fail_span ? fail_span->attrs : "";
    assert_non_null(strstr(ga, "http.response.status_code=200;"));
    assert_non_null(strstr(ga, "server.address=127.0.0.1;"));
    assert_int_equal(get_span ? get_span->status : -1, 0);
    assert_non_null(strstr(fa, "error.type=500;"));
    assert_int_equal(fail_span ? fail_span->status : -1,
                     MICA__OTLP__STATUS__STATUS_CODE__STATUS_CODE_ERROR);
}

static void retry_client(int worker, void *arg)
{
    struct rx *x = arg;
    for (int i = 0; i < 3; i++)
        EXPECT_EQ(get(x, "/fail", ""), 500);
    wait_exported(x, 3);
    mica_runtime_stop(x->rt);
}

static void test_a_503_is_retried_and_the_spans_delivered_once(void **state)
{
    static struct rx x;
    memset(&x, 0, sizeof(x));
    x.answer_first = 503;
    mica_trace_opts_t o = {.schedule_delay_ms = 50};
    start(&x, 1, &o, retry_client);
    assert_int_equal(x.posts, 2);
    assert_int_equal(x.accepted, 1);
    assert_int_equal(x.nspans, 3);
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            assert_memory_not_equal(x.spans[i].span_id, x.spans[j].span_id, 8);
    assert_int_equal(x.st.exported, 3);
    assert_int_equal(x.st.exports, 1);
    assert_int_equal(x.st.failures, 1);
    assert_int_equal(x.st.dropped, 0);
}

static void hang_client(int worker, void *arg)
{
    struct rx *x = arg;
    /* The exporter's first batch hangs on the receiver; 40 requests go on regardless. */
    for (int i = 0; i < 40; i++)
        EXPECT_EQ(get(x, "/fail", ""), 500);
    mica_trace_stats(x->tracer, &x->during);
    mica_event_set(&x->release); /* let the receiver answer, so the drain can flush */
    mica_runtime_stop(x->rt);
}

static void test_a_hanging_receiver_does_not_hold_requests_and_drops_are_counted(void **state)
{
    static struct rx x;
    memset(&x, 0, sizeof(x));
    x.hang = true;
    mica_trace_opts_t o = {.schedule_delay_ms = 10, .max_queue = 8, .max_batch = 4};
    start(&x, 1, &o, hang_client);
    assert_true(x.slowest_ms < 1000);
    assert_int_equal(x.during.started, 40);      /* read while the receiver still hung */
    assert_true(x.during.dropped >= 40 - 8 - 4); /* beyond the queue and the batch in flight */
    assert_true(x.during.queued <= 8);
    assert_int_equal(x.during.exported, 0);
    /* released, the hung batch went through; the drain's final flush may or may not have */
    assert_int_equal(x.st.exported + x.st.dropped + x.st.queued, 40);
}

/* ---- the sampler ------------------------------------------------------------------------ */

struct ratio {
    int sampled, total;
};

static void ratio_body(void *arg)
{
    struct ratio *r = arg;
    for (int i = 0; i < 4000; i++) {
        mica_ctx_t *ctx, *cctx;
        mica_span_t *sp, *child;
        if (!EXPECT_EQ(mica_trace_start(NULL, "root", MICA_SPAN_INTERNAL, &ctx, &sp), 0))
            return;
        mica_span_context_t sc, cc;
        mica_span_context(sp, &sc);
        EXPECT_EQ(mica_trace_start(ctx, "child", MICA_SPAN_INTERNAL, &cctx, &child), 0);
        mica_span_context(child, &cc);
        EXPECT_EQ(cc.flags, sc.flags); /* a child follows its parent */
        EXPECT(memcmp(cc.trace_id, sc.trace_id, 16) == 0);
        EXPECT(!mica_span_recording(sp)); /* no endpoint: nothing records */
        mica_trace_ids_t ids;
        EXPECT_EQ(mica_trace_ids(cctx, &ids), 0);
        EXPECT_EQ(strlen(ids.trace_id), 32);
        mica_span_end(child);
        mica_span_end(sp);
        r->sampled += sc.flags & MICA_TRACE_FLAG_SAMPLED;
        r->total++;
    }
    mica_trace_ids_t ids;
    EXPECT_EQ(mica_trace_ids(NULL, &ids), MICA_ENOTFOUND);
}

static void test_roots_are_sampled_at_the_ratio_and_children_follow(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    const char *ratios[] = {"0", "0.25", "1"};
    int lo[] = {0, 850, 4000}, hi[] = {0, 1150, 4000};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mica_runtime_new(&rt, &ro), 0);
        mica_tracer_t *t;
        mica_trace_opts_t o = {.sample = ratios[i]};
        assert_int_equal(mica_tracer_new(&t, rt, &o), 0);
        mica_runtime_free(rt);
        struct ratio r = {0};
        assert_int_equal(run_in_coroutine(1, ratio_body, &r), 0);
        mica_tracer_free(t);
        expect_no_failure();
        assert_int_equal(r.total, 4000);
        if (r.sampled < lo[i] || r.sampled > hi[i])
            fail_msg("ratio %s: %d of 4000 sampled", ratios[i], r.sampled);
    }
}

static void test_bad_settings_are_refused(void **state)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &ro), 0);
    mica_tracer_t *t;
    const char *bad_ratio[] = {"1.5", "-0.1", "x", "nan", ""};
    for (size_t i = 0; i < 4; i++) {
        mica_trace_opts_t o = {.sample = bad_ratio[i]};
        assert_int_equal(mica_tracer_new(&t, rt, &o), MICA_EINVAL);
    }
    const char *bad_url[] = {"https://127.0.0.1:4318", "127.0.0.1:4318", "http://collector:4318",
                             "http://127.0.0.1:x",     "http://[::1",    "http:///v1/traces"};
    for (size_t i = 0; i < sizeof(bad_url) / sizeof(bad_url[0]); i++) {
        mica_trace_opts_t o = {.endpoint = bad_url[i]};
        assert_int_equal(mica_tracer_new(&t, rt, &o), MICA_EINVAL);
    }
    mica_trace_opts_t o = {.endpoint = "http://[::1]:4318/custom/path", .sample = "0.5"};
    assert_int_equal(mica_tracer_new(&t, rt, &o), 0);
    mica_tracer_free(t);
    mica_runtime_free(rt);

    mica_setting_t s[MICA_TRACE_SETTINGS];
    mica_trace_opts_t so = {0};
    assert_int_equal(mica_trace_settings(&so, s, MICA_TRACE_SETTINGS), MICA_TRACE_SETTINGS);
    assert_string_equal(s[0].name, "trace_sample");
    assert_string_equal(s[1].name, "otlp_endpoint");
    setenv("MICA_TRACE_SAMPLE", "0.125", 1);
    setenv("MICA_OTLP_ENDPOINT", "http://127.0.0.1:4318", 1);
    mica_trace_opts_t eo = {.endpoint = "http://127.0.0.1:1"};
    assert_int_equal(mica_trace_opts_from_env(&eo), 0);
    assert_string_equal(eo.sample, "0.125");
    assert_string_equal(eo.endpoint, "http://127.0.0.1:1"); /* set by the caller: kept */
    unsetenv("MICA_TRACE_SAMPLE");
    unsetenv("MICA_OTLP_ENDPOINT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spans_reach_the_receiver_with_their_attributes_and_parents),
        cmocka_unit_test(test_the_http_client_sends_traceparent_and_records_client_spans),
        cmocka_unit_test(test_a_503_is_retried_and_the_spans_delivered_once),
        cmocka_unit_test(test_a_hanging_receiver_does_not_hold_requests_and_drops_are_counted),
        cmocka_unit_test(test_roots_are_sampled_at_the_ratio_and_children_follow),
        cmocka_unit_test(test_bad_settings_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

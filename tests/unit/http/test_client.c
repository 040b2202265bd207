/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1.1 client on the wire: against mica's own server (keep-alive,
 * bodies both ways, streamed responses, pools, timeouts, interceptors,
 * TLS with a throw-away CA) and against scripted raw servers that answer
 * with split, malformed, hostile, stalled or closed responses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_fx.h"
#include "mica/sync.h"

struct fx {
    mica_runtime_t *rt;
    struct upstream u;
    struct raw_server raw;
    mica_http_client_t *c;
    char dead[64];
    int done;
};

static void fx_init(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->rt = new_runtime();
}

static void fx_free(struct fx *f)
{
    mica_http_client_free(f->c);
    mica_http_server_free(f->u.srv);
    mica_runtime_free(f->rt);
    expect_no_failure();
}

/* GET `path`; returns the status (or the error) and copies the body into out. */
static int get(mica_http_client_t *c, const char *path, char *out, size_t size,
               mica_http_result_t *res)
{
    mica_http_request_t req = {.method = "GET", .path = path};
    mica_http_response_t *r;
    int rc = mica_http_client_do(c, NULL, &req, NULL, &r, res);
    if (rc != 0)
        return rc;
    size_t len;
    const char *b = mica_http_response_body(r, &len);
    if (out)
        snprintf(out, size, "%.*s", (int)len, b);
    int status = mica_http_response_status(r);
    mica_http_response_free(r);
    return status;
}

/* ---- against mica's server ------------------------------------------------------------ */

static void keepalive_body(void *arg)
{
    struct fx *f = arg;
    char body[64];
    mica_http_result_t res;
    EXPECT_EQ(get(f->c, "/hello", body, sizeof(body), &res), 200);
    EXPECT(strcmp(body, "hi") == 0);
    EXPECT(!res.reused);
    EXPECT(strcmp(res.endpoint, f->u.addr) == 0);
    EXPECT(res.bytes_out > 20 && res.bytes_in > 40);
    EXPECT(res.connect_us > 0 && res.head_us > 0 && res.total_us >= res.head_us);
    EXPECT_EQ(get(f->c, "/hello", body, sizeof(body), &res), 200);
    EXPECT(res.reused);
    EXPECT_EQ(res.connect_us, 0);
    EXPECT_EQ(get(f->c, "/nope", NULL, 0, NULL), 404);
    mica_http_client_stats_t st;
    mica_http_client_stats(f->c, &st);
    EXPECT_EQ(st.conns_opened, 1);
    EXPECT_EQ(st.conns_reused, 2);
    EXPECT_EQ(st.calls, 3);
    EXPECT_EQ(st.failures, 0);
}

static void test_get_reuses_one_kept_alive_connection(void **state)
{
    struct fx f;
    fx_init(&f);
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    char target[96];
    snprintf(target, sizeof(target), "http://%s", f.u.addr);
    assert_int_equal(mica_http_client_new(&f.c, f.rt, target, NULL), 0);
    run_body(f.rt, keepalive_body, &f);
    fx_free(&f);
}

struct src {
    const char *data;
    size_t len, off, piece;
};

static ssize_t src_read(void *buf, size_t len, void *arg)
{
    struct src *s = arg;
    size_t n = s->len - s->off;
    if (n > len)
        n = len;
    if (n > s->piece)
        n = s->piece;
    memcpy(buf, s->data + s->off, n);
    s->off += n;
    return (ssize_t)n;
}

static void bodies_body(void *arg)
{
    struct fx *f = arg;
    size_t big = 100000;
    char *data = malloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)('A' + i % 23);
    for (int mode = 0; mode < 3; mode++) {
        struct src s = {data, big, 0, 7000};
        mica_http_request_t req = {.method = "POST", .path = "/echo"};
        if (mode == 0) {
            req.body = data;
            req.body_len = big;
        } else {
            req.body_fn = src_read;
            req.body_arg = &s;
            req.body_len_hint = mode == 1 ? (int64_t)big : -1; /* length, then chunked */
        }
        mica_http_response_t *r;
        if (!EXPECT_EQ(mica_http_client_do(f->c, NULL, &req, NULL, &r, NULL), 0))
            continue;
        size_t len;
        const char *b = mica_http_response_body(r, &len);
        EXPECT_EQ(mica_http_response_status(r), 200);
        EXPECT_EQ(len, big);
        EXPECT(len == big && memcmp(b, data, big) == 0);
        EXPECT_EQ(mica_http_response_content_length(r), big);
        mica_http_response_free(r);
    }
    /* A body_fn longer than it said: refused before the framing lies. */
    struct src s = {data, 100, 0, 100};
    mica_http_request_t req = {.method = "POST", .path = "/echo", .body_fn = src_read,
                               .body_arg = &s, .body_len_hint = 50};
    mica_http_response_t *r;
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &req, NULL, &r, NULL), MICA_EINVAL);
    free(data);
}

static void test_request_bodies_by_buffer_length_and_chunked(void **state)
{
    struct fx f;
    fx_init(&f);
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    assert_int_equal(mica_http_client_new(&f.c, f.rt, f.u.addr, NULL), 0);
    run_body(f.rt, bodies_body, &f);
    fx_free(&f);
}

static void stream_body(void *arg)
{
    struct fx *f = arg;
    mica_http_request_t req = {.method = "GET", .path = "/stream"};
    mica_http_response_t *r;
    mica_http_result_t res;
    if (!EXPECT_EQ(mica_http_client_open(f->c, NULL, &req, NULL, &r, &res), 0))
        return;
    EXPECT_EQ(mica_http_response_content_length(r), -1);
    EXPECT(strcmp(mica_http_response_header(r, "transfer-encoding"), "chunked") == 0);
    char buf[777];
    size_t total = 0;
    bool ok = true;
    ssize_t n;
    while ((n = mica_http_response_read(r, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++)
            ok &= buf[i] == 'a' + (int)((total + (size_t)i) / 1000 % 26);
        total += (size_t)n;
    }
    EXPECT_EQ(n, 0);
    EXPECT_EQ(total, 64000);
    EXPECT(ok);
    EXPECT(mica_http_response_result(r)->total_us > 0);
    mica_http_response_free(r);
    /* Read to the end: the connection went back to the pool. */
    EXPECT_EQ(get(f->c, "/hello", NULL, 0, &res), 200);
    EXPECT(res.reused);
    /* Abandoned mid-body: closed, not reused. */
    EXPECT_EQ(mica_http_client_open(f->c, NULL, &req, NULL, &r, NULL), 0);
    EXPECT(mica_http_response_read(r, buf, 10) > 0);
    mica_http_response_free(r);
    EXPECT_EQ(get(f->c, "/hello", NULL, 0, &res), 200);
    EXPECT(!res.reused);
}

static void test_streamed_response_read_in_parts_then_reused(void **state)
{
    struct fx f;
    fx_init(&f);
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    assert_int_equal(mica_http_client_new(&f.c, f.rt, f.u.addr, NULL), 0);
    run_body(f.rt, stream_body, &f);
    fx_free(&f);
}

/* ---- hostile and odd responses ---------------------------------------------------------- */

struct row {
    const char *name;
    const char *resp;
    int want; /* status, or a MICA_E* code */
    const char *body;
    size_t piece;
    int stall_ms;
    bool close_after;
};

/* Rows name only the fields they need. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const struct row rows[] = {
    {"plain", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok"},
    {"split head", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nsplit", 200, "split", 11},
    {"chunked, extensions and trailers",
     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n"
     "X-Trailer: 1\r\n\r\n",
     200, "abcde"},
    {"100 continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
     201, "x"},
    {"no reason phrase", "HTTP/1.1 204\r\n\r\n", 204, ""},
    {"body until close", "HTTP/1.1 200 OK\r\n\r\nto the end", 200, "to the end", 0, 0, true},
    {"HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n1",
     200, "1"},
    {"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     MICA_EPROTO},
    {"TE and CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
     MICA_EPROTO},
    {"differing CLs", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
     MICA_EPROTO},
    {"repeated CL", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", MICA_EPROTO},
    {"CL list", "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab", MICA_EPROTO},
    {"TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", MICA_EPROTO},
    {"TE gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     MICA_EPROTO},
    {"obs-fold", "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", MICA_EPROTO},
    {"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", MICA_EPROTO},
    {"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", MICA_EPROTO},
    {"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
     MICA_EPROTO},
    {"chunk size overflow",
     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nab\r\n0\r\n\r\n",
     MICA_EPROTO},
    {"chunk without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX0\r\n\r\n",
     MICA_EPROTO},
    {"HTTP/2 status line", "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", MICA_EPROTO},
    {"not HTTP", "ICY 200 OK\r\n\r\n", MICA_EPROTO},
    {"two-digit status", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", MICA_EPROTO},
    {"101 unasked", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", MICA_EPROTO},
    {"NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n", MICA_EPROTO},
    {"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcde", MICA_EPROTO, NULL, 0, 0,
     true},
    {"truncated chunked body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
     MICA_EPROTO, NULL, 0, 0, true},
    {"closed without a response", "", MICA_ECONNRESET, NULL, 0, 0, true},
    {"stalls mid-body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", MICA_ETIMEDOUT, NULL, 0,
     1500},
    {"stalls before the head", "HTTP/1.1 200 OK\r\n", MICA_ETIMEDOUT, NULL, 0, 1500},
    {"body over max_body_bytes", "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", MICA_ELIMIT},
};
#pragma GCC diagnostic pop

struct rows_fx {
    struct fx f;
    struct raw_server raws[sizeof(rows) / sizeof(rows[0])];
    mica_http_client_t *cs[sizeof(rows) / sizeof(rows[0])];
};

static void rows_body(void *arg)
{
    struct rows_fx *x = arg;
    size_t n = sizeof(rows) / sizeof(rows[0]);
    for (size_t i = 0; i < n; i++)
        raw_serve(&x->raws[i]);
    for (size_t i = 0; i < n; i++) {
        char body[256] = "";
        int got = get(x->cs[i], "/x", body, sizeof(body), NULL);
        if (got != rows[i].want || (rows[i].body && strcmp(body, rows[i].body) != 0)) {
            char what[200];
            snprintf(what, sizeof(what), "row \"%s\": got %d body \"%.40s\"", rows[i].name, got, body);
            expect_note(0, __FILE__, __LINE__, what, got, rows[i].want);
        }
    }
    for (size_t i = 0; i < n; i++)
        x->raws[i].stop = true;
}

static void test_responses_are_parsed_strictly(void **state)
{
    static struct rows_fx x;
    memset(&x, 0, sizeof(x));
    x.f.rt = new_runtime();
    size_t n = sizeof(rows) / sizeof(rows[0]);
    mica_http_client_opts_t o = {.response_timeout_ms = 300, .body_timeout_ms = 300,
                                 .max_body_bytes = 4096};
    for (size_t i = 0; i < n; i++) {
        struct raw_server *s = &x.raws[i];
        raw_listen(s);
        const char *bytes = rows[i].resp;
        size_t len = strlen(bytes);
        if (strstr(rows[i].name, "NUL"))
            len = strlen(bytes) + 1 + strlen(bytes + strlen(bytes) + 1);
        s->steps[0] = (struct raw_step){.bytes = bytes, .len = len, .piece = rows[i].piece,
                                        .pause_ms = 20, .stall_ms = rows[i].stall_ms,
                                        .close_after = rows[i].close_after,
                                        .close_silently = !*bytes};
        s->nsteps = 1;
        assert_int_equal(mica_http_client_new(&x.cs[i], x.f.rt, s->addr, &o), 0);
    }
    run_body(x.f.rt, rows_body, &x);
    for (size_t i = 0; i < n; i++)
        mica_http_client_free(x.cs[i]);
    mica_runtime_free(x.f.rt);
    expect_no_failure();
}

static char big[3000], many[2000];

static void limits_body(void *arg)
{
    struct fx *f = arg;
    raw_serve(&f->raw);
    EXPECT_EQ(get(f->c, "/", NULL, 0, NULL), MICA_ELIMIT); /* head over max_head_bytes */
    f->raw.steps[0].bytes = many; /* the next connection's first answer */
    EXPECT_EQ(get(f->c, "/", NULL, 0, NULL), MICA_ELIMIT); /* more fields than max_headers */
    f->raw.stop = true;
}

static void test_head_and_field_limits_give_elimit(void **state)
{
    struct fx f;
    fx_init(&f);
    snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\nX-Big: %02000d\r\nContent-Length: 0\r\n\r\n", 0);
    size_t k = (size_t)snprintf(many, sizeof(many), "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 10; i++)
        k += (size_t)snprintf(many + k, sizeof(many) - k, "X-%d: v\r\n", i);
    snprintf(many + k, sizeof(many) - k, "Content-Length: 0\r\n\r\n");
    raw_listen(&f.raw);
    f.raw.steps[0] = (struct raw_step){.bytes = big, .close_after = true};
    f.raw.nsteps = 1;
    mica_http_client_opts_t o = {.max_head_bytes = 1024, .max_headers = 8};
    assert_int_equal(mica_http_client_new(&f.c, f.rt, f.raw.addr, &o), 0);
    run_body(f.rt, limits_body, &f);
    fx_free(&f);
}

/* ---- stale keep-alive connections --------------------------------------------------------- */

static const char ok_ka[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

struct stale_fx {
    struct fx f;
    struct raw_server closer; /* closes idle connections after 50 ms */
    mica_http_client_t *c2;
};

static void stale_body(void *arg)
{
    struct stale_fx *x = arg;
    struct fx *f = &x->f;
    raw_serve(&f->raw);
    raw_serve(&x->closer);
    mica_http_result_t res;
    /* 1. The server closes an idle connection: the watch notices, the next call connects anew. */
    EXPECT_EQ(get(x->c2, "/", NULL, 0, &res), 200);
    mica_sleep_ms(200);
    mica_http_client_stats_t st;
    mica_http_client_stats(x->c2, &st);
    EXPECT_EQ(st.idle_evictions, 1);
    EXPECT_EQ(get(x->c2, "/", NULL, 0, &res), 200);
    EXPECT(!res.reused);
    mica_http_client_stats(x->c2, &st);
    EXPECT_EQ(st.stale_retries, 0);
    /* 2. The close crosses the next request: an idempotent GET is retried once. */
    EXPECT_EQ(get(f->c, "/", NULL, 0, &res), 200); /* conn A: step 0 */
    int before = f->raw.requests;
    EXPECT_EQ(get(f->c, "/", NULL, 0, &res), 200); /* A: closed silently; B: step 0 */
    EXPECT_EQ(f->raw.requests - before, 2);
    EXPECT_EQ(res.attempts, 2);
    mica_http_client_stats(f->c, &st);
    EXPECT_EQ(st.stale_retries, 1);
    /* 3. A POST that may have reached the server is never replayed. */
    before = f->raw.requests;
    mica_http_request_t post = {.method = "POST", .path = "/", .body = "x", .body_len = 1};
    mica_http_response_t *r;
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &post, NULL, &r, &res), MICA_ECONNRESET);
    EXPECT_EQ(f->raw.requests - before, 1); /* B saw it once, and it was not sent again */
    EXPECT_EQ(res.attempts, 1);
    /* 4. ... unless it carries an Idempotency-Key. */
    EXPECT_EQ(get(f->c, "/", NULL, 0, &res), 200); /* C: step 0 */
    mica_http_header_t key = {"Idempotency-Key", "k1"};
    mica_http_call_opts_t o = {.headers = &key, .nheaders = 1};
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &post, &o, &r, &res), 0);
    EXPECT_EQ(res.attempts, 2);
    mica_http_response_free(r);
    f->raw.stop = true;
    x->closer.stop = true;
}

static void test_stale_connections_retry_only_what_may_be_repeated(void **state)
{
    struct stale_fx x;
    memset(&x, 0, sizeof(x));
    fx_init(&x.f);
    raw_listen(&x.f.raw);
    x.f.raw.steps[0] = (struct raw_step){.bytes = ok_ka};
    x.f.raw.steps[1] = (struct raw_step){.close_silently = true};
    x.f.raw.nsteps = 2;
    raw_listen(&x.closer);
    x.closer.steps[0] = (struct raw_step){.bytes = ok_ka};
    x.closer.nsteps = 1;
    x.closer.close_idle_after_ms = 50;
    assert_int_equal(mica_http_client_new(&x.f.c, x.f.rt, x.f.raw.addr, NULL), 0);
    assert_int_equal(mica_http_client_new(&x.c2, x.f.rt, x.closer.addr, NULL), 0);
    run_body(x.f.rt, stale_body, &x);
    mica_http_client_free(x.c2);
    fx_free(&x.f);
}

/* ---- pools, timeouts, endpoints ---------------------------------------------------------- */

struct par {
    struct fx *f;
    mica_wg_t *wg;
    int status;
};

static mica_http_client_t *tight; /* max_conns_per_endpoint 1, connect_timeout_ms 50 */

static void slow_call(void *arg)
{
    struct par *p = arg;
    p->status = get(p->f ? p->f->c : tight, "/slow?100", NULL, 0, NULL);
    mica_wg_done(p->wg);
}

static void pool_body(void *arg)
{
    struct fx *f = arg;
    struct par ps[6];
    mica_wg_t *wg;
    mica_wg_new(&wg);
    mica_wg_add(wg, 6);
    for (int i = 0; i < 6; i++) {
        ps[i] = (struct par){f, wg, 0};
        mica_go(slow_call, &ps[i]);
    }
    EXPECT_EQ(mica_wg_wait(wg, NULL), 0);
    mica_wg_free(wg);
    for (int i = 0; i < 6; i++)
        EXPECT_EQ(ps[i].status, 200);
    mica_http_client_stats_t st;
    mica_http_client_stats(f->c, &st);
    EXPECT_EQ(st.conns_opened, 2); /* max_conns_per_endpoint */
    EXPECT(st.pool_waits >= 4);
    EXPECT_EQ(st.idle_evictions, 1); /* max_idle_per_endpoint 1: the second is closed */
    /* Idle past idle_timeout_ms: closed, the next call connects anew. */
    mica_sleep_ms(400);
    mica_http_client_stats(f->c, &st);
    EXPECT_EQ(st.idle_evictions, 2);
    mica_http_result_t res;
    EXPECT_EQ(get(f->c, "/hello", NULL, 0, &res), 200);
    EXPECT(!res.reused);
    /* A call that cannot get a slot within connect_timeout_ms: MICA_EOVERLOAD. */
    mica_wg_new(&wg);
    mica_wg_add(wg, 1);
    ps[0] = (struct par){NULL, wg, 0};
    mica_go(slow_call, &ps[0]);
    mica_yield();
    mica_http_request_t req = {.method = "GET", .path = "/hello"};
    mica_http_response_t *r;
    EXPECT_EQ(mica_http_client_do(tight, NULL, &req, NULL, &r, NULL), MICA_EOVERLOAD);
    mica_wg_wait(wg, NULL);
    mica_wg_free(wg);
}

static void test_pool_limits_conns_idle_and_idle_timeout(void **state)
{
    struct fx f;
    fx_init(&f);
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    mica_http_client_opts_t o = {.max_conns_per_endpoint = 2, .max_idle_per_endpoint = 1,
                                 .idle_timeout_ms = 200};
    assert_int_equal(mica_http_client_new(&f.c, f.rt, f.u.addr, &o), 0);
    o = (mica_http_client_opts_t){.max_conns_per_endpoint = 1, .connect_timeout_ms = 50};
    assert_int_equal(mica_http_client_new(&tight, f.rt, f.u.addr, &o), 0);
    run_body(f.rt, pool_body, &f);
    mica_http_client_free(tight);
    fx_free(&f);
}

static void timeouts_body(void *arg)
{
    struct fx *f = arg;
    mica_http_request_t req = {.method = "GET", .path = "/slow?2000"};
    mica_http_response_t *r;
    mica_http_call_opts_t o = {.deadline_ms = mica_deadline_in(100)};
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &req, &o, &r, NULL), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 < 1000);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 100, &ctx);
    EXPECT_EQ(mica_http_client_do(f->c, ctx, &req, NULL, &r, NULL), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    mica_ctx_with_cancel(NULL, &ctx);
    mica_ctx_cancel(ctx);
    EXPECT_EQ(mica_http_client_do(f->c, ctx, &req, NULL, &r, NULL), MICA_ECANCELED);
    mica_ctx_free(ctx);
    /* Bad requests never leave. */
    mica_http_header_t bad[] = {{"x-a", "b\r\nx-injected: 1"}};
    mica_http_call_opts_t ob = {.headers = bad, .nheaders = 1};
    req.path = "/hello";
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &req, &ob, &r, NULL), MICA_EINVAL);
    mica_http_header_t cl[] = {{"Content-Length", "5"}};
    ob.headers = cl;
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &req, &ob, &r, NULL), MICA_EINVAL);
    mica_http_request_t badm = {.method = "GE T", .path = "/"};
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &badm, NULL, &r, NULL), MICA_EINVAL);
    mica_http_request_t badp = {.method = "GET", .path = "/a b"};
    EXPECT_EQ(mica_http_client_do(f->c, NULL, &badp, NULL, &r, NULL), MICA_EINVAL);
}

static void test_deadlines_ctx_and_bad_requests(void **state)
{
    struct fx f;
    fx_init(&f);
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    assert_int_equal(mica_http_client_new(&f.c, f.rt, f.u.addr, NULL), 0);
    run_body(f.rt, timeouts_body, &f);
    fx_free(&f);
}

struct two {
    struct fx f;
    mica_http_client_t *dead_only;
};

static void endpoints_body(void *arg)
{
    struct two *t = arg;
    /* A refusing endpoint and a live one: every call lands on the live one. */
    for (int i = 0; i < 4; i++)
        EXPECT_EQ(get(t->f.c, "/hello", NULL, 0, NULL), 200);
    EXPECT_EQ(t->f.u.calls, 4);
    EXPECT_EQ(get(t->dead_only, "/hello", NULL, 0, NULL), MICA_ECONNREFUSED);
    /* In back-off now: fails at once. */
    int64_t t0 = mica_now_ms();
    int rc = get(t->dead_only, "/hello", NULL, 0, NULL);
    EXPECT(rc == MICA_ECONNREFUSED || rc == MICA_EUNAVAILABLE);
    EXPECT(mica_now_ms() - t0 < 100);
}

static void test_refusing_endpoints_are_skipped_and_reported(void **state)
{
    struct two t;
    memset(&t, 0, sizeof(t));
    fx_init(&t.f);
    upstream_start(&t.f.u, t.f.rt, false, NULL, NULL);
    dead_addr(t.f.dead, sizeof(t.f.dead));
    char target[200];
    snprintf(target, sizeof(target), "static:///%s,%s", t.f.dead, t.f.u.addr);
    assert_int_equal(mica_http_client_new(&t.f.c, t.f.rt, target, NULL), 0);
    assert_int_equal(mica_http_client_new(&t.dead_only, t.f.rt, t.f.dead, NULL), 0);
    run_body(t.f.rt, endpoints_body, &t);
    mica_http_client_free(t.dead_only);
    fx_free(&t.f);
}

/* ---- interceptors ----------------------------------------------------------------------------- */

static char trace[64];

static void note(const char *s)
{
    size_t n = strlen(trace);
    snprintf(trace + n, sizeof(trace) - n, "%s", s);
}

static int add_header(mica_http_call_info_t *call, mica_http_client_next_fn next, void *arg)
{
    note("h");
    mica_http_header_t hs[MICA_HTTP_MAX_REQUEST_HEADERS];
    if (call->opts.nheaders)
        memcpy(hs, call->opts.headers, call->opts.nheaders * sizeof(hs[0]));
    hs[call->opts.nheaders] = (mica_http_header_t){"x-test", arg};
    call->opts.headers = hs;
    call->opts.nheaders++;
    return next(call);
}

static int retry_503(mica_http_call_info_t *call, mica_http_client_next_fn next, void *arg)
{
    note("r");
    int rc = next(call);
    for (int i = 0; i < 2 && rc == 0 && mica_http_response_status(*call->resp) == 503; i++) {
        mica_http_response_free(*call->resp); /* a retry frees what it drops */
        *call->resp = NULL;
        rc = next(call);
    }
    return rc;
}

static int answer_teapot(mica_http_call_info_t *call, mica_http_client_next_fn next, void *arg)
{
    if (strcmp(call->req->path, "/teapot") != 0)
        return next(call);
    note("t");
    call->res->status = 418;
    return mica_http_response_new(call->resp, 418, "text/plain", "short and stout", 15);
}

static void icpt_body(void *arg)
{
    struct fx *f = arg;
    char body[64];
    f->u.fail_first = 1;
    EXPECT_EQ(get(f->c, "/hello", body, sizeof(body), NULL), 200);
    EXPECT(strcmp(trace, "rhh") == 0); /* the retry re-entered the one below it */
    EXPECT_EQ(f->u.calls, 2);
    EXPECT(strcmp(f->u.last_header, "v1") == 0);
    trace[0] = '\0';
    EXPECT_EQ(get(f->c, "/teapot", body, sizeof(body), NULL), 418);
    EXPECT(strcmp(body, "short and stout") == 0);
    EXPECT(strcmp(trace, "rht") == 0);
    EXPECT_EQ(f->u.calls, 2); /* answered without the network */
    EXPECT_EQ(mica_http_client_intercept(f->c, add_header, NULL), MICA_EBUSY);
}

static void test_interceptors_add_headers_retry_and_answer(void **state)
{
    struct fx f;
    fx_init(&f);
    trace[0] = '\0';
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    assert_int_equal(mica_http_client_new(&f.c, f.rt, f.u.addr, NULL), 0);
    assert_int_equal(mica_http_client_intercept(f.c, retry_503, NULL), 0);
    assert_int_equal(mica_http_client_intercept(f.c, add_header, "v1"), 0);
    assert_int_equal(mica_http_client_intercept(f.c, answer_teapot, NULL), 0);
    run_body(f.rt, icpt_body, &f);
    fx_free(&f);
}

/* ---- TLS ------------------------------------------------------------------------------------ */

struct tls_fx {
    struct fx f;
    mica_http_client_t *wrong_ca, *wrong_name;
};

static void tls_body(void *arg)
{
    struct tls_fx *t = arg;
    char body[64];
    mica_http_result_t res;
    EXPECT_EQ(get(t->f.c, "/hello", body, sizeof(body), &res), 200);
    EXPECT(strcmp(body, "hi") == 0);
    EXPECT_EQ(get(t->f.c, "/stream", NULL, 0, &res), 200);
    EXPECT(res.reused && res.bytes_in > 64000);
    EXPECT_EQ(get(t->wrong_ca, "/hello", NULL, 0, NULL), MICA_EPROTO);
    EXPECT_EQ(get(t->wrong_name, "/hello", NULL, 0, NULL), MICA_EPROTO);
}

static void test_tls_verifies_the_certificate_and_name(void **state)
{
    char dir[] = "/tmp/mica-hc-tls.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[1024];
    /* A CA, a server certificate it signs for 127.0.0.1 and "api.test", and an unrelated CA. */
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-days 2 -keyout ca.key -out ca.pem -subj /CN=test-ca 2>/dev/null && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem "
             "-out req.csr -subj /CN=api.test 2>/dev/null && "
             "printf 'subjectAltName=DNS:api.test,IP:127.0.0.1\\n' > ext && "
             "openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "-extfile ext -out cert.pem 2>/dev/null && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
             "-keyout other.key -out other.pem -subj /CN=other 2>/dev/null",
             dir);
    assert_int_equal(system(cmd), 0);
    char ca[128], other[128], cert[128], key[128], target[128];
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(other, sizeof(other), "%s/other.pem", dir);
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);

    struct tls_fx t;
    memset(&t, 0, sizeof(t));
    fx_init(&t.f);
    upstream_start(&t.f.u, t.f.rt, true, cert, key);
    snprintf(target, sizeof(target), "https://%s", t.f.u.addr);
    mica_http_client_opts_t o = {.tls_ca_file = ca};
    assert_int_equal(mica_http_client_new(&t.f.c, t.f.rt, target, &o), 0);
    o.tls_ca_file = other;
    assert_int_equal(mica_http_client_new(&t.wrong_ca, t.f.rt, target, &o), 0);
    o = (mica_http_client_opts_t){.tls_ca_file = ca, .tls_server_name = "evil.test"};
    assert_int_equal(mica_http_client_new(&t.wrong_name, t.f.rt, target, &o), 0);
    mica_http_client_t *no_ca;
    assert_int_equal(mica_http_client_new(&no_ca, t.f.rt, target, NULL), MICA_EINVAL);
    run_body(t.f.rt, tls_body, &t);
    mica_http_client_free(t.wrong_ca);
    mica_http_client_free(t.wrong_name);
    fx_free(&t.f);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_targets_are_parsed(void **state)
{
    mica_runtime_t *rt = new_runtime();
    mica_http_client_t *c;
    const char *good[] = {"http://127.0.0.1:1", "http://127.0.0.1", "http://[::1]:8080/",
                          "127.0.0.1:80", "static:///127.0.0.1:1,127.0.0.1:2",
                          "dns:///localhost:80"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_int_equal(mica_http_client_new(&c, rt, good[i], NULL), 0);
        mica_http_client_free(c);
    }
    const char *bad[] = {"http://", "http://127.0.0.1:1/path", "http://u@127.0.0.1:1",
                         "nope:///x", "http://127.0.0.1:1?q"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(mica_http_client_new(&c, rt, bad[i], NULL), MICA_EINVAL);
    mica_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_reuses_one_kept_alive_connection),
        cmocka_unit_test(test_request_bodies_by_buffer_length_and_chunked),
        cmocka_unit_test(test_streamed_response_read_in_parts_then_reused),
        cmocka_unit_test(test_responses_are_parsed_strictly),
        cmocka_unit_test(test_head_and_field_limits_give_elimit),
        cmocka_unit_test(test_stale_connections_retry_only_what_may_be_repeated),
        cmocka_unit_test(test_pool_limits_conns_idle_and_idle_timeout),
        cmocka_unit_test(test_deadlines_ctx_and_bad_requests),
        cmocka_unit_test(test_refusing_endpoints_are_skipped_and_reported),
        cmocka_unit_test(test_interceptors_add_headers_retry_and_answer),
        cmocka_unit_test(test_tls_verifies_the_certificate_and_name),
        cmocka_unit_test(test_targets_are_parsed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

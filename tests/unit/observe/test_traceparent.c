/* SPDX-License-Identifier: MIT */
/*
 * W3C Trace Context: every rule the W3C trace-context test suite
 * (test/test.py, strict level 2) checks, as table tests of the parsers,
 * then the same header sets sent over loopback to a traced server whose
 * handler reports what it would propagate (traceparent, tracestate).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "mica/trace.h"

#define TID "12345678901234567890123456789012"
#define SID "1234567890123456"

/* ---- traceparent ------------------------------------------------------------------- */

static const struct {
    const char *value;
    bool valid;
    uint8_t flags;
} parents[] = {
    {"00-" TID "-" SID "-01", true, 1},
    {"00-" TID "-" SID "-00", true, 0},
    {"00-" TID "-" SID "-09", true, 1}, /* unknown flags ignored, sampled kept */
    {"00-" TID "-" SID "-02", true, 0},
    /* version 00 is exactly 55 characters */
    {"00-" TID "-" SID "-01.", false, 0},
    {"00-" TID "-" SID "-01-what-the-future-will-be-like", false, 0},
    /* a future version: its first fields, then the end or a dash */
    {"cc-" TID "-" SID "-01", true, 1},
    {"cc-" TID "-" SID "-01-what-the-future-will-be-like", true, 1},
    {"cc-" TID "-" SID "-01-", true, 1},
    {"01-" TID "-" SID "-00", true, 0},
    {"cc-" TID "-" SID "-01.what-the-future-will-be-like", false, 0},
    {"cc-" TID "-" SID, false, 0},
    {"ff-" TID "-" SID "-01", false, 0},
    {"CC-" TID "-" SID "-01", false, 0},
    {".0-" TID "-" SID "-01", false, 0},
    {"0.-" TID "-" SID "-01", false, 0},
    {"000-" TID "-" SID "-01", false, 0},
    {"0000-" TID "-" SID "-01", false, 0},
    {"0-" TID "-" SID "-01", false, 0},
    /* trace-id */
    {"00-00000000000000000000000000000000-" SID "-01", false, 0},
    {"00-.2345678901234567890123456789012-" SID "-01", false, 0},
    {"00-1234567890123456789012345678901.-" SID "-01", false, 0},
    {"00-123456789012345678901234567890123-" SID "-01", false, 0},
    {"00-1234567890123456789012345678901-" SID "-01", false, 0},
    {"00-ABCDEF78901234567890123456789012-" SID "-01", false, 0},
    /* parent-id */
    {"00-" TID "-0000000000000000-01", false, 0},
    {"00-" TID "-.234567890123456-01", false, 0},
    {"00-" TID "-123456789012345.-01", false, 0},
    {"00-" TID "-12345678901234567-01", false, 0},
    {"00-" TID "-123456789012345-01", false, 0},
    {"00-" TID "-123456789012345A-01", false, 0},
    /* trace-flags */
    {"00-" TID "-" SID "-.0", false, 0},
    {"00-" TID "-" SID "-0.", false, 0},
    {"00-" TID "-" SID "-001", false, 0},
    {"00-" TID "-" SID "-1", false, 0},
    {"00-" TID "-" SID "-0A", false, 0},
    /* separators */
    {"00_" TID "-" SID "-01", false, 0},
    {"00-" TID "_" SID "-01", false, 0},
    {"00-" TID "-" SID "_01", false, 0},
    /* surrounding whitespace is the field's, not the value's */
    {" 00-" TID "-" SID "-01", true, 1},
    {"\t00-" TID "-" SID "-01", true, 1},
    {"00-" TID "-" SID "-01 ", true, 1},
    {"00-" TID "-" SID "-01\t", true, 1},
    {"\t 00-" TID "-" SID "-01 \t", true, 1},
    {"", false, 0},
    {"00", false, 0},
};

static void test_traceparent_table(void **state)
{
    for (size_t i = 0; i < sizeof(parents) / sizeof(parents[0]); i++) {
        mica_span_context_t sc;
        memset(&sc, 0xee, sizeof(sc));
        const char *v = parents[i].value;
        int rc = mica_traceparent_parse(v, strlen(v), &sc);
        if (rc != (parents[i].valid ? 0 : MICA_EINVAL))
            fail_msg("traceparent \"%s\": got %d", v, rc);
        if (!parents[i].valid)
            continue;
        char out[MICA_TRACEPARENT_LEN + 1];
        mica_traceparent_format(&sc, out);
        char want[MICA_TRACEPARENT_LEN + 1];
        snprintf(want, sizeof(want), "00-" TID "-" SID "-0%c", parents[i].flags ? '1' : '0');
        assert_string_equal(out, want); /* the version downgraded to 00, unknown flags cleared */
    }
}

static void test_traceparent_format_round_trips(void **state)
{
    mica_span_context_t sc = {.trace_id = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3,
                                           0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
                              .span_id = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
                              .flags = 0xff};
    char out[MICA_TRACEPARENT_LEN + 1];
    mica_traceparent_format(&sc, out);
    assert_string_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    mica_span_context_t back;
    assert_int_equal(mica_traceparent_parse(out, strlen(out), &back), 0);
    assert_memory_equal(back.trace_id, sc.trace_id, 16);
    assert_memory_equal(back.span_id, sc.span_id, 8);
    assert_int_equal(back.flags, 1);
}

/* ---- tracestate --------------------------------------------------------------------- */

static char key_plain[] = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
static char key_vendor[] = "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/";
static char value_all[0x7f];
static char buf[4][2048];

static const char *repeat(int slot, const char *prefix, char c, int n, const char *suffix)
{
    int k = snprintf(buf[slot], sizeof(buf[slot]), "%s", prefix);
    memset(buf[slot] + k, c, (size_t)n);
    snprintf(buf[slot] + k + n, sizeof(buf[slot]) - (size_t)(k + n), "%s", suffix);
    return buf[slot];
}

/* Checks one tracestate value: NULL want means invalid (discarded whole). */
static void check_state(const char *in, const char *want)
{
    char out[MICA_TRACESTATE_MAX_LEN + 1];
    int rc = mica_tracestate_parse(in, strlen(in), out, sizeof(out));
    if (!want) {
        if (rc != MICA_EINVAL || out[0])
            fail_msg("tracestate \"%.80s\": want invalid, got %d \"%s\"", in, rc, out);
        return;
    }
    if (rc != (int)strlen(want) || strcmp(out, want) != 0)
        fail_msg("tracestate \"%.80s\": want \"%.80s\", got %d \"%.80s\"", in, want, rc, out);
}

static void test_tracestate_table(void **state)
{
    check_state("foo=1,bar=2", "foo=1,bar=2");
    check_state("", "");
    check_state(" \t ", "");
    check_state("foo=1,", "foo=1");
    check_state(",foo=1", "foo=1");
    check_state("foo=1,,bar=2", "foo=1,bar=2");
    check_state("foo=1, ,bar=2", "foo=1,bar=2");
    check_state("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
                "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    /* optional whitespace around members, not inside them */
    check_state("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3");
    check_state("foo=1\t \t,\t \tbar=2,\t \tbaz=3", "foo=1,bar=2,baz=3");
    check_state(" foo=1", "foo=1");
    check_state("\tfoo=1", "foo=1");
    check_state("foo=1 ", "foo=1");
    check_state("foo=1\t", "foo=1");
    check_state("\t foo=1 \t", "foo=1");
    check_state("foo= 1", "foo= 1"); /* a value may start with a space */
    /* every allowed character */
    int k = 0;
    for (int c = 0x20; c <= 0x7e; c++)
        if (c != ',' && c != '=')
            value_all[k++] = (char)c;
    value_all[k] = '\0';
    char member[512];
    snprintf(member, sizeof(member), "%s=%s", key_plain, value_all);
    check_state(member, member);
    snprintf(member, sizeof(member), "%s=%s", key_vendor, value_all);
    check_state(member, member);
    check_state("0foo=1", "0foo=1"); /* a key may start with a digit */
    /* duplicated keys */
    check_state("foo=1,foo=1", NULL);
    check_state("foo=1,foo=2", NULL);
    check_state("foo=1,bar=2,foo=3", NULL);
    /* keys */
    check_state("foo =1", NULL);
    check_state("FOO=1", NULL);
    check_state("foo.bar=1", NULL);
    check_state("_foo=1", NULL);
    check_state("=1", NULL);
    check_state("foo", NULL);
    check_state("foo@=1,bar=2", NULL);
    check_state("@foo=1,bar=2", NULL);
    check_state("foo@@bar=1,bar=2", NULL);
    check_state("foo@bar@baz=1,bar=2", NULL);
    check_state("foo@1bar=1", NULL); /* a system id starts with a letter */
    check_state(repeat(0, "foo=1,", 'z', 256, "=1"), repeat(1, "foo=1,", 'z', 256, "=1"));
    check_state(repeat(0, "foo=1,", 'z', 257, "=1"), NULL);
    char vendor[300];
    snprintf(vendor, sizeof(vendor), "%s@%s=1", repeat(2, "", 't', 241, ""),
             repeat(3, "", 'v', 14, ""));
    check_state(vendor, vendor);
    check_state(repeat(0, "foo=1,", 't', 242, "@v=1"), NULL);
    check_state(repeat(0, "foo=1,t@", 'v', 15, "=1"), NULL);
    /* values */
    check_state("foo=bar=baz", NULL);
    check_state("foo=,bar=3", NULL);
    check_state("foo=a\tb", NULL);
    check_state("foo=\x7f", NULL);
    check_state(repeat(0, "k=", 'v', 256, ""), repeat(1, "k=", 'v', 256, ""));
    check_state(repeat(0, "k=", 'v', 257, ""), NULL);
    /* 32 members, and 33 */
    char list[512];
    size_t len = 0;
    for (int i = 1; i <= 33; i++) {
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%sbar%02d=%02d", i > 1 ? "," : "",
                                i, i);
        if (i == 32)
            check_state(list, list);
    }
    check_state(list, NULL);
}

static void test_tracestate_is_truncated_by_whole_members_long_ones_first(void **state)
{
    /* 200 + 4 * 100 characters: the 200-character member goes first */
    char in[1024], want[1024];
    size_t n = 0, w = 0;
    n += (size_t)snprintf(in + n, sizeof(in) - n, "%s", repeat(0, "big=", 'x', 196, ""));
    for (int i = 0; i < 4; i++) {
        char m[128];
        snprintf(m, sizeof(m), "k%d=%s", i, repeat(1, "", 'y', 97, ""));
        n += (size_t)snprintf(in + n, sizeof(in) - n, ",%s", m);
        w += (size_t)snprintf(want + w, sizeof(want) - w, "%s%s", i ? "," : "", m);
    }
    check_state(in, want); /* 403 characters left */
    /* seven members of 100: the last two go */
    n = w = 0;
    for (int i = 0; i < 7; i++) {
        char m[128];
        snprintf(m, sizeof(m), "k%d=%s", i, repeat(1, "", 'y', 97, ""));
        n += (size_t)snprintf(in + n, sizeof(in) - n, "%s%s", i ? "," : "", m);
        if (i < 5)
            w += (size_t)snprintf(want + w, sizeof(want) - w, "%s%s", i ? "," : "", m);
    }
    check_state(in, want); /* 504 characters */
    /* a small output buffer truncates the same way */
    char out[12];
    assert_int_equal(mica_tracestate_parse("a=1,b=2,c=3,d=4", 15, out, sizeof(out)), 11);
    assert_string_equal(out, "a=1,b=2,c=3");
}

/* ---- over the wire: what a traced server propagates ---------------------------------- */

#define NCASES 24

struct wire {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_tracer_t *tracer;
    char addr[64];
    char reply[NCASES][2048];
    char observed[NCASES][17]; /* span ids an observer read after the span ended */
    int nobserved;
};

/* Answers "<traceparent>|<tracestate or ->|<span id>": what calls under the request propagate. */
static int echo(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    mica_span_t *sp = mica_trace_span(mica_http_req_ctx(req));
    if (!sp)
        return mica_http_resp_text(resp, 500, "no span");
    mica_trace_headers_t h;
    mica_trace_inject(sp, &h);
    mica_trace_ids_t ids;
    if (mica_trace_ids(mica_http_req_ctx(req), &ids) != 0)
        return mica_http_resp_text(resp, 500, "no ids");
    char body[1024];
    snprintf(body, sizeof(body), "%s|%s|%s", h.traceparent, h.tracestate ? h.tracestate : "-",
             ids.span_id);
    return mica_http_resp_text(resp, 200, body);
}

static void observe(const mica_http_completion_t *c, void *arg)
{
    struct wire *w = arg;
    mica_trace_ids_t ids;
    if (w->nobserved < NCASES && EXPECT_EQ(mica_trace_ids(mica_http_req_ctx(c->req), &ids), 0))
        memcpy(w->observed[w->nobserved++], ids.span_id, 17);
}

static const char *const cases[NCASES] = {
    /* 0 */ "",
    /* 1 */ "traceparent: 00-" TID "-" SID "-01\r\n",
    /* 2 */
    "traceparent: 00-12345678901234567890123456789011-" SID "-01\r\n"
    "traceparent: 00-" TID "-" SID "-01\r\n",
    /* 3 */ "trace-parent: 00-" TID "-" SID "-01\r\n",
    /* 4 */ "trace.parent: 00-" TID "-" SID "-01\r\n",
    /* 5 */ "TrAcEpArEnT: 00-" TID "-" SID "-01\r\n",
    /* 6 */
    "traceparent: 00-" TID "-" SID "-00\r\ntracestate: foo=1,bar=2\r\n"
    "tracestate: rojo=1,congo=2\r\ntracestate: baz=3\r\n",
    /* 7 */ "traceparent: 00-" TID "-" SID "-00\r\ntracestate: foo=1\r\ntracestate:\r\n",
    /* 8 */ "traceparent: 00-" TID "-" SID "-00\r\ntracestate:\r\ntracestate: foo=1\r\n",
    /* 9 */ "tracestate: foo=1,bar=2\r\n",
    /* 10 */ "traceparent: 00-" TID "-" SID "-00\r\ntracestate: foo=1\r\ntracestate: foo=2\r\n",
    /* 11 */ "traceparent: 00-" TID "-" SID "-00\r\ntrace-state: foo=1\r\n",
    /* 12 */ "traceparent: 00-" TID "-" SID "-00\r\nTrAcEsTaTe: foo=1\r\n",
    /* 13 */
    "traceparent: 00-" TID "-" SID "-00\r\ntracestate: foo=1\r\n"
    "tracestate: zzzzzzzz=1,FOO=2\r\n",
    /* 14 */ "traceparent: 00-00000000000000000000000000000000-" SID "-01\r\ntracestate: foo=1\r\n",
    /* 15 */ "traceparent: cc-" TID "-" SID "-01-what-the-future-will-be-like\r\n",
    /* 16 */ "traceparent: ff-" TID "-" SID "-01\r\n",
    /* 17 */ "traceparent: \t00-" TID "-" SID "-01 \t\r\n",
    /* 18 */ "traceparent: 00-" TID "-" SID "-01\r\ntracestate: foo=1 \t , \t bar=2, \t baz=3\r\n",
    /* 19 */ "traceparent: 00-" TID "-" SID "-01\r\n", /* with the ratio 0 tracer: still sampled */
    /* 20 */ "",                                       /* ratio 0: a root is not */
    /* 21 */ "traceparent: 00-" TID "-" SID "-00\r\n", /* ratio 1: an unsampled parent wins */
                                                       /* 22 */
    "traceparent: 00-" TID "-" SID "-01\r\ntracestate: bar01=01,bar02=02,bar03=03,"
    "bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10\r\ntracestate: "
    "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,"
    "bar20=20\r\ntracestate: bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,"
    "bar27=27,bar28=28,bar29=29,bar30=30\r\ntracestate: bar31=31,bar32=32\r\n",
    /* 23 */
    "traceparent: 00-" TID "-" SID "-01\r\ntracestate: bar01=01,bar02=02,bar03=03,"
    "bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10\r\ntracestate: "
    "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,"
    "bar20=20\r\ntracestate: bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,"
    "bar27=27,bar28=28,bar29=29,bar30=30\r\ntracestate: bar31=31,bar32=32,bar33=33\r\n",
};

/* Cases 19 and 20 go to /zero, a second server traced at ratio 0. */
static struct wire *zero_w;
static char zero_addr[64];

static void wire_client(int worker, void *arg)
{
    struct wire *w = arg;
    for (int i = 0; i < NCASES; i++) {
        char req[2048];
        int n = snprintf(req, sizeof(req),
                         "GET /echo HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n", cases[i]);
        const char *addr = (i == 19 || i == 20) ? zero_addr : w->addr;
        EXPECT(wire_exchange(addr, req, (size_t)n, w->reply[i], sizeof(w->reply[i]), 3000) > 0);
    }
    mica_runtime_stop(w->rt);
}

/* The body of reply i: "<traceparent>|<tracestate>|<span id>". */
static void body(struct wire *w, int i, char tp[56], char ts[1024], char sid[17])
{
    const char *b = strstr(w->reply[i], "\r\n\r\n");
    if (!b || !strstr(w->reply[i], "HTTP/1.1 200"))
        fail_msg("case %d: %s", i, w->reply[i]);
    b += 4;
    const char *bar = strchr(b, '|'), *bar2 = bar ? strchr(bar + 1, '|') : NULL;
    assert_non_null(bar2);
    assert_int_equal(bar - b, 55);
    memcpy(tp, b, 55);
    tp[55] = '\0';
    snprintf(ts, 1024, "%.*s", (int)(bar2 - bar - 1), bar + 1);
    snprintf(sid, 17, "%s", bar2 + 1);
}

static void expect_case(struct wire *w, int i, bool same_trace, const char *flags, const char *ts)
{
    char tp[56], got_ts[1024], sid[17];
    body(w, i, tp, got_ts, sid);
    if (same_trace != (strncmp(tp + 3, TID, 32) == 0))
        fail_msg("case %d: traceparent %s (want %s trace)", i, tp,
                 same_trace ? "the same" : "a new");
    if (strncmp(tp + 36, SID, 16) == 0)
        fail_msg("case %d: the parent id was not replaced: %s", i, tp);
    assert_string_equal(tp + 36 + 16, flags); /* "-01" */
    assert_memory_equal(tp + 36, sid, 16);    /* injected: the server span is the parent */
    if (strcmp(got_ts, ts) != 0)
        fail_msg("case %d: tracestate \"%s\", want \"%s\"", i, got_ts, ts);
}

static void start_server(struct wire *w, mica_runtime_t *rt, const char *ratio)
{
    w->rt = rt;
    assert_int_equal(mica_http_server_new(&w->srv, NULL), 0);
    mica_trace_opts_t to = {.sample = ratio};
    assert_int_equal(mica_trace_enable(&w->tracer, rt, w->srv, &to), 0);
    assert_int_equal(mica_http_route(w->srv, "GET", "/echo", echo, w), 0);
    assert_int_equal(mica_http_observe(w->srv, observe, w), 0);
    assert_int_equal(mica_http_server_listen(w->srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(w->srv, rt), 0);
    snprintf(w->addr, sizeof(w->addr), "127.0.0.1:%d", mica_http_server_port(w->srv, 0));
}

static void test_a_traced_server_propagates_per_the_w3c_test_suite(void **state)
{
    static struct wire w, z;
    memset(&w, 0, sizeof(w));
    memset(&z, 0, sizeof(z));
    mica_runtime_t *rt;
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
    assert_int_equal(mica_runtime_new(&rt, &ro), 0);
    start_server(&w, rt, "1");
    start_server(&z, rt, "0");
    zero_w = &z;
    snprintf(zero_addr, sizeof(zero_addr), "%s", z.addr);
    mica_runtime_on_start(rt, wire_client, &w);
    assert_int_equal(mica_runtime_run(rt), 0);
    mica_http_server_free(w.srv);
    mica_http_server_free(z.srv);
    mica_tracer_free(w.tracer);
    mica_tracer_free(z.tracer);
    mica_runtime_free(rt);
    expect_no_failure();

    expect_case(&w, 0, false, "-01", "-");
    expect_case(&w, 1, true, "-01", "-");
    expect_case(&w, 2, false, "-01", "-"); /* two traceparents: a new trace */
    expect_case(&w, 3, false, "-01", "-");
    expect_case(&w, 4, false, "-01", "-");
    expect_case(&w, 5, true, "-01", "-");
    expect_case(&w, 6, true, "-00", "foo=1,bar=2,rojo=1,congo=2,baz=3");
    expect_case(&w, 7, true, "-00", "foo=1");
    expect_case(&w, 8, true, "-00", "foo=1");
    expect_case(&w, 9, false, "-01", "-"); /* no traceparent: tracestate discarded */
    expect_case(&w, 10, true, "-00", "-"); /* duplicated key across fields */
    expect_case(&w, 11, true, "-00", "-");
    expect_case(&w, 12, true, "-00", "foo=1");
    expect_case(&w, 13, true, "-00", "-"); /* one bad member discards the list */
    expect_case(&w, 14, false, "-01", "-");
    expect_case(&w, 15, true, "-01", "-"); /* future version: downgraded to 00 */
    expect_case(&w, 16, false, "-01", "-");
    expect_case(&w, 17, true, "-01", "-");
    expect_case(&w, 18, true, "-01", "foo=1,bar=2,baz=3");
    expect_case(&w, 19, true, "-01", "-");
    expect_case(&w, 20, false, "-00", "-");
    expect_case(&w, 21, true, "-00", "-");
    char want32[512];
    size_t n = 0;
    for (int i = 1; i <= 32; i++)
        n += (size_t)snprintf(want32 + n, sizeof(want32) - n, "%sbar%02d=%02d", i > 1 ? "," : "", i,
                              i);
    expect_case(&w, 22, true, "-01", want32);
    expect_case(&w, 23, true, "-01", "-");

    /* The observers read the ids after the spans ended, and got the same. */
    assert_int_equal(w.nobserved + z.nobserved, NCASES);
    int j = 0;
    for (int i = 0; i < NCASES; i++) {
        if (i == 19 || i == 20)
            continue;
        char tp[56], ts[1024], sid[17];
        body(&w, i, tp, ts, sid);
        assert_string_equal(w.observed[j++], sid);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_table),
        cmocka_unit_test(test_traceparent_format_round_trips),
        cmocka_unit_test(test_tracestate_table),
        cmocka_unit_test(test_tracestate_is_truncated_by_whole_members_long_ones_first),
        cmocka_unit_test(test_a_traced_server_propagates_per_the_w3c_test_suite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

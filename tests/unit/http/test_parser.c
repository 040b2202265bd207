/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 request parser: tables of good and bad heads (each row names the
 * rule it checks), limits at and past their edges, every byte value in every
 * position, and the chunked decoder fed whole, split at every boundary and
 * one byte at a time. Inputs are copied into buffers of their exact size so
 * that ASan sees any read past the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

static const mica__http_limits_t limits_default = {
    .max_head_bytes = 8192,
    .max_target_bytes = 2048,
    .max_headers = 32,
};
/* Small enough that the limit rows below stay readable. */
static const mica__http_limits_t limits_small = {
    .max_head_bytes = 64,
    .max_target_bytes = 16,
    .max_headers = 2,
};

static char *dup_exact(const char *s, size_t len)
{
    char *p = malloc(len ? len : 1);
    assert_non_null(p);
    memcpy(p, s, len);
    return p;
}

static int parse_exact(const char *req, size_t len, const mica__http_limits_t *lim)
{
    mica__http_head_t h;
    char *copy = dup_exact(req, len);
    int rc = mica__http_parse_head(copy, len, lim, &h);
    free(copy);
    return rc;
}

static void expect_span(const char *row, const char *what, const char *got, size_t got_len,
                        const char *want)
{
    if (want == NULL) {
        if (got != NULL || got_len != 0)
            fail_msg("%s: %s is \"%.*s\", want none", row, what, (int)got_len, got);
        return;
    }
    if (got == NULL || got_len != strlen(want) || memcmp(got, want, got_len) != 0)
        fail_msg("%s: %s is \"%.*s\", want \"%s\"", row, what, got ? (int)got_len : 0,
                 got ? got : "", want);
}

static void expect_int(const char *row, const char *what, long long got, long long want)
{
    if (got != want)
        fail_msg("%s: %s is %lld, want %lld", row, what, got, want);
}

/* ---- good heads ------------------------------------------------------------ */

struct good_head {
    const char *name;
    const char *req;
    size_t head_len; /* 0: all of req */
    mica__http_method_t method;
    const char *method_str;
    const char *path;
    const char *query; /* NULL: the target has no '?' */
    int minor;
    size_t num_headers;
    int64_t content_length;
    bool chunked;
    bool keep_alive;
    bool expect_continue;
    bool has_host;
};

static const struct good_head good_heads[] = {
    {"a plain GET", "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 1, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"a GET with a query", "GET /search?q=mica&page=2 HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/search", .query = "q=mica&page=2",
     .minor = 1, .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"an empty query is not an absent one", "GET /x? HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/x", .query = "", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"a second '?' belongs to the query", "GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/a", .query = "b?c", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"a target using every visible ASCII class",
     "GET /!\"#$%&'()*+,-./09:;<=>@AZ[\\]^_`az{|}~?q=~ HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET",
     .path = "/!\"#$%&'()*+,-./09:;<=>@AZ[\\]^_`az{|}~", .query = "q=~", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"a POST with Content-Length leaves the body unread",
     "POST /users HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", .head_len = 52,
     .method = MICA__HTTP_POST, .method_str = "POST", .path = "/users", .minor = 1,
     .num_headers = 2, .content_length = 5, .keep_alive = true, .has_host = true},
    {"a chunked POST", "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
     .method = MICA__HTTP_POST, .method_str = "POST", .path = "/up", .minor = 1, .num_headers = 2,
     .content_length = -1, .chunked = true, .keep_alive = true, .has_host = true},
    {"chunked is matched without case and OWS",
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \t CHUNKED \t\r\n\r\n",
     .method = MICA__HTTP_POST, .method_str = "POST", .path = "/", .minor = 1, .num_headers = 2,
     .content_length = -1, .chunked = true, .keep_alive = true, .has_host = true},
    {"Content-Length 0", "PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
     .method = MICA__HTTP_PUT, .method_str = "PUT", .path = "/k", .minor = 1, .num_headers = 2,
     .content_length = 0, .keep_alive = true, .has_host = true},
    {"Content-Length with leading zeros",
     "PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", .method = MICA__HTTP_PUT,
     .method_str = "PUT", .path = "/k", .minor = 1, .num_headers = 2, .content_length = 7,
     .keep_alive = true, .has_host = true},
    {"Content-Length at INT64_MAX",
     "PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n",
     .method = MICA__HTTP_PUT, .method_str = "PUT", .path = "/k", .minor = 1, .num_headers = 2,
     .content_length = INT64_MAX, .keep_alive = true, .has_host = true},
    {"field names match without case", "POST / HTTP/1.1\r\nHOST: a\r\ncontent-LENGTH: 3\r\n\r\n",
     .method = MICA__HTTP_POST, .method_str = "POST", .path = "/", .minor = 1, .num_headers = 2,
     .content_length = 3, .keep_alive = true, .has_host = true},
    {"HTTP/1.0 without Host closes by default", "GET /old HTTP/1.0\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/old", .minor = 0, .num_headers = 0,
     .content_length = -1},
    {"HTTP/1.0 with keep-alive persists",
     "GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 0, .num_headers = 2, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"HTTP/1.0 keep-alive inside a list with empty elements",
     "GET / HTTP/1.0\r\nConnection: , foo ,, keep-alive ,\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 0, .num_headers = 1, .content_length = -1,
     .keep_alive = true},
    {"Connection: close ends HTTP/1.1 persistence",
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 2, .content_length = -1,
     .has_host = true},
    {"close inside a Connection list",
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade,CLOSE\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 2, .content_length = -1,
     .has_host = true},
    {"close wins over keep-alive",
     "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/", .minor = 0, .num_headers = 2,
     .content_length = -1},
    {"Expect: 100-continue",
     "PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
     .method = MICA__HTTP_PUT, .method_str = "PUT", .path = "/f", .minor = 1, .num_headers = 3,
     .content_length = 10, .keep_alive = true, .expect_continue = true, .has_host = true},
    {"Expect matches without case", "PUT /f HTTP/1.1\r\nHost: a\r\nexpect: 100-Continue\r\n\r\n",
     .method = MICA__HTTP_PUT, .method_str = "PUT", .path = "/f", .minor = 1, .num_headers = 2,
     .content_length = -1, .keep_alive = true, .expect_continue = true, .has_host = true},
    {"Expect is ignored in HTTP/1.0", "PUT /f HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
     .method = MICA__HTTP_PUT, .method_str = "PUT", .path = "/f", .minor = 0, .num_headers = 1,
     .content_length = -1},
    {"an unknown expectation is not 100-continue",
     "PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continuez\r\n\r\n", .method = MICA__HTTP_PUT,
     .method_str = "PUT", .path = "/f", .minor = 1, .num_headers = 2, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"one leading CRLF is skipped", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/", .minor = 1, .num_headers = 1,
     .content_length = -1, .keep_alive = true, .has_host = true},
    {"several leading CRLFs are skipped", "\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/", .minor = 1, .num_headers = 1,
     .content_length = -1, .keep_alive = true, .has_host = true},
    {"HEAD", "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n", .method = MICA__HTTP_HEAD, .method_str = "HEAD",
     .path = "/h", .minor = 1, .num_headers = 1, .content_length = -1, .keep_alive = true,
     .has_host = true},
    {"DELETE", "DELETE /u/1 HTTP/1.1\r\nHost: a\r\n\r\n", .method = MICA__HTTP_DELETE,
     .method_str = "DELETE", .path = "/u/1", .minor = 1, .num_headers = 1, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"PATCH", "PATCH /u/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", .head_len = 51,
     .method = MICA__HTTP_PATCH, .method_str = "PATCH", .path = "/u/1", .minor = 1,
     .num_headers = 2, .content_length = 2, .keep_alive = true, .has_host = true},
    {"OPTIONS in asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_OPTIONS, .method_str = "OPTIONS", .path = "*", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"CONNECT in authority-form", "CONNECT db.local:5432 HTTP/1.1\r\nHost: db.local:5432\r\n\r\n",
     .method = MICA__HTTP_CONNECT, .method_str = "CONNECT", .path = "db.local:5432", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"TRACE", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", .method = MICA__HTTP_TRACE,
     .method_str = "TRACE", .path = "/", .minor = 1, .num_headers = 1, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"an absolute-form target", "GET http://a.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "http://a.example/x", .query = "y=1",
     .minor = 1, .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"an unknown method token", "PURGE /cache HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_OTHER, .method_str = "PURGE", .path = "/cache", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"methods are case-sensitive", "get / HTTP/1.1\r\nHost: a\r\n\r\n", .method = MICA__HTTP_OTHER,
     .method_str = "get", .path = "/", .minor = 1, .num_headers = 1, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"a method made of every tchar", "!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\nHost: a\r\n\r\n",
     .method = MICA__HTTP_OTHER, .method_str = "!#$%&'*+-.^_`|~09azAZ", .path = "/", .minor = 1,
     .num_headers = 1, .content_length = -1, .keep_alive = true, .has_host = true},
    {"a field name made of every tchar",
     "GET / HTTP/1.1\r\nHost: a\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 2, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"values may hold HTAB, SP, ':' and obs-text",
     "GET / HTTP/1.1\r\nHost: a\r\nX-V: a\tb c:d \xc3\xa9\xff\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 2, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"an empty value", "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Blank:  \t \r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/", .minor = 1, .num_headers = 3,
     .content_length = -1, .keep_alive = true, .has_host = true},
    {"an empty Host is valid", "GET / HTTP/1.1\r\nHost:\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 1, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"Host as an IPv6 literal with a port", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/", .minor = 1, .num_headers = 1,
     .content_length = -1, .keep_alive = true, .has_host = true},
    {"Host with sub-delims and percent-encoding",
     "GET / HTTP/1.1\r\nHost: a-b_c~d.e!$&'()*+,;=%41:80\r\n\r\n", .method = MICA__HTTP_GET,
     .method_str = "GET", .path = "/", .minor = 1, .num_headers = 1, .content_length = -1,
     .keep_alive = true, .has_host = true},
    {"pipelined requests: only the first head is consumed",
     "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", .head_len = 28,
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/1", .minor = 1, .num_headers = 1,
     .content_length = -1, .keep_alive = true, .has_host = true},
    {"a browser-like request with long values",
     "GET /assets/app.js?v=3 HTTP/1.1\r\n"
     "Host: shop.example.com\r\n"
     "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n"
     "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
     "Accept-Language: en-US,en;q=0.5\r\n"
     "Accept-Encoding: gzip, deflate, br\r\n"
     "Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=\"yes\"\r\n"
     "Connection: keep-alive\r\n"
     "\r\n",
     .method = MICA__HTTP_GET, .method_str = "GET", .path = "/assets/app.js", .query = "v=3",
     .minor = 1, .num_headers = 7, .content_length = -1, .keep_alive = true, .has_host = true},
};

static void check_good_head(const struct good_head *g, const char *req, size_t len)
{
    size_t want_len = g->head_len ? g->head_len : strlen(g->req);
    mica__http_head_t h;
    int rc = mica__http_parse_head(req, len, &limits_default, &h);
    expect_int(g->name, "result", rc, (long long)want_len);
    expect_int(g->name, "method", h.method, g->method);
    expect_span(g->name, "method_str", h.method_str, h.method_len, g->method_str);
    expect_span(g->name, "path", h.path, h.path_len, g->path);
    expect_span(g->name, "query", h.query, h.query_len, g->query);
    if (h.target != h.path || h.target_len != h.path_len + (h.query ? h.query_len + 1 : 0))
        fail_msg("%s: target does not span path and query", g->name);
    expect_int(g->name, "version_minor", h.version_minor, g->minor);
    expect_int(g->name, "num_headers", (long long)h.num_headers, (long long)g->num_headers);
    expect_int(g->name, "content_length", h.content_length, g->content_length);
    expect_int(g->name, "chunked", h.chunked, g->chunked);
    expect_int(g->name, "keep_alive", h.keep_alive, g->keep_alive);
    expect_int(g->name, "expect_continue", h.expect_continue, g->expect_continue);
    expect_int(g->name, "has_host", h.has_host, g->has_host);
}

static void test_every_good_request_parses_with_the_expected_fields(void **state)
{
    for (size_t i = 0; i < sizeof good_heads / sizeof good_heads[0]; i++) {
        const struct good_head *g = &good_heads[i];
        size_t len = strlen(g->req);
        char *req = dup_exact(g->req, len);
        check_good_head(g, req, len);
        free(req);
        /* The head alone, with nothing after it, is just as complete. */
        size_t head_len = g->head_len ? g->head_len : len;
        req = dup_exact(g->req, head_len);
        check_good_head(g, req, head_len);
        free(req);
    }
}

static void test_every_proper_prefix_of_a_good_request_is_incomplete(void **state)
{
    for (size_t i = 0; i < sizeof good_heads / sizeof good_heads[0]; i++) {
        const struct good_head *g = &good_heads[i];
        size_t head_len = g->head_len ? g->head_len : strlen(g->req);
        for (size_t n = 0; n < head_len; n++) {
            int rc = parse_exact(g->req, n, &limits_default);
            if (rc != 0)
                fail_msg("%s: the first %zu bytes give %d, want 0", g->name, n, rc);
        }
    }
}

static void test_field_values_are_trimmed_and_names_keep_their_case(void **state)
{
    const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Mixed-Case:  \t two words \t \r\n"
                       "X-Empty:\r\nX-Colon::x:\r\n\r\n";
    char *buf = dup_exact(req, sizeof req - 1);
    mica__http_head_t h;
    assert_int_equal(mica__http_parse_head(buf, sizeof req - 1, &limits_default, &h),
                     sizeof req - 1);
    assert_int_equal(h.num_headers, 4);
    expect_span("trim", "name 0", h.headers[0].name, h.headers[0].name_len, "Host");
    expect_span("trim", "value 0", h.headers[0].value, h.headers[0].value_len, "a");
    expect_span("trim", "name 1", h.headers[1].name, h.headers[1].name_len, "X-Mixed-Case");
    expect_span("trim", "value 1", h.headers[1].value, h.headers[1].value_len, "two words");
    expect_span("trim", "name 2", h.headers[2].name, h.headers[2].name_len, "X-Empty");
    assert_int_equal(h.headers[2].value_len, 0);
    expect_span("trim", "name 3", h.headers[3].name, h.headers[3].name_len, "X-Colon");
    expect_span("trim", "value 3", h.headers[3].value, h.headers[3].value_len, ":x:");
    for (size_t i = 0; i < h.num_headers; i++) {
        assert_true(h.headers[i].name >= buf && h.headers[i].name < buf + sizeof req);
        assert_true(h.headers[i].value >= buf && h.headers[i].value <= buf + sizeof req);
    }
    free(buf);
}

/* ---- bad heads ------------------------------------------------------------- */

struct bad_head {
    const char *name;
    const char *req;
    size_t len; /* 0: strlen(req); set when req holds a NUL */
    int status;
    const mica__http_limits_t *limits; /* NULL: limits_default */
};

#define L(s) s, sizeof(s) - 1 /* a literal with embedded NULs, and its length */

static const struct bad_head bad_heads[] = {
    /* framing: Content-Length (RFC 9110 §8.6, RFC 9112 §6.3) */
    {"conflicting Content-Lengths",
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
     .status = -400},
    {"a repeated identical Content-Length",
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
     .status = -400},
    {"a Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
     .status = -400},
    {"a negative Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
     .status = -400},
    {"a signed Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
     .status = -400},
    {"a hex Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
     .status = -400},
    {"an empty Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
     .status = -400},
    {"a Content-Length with inner space",
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", .status = -400},
    {"a Content-Length one past INT64_MAX",
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", .status = -400},
    {"a Content-Length far past INT64_MAX",
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     .status = -400},
    /* framing: Transfer-Encoding (RFC 9112 §6.1, §6.3) */
    {"Content-Length then Transfer-Encoding",
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     .status = -400},
    {"Transfer-Encoding then Content-Length",
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
     .status = -400},
    {"Transfer-Encoding gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
     .status = -400},
    {"a Transfer-Encoding list ending in chunked",
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .status = -501},
    {"chunked twice in one Transfer-Encoding",
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", .status = -501},
    {"a repeated Transfer-Encoding field",
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
     "\r\n\r\n",
     .status = -400},
    {"a Transfer-Encoding with parameters",
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", .status = -400},
    {"an empty Transfer-Encoding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
     .status = -400},
    {"a lookalike of chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n",
     .status = -400},
    {"Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
     .status = -400},
    {"an unknown Transfer-Encoding in HTTP/1.0",
     "POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n", .status = -400},
    /* field syntax (RFC 9112 §5) */
    {"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", .status = -400},
    {"obs-fold with HTAB", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", .status = -400},
    {"whitespace before the first field line", "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
     .status = -400},
    {"a space before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", .status = -400},
    {"a tab before the colon", "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", .status = -400},
    {"an empty field name", "GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", .status = -400},
    {"a field line without a colon", "GET / HTTP/1.1\r\nHost: a\r\nX-No-Colon\r\n\r\n",
     .status = -400},
    {"a separator in a field name", "GET / HTTP/1.1\r\nHost: a\r\nX@Y: v\r\n\r\n", .status = -400},
    {"a parenthesis in a field name", "GET / HTTP/1.1\r\nHost: a\r\nX(Y): v\r\n\r\n",
     .status = -400},
    {"a NUL in a field name", L("GET / HTTP/1.1\r\nHost: a\r\nX\0Y: v\r\n\r\n"), .status = -400},
    {"obs-text in a field name", "GET / HTTP/1.1\r\nHost: a\r\nX\xe9: v\r\n\r\n", .status = -400},
    {"a NUL in a field value", L("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), .status = -400},
    {"a control byte in a field value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n",
     .status = -400},
    {"ESC in a field value", "GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", .status = -400},
    {"DEL in a field value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", .status = -400},
    {"a bare CR in a field value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", .status = -400},
    {"a bare LF in a field value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n", .status = -400},
    {"a field line ending in a bare LF", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", .status = -400},
    {"a head ending in a bare LF", "GET / HTTP/1.1\r\nHost: a\r\n\n", .status = -400},
    {"a head ending in CR CR", "GET / HTTP/1.1\r\nHost: a\r\n\r\r", .status = -400},
    {"a request line ending in a bare LF", "GET / HTTP/1.1\nHost: a\r\n\r\n", .status = -400},
    {"a request line ending in a bare CR", "GET / HTTP/1.1\rHost: a\r\n\r\n", .status = -400},
    {"a leading bare LF", "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a leading bare CR", "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a leading CR CR LF", "\r\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    /* Host (RFC 9112 §3.2) */
    {"HTTP/1.1 without Host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", .status = -400},
    {"two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", .status = -400},
    {"two Host fields in different case", "GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n",
     .status = -400},
    {"two Host fields in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", .status = -400},
    {"a Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", .status = -400},
    {"a Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", .status = -400},
    {"a Host with userinfo", "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", .status = -400},
    {"a Host with obs-text", "GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n", .status = -400},
    /* Connection (RFC 9110 §7.6.1) */
    {"a Connection option that is not a token",
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: a b"
     "\r\n\r\n",
     .status = -400},
    {"a quoted Connection option", "GET / HTTP/1.1\r\nHost: a\r\nConnection: \"close\"\r\n\r\n",
     .status = -400},
    /* HTTP-version (RFC 9112 §2.3) */
    {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", .status = -505},
    {"HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", .status = -505},
    {"HTTP/0.9 in the long form", "GET / HTTP/0.9\r\n\r\n", .status = -505},
    {"HTTP/3.1", "GET / HTTP/3.1\r\nHost: a\r\n\r\n", .status = -505},
    {"a space after the version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", .status = -400},
    {"junk after the version", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", .status = -400},
    {"a two-digit minor version", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", .status = -400},
    {"a two-digit major version", "GET / HTTP/11.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a version without a minor", "GET / HTTP/2\r\nHost: a\r\n\r\n", .status = -400},
    {"a lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a version with a space for the slash", "GET / HTTP 1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a missing version (HTTP/0.9 simple request)", "GET /\r\n\r\n", .status = -400},
    /* request line (RFC 9112 §3) */
    {"two spaces after the method", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"two spaces after the target", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a leading space", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a tab between method and target", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a missing target", "GET HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a separator in the method", "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a NUL in the method", L("G\0T / HTTP/1.1\r\nHost: a\r\n\r\n"), .status = -400},
    {"a control byte in the target", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a tab in the target", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"DEL in the target", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"obs-text in the target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    {"a NUL in the query", L("GET /a?b\0c HTTP/1.1\r\nHost: a\r\n\r\n"), .status = -400},
    {"a space in the query", "GET /a?b c HTTP/1.1\r\nHost: a\r\n\r\n", .status = -400},
    /* bad bytes are refused before the head is complete */
    {"an incomplete target with a control byte", "GET /\x01", .status = -400},
    {"an incomplete version that cannot become one", "GET / HTTX", .status = -400},
    {"an incomplete field value with a NUL", L("GET / HTTP/1.1\r\nHost: a\r\nX: \0"),
     .status = -400},
    {"an incomplete field name with a space", "GET / HTTP/1.1\r\nHo st", .status = -400},
    {"an incomplete head after an unsupported version", "GET / HTTP/2.0\r\n", .status = -505},
    {"an incomplete head after a duplicate Content-Length",
     "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n", .status = -400},
    /* limits: max_head_bytes 64, max_target_bytes 16, max_headers 2 */
    {"a target one byte over the limit", "GET /aaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n",
     .status = -414, .limits = &limits_small},
    {"an incomplete target already over the limit", "GET /aaaaaaaaaaaaaaaaaaaa", .status = -414,
     .limits = &limits_small},
    {"an unended request line past the head limit",
     "GETTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT", .status = -414,
     .limits = &limits_small},
    {"a complete head one byte over the limit",
     "GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", .status = -431,
     .limits = &limits_small},
    {"an incomplete head past the limit",
     "GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
     .status = -431, .limits = &limits_small},
    {"leading CRLFs count toward the head limit",
     "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
     "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
     .status = -431, .limits = &limits_small},
    {"endless leading CRLFs",
     "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
     "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
     .status = -431, .limits = &limits_small},
    {"one field more than max_headers", "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
     .status = -431, .limits = &limits_small},
};

static void test_every_bad_request_is_refused_with_its_status(void **state)
{
    for (size_t i = 0; i < sizeof bad_heads / sizeof bad_heads[0]; i++) {
        const struct bad_head *b = &bad_heads[i];
        size_t len = b->len ? b->len : strlen(b->req);
        int rc = parse_exact(b->req, len, b->limits ? b->limits : &limits_default);
        if (rc != b->status)
            fail_msg("%s: got %d, want %d", b->name, rc, b->status);
    }
}

/* ---- limits at their edges ------------------------------------------------- */

/* Builds "GET <target> HTTP/1.1\r\nHost: a\r\n" + fields "F<i>: v" + padding value + CRLF. */
static size_t build_head(char *buf, size_t cap, size_t target_len, size_t extra_fields,
                         size_t pad_len)
{
    size_t n = 0;
    memcpy(buf + n, "GET /", 5);
    n += 5;
    memset(buf + n, 'a', target_len - 1);
    n += target_len - 1;
    const char line[] = " HTTP/1.1\r\nHost: a\r\n";
    memcpy(buf + n, line, sizeof line - 1);
    n += sizeof line - 1;
    for (size_t i = 0; i < extra_fields; i++)
        n += (size_t)snprintf(buf + n, cap - n, "F%zu: v\r\n", i);
    if (pad_len) {
        memcpy(buf + n, "P: ", 3);
        n += 3;
        memset(buf + n, 'p', pad_len);
        n += pad_len;
        memcpy(buf + n, "\r\n", 2);
        n += 2;
    }
    memcpy(buf + n, "\r\n", 2);
    n += 2;
    assert_true(n <= cap);
    return n;
}

static void test_limits_accept_exactly_their_value_and_refuse_one_more(void **state)
{
    static char buf[16384];
    mica__http_limits_t lim = {.max_head_bytes = 4096, .max_target_bytes = 100, .max_headers = 10};

    size_t n = build_head(buf, sizeof buf, 100, 0, 0);
    assert_int_equal(parse_exact(buf, n, &lim), (int)n);
    n = build_head(buf, sizeof buf, 101, 0, 0);
    assert_int_equal(parse_exact(buf, n, &lim), -414);

    n = build_head(buf, sizeof buf, 1, 9, 0); /* Host + 9 */
    assert_int_equal(parse_exact(buf, n, &lim), (int)n);
    n = build_head(buf, sizeof buf, 1, 10, 0);
    assert_int_equal(parse_exact(buf, n, &lim), -431);

    n = build_head(buf, sizeof buf, 1, 0, 1000);
    lim.max_head_bytes = n;
    assert_int_equal(parse_exact(buf, n, &lim), (int)n);
    lim.max_head_bytes = n - 1;
    assert_int_equal(parse_exact(buf, n, &lim), -431);
    /* A complete head within the limit is fine even when the body makes len exceed it. */
    lim.max_head_bytes = n;
    memset(buf + n, 'b', 100);
    assert_int_equal(parse_exact(buf, n + 100, &lim), (int)n);
}

static void test_max_headers_above_the_array_size_is_clamped(void **state)
{
    static char buf[16384];
    mica__http_limits_t lim = {
        .max_head_bytes = sizeof buf, .max_target_bytes = 100, .max_headers = 1000};
    size_t n = build_head(buf, sizeof buf, 1, MICA__HTTP_MAX_HEADERS - 1, 0);
    assert_int_equal(parse_exact(buf, n, &lim), (int)n);
    n = build_head(buf, sizeof buf, 1, MICA__HTTP_MAX_HEADERS, 0);
    assert_int_equal(parse_exact(buf, n, &lim), -431);
}

static void test_huge_limits_do_not_overflow(void **state)
{
    mica__http_limits_t lim = {
        .max_head_bytes = SIZE_MAX, .max_target_bytes = SIZE_MAX, .max_headers = SIZE_MAX};
    const char req[] = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse_exact(req, sizeof req - 1, &lim), sizeof req - 1);
    assert_int_equal(parse_exact(req, sizeof req - 3, &lim), 0);
    assert_int_equal(parse_exact("GET /x", 6, &lim), 0);
}

static void test_an_incomplete_head_within_the_limits_is_incomplete(void **state)
{
    assert_int_equal(parse_exact("", 0, &limits_small), 0);
    assert_int_equal(parse_exact("\r", 1, &limits_small), 0);
    assert_int_equal(parse_exact("\r\n\r\n", 4, &limits_small), 0);
    /* As long as the limit, but still able to end within it. */
    const char *req = "GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_int_equal(strlen(req), limits_small.max_head_bytes);
    assert_int_equal(parse_exact(req, strlen(req), &limits_small), 0);
}

/* ---- every byte value in every position ------------------------------------ */

static bool is_tchar(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * Parses before + (pad 'a's) + c + "bbbbbbbbbbb" + after: the padding moves c
 * through every offset of the eight-byte words the scanners test at once.
 */
static int parse_with_byte(const char *before, size_t pad, int c, const char *after)
{
    char buf[256];
    size_t n = strlen(before);
    memcpy(buf, before, n);
    memset(buf + n, 'a', pad);
    n += pad;
    buf[n++] = (char)c;
    memset(buf + n, 'b', 11);
    n += 11;
    memcpy(buf + n, after, strlen(after));
    n += strlen(after);
    return parse_exact(buf, n, &limits_default);
}

static void expect_byte(const char *where, size_t pad, int c, int rc, int want)
{
    if ((rc > 0 ? 0 : rc) != want)
        fail_msg("%s byte 0x%02x after %zu bytes: got %d, want %d", where, c, pad, rc, want);
}

static void test_each_byte_value_is_accepted_only_where_the_grammar_allows_it(void **state)
{
    for (size_t pad = 0; pad <= 9; pad++) {
        for (int c = 0; c < 256; c++) {
            const char *rest = " HTTP/1.1\r\nHost: a\r\n\r\n";
            int rc = parse_with_byte("G", pad, c, " / HTTP/1.1\r\nHost: a\r\n\r\n");
            expect_byte("method", pad, c, rc, is_tchar(c) ? 0 : -400);

            int want = c >= 0x21 && c <= 0x7e ? 0 : -400;
            expect_byte("path", pad, c, parse_with_byte("GET /", pad, c, rest), want);
            expect_byte("query", pad, c, parse_with_byte("GET /?", pad, c, rest), want);

            /* ':' just ends the name early */
            want = is_tchar(c) || c == ':' ? 0 : -400;
            rc = parse_with_byte("GET / HTTP/1.1\r\nHost: a\r\nX", pad, c, ": v\r\n\r\n");
            expect_byte("field name", pad, c, rc, want);

            want = (c == '\t' || c >= 0x20) && c != 0x7f ? 0 : -400;
            rc = parse_with_byte("GET / HTTP/1.1\r\nHost: a\r\nX: v", pad, c, "\r\n\r\n");
            expect_byte("field value", pad, c, rc, want);
        }
    }
}

static void test_token_eq_ignores_ascii_case_and_requires_equal_length(void **state)
{
    assert_true(mica__http_token_eq("Chunked", 7, "chunked"));
    assert_true(mica__http_token_eq("CHUNKED", 7, "chunked"));
    assert_true(mica__http_token_eq("100-Continue", 12, "100-continue"));
    assert_true(mica__http_token_eq("", 0, ""));
    assert_false(mica__http_token_eq("chunke", 6, "chunked"));
    assert_false(mica__http_token_eq("chunkedx", 8, "chunked"));
    assert_false(mica__http_token_eq("chunked", 6, "chunked"));
    /* Only letters fold: '@' is not '`' and '[' is not '{'. */
    assert_false(mica__http_token_eq("@", 1, "`"));
    assert_false(mica__http_token_eq("[", 1, "{"));
    assert_false(mica__http_token_eq("\xc9", 1, "\xe9"));
}

/* ---- chunked bodies -------------------------------------------------------- */

struct feed_result {
    int rc;          /* the last status returned */
    size_t consumed; /* input bytes consumed in total (where it stopped, on error) */
    char data[8192];
    size_t data_len;
};

/*
 * Feeds in[0..len) to a fresh decoder as pieces that end at cuts[0..ncuts)
 * (increasing) and at len, each in its own exactly-sized heap buffer, the way
 * a server would pass each read. Stops at the first nonzero status.
 */
static void feed(const char *in, size_t len, const size_t *cuts, size_t ncuts,
                 struct feed_result *res)
{
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    res->rc = 0;
    res->consumed = 0;
    res->data_len = 0;
    size_t from = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        size_t piece = to - from;
        char *buf = dup_exact(in + from, piece);
        size_t n = piece, out = SIZE_MAX;
        res->rc = mica__http_chunked_decode(&d, buf, &n, &out);
        assert_true(n <= piece);
        assert_true(out <= n);
        if (res->rc == 0)
            assert_int_equal(n, piece);
        assert_true(res->data_len + out <= sizeof res->data);
        memcpy(res->data + res->data_len, buf, out);
        res->data_len += out;
        res->consumed = from + n;
        free(buf);
        if (res->rc != 0)
            return;
        from = to;
    }
}

static void expect_same_feed(const char *name, const char *how, const struct feed_result *want,
                             const struct feed_result *got)
{
    if (got->rc != want->rc || got->consumed != want->consumed || got->data_len != want->data_len ||
        memcmp(got->data, want->data, got->data_len) != 0)
        fail_msg("%s: fed %s: status %d after %zu bytes with %zu bytes of data, but whole: "
                 "%d after %zu with %zu",
                 name, how, got->rc, got->consumed, got->data_len, want->rc, want->consumed,
                 want->data_len);
}

/*
 * Feeds the body whole, split in two at every position, split in three at
 * every pair of positions (when short enough) and one byte at a time, and
 * checks that every way gives the same status, consumption and data.
 */
static void feed_every_way(const char *name, const char *in, size_t len, struct feed_result *whole)
{
    static struct feed_result got;
    feed(in, len, NULL, 0, whole);
    char how[64];
    for (size_t i = 0; i <= len; i++) {
        feed(in, len, &i, 1, &got);
        snprintf(how, sizeof how, "split at %zu", i);
        expect_same_feed(name, how, whole, &got);
    }
    if (len <= 128) {
        for (size_t i = 0; i <= len; i++) {
            for (size_t j = i; j <= len; j++) {
                size_t cuts[2] = {i, j};
                feed(in, len, cuts, 2, &got);
                snprintf(how, sizeof how, "split at %zu and %zu", i, j);
                expect_same_feed(name, how, whole, &got);
            }
        }
    }
    size_t *cuts = malloc(len * sizeof *cuts + 1);
    assert_non_null(cuts);
    for (size_t i = 0; i + 1 < len; i++)
        cuts[i] = i + 1;
    feed(in, len, cuts, len ? len - 1 : 0, &got);
    expect_same_feed(name, "one byte at a time", whole, &got);
    free(cuts);
}

struct good_body {
    const char *name;
    const char *in;
    size_t in_len; /* 0: strlen(in) */
    const char *data;
    size_t data_len; /* 0: strlen(data) */
    size_t consumed; /* 0: all of in */
};

static const struct good_body good_bodies[] = {
    {"one chunk", "5\r\nhello\r\n0\r\n\r\n", .data = "hello"},
    {"two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", .data = "hello world"},
    {"an empty body", "0\r\n\r\n", .data = ""},
    {"upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", .data = "0123456789"},
    {"lower-case hex", "a\r\n0123456789\r\n0\r\n\r\n", .data = "0123456789"},
    {"a two-digit size", "1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
     .data = "abcdefghijklmnopqrstuvwxyz"},
    {"leading zeros in the size", "0005\r\nhello\r\n000\r\n\r\n", .data = "hello"},
    {"one-byte chunks", "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", .data = "abc"},
    {"data that looks like framing", "7\r\n0\r\n\r\n\r\n\r\n0\r\n\r\n", .data = "0\r\n\r\n\r\n"},
    {"data with NULs and high bytes", L("4\r\n\0\xff\0\x80\r\n0\r\n\r\n"), .data = "\0\xff\0\x80",
     .data_len = 4},
    {"a chunk extension", "5;name=value\r\nhello\r\n0\r\n\r\n", .data = "hello"},
    {"extensions with BWS", "5 \t; a = b ;c\r\nhello\r\n0\r\n\r\n", .data = "hello"},
    {"a quoted extension value", "5;a=\"x; y\\\"z\"\r\nhello\r\n0\r\n\r\n", .data = "hello"},
    {"an extension on the last chunk", "5\r\nhello\r\n0;final\r\n\r\n", .data = "hello"},
    {"trailer fields", "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nY:\r\nZ:  z z \t\r\n\r\n",
     .data = "hello"},
    {"the next request follows the body", "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n", .data = "abc",
     .consumed = 13},
    {"the next request follows right after the last chunk", "0\r\n\r\nG", .data = "",
     .consumed = 5},
};

static void test_every_good_chunked_body_decodes_the_same_however_it_is_split(void **state)
{
    static struct feed_result whole;
    for (size_t i = 0; i < sizeof good_bodies / sizeof good_bodies[0]; i++) {
        const struct good_body *g = &good_bodies[i];
        size_t len = g->in_len ? g->in_len : strlen(g->in);
        size_t data_len = g->data_len ? g->data_len : strlen(g->data);
        feed_every_way(g->name, g->in, len, &whole);
        expect_int(g->name, "status", whole.rc, 1);
        expect_int(g->name, "consumed", (long long)whole.consumed,
                   (long long)(g->consumed ? g->consumed : len));
        if (whole.data_len != data_len || memcmp(whole.data, g->data, data_len) != 0)
            fail_msg("%s: decoded \"%.*s\"", g->name, (int)whole.data_len, whole.data);
    }
}

struct bad_body {
    const char *name;
    const char *in;
    size_t in_len; /* 0: strlen(in) */
};

static const struct bad_body bad_bodies[] = {
    {"a size that is not hex", .in = "zz\r\n"},
    {"an empty size line", .in = "\r\n"},
    {"a negative size", .in = "-1\r\n"},
    {"a 0x prefix", .in = "0x5\r\n"},
    {"junk after the size", .in = "5x\r\nhello\r\n0\r\n\r\n"},
    {"two sizes", .in = "5 5\r\nhello\r\n0\r\n\r\n"},
    {"whitespace after the size without an extension", .in = "5 \r\nhello\r\n0\r\n\r\n"},
    {"whitespace before the size", .in = " 5\r\nhello\r\n0\r\n\r\n"},
    {"a size of 2^63", .in = "8000000000000000\r\n"},
    {"a size of 2^64", .in = "10000000000000000\r\n"},
    {"a size far past 2^64", .in = "ffffffffffffffffffffffff\r\n"},
    {"a bare LF after the size", .in = "5\nhello\r\n0\r\n\r\n"},
    {"a bare CR after the size", .in = "5\rhello\r\n0\r\n\r\n"},
    {"data longer than its size", .in = "5\r\nhelloX\r\n0\r\n\r\n"},
    {"no CRLF after the data", .in = "5\r\nhello0\r\n\r\n"},
    {"a bare LF after the data", .in = "5\r\nhello\n0\r\n\r\n"},
    {"a bare CR after the data", .in = "5\r\nhello\r0\r\n\r\n"},
    {"a control byte in an extension", .in = "5;a=\x01\r\nhello\r\n0\r\n\r\n"},
    {"a NUL in an extension", L("5;a\0\r\nhello\r\n0\r\n\r\n")},
    {"DEL in an extension", .in = "5;a\x7f\r\nhello\r\n0\r\n\r\n"},
    {"a bare LF ending an extension", .in = "5;a\nhello\r\n0\r\n\r\n"},
    {"a bare LF after the last chunk", .in = "0\n\r\n"},
    {"a bare LF ending the body", .in = "0\r\n\n"},
    {"CR CR ending the body", .in = "0\r\n\r\r"},
    {"obs-fold in the trailer", .in = "0\r\nX: a\r\n b\r\n\r\n"},
    {"a space before a trailer colon", .in = "0\r\nX : a\r\n\r\n"},
    {"an empty trailer name", .in = "0\r\n: a\r\n\r\n"},
    {"a trailer line without a colon", .in = "0\r\nX\r\n\r\n"},
    {"a control byte in a trailer value", .in = "0\r\nX: \x01\r\n\r\n"},
    {"a bare LF ending a trailer line", .in = "0\r\nX: a\n\r\n"},
    {"a bare CR in a trailer value", .in = "0\r\nX: a\rb\r\n\r\n"},
};

static void expect_rejected_every_way(const char *name, const char *in, size_t len)
{
    static struct feed_result whole;
    feed_every_way(name, in, len, &whole);
    if (whole.rc != -400)
        fail_msg("%s: got %d, want -400", name, whole.rc);
}

static void test_every_bad_chunked_body_is_refused_however_it_is_split(void **state)
{
    for (size_t i = 0; i < sizeof bad_bodies / sizeof bad_bodies[0]; i++) {
        const struct bad_body *b = &bad_bodies[i];
        expect_rejected_every_way(b->name, b->in, b->in_len ? b->in_len : strlen(b->in));
    }
}

static void test_chunk_size_of_2_pow_63_minus_1_is_accepted(void **state)
{
    char in[] = "7fffffffffffffff\r\nabc";
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    size_t n = sizeof in - 1, out;
    assert_int_equal(mica__http_chunked_decode(&d, in, &n, &out), 0);
    assert_int_equal(n, sizeof in - 1);
    assert_int_equal(out, 3);
    assert_memory_equal(in, "abc", 3);
}

/* Builds a body whose chunk-size line ("5;" + 'e'...) is line_len bytes long. */
static size_t build_ext_body(char *buf, size_t line_len)
{
    size_t n = 0;
    buf[n++] = '5';
    buf[n++] = ';';
    memset(buf + n, 'e', line_len - 2);
    n += line_len - 2;
    const char rest[] = "\r\nhello\r\n0\r\n\r\n";
    memcpy(buf + n, rest, sizeof rest - 1);
    return n + sizeof rest - 1;
}

static void test_chunk_extensions_are_capped_at_4096_bytes_per_line(void **state)
{
    static char buf[8192];
    static struct feed_result whole;
    size_t n = build_ext_body(buf, 4096);
    feed_every_way("a 4096-byte chunk line", buf, n, &whole);
    assert_int_equal(whole.rc, 1);
    assert_int_equal(whole.data_len, 5);

    n = build_ext_body(buf, 4097);
    expect_rejected_every_way("a 4097-byte chunk line", buf, n);
}

static void test_size_digits_and_whitespace_count_toward_the_chunk_line_cap(void **state)
{
    static char buf[8192];
    static struct feed_result whole;
    const char rest[] = "\r\nhello\r\n0\r\n\r\n";

    /* 4096 digits (leading zeros) fill the line exactly... */
    memset(buf, '0', 4095);
    buf[4095] = '5';
    memcpy(buf + 4096, rest, sizeof rest - 1);
    feed_every_way("a 4096-digit size", buf, 4096 + sizeof rest - 1, &whole);
    assert_int_equal(whole.rc, 1);
    assert_int_equal(whole.data_len, 5);
    /* ...so one more digit, or an extension after them, is too long. */
    memset(buf, '0', 4096);
    buf[4096] = '5';
    memcpy(buf + 4097, rest, sizeof rest - 1);
    expect_rejected_every_way("a 4097-digit size", buf, 4097 + sizeof rest - 1);
    buf[4096] = ';';
    expect_rejected_every_way("a 4096-digit size with an extension", buf, 4097 + sizeof rest - 1);

    /* Whitespace before the ';' counts too. */
    buf[0] = '5';
    memset(buf + 1, ' ', 4094);
    buf[4095] = ';';
    memcpy(buf + 4096, rest, sizeof rest - 1);
    feed_every_way("a size padded to 4096 bytes", buf, 4096 + sizeof rest - 1, &whole);
    assert_int_equal(whole.rc, 1);
    memset(buf + 1, ' ', 4095);
    buf[4096] = ';';
    memcpy(buf + 4097, rest, sizeof rest - 1);
    expect_rejected_every_way("a size padded to 4097 bytes", buf, 4097 + sizeof rest - 1);
}

/* Builds "0\r\n" + trailer lines + "\r\n" whose trailer section is section_len bytes. */
static size_t build_trailer_body(char *buf, size_t section_len)
{
    size_t n = 0;
    memcpy(buf, "0\r\n", 3);
    n += 3;
    size_t left = section_len - 2; /* the final CRLF */
    while (left > 0) {
        /* One field line of at most 1000 bytes: "T: " + value + CRLF (at least 5). */
        size_t line = left > 1000 ? 1000 : left;
        if (left - line != 0 && left - line < 5)
            line -= 5;
        memcpy(buf + n, "T: ", 3);
        memset(buf + n + 3, 'v', line - 5);
        memcpy(buf + n + line - 2, "\r\n", 2);
        n += line;
        left -= line;
    }
    memcpy(buf + n, "\r\n", 2);
    return n + 2;
}

static void test_trailer_section_is_capped_at_4096_bytes(void **state)
{
    static char buf[8192];
    static struct feed_result whole;
    size_t n = build_trailer_body(buf, 4096);
    assert_int_equal(n, 3 + 4096);
    feed_every_way("a 4096-byte trailer section", buf, n, &whole);
    assert_int_equal(whole.rc, 1);
    assert_int_equal(whole.consumed, n);

    n = build_trailer_body(buf, 4097);
    expect_rejected_every_way("a 4097-byte trailer section", buf, n);
}

static void test_chunked_decoder_stays_finished_or_failed(void **state)
{
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    char ok[] = "0\r\n\r\nGET";
    size_t n = sizeof ok - 1, out;
    assert_int_equal(mica__http_chunked_decode(&d, ok, &n, &out), 1);
    assert_int_equal(n, 5);
    n = 3;
    assert_int_equal(mica__http_chunked_decode(&d, ok + 5, &n, &out), 1);
    assert_int_equal(n, 0);
    assert_int_equal(out, 0);

    mica__http_chunked_init(&d);
    char bad[] = "5\r\nhelloX";
    n = sizeof bad - 1;
    assert_int_equal(mica__http_chunked_decode(&d, bad, &n, &out), -400);
    assert_int_equal(n, 8); /* stopped at the X */
    assert_int_equal(out, 5);
    char more[] = "0\r\n\r\n";
    n = sizeof more - 1;
    assert_int_equal(mica__http_chunked_decode(&d, more, &n, &out), -400);
}

static void test_chunked_request_decodes_after_its_head(void **state)
{
    char req[] = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "4\r\nmica\r\n3;x=y\r\n!!!\r\n0\r\nT: 1\r\n\r\nnext";
    size_t len = sizeof req - 1;
    mica__http_head_t h;
    int head = mica__http_parse_head(req, len, &limits_default, &h);
    assert_true(head > 0);
    assert_true(h.chunked);

    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    size_t n = len - (size_t)head, out;
    assert_int_equal(mica__http_chunked_decode(&d, req + head, &n, &out), 1);
    assert_int_equal(out, 7);
    assert_memory_equal(req + head, "mica!!!", 7);
    assert_memory_equal(req + head + n, "next", 4);
}

/* ---- response heads (the client's parser) ----------------------------------------- */

struct resp_row {
    const char *rule;
    const char *head;
    int rc; /* > 0: complete (its length is strlen(head)), else the result */
    int status;
    int64_t content_length;
    bool chunked, keep_alive;
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers" /* rows name what they need */
static const struct resp_row resp_rows[] = {
    {"plain 1.1 keeps alive", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 1, 200, 5, false, true},
    {"no reason phrase", "HTTP/1.1 204\r\n\r\n", 1, 204, -1, false, true},
    {"empty reason phrase", "HTTP/1.1 404 \r\n\r\n", 1, 404, -1, false, true},
    {"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", 1, 200, -1, true, true},
    {"close", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 1, 200, -1, false, false},
    {"1.0 closes by default", "HTTP/1.0 200 OK\r\n\r\n", 1, 200, -1, false, false},
    {"1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", 1, 200, -1, false, true},
    {"status 999", "HTTP/1.1 999 Odd\r\n\r\n", 1, 999, -1, false, true},
    {"incomplete", "HTTP/1.1 200 OK\r\nContent-Le", 0},
    {"incomplete status", "HTTP/1.", 0},
    {"§6.3 CL with TE", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", -502},
    {"§6.3 TE with CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", -502},
    {"§8.6 repeated CL", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", -502},
    {"§8.6 CL list", "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n", -502},
    {"§8.6 signed CL", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", -502},
    {"TE not exactly chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -502},
    {"two TE fields", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", -502},
    {"TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", -502},
    {"§5.2 obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", -502},
    {"§5.1 space before colon", "HTTP/1.1 200 OK\r\nX : a\r\n\r\n", -502},
    {"§2.2 bare LF", "HTTP/1.1 200 OK\nX: a\r\n\r\n", -502},
    {"two spaces after version", "HTTP/1.1  200 OK\r\n\r\n", -502},
    {"HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", -502},
    {"HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n", -502},
    {"lower-case name", "http/1.1 200 OK\r\n\r\n", -502},
    {"status 099", "HTTP/1.1 099 Low\r\n\r\n", -502},
    {"four-digit status", "HTTP/1.1 2000 OK\r\n\r\n", -502},
    {"control byte in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", -502},
};
#pragma GCC diagnostic pop

static void test_response_heads_table(void **state)
{
    for (size_t i = 0; i < sizeof(resp_rows) / sizeof(resp_rows[0]); i++) {
        const struct resp_row *r = &resp_rows[i];
        size_t len = strlen(r->head);
        char *copy = dup_exact(r->head, len);
        mica__http_resp_head_t h;
        int rc = mica__http_parse_response_head(copy, len, &limits_default, &h);
        int want = r->rc == 1 ? (int)len : r->rc;
        if (rc != want)
            fail_msg("%s: rc %d, want %d", r->rule, rc, want);
        if (rc > 0 && (h.status != r->status || h.content_length != r->content_length ||
                       h.chunked != r->chunked || h.keep_alive != r->keep_alive))
            fail_msg("%s: status %d cl %lld chunked %d keep-alive %d", r->rule, h.status,
                     (long long)h.content_length, h.chunked, h.keep_alive);
        free(copy);
    }
}

static void test_response_head_limits_give_431(void **state)
{
    mica__http_resp_head_t h;
    char head[200];
    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
    assert_int_equal(mica__http_parse_response_head(head, strlen(head), &limits_small, &h), -431);
    memset(head, 'x', sizeof(head));
    memcpy(head, "HTTP/1.1 200 OK\r\nX: ", 20);
    assert_int_equal(mica__http_parse_response_head(head, sizeof(head), &limits_small, &h), -431);
    assert_int_equal(mica__http_parse_response_head(head, 60, &limits_small, &h), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_good_request_parses_with_the_expected_fields),
        cmocka_unit_test(test_every_proper_prefix_of_a_good_request_is_incomplete),
        cmocka_unit_test(test_field_values_are_trimmed_and_names_keep_their_case),
        cmocka_unit_test(test_every_bad_request_is_refused_with_its_status),
        cmocka_unit_test(test_limits_accept_exactly_their_value_and_refuse_one_more),
        cmocka_unit_test(test_max_headers_above_the_array_size_is_clamped),
        cmocka_unit_test(test_huge_limits_do_not_overflow),
        cmocka_unit_test(test_an_incomplete_head_within_the_limits_is_incomplete),
        cmocka_unit_test(test_each_byte_value_is_accepted_only_where_the_grammar_allows_it),
        cmocka_unit_test(test_token_eq_ignores_ascii_case_and_requires_equal_length),
        cmocka_unit_test(test_every_good_chunked_body_decodes_the_same_however_it_is_split),
        cmocka_unit_test(test_every_bad_chunked_body_is_refused_however_it_is_split),
        cmocka_unit_test(test_chunk_size_of_2_pow_63_minus_1_is_accepted),
        cmocka_unit_test(test_chunk_extensions_are_capped_at_4096_bytes_per_line),
        cmocka_unit_test(test_size_digits_and_whitespace_count_toward_the_chunk_line_cap),
        cmocka_unit_test(test_trailer_section_is_capped_at_4096_bytes),
        cmocka_unit_test(test_chunked_decoder_stays_finished_or_failed),
        cmocka_unit_test(test_chunked_request_decodes_after_its_head),
        cmocka_unit_test(test_response_heads_table),
        cmocka_unit_test(test_response_head_limits_give_431),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the HTTP/1.1 client's response parser
 * (mica__http_parse_response_head) and the chunked decoding of the body
 * after it -- the bytes a hostile upstream controls.
 *
 * The input is parsed from heap copies of its exact size under small and
 * roomy limits. Beyond "no crash", it checks what the client relies on:
 * every pointer stays inside the head, a complete head ends in CRLF CRLF
 * and no prefix of it is complete, framing is never ambiguous (chunked and
 * a Content-Length together are impossible; HTTP/1.0 never chunked), a
 * success under tight limits is the same under loose ones, and decoding
 * the body does not depend on how it is split. A broken invariant aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const mica__http_limits_t tight = {.max_head_bytes = 256, .max_headers = 8};
static const mica__http_limits_t roomy = {.max_head_bytes = 65536,
                                          .max_headers = MICA__HTTP_MAX_HEADERS};

static int parse_copy(const uint8_t *data, size_t n, const mica__http_limits_t *lim)
{
    mica__http_resp_head_t h;
    char *buf = malloc(n ? n : 1);
    CHECK(buf != NULL);
    if (n)
        memcpy(buf, data, n);
    int rc = mica__http_parse_response_head(buf, n, lim, &h);
    free(buf);
    return rc;
}

static void check_span(const char *buf, size_t len, const char *p, size_t n)
{
    CHECK(p != NULL && p >= buf && (size_t)(p - buf) <= len && n <= len - (size_t)(p - buf));
}

static int check_head(const uint8_t *data, size_t size, const mica__http_limits_t *lim)
{
    char *buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    if (size)
        memcpy(buf, data, size);
    mica__http_resp_head_t h;
    int rc = mica__http_parse_response_head(buf, size, lim, &h);
    CHECK(rc == 0 || rc == -431 || rc == -502 || (rc > 0 && (size_t)rc <= size));
    if (rc == 0)
        CHECK(size <= lim->max_head_bytes);
    if (rc > 0) {
        size_t len = (size_t)rc;
        CHECK(len <= lim->max_head_bytes && len >= 14);
        CHECK(memcmp(buf + len - 4, "\r\n\r\n", 4) == 0 || memcmp(buf + len - 2, "\r\n", 2) == 0);
        CHECK(h.status >= 100 && h.status <= 999);
        CHECK(h.version_minor == 0 || h.version_minor == 1);
        CHECK(h.num_headers <= lim->max_headers);
        CHECK(!(h.chunked && h.content_length >= 0));
        CHECK(!h.chunked || h.version_minor == 1);
        CHECK(h.content_length >= -1);
        check_span(buf, len, h.reason, h.reason_len);
        for (size_t i = 0; i < h.num_headers; i++) {
            const mica__http_field_t *f = &h.headers[i];
            check_span(buf, len, f->name, f->name_len);
            check_span(buf, len, f->value, f->value_len);
            CHECK(f->name_len > 0 && f->name[f->name_len] == ':');
            CHECK(memchr(f->value, '\r', f->value_len) == NULL);
            CHECK(memchr(f->value, '\n', f->value_len) == NULL);
            CHECK(memchr(f->value, '\0', f->value_len) == NULL);
        }
        CHECK(parse_copy(data, len, lim) == rc);
        CHECK(parse_copy(data, len - 1, lim) == 0);
        CHECK(parse_copy(data, len / 2, lim) == 0);
    }
    free(buf);
    return rc;
}

/* Decodes in[0..size) in pieces of `step` (0: whole); returns rc, output length into *out_len. */
static int decode(const uint8_t *in, size_t size, size_t step, char *out, size_t *out_len,
                  size_t *consumed)
{
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    size_t cap = step == 0 || step > size ? size : step;
    char *scratch = malloc(cap ? cap : 1);
    CHECK(scratch != NULL);
    int rc = 0;
    size_t from = 0;
    *out_len = 0;
    do {
        size_t piece = size - from < cap ? size - from : cap;
        char *buf = scratch + cap - piece;
        memcpy(buf, in + from, piece);
        size_t n = piece, produced = 0;
        rc = mica__http_chunked_decode(&d, buf, &n, &produced);
        CHECK(n <= piece && produced <= n);
        memcpy(out + *out_len, buf, produced);
        *out_len += produced;
        *consumed = from + n;
        from += piece;
    } while (rc == 0 && from < size);
    free(scratch);
    return rc;
}

static void check_body(const uint8_t *in, size_t size)
{
    char *a = malloc(size + 1), *b = malloc(size + 1);
    CHECK(a && b);
    size_t la, lb, ca, cb;
    int ra = decode(in, size, 0, a, &la, &ca);
    size_t steps[] = {1, 5, 64};
    for (size_t i = 0; i < 3; i++) {
        if (steps[i] == 1 && size > 2048)
            continue;
        int rb = decode(in, size, steps[i], b, &lb, &cb);
        CHECK(ra == rb && la == lb && ca == cb && memcmp(a, b, la) == 0);
    }
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int t = check_head(data, size, &tight);
    int r = check_head(data, size, &roomy);
    if (t > 0)
        CHECK(r == t);
    if (r > 0) {
        mica__http_resp_head_t h;
        char *buf = malloc((size_t)r);
        memcpy(buf, data, (size_t)r);
        CHECK(mica__http_parse_response_head(buf, (size_t)r, &roomy, &h) == r);
        free(buf);
        if (h.chunked)
            check_body(data + r, size - (size_t)r);
    }
    return 0;
}

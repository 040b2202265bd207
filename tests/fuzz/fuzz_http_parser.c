/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the HTTP/1.1 request parser and the chunked decoder.
 *
 * The input is parsed as a request head under small and roomy limits, and
 * decoded as a chunked body, always from heap copies of the exact size so
 * that ASan flags any read past the end. Beyond "no crash", it checks what
 * callers rely on: results stay inside the buffer and the limits, a success
 * under tight limits is the same success under loose ones, every prefix of a
 * complete head is "incomplete", and the decoder's result does not depend on
 * how the body is split into reads. A broken invariant calls abort().
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

static const mica__http_limits_t tight = {
    .max_head_bytes = 256,
    .max_target_bytes = 64,
    .max_headers = 8,
};
static const mica__http_limits_t roomy = {
    .max_head_bytes = 65536,
    .max_target_bytes = 8192,
    .max_headers = MICA__HTTP_MAX_HEADERS,
};

static char *dup_exact(const void *p, size_t n)
{
    char *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    if (n)
        memcpy(copy, p, n);
    return copy;
}

static int parse_copy(const uint8_t *data, size_t n, const mica__http_limits_t *lim)
{
    mica__http_head_t h;
    char *buf = dup_exact(data, n);
    int rc = mica__http_parse_head(buf, n, lim, &h);
    free(buf);
    return rc;
}

/* p[0..n) lies within buf[0..len). */
static void check_span(const char *buf, size_t len, const char *p, size_t n)
{
    CHECK(p != NULL);
    CHECK(p >= buf && (size_t)(p - buf) <= len && n <= len - (size_t)(p - buf));
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int check_head(const uint8_t *data, size_t size, const mica__http_limits_t *lim)
{
    char *buf = dup_exact(data, size);
    mica__http_head_t h;
    int rc = mica__http_parse_head(buf, size, lim, &h);

    CHECK(rc == 0 || rc == -400 || rc == -414 || rc == -431 || rc == -501 || rc == -505 ||
          (rc > 0 && (size_t)rc <= size));
    if (rc == 0)
        CHECK(size <= lim->max_head_bytes);
    if (rc > 0) {
        size_t len = (size_t)rc;
        CHECK(len <= lim->max_head_bytes && len >= 4);
        CHECK(memcmp(buf + len - 4, "\r\n\r\n", 4) == 0);
        CHECK(h.num_headers <= lim->max_headers && h.num_headers <= MICA__HTTP_MAX_HEADERS);
        check_span(buf, len, h.method_str, h.method_len);
        check_span(buf, len, h.target, h.target_len);
        check_span(buf, len, h.path, h.path_len);
        CHECK(h.method_len > 0 && h.target_len > 0 && h.target_len <= lim->max_target_bytes);
        CHECK(h.path == h.target);
        if (h.query) {
            check_span(buf, len, h.query, h.query_len);
            CHECK(h.query == h.path + h.path_len + 1 && h.query[-1] == '?');
            CHECK(h.target_len == h.path_len + 1 + h.query_len);
        } else {
            CHECK(h.query_len == 0 && h.target_len == h.path_len);
        }
        CHECK(h.version_minor == 0 || h.version_minor == 1);
        CHECK(h.content_length >= -1);
        CHECK(!(h.chunked && h.content_length >= 0));
        CHECK(h.has_host || h.version_minor == 0);
        CHECK(!h.expect_continue || h.version_minor == 1);
        for (size_t i = 0; i < h.num_headers; i++) {
            const mica__http_field_t *f = &h.headers[i];
            check_span(buf, len, f->name, f->name_len);
            check_span(buf, len, f->value, f->value_len);
            CHECK(f->name_len > 0 && f->name[f->name_len] == ':');
            CHECK(memchr(f->value, '\r', f->value_len) == NULL);
            CHECK(memchr(f->value, '\n', f->value_len) == NULL);
            if (f->value_len)
                CHECK(!is_ows(f->value[0]) && !is_ows(f->value[f->value_len - 1]));
        }
        /* The head alone is the same head, and none of its prefixes is complete. */
        CHECK(parse_copy(data, len, lim) == rc);
        CHECK(parse_copy(data, len - 1, lim) == 0);
        CHECK(parse_copy(data, len / 2, lim) == 0);
    }
    free(buf);
    return rc;
}

struct decoded {
    int rc;
    size_t consumed;
    size_t out_len;
};

/*
 * Decodes in[0..size) fed as pieces of `step` bytes (0: all at once); the
 * decoded bytes are appended to `out`. Each piece is copied to the very end of
 * one heap buffer, so ASan flags any read past the piece.
 */
static struct decoded decode_pieces(const uint8_t *in, size_t size, size_t step, char *out)
{
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    struct decoded r = {0, 0, 0};
    size_t cap = step == 0 || step > size ? size : step;
    char *scratch = malloc(cap ? cap : 1);
    CHECK(scratch != NULL);
    size_t from = 0;
    do {
        size_t piece = size - from < cap ? size - from : cap;
        char *buf = scratch + cap - piece;
        memcpy(buf, in + from, piece);
        size_t n = piece, produced = SIZE_MAX;
        r.rc = mica__http_chunked_decode(&d, buf, &n, &produced);
        CHECK(r.rc == 0 || r.rc == 1 || r.rc == -400);
        CHECK(n <= piece && produced <= n);
        if (r.rc == 0)
            CHECK(n == piece);
        memcpy(out + r.out_len, buf, produced);
        r.out_len += produced;
        r.consumed = from + n;
        from += piece;
    } while (r.rc == 0 && from < size);
    free(scratch);
    return r;
}

static void check_chunked(const uint8_t *in, size_t size)
{
    char *whole_out = malloc(size + 1);
    char *split_out = malloc(size + 1);
    CHECK(whole_out && split_out);
    struct decoded whole = decode_pieces(in, size, 0, whole_out);

    size_t steps[] = {1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        if (steps[i] == 1 && size > 2048)
            continue; /* keep executions fast; small inputs cover byte-at-a-time */
        struct decoded split = decode_pieces(in, size, steps[i], split_out);
        CHECK(split.rc == whole.rc && split.consumed == whole.consumed);
        CHECK(split.out_len == whole.out_len);
        CHECK(memcmp(split_out, whole_out, whole.out_len) == 0);
    }
    free(whole_out);
    free(split_out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int tight_rc = check_head(data, size, &tight);
    int roomy_rc = check_head(data, size, &roomy);
    /* Loosening the limits never changes a success. */
    if (tight_rc > 0)
        CHECK(roomy_rc == tight_rc);

    check_chunked(data, size);
    /* The body after a head, as the server would decode it. */
    if (roomy_rc > 0)
        check_chunked(data + roomy_rc, size - (size_t)roomy_rc);
    return 0;
}

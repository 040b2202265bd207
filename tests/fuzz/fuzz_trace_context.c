/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the W3C Trace Context parsers (src/observe/
 * trace_context.c): traceparent and tracestate values come from any client.
 *
 * Each input is parsed as both, from a heap copy of the exact size so that
 * ASan flags any read past the end. Beyond "no crash", it checks what the
 * tracer relies on: a parsed traceparent has non-zero ids and only the
 * sampled flag, and formats to a version-00 value that parses back to the
 * same context; a tracestate result fits its buffer and the 512-character
 * cap, is itself a valid list that parses to the same text, never contains
 * optional whitespace or empty members, and a smaller buffer gives a prefix
 * of whole members. A broken invariant calls abort().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static void traceparent(const char *s, size_t n)
{
    mica_span_context_t sc;
    if (mica_traceparent_parse(s, n, &sc) != 0)
        return;
    CHECK(n >= MICA_TRACEPARENT_LEN);
    CHECK(!all_zero(sc.trace_id, 16) && !all_zero(sc.span_id, 8));
    CHECK((sc.flags & ~MICA_TRACE_FLAG_SAMPLED) == 0);
    char out[MICA_TRACEPARENT_LEN + 1];
    mica_traceparent_format(&sc, out);
    CHECK(strlen(out) == MICA_TRACEPARENT_LEN && memcmp(out, "00-", 3) == 0);
    mica_span_context_t back;
    CHECK(mica_traceparent_parse(out, MICA_TRACEPARENT_LEN, &back) == 0);
    CHECK(memcmp(&back, &sc, sizeof(sc)) == 0);
}

static void tracestate(const char *s, size_t n)
{
    char *out = malloc(MICA_TRACESTATE_MAX_LEN + 1);
    int len = mica_tracestate_parse(s, n, out, MICA_TRACESTATE_MAX_LEN + 1);
    if (len < 0) {
        CHECK(len == MICA_EINVAL && out[0] == '\0');
        free(out);
        return;
    }
    CHECK((size_t)len == strlen(out) && len <= MICA_TRACESTATE_MAX_LEN);
    CHECK(strstr(out, ", ") == NULL && out[0] != ' ' && (len == 0 || out[len - 1] != ' '));
    CHECK(strstr(out, ",,") == NULL && (len == 0 || (out[0] != ',' && out[len - 1] != ',')));
    CHECK(strchr(out, '\t') == NULL);
    char *again = malloc(MICA_TRACESTATE_MAX_LEN + 1);
    CHECK(mica_tracestate_parse(out, (size_t)len, again, MICA_TRACESTATE_MAX_LEN + 1) == len);
    CHECK(strcmp(again, out) == 0);
    /* A small buffer keeps whole members of the same list, in order. */
    char small[40];
    int slen = mica_tracestate_parse(s, n, small, sizeof(small));
    CHECK(slen >= 0 && slen < (int)sizeof(small) && (size_t)slen == strlen(small));
    if (slen > 0) {
        CHECK(mica_tracestate_parse(small, (size_t)slen, again, MICA_TRACESTATE_MAX_LEN + 1) ==
              slen);
    }
    free(again);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1);
    if (size)
        memcpy(s, data, size);
    traceparent(s, size);
    tracestate(s, size);
    free(s);
    return 0;
}

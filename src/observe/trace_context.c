/* SPDX-License-Identifier: MIT */
/*
 * W3C Trace Context (https://www.w3.org/TR/trace-context/): the traceparent
 * and tracestate header values, parsed from untrusted input and formatted
 * for callees. No allocation, no state: a fuzz target drives both parsers.
 *
 * traceparent. Version 00 is exactly 55 characters; anything longer or
 * shorter is invalid ("00-...-01." and "00-...-01-future" restart the
 * trace). A later version ("cc") is read by the spec's forward-compatible
 * rule: at least 55 characters, the three known fields at their version-00
 * offsets, and the 56th character, if any, a '-'. Version ff, uppercase or
 * non-hex digits and all-zero ids are invalid. Flags other than sampled are
 * kept off: level 1 says vendors MUST set unknown flags to zero.
 *
 * tracestate. Repeated fields arrive joined with ',' (RFC 9110 §5.3), so a
 * value is one list: members separated by ',' with optional spaces and
 * tabs around them, empty members allowed. A key is a simple key (1-256
 * of a-z 0-9 _ - * /, starting with a letter or digit) or a multi-tenant
 * key tenant@system (tenant 1-241 characters, system 1-14 starting with a
 * letter) -- level 1's grammar, which the W3C test suite checks. A value
 * is 1-256 printable characters but ',' and '=', not ending in a space.
 * A list with an invalid member, a repeated key or more than 32 members is
 * discarded whole, as the W3C test suite (strict level) expects: keeping
 * part of a list the sender got wrong would propagate state nobody vouches
 * for. What is propagated is capped at 512 characters (the spec's "SHOULD
 * propagate at least 512"), cutting whole members: over-128-character ones
 * first, then from the end.
 */
#include <stdbool.h>
#include <string.h>

#include "mica/trace.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* uppercase is not HEXDIGLC */
}

/* Decodes 2*n lower-case hex digits into n bytes; false on any other character. */
static bool unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

int mica_traceparent_parse(const char *s, size_t len, mica_span_context_t *out)
{
    while (len && ows(*s))
        s++, len--;
    while (len && ows(s[len - 1]))
        len--;
    if (len < MICA_TRACEPARENT_LEN)
        return MICA_EINVAL;
    uint8_t version;
    if (!unhex(s, &version, 1) || s[2] != '-' || version == 0xff)
        return MICA_EINVAL;
    if (version == 0 ? len != MICA_TRACEPARENT_LEN
                     : len > MICA_TRACEPARENT_LEN && s[MICA_TRACEPARENT_LEN] != '-')
        return MICA_EINVAL;
    mica_span_context_t sc;
    uint8_t flags;
    if (!unhex(s + 3, sc.trace_id, 16) || s[35] != '-' || !unhex(s + 36, sc.span_id, 8) ||
        s[52] != '-' || !unhex(s + 53, &flags, 1))
        return MICA_EINVAL;
    if (all_zero(sc.trace_id, 16) || all_zero(sc.span_id, 8))
        return MICA_EINVAL;
    sc.flags = flags & MICA_TRACE_FLAG_SAMPLED;
    *out = sc;
    return 0;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
}

void mica_traceparent_format(const mica_span_context_t *sc, char out[MICA_TRACEPARENT_LEN + 1])
{
    uint8_t flags = sc->flags & MICA_TRACE_FLAG_SAMPLED;
    memcpy(out, "00-", 3);
    hex(sc->trace_id, 16, out + 3);
    out[35] = '-';
    hex(sc->span_id, 8, out + 36);
    out[52] = '-';
    hex(&flags, 1, out + 53);
    out[55] = '\0';
}

/* ---- tracestate ------------------------------------------------------------------ */

static bool lcalpha(char c)
{
    return c >= 'a' && c <= 'z';
}

static bool digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool keychar(char c)
{
    return lcalpha(c) || digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

/* A run of keychars of length 1..max whose first character passes `first`. */
static bool key_part(const char *k, size_t n, size_t max, bool letter_only)
{
    if (n == 0 || n > max || !(lcalpha(k[0]) || (!letter_only && digit(k[0]))))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!keychar(k[i]))
            return false;
    return true;
}

static bool valid_key(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (!at)
        return key_part(k, n, 256, false);
    size_t tenant = (size_t)(at - k);
    return key_part(k, tenant, 241, false) && key_part(at + 1, n - tenant - 1, 14, true);
}

static bool valid_value(const char *v, size_t n)
{
    if (n == 0 || n > 256 || v[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return false;
    }
    return true;
}

typedef struct member {
    const char *p;
    size_t len; /* the whole "key=value" */
    size_t key_len;
    bool dropped;
} member_t;

int mica_tracestate_parse(const char *s, size_t len, char *out, size_t size)
{
    member_t m[MICA_TRACESTATE_MAX_MEMBERS];
    size_t n = 0;
    out[0] = '\0';
    const char *end = s + len;
    for (const char *p = s;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        const char *a = p, *b = stop;
        while (a < b && ows(*a))
            a++;
        while (b > a && ows(b[-1]))
            b--;
        bool last = !comma;
        if (!last)
            p = comma + 1;
        if (a == b) {
            if (last)
                break;
            continue; /* an empty member: allowed, not propagated */
        }
        if (n == MICA_TRACESTATE_MAX_MEMBERS)
            return MICA_EINVAL;
        const char *eq = memchr(a, '=', (size_t)(b - a));
        if (!eq)
            return MICA_EINVAL;
        size_t klen = (size_t)(eq - a);
        if (!valid_key(a, klen) || !valid_value(eq + 1, (size_t)(b - eq - 1)))
            return MICA_EINVAL;
        for (size_t i = 0; i < n; i++)
            if (m[i].key_len == klen && memcmp(m[i].p, a, klen) == 0)
                return MICA_EINVAL; /* one entry per key */
        m[n++] = (member_t){a, (size_t)(b - a), klen, false};
        if (last)
            break;
    }

    size_t cap = size - 1 < MICA_TRACESTATE_MAX_LEN ? size - 1 : MICA_TRACESTATE_MAX_LEN;
    size_t total = 0; /* each member with a separator: the text is one shorter */
    for (size_t i = 0; i < n; i++)
        total += m[i].len + 1;
    for (size_t i = 0; i < n && total > cap + 1; i++)
        if (m[i].len > 128) {
            m[i].dropped = true;
            total -= m[i].len + 1;
        }
    for (size_t i = n; i-- > 0 && total > cap + 1;)
        if (!m[i].dropped) {
            m[i].dropped = true;
            total -= m[i].len + 1;
        }
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (m[i].dropped)
            continue;
        if (w)
            out[w++] = ',';
        memcpy(out + w, m[i].p, m[i].len);
        w += m[i].len;
    }
    out[w] = '\0';
    return (int)w;
}

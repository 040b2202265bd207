/* SPDX-License-Identifier: MIT */
/*
 * Strict HTTP/1.1 request head parser and in-place chunked decoder (RFC 9112).
 *
 * The head parser makes one forward pass over the buffered bytes and keeps no
 * state between calls: a head is bounded by max_head_bytes, so scanning it
 * again when more bytes arrive costs less than a resumable state machine, and
 * a partial head can never leave half-updated state behind. Bytes are
 * classified by one 256-entry table (token, request-target, field-value and
 * Host characters). The long runs, field values and the request-target, are
 * skipped eight bytes at a time with word-at-a-time tests that only say "some
 * byte in here needs a closer look"; the table loop then finds which. Nothing
 * is allocated and every result points into the caller's buffer.
 *
 * Strictness is the point. Request smuggling lives in the gaps between how two
 * parsers read the same bytes (bare LF, whitespace before the colon, obs-fold,
 * repeated or conflicting framing fields), so whatever a proxy in front of us
 * might read differently is refused, and the caller closes the connection. A
 * byte that can never become valid is refused as soon as it is seen, even in
 * an incomplete head, so a peer cannot make us buffer garbage up to the limit;
 * framing fields are judged as soon as their line is complete.
 *
 * The chunked decoder has the opposite shape: bodies are unbounded and arrive
 * in arbitrary pieces, so it is an explicit state machine that can stop after
 * any byte. It compacts chunk data towards the front of the buffer with
 * memmove; the write position never overtakes the read position because
 * every chunk's data is preceded by at least three bytes of framing.
 */
#include "http/parser.h"

#include <assert.h>
#include <limits.h>
#include <string.h>

/* ---- character classes ---------------------------------------------------- */

enum {
    C_TCHAR = 1 << 0,  /* tchar (RFC 9110 §5.6.2): method, field names, list tokens */
    C_TARGET = 1 << 1, /* request-target byte: visible ASCII 0x21-0x7e */
    C_VALUE = 1 << 2,  /* field-vchar, obs-text, SP, HTAB (RFC 9110 §5.5) */
    C_HOST = 1 << 3,   /* uri-host [":" port]: unreserved, pct, sub-delims, ":[]" */
};

#define NO 0
#define VO C_VALUE
#define VI (C_TARGET | C_VALUE)
#define TK (C_TCHAR | C_TARGET | C_VALUE)
#define HS (C_HOST | C_TARGET | C_VALUE)
#define HT (C_TCHAR | C_HOST | C_TARGET | C_VALUE)

/* clang-format off */
static const uint8_t char_class[256] = {
    NO, NO, NO, NO, NO, NO, NO, NO, NO, VO, NO, NO, NO, NO, NO, NO, /* 0x00 */
    NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, /* 0x10 */
    VO, HT, VI, TK, HT, HT, HT, HT, HS, HS, HT, HT, HS, HT, HT, VI, /* 0x20  !"#$%&'()*+,-./ */
    HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HS, HS, VI, HS, VI, VI, /* 0x30 0-9 :;<=>? */
    VI, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, /* 0x40 @A-O */
    HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HS, VI, HS, TK, HT, /* 0x50 P-Z[\]^_ */
    TK, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, /* 0x60 `a-o */
    HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, HT, VI, TK, VI, HT, NO, /* 0x70 p-z{|}~ DEL */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0x80 obs-text */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0x90 */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0xa0 */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0xb0 */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0xc0 */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0xd0 */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0xe0 */
    VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, VO, /* 0xf0 */
};
/* clang-format on */

#undef NO
#undef VO
#undef VI
#undef TK
#undef HS
#undef HT

static inline bool is_class(unsigned char c, unsigned cls)
{
    return (char_class[c] & cls) != 0;
}

static inline unsigned char to_lower(unsigned char c)
{
    return (unsigned char)((unsigned)(c - 'A') < 26 ? c + ('a' - 'A') : c);
}

/* s[0..n) equals the lower-case literal `lit` (also n bytes) ignoring ASCII case. */
static inline bool lower_eq(const char *s, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (to_lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

bool mica__http_token_eq(const char *s, size_t len, const char *lower_lit)
{
    for (size_t i = 0; i < len; i++)
        if (lower_lit[i] == '\0' || to_lower((unsigned char)s[i]) != (unsigned char)lower_lit[i])
            return false;
    return lower_lit[len] == '\0';
}

/*
 * Word-at-a-time tests over eight bytes (the classic "has a byte less than n"
 * tricks). Each is nonzero exactly when at least one byte qualifies; which
 * byte is left to the table loop, so the tests work on any byte order.
 */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline uint64_t any_below(uint64_t x, unsigned n) /* n <= 0x80 */
{
    return (x - ONES * n) & ~x & HIGHS;
}

static inline uint64_t any_above(uint64_t x, unsigned n) /* n <= 0x7f */
{
    return ((x + ONES * (0x7f - n)) | x) & HIGHS;
}

static inline uint64_t any_equal(uint64_t x, unsigned char c)
{
    return any_below(x ^ (ONES * c), 1);
}

/* Skips field-value bytes; stops at the first other byte (normally the CR). */
static const unsigned char *skip_value(const unsigned char *p, const unsigned char *end)
{
    while (p < end) {
        if (end - p >= 8) {
            uint64_t x = load8(p);
            if (!(any_below(x, 0x20) | any_equal(x, 0x7f))) {
                p += 8;
                continue;
            }
        }
        if (!is_class(*p, C_VALUE))
            break;
        p++;
    }
    return p;
}

/* Skips request-target bytes; with stop_at_query, also stops at the first '?'. */
static const unsigned char *skip_target(const unsigned char *p, const unsigned char *end,
                                        bool stop_at_query)
{
    while (p < end) {
        if (end - p >= 8) {
            uint64_t x = load8(p);
            uint64_t odd = any_below(x, 0x21) | any_above(x, 0x7e);
            if (stop_at_query)
                odd |= any_equal(x, '?');
            if (!odd) {
                p += 8;
                continue;
            }
        }
        if (!is_class(*p, C_TARGET) || (stop_at_query && *p == '?'))
            break;
        p++;
    }
    return p;
}

/* ---- request head --------------------------------------------------------- */

/* Internal to this file: "the window ended before the construct did". */
#define MORE 1

enum {
    SEEN_LENGTH = 1 << 0,
    SEEN_CODING = 1 << 1,
    SEEN_HOST = 1 << 2,
    CONN_CLOSE = 1 << 3,
    CONN_KEEP_ALIVE = 1 << 4,
};

/* Methods are case-sensitive (RFC 9110 §9.1): "get" is a valid, unknown method. */
static mica__http_method_t method_of(const unsigned char *m, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(m, "GET", 3) == 0)
            return MICA__HTTP_GET;
        if (memcmp(m, "PUT", 3) == 0)
            return MICA__HTTP_PUT;
        break;
    case 4:
        if (memcmp(m, "POST", 4) == 0)
            return MICA__HTTP_POST;
        if (memcmp(m, "HEAD", 4) == 0)
            return MICA__HTTP_HEAD;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0)
            return MICA__HTTP_PATCH;
        if (memcmp(m, "TRACE", 5) == 0)
            return MICA__HTTP_TRACE;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0)
            return MICA__HTTP_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0)
            return MICA__HTTP_OPTIONS;
        if (memcmp(m, "CONNECT", 7) == 0)
            return MICA__HTTP_CONNECT;
        break;
    }
    return MICA__HTTP_OTHER;
}

/*
 * request-line = method SP request-target SP HTTP-version CRLF (RFC 9112 §3).
 * Exactly one SP between the parts: the target class excludes SP, so a second
 * SP shows up as an empty target or a version that does not start with "H".
 * Any target form is accepted (origin, absolute, authority, asterisk); the
 * router only matches origin-form paths.
 */
static int parse_request_line(const unsigned char **pp, const unsigned char *end, size_t max_target,
                              mica__http_head_t *h)
{
    const unsigned char *p = *pp;

    const unsigned char *method = p;
    while (p < end && is_class(*p, C_TCHAR))
        p++;
    if (p == end)
        return MORE;
    if (*p != ' ' || p == method)
        return -400;
    h->method_str = (const char *)method;
    h->method_len = (size_t)(p - method);
    h->method = method_of(method, h->method_len);

    const unsigned char *target = ++p;
    const unsigned char *query = NULL;
    p = skip_target(p, end, true);
    if (p < end && *p == '?')
        p = skip_target(query = p + 1, end, false);
    /* Refused before the target ends, so an endless target costs one scan. */
    if ((size_t)(p - target) > max_target)
        return -414;
    if (p == end)
        return MORE;
    if (*p != ' ' || p == target)
        return -400;
    h->target = (const char *)target;
    h->target_len = (size_t)(p - target);
    h->path = (const char *)target;
    h->path_len = (size_t)((query ? query - 1 : p) - target);
    h->query = (const char *)query;
    h->query_len = query ? (size_t)(p - query) : 0;
    p++;

    /*
     * HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 §2.3),
     * then CRLF. Compared byte by byte against the shape ('0' stands for any
     * DIGIT) so that garbage is refused before the line is complete. A
     * well-formed version we do not speak is 505 (RFC 9110 §15.6.6).
     */
    static const char shape[] = "HTTP/0.0\r\n";
    size_t avail = (size_t)(end - p);
    size_t n = avail < sizeof shape - 1 ? avail : sizeof shape - 1;
    for (size_t i = 0; i < n; i++) {
        bool ok = shape[i] == '0' ? (unsigned)(p[i] - '0') < 10 : p[i] == (unsigned char)shape[i];
        if (!ok)
            return -400;
    }
    if (n < sizeof shape - 1)
        return MORE;
    if (p[5] != '1' || p[7] > '1')
        return -505;
    h->version_minor = p[7] - '0';
    *pp = p + sizeof shape - 1;
    return 0;
}

/*
 * field-line = field-name ":" OWS field-value OWS CRLF (RFC 9112 §5). A line
 * that starts with SP or HTAB is obs-fold (§5.2) and whitespace before the
 * colon is forbidden (§5.1): both fail the "tchar up to ':'" test, as do an
 * empty name and a name that runs into the line end.
 */
static int parse_field_line(const unsigned char **pp, const unsigned char *end,
                            mica__http_field_t *f)
{
    const unsigned char *p = *pp;

    const unsigned char *name = p;
    while (p < end && is_class(*p, C_TCHAR))
        p++;
    if (p == end)
        return MORE;
    if (*p != ':' || p == name)
        return -400;
    size_t name_len = (size_t)(p - name);
    p++;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    const unsigned char *value = p;
    p = skip_value(p, end);
    if (p == end)
        return MORE;
    /* §2.2: a bare CR or bare LF (or any other control byte) is refused. */
    if (*p != '\r')
        return -400;
    if (end - p < 2)
        return MORE;
    if (p[1] != '\n')
        return -400;

    const unsigned char *value_end = p;
    while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
        value_end--;
    f->name = (const char *)name;
    f->name_len = name_len;
    f->value = (const char *)value;
    f->value_len = (size_t)(value_end - value);
    *pp = p + 2;
    return 0;
}

/*
 * Content-Length = 1*DIGIT (RFC 9110 §8.6). §8.6 lets a recipient accept a
 * repeated identical value ("5, 5" or two fields), but any leniency is a
 * difference a front proxy might not share, so exactly one field is accepted.
 * With Transfer-Encoding as well it is refused outright (RFC 9112 §6.3).
 */
static int on_content_length(mica__http_head_t *h, const char *v, size_t n, unsigned *seen)
{
    if (*seen & (SEEN_LENGTH | SEEN_CODING))
        return -400;
    *seen |= SEEN_LENGTH;
    if (n == 0)
        return -400;
    int64_t len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)((unsigned char)v[i] - '0');
        if (d > 9 || len > (INT64_MAX - d) / 10)
            return -400;
        len = len * 10 + d;
    }
    h->content_length = len;
    return 0;
}

/*
 * Only a single "chunked" is understood. HTTP/1.0 has no transfer codings, so
 * a 1.0 request carrying one has faulty framing (RFC 9112 §6.1), as has one
 * that also carries Content-Length (§6.3), or a second Transfer-Encoding
 * field. When chunked is not the final coding the body length cannot be
 * determined: 400 (§6.3 item 4). A list that does end in chunked names a
 * coding we do not implement: 501 (§6.1).
 */
static int on_transfer_encoding(mica__http_head_t *h, const char *v, size_t n, unsigned *seen)
{
    if (h->version_minor == 0 || (*seen & (SEEN_LENGTH | SEEN_CODING)))
        return -400;
    *seen |= SEEN_CODING;
    if (mica__http_token_eq(v, n, "chunked")) {
        h->chunked = true;
        return 0;
    }
    const char *comma = memrchr(v, ',', n);
    if (!comma)
        return -400;
    const char *last = comma + 1, *end = v + n;
    while (last < end && (*last == ' ' || *last == '\t'))
        last++;
    return mica__http_token_eq(last, (size_t)(end - last), "chunked") ? -501 : -400;
}

/* RFC 9112 §3.2: more than one Host, or an invalid one, is 400. Empty is valid. */
static int on_host(const char *v, size_t n, unsigned *seen)
{
    if (*seen & SEEN_HOST)
        return -400;
    *seen |= SEEN_HOST;
    for (size_t i = 0; i < n; i++)
        if (!is_class((unsigned char)v[i], C_HOST))
            return -400;
    return 0;
}

/*
 * Connection = #connection-option (RFC 9110 §7.6.1): tokens separated by
 * commas with OWS; empty elements are ignored (§5.6.1.2).
 */
static int on_connection(const char *v, size_t n, unsigned *seen)
{
    const char *p = v, *end = v + n;
    for (;;) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        if (p == end)
            return 0;
        const char *tok = p;
        while (p < end && is_class((unsigned char)*p, C_TCHAR))
            p++;
        if (p == tok)
            return -400;
        if (mica__http_token_eq(tok, (size_t)(p - tok), "close"))
            *seen |= CONN_CLOSE;
        else if (mica__http_token_eq(tok, (size_t)(p - tok), "keep-alive"))
            *seen |= CONN_KEEP_ALIVE;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p != ',')
            return -400;
    }
}

/* Applies the meaning of the fields that frame the request or the connection. */
static int on_field(mica__http_head_t *h, const mica__http_field_t *f, unsigned *seen)
{
    const char *v = f->value;
    size_t n = f->value_len;
    switch (f->name_len) {
    case 4:
        if (lower_eq(f->name, "host", 4))
            return on_host(v, n, seen);
        break;
    case 6:
        /* RFC 9110 §10.1.1: a 100-continue expectation in HTTP/1.0 is ignored. */
        if (lower_eq(f->name, "expect", 6) && h->version_minor == 1 &&
            mica__http_token_eq(v, n, "100-continue"))
            h->expect_continue = true;
        break;
    case 10:
        if (lower_eq(f->name, "connection", 10))
            return on_connection(v, n, seen);
        break;
    case 14:
        if (lower_eq(f->name, "content-length", 14))
            return on_content_length(h, v, n, seen);
        break;
    case 17:
        if (lower_eq(f->name, "transfer-encoding", 17))
            return on_transfer_encoding(h, v, n, seen);
        break;
    }
    return 0;
}

/*
 * The scan window ended before the head did. Within the limit that just means
 * "wait". Past it the head can never fit: 431, or 414 when it is the request
 * line that has not ended (allowing 16 bytes for method, SPs and version).
 */
static int need_more(size_t len, size_t max_head, size_t open_line, size_t max_target)
{
    if (len <= max_head)
        return 0;
    if (open_line > 16 && open_line - 16 > max_target)
        return -414;
    return -431;
}

int mica__http_parse_head(const char *buf, size_t len, const mica__http_limits_t *limits,
                          mica__http_head_t *out)
{
    assert(limits != NULL && out != NULL && (buf != NULL || len == 0));
    /* The head length is returned as an int. */
    size_t max_head = limits->max_head_bytes < INT_MAX ? limits->max_head_bytes : INT_MAX;
    size_t max_target = limits->max_target_bytes;
    size_t max_fields =
        limits->max_headers < MICA__HTTP_MAX_HEADERS ? limits->max_headers : MICA__HTTP_MAX_HEADERS;
    const unsigned char *start = (const unsigned char *)buf;
    const unsigned char *p = start;
    /* Nothing past max_head can belong to an acceptable head, so never look at it. */
    const unsigned char *end = start + (len < max_head ? len : max_head);

    /* RFC 9112 §2.2: empty lines before the request line are ignored. */
    while (p < end && *p == '\r') {
        if (end - p < 2)
            return need_more(len, max_head, 0, max_target);
        if (p[1] != '\n')
            return -400;
        p += 2;
    }

    const unsigned char *line = p;
    int rc = parse_request_line(&p, end, max_target, out);
    if (rc == MORE)
        return need_more(len, max_head, (size_t)(end - line), max_target);
    if (rc < 0)
        return rc;

    out->num_headers = 0;
    out->content_length = -1;
    out->chunked = false;
    out->keep_alive = false;
    out->expect_continue = false;
    out->has_host = false;
    unsigned seen = 0;
    for (;;) {
        if (p == end)
            return need_more(len, max_head, 0, max_target);
        if (*p == '\r') {
            if (end - p < 2)
                return need_more(len, max_head, 0, max_target);
            if (p[1] != '\n')
                return -400;
            p += 2;
            break;
        }
        mica__http_field_t f;
        rc = parse_field_line(&p, end, &f);
        if (rc == MORE)
            return need_more(len, max_head, 0, max_target);
        if (rc < 0)
            return rc;
        if (out->num_headers == max_fields)
            return -431;
        out->headers[out->num_headers++] = f;
        rc = on_field(out, &f, &seen);
        if (rc < 0)
            return rc;
    }

    out->has_host = (seen & SEEN_HOST) != 0;
    if (out->version_minor == 1 && !out->has_host)
        return -400;
    /* RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive". */
    if (seen & CONN_CLOSE)
        out->keep_alive = false;
    else
        out->keep_alive = out->version_minor == 1 || (seen & CONN_KEEP_ALIVE);
    return (int)(p - start);
}

/* ---- response head --------------------------------------------------------- */

/*
 * status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF
 * (RFC 9112 §4). The reason is ignored by clients (§4), so a status line
 * that ends right after the code ("HTTP/1.1 200" CRLF, which some servers
 * send) is accepted: it frames nothing. Everything else is exact.
 */
static int parse_status_line(const unsigned char **pp, const unsigned char *end,
                             mica__http_resp_head_t *h)
{
    static const char shape[] = "HTTP/d.d ddd";
    const unsigned char *p = *pp;
    size_t n = (size_t)(end - p);
    for (size_t i = 0; i < sizeof shape - 1 && i < n; i++) {
        bool ok = shape[i] == 'd' ? (unsigned)(p[i] - '0') < 10 : p[i] == (unsigned char)shape[i];
        if (!ok)
            return -502;
    }
    if (n < sizeof shape - 1)
        return MORE;
    if (p[5] != '1' || p[7] > '1')
        return -502;
    h->version_minor = p[7] - '0';
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (h->status < 100)
        return -502;
    p += sizeof shape - 1;
    if (p == end)
        return MORE;
    if (*p == ' ')
        p++;
    else if (*p != '\r')
        return -502;
    const unsigned char *reason = p;
    p = skip_value(p, end);
    if (p == end)
        return MORE;
    if (*p != '\r')
        return -502;
    if (end - p < 2)
        return MORE;
    if (p[1] != '\n')
        return -502;
    h->reason = (const char *)reason;
    h->reason_len = (size_t)(p - reason);
    *pp = p + 2;
    return 0;
}

/* Content-Length, Transfer-Encoding and Connection of a response (see the header). */
static int on_resp_field(mica__http_resp_head_t *h, const mica__http_field_t *f, unsigned *seen)
{
    const char *v = f->value;
    size_t n = f->value_len;
    if (f->name_len == 14 && lower_eq(f->name, "content-length", 14)) {
        mica__http_head_t tmp = {.content_length = -1};
        if (on_content_length(&tmp, v, n, seen) != 0)
            return -502;
        h->content_length = tmp.content_length;
    } else if (f->name_len == 17 && lower_eq(f->name, "transfer-encoding", 17)) {
        if (h->version_minor == 0 || (*seen & (SEEN_LENGTH | SEEN_CODING)) ||
            !mica__http_token_eq(v, n, "chunked"))
            return -502;
        *seen |= SEEN_CODING;
        h->chunked = true;
    } else if (f->name_len == 10 && lower_eq(f->name, "connection", 10)) {
        if (on_connection(v, n, seen) != 0)
            return -502;
    }
    return 0;
}

int mica__http_parse_response_head(const char *buf, size_t len, const mica__http_limits_t *limits,
                                   mica__http_resp_head_t *out)
{
    assert(limits != NULL && out != NULL && (buf != NULL || len == 0));
    size_t max_head = limits->max_head_bytes < INT_MAX ? limits->max_head_bytes : INT_MAX;
    size_t max_fields =
        limits->max_headers < MICA__HTTP_MAX_HEADERS ? limits->max_headers : MICA__HTTP_MAX_HEADERS;
    const unsigned char *start = (const unsigned char *)buf;
    const unsigned char *p = start;
    const unsigned char *end = start + (len < max_head ? len : max_head);
#define RESP_MORE() (len <= max_head ? 0 : -431)

    int rc = parse_status_line(&p, end, out);
    if (rc == MORE)
        return RESP_MORE();
    if (rc < 0)
        return rc;
    out->num_headers = 0;
    out->content_length = -1;
    out->chunked = false;
    out->keep_alive = false;
    unsigned seen = 0;
    for (;;) {
        if (p == end)
            return RESP_MORE();
        if (*p == '\r') {
            if (end - p < 2)
                return RESP_MORE();
            if (p[1] != '\n')
                return -502;
            p += 2;
            break;
        }
        mica__http_field_t f;
        rc = parse_field_line(&p, end, &f);
        if (rc == MORE)
            return RESP_MORE();
        if (rc < 0)
            return -502;
        if (out->num_headers == max_fields)
            return -431;
        out->headers[out->num_headers++] = f;
        if ((rc = on_resp_field(out, &f, &seen)) < 0)
            return rc;
    }
#undef RESP_MORE
    if (seen & CONN_CLOSE)
        out->keep_alive = false;
    else
        out->keep_alive = out->version_minor == 1 || (seen & CONN_KEEP_ALIVE);
    return (int)(p - start);
}

/* ---- chunked body --------------------------------------------------------- */

/*
 * chunked-body = *chunk last-chunk trailer-section CRLF (RFC 9112 §7.1)
 * chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 * chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 *
 * Extensions are discarded, so after the size we only insist on BWS then ';'
 * and then accept any field-value bytes up to the CR: lenient about their
 * inner syntax, strict about control bytes and line endings. Order matters
 * below: the trailer cap counts every byte seen in a state from
 * CH_TRAILER_LINE on, so the trailer states follow all the others the loop
 * can be in (CH_DONE and CH_FAILED return before the loop).
 */
enum {
    CH_SIZE_FIRST, /* the first hex digit of a chunk-size */
    CH_SIZE,       /* more hex digits, or what follows them */
    CH_EXT_BWS,    /* whitespace after the size: only ';' may end it */
    CH_EXT,        /* inside chunk extensions, up to the CR */
    CH_SIZE_LF,    /* the LF ending a chunk-size line */
    CH_DATA,       /* d->remaining bytes of chunk-data */
    CH_DATA_CR,    /* the CRLF after chunk-data */
    CH_DATA_LF,
    CH_TRAILER_LINE,  /* start of a trailer field line, or the final CRLF */
    CH_TRAILER_NAME,  /* field-name, up to ':' */
    CH_TRAILER_VALUE, /* field-value, up to the CR */
    CH_TRAILER_LF,    /* the LF ending a trailer field line */
    CH_LAST_LF,       /* the LF ending the body */
    CH_DONE,
    CH_FAILED,
};

#define CHUNK_LINE_MAX 4096 /* hex digits + extensions, per chunk-size line */
#define TRAILER_MAX 4096    /* the whole trailer section, its final CRLF included */

void mica__http_chunked_init(mica__http_chunked_t *d)
{
    memset(d, 0, sizeof *d);
    d->state = CH_SIZE_FIRST;
}

static inline int hex_value(unsigned char c)
{
    if ((unsigned)(c - '0') < 10)
        return c - '0';
    c = to_lower(c);
    if ((unsigned)(c - 'a') < 6)
        return c - 'a' + 10;
    return -1;
}

int mica__http_chunked_decode(mica__http_chunked_t *d, char *buf, size_t *len, size_t *out)
{
    unsigned char *b = (unsigned char *)buf;
    size_t n = *len, r = 0, w = 0;

    if (d->state == CH_DONE || d->state == CH_FAILED) {
        *len = 0;
        *out = 0;
        return d->state == CH_DONE ? 1 : -400;
    }
    while (r < n) {
        if (d->state == CH_DATA) {
            size_t take = n - r;
            if (d->remaining < take)
                take = (size_t)d->remaining;
            memmove(b + w, b + r, take);
            w += take;
            r += take;
            d->remaining -= take;
            if (d->remaining == 0)
                d->state = CH_DATA_CR;
            continue;
        }

        unsigned char c = b[r];
        if (d->state >= CH_TRAILER_LINE && ++d->trailer_bytes > TRAILER_MAX)
            goto fail;
        switch (d->state) {
        case CH_SIZE_FIRST:
        case CH_SIZE: {
            int v = hex_value(c);
            if (v >= 0) {
                if (d->remaining > ((uint64_t)INT64_MAX - (uint64_t)v) >> 4)
                    goto fail;
                d->remaining = d->remaining << 4 | (uint64_t)v;
                if (++d->hex_digits > CHUNK_LINE_MAX)
                    goto fail;
                d->state = CH_SIZE;
                break;
            }
            if (d->state == CH_SIZE_FIRST)
                goto fail;
            if (c == '\r') {
                d->state = CH_SIZE_LF;
                break;
            }
            if (c == ';')
                d->state = CH_EXT;
            else if (c == ' ' || c == '\t')
                d->state = CH_EXT_BWS;
            else
                goto fail;
            if (d->hex_digits + ++d->ext_bytes > CHUNK_LINE_MAX)
                goto fail;
            break;
        }
        case CH_EXT_BWS:
            if (c == ';')
                d->state = CH_EXT;
            else if (c != ' ' && c != '\t')
                goto fail;
            if (d->hex_digits + ++d->ext_bytes > CHUNK_LINE_MAX)
                goto fail;
            break;
        case CH_EXT:
            if (c == '\r') {
                d->state = CH_SIZE_LF;
                break;
            }
            if (!is_class(c, C_VALUE) || d->hex_digits + ++d->ext_bytes > CHUNK_LINE_MAX)
                goto fail;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                goto fail;
            d->hex_digits = 0;
            d->ext_bytes = 0;
            d->state = d->remaining == 0 ? CH_TRAILER_LINE : CH_DATA;
            break;
        case CH_DATA_CR:
            if (c != '\r')
                goto fail;
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                goto fail;
            d->state = CH_SIZE_FIRST;
            break;
        case CH_TRAILER_LINE:
            /* As in the head: no obs-fold, no empty name, no bare LF. */
            if (c == '\r')
                d->state = CH_LAST_LF;
            else if (is_class(c, C_TCHAR))
                d->state = CH_TRAILER_NAME;
            else
                goto fail;
            break;
        case CH_TRAILER_NAME:
            if (c == ':')
                d->state = CH_TRAILER_VALUE;
            else if (!is_class(c, C_TCHAR))
                goto fail;
            break;
        case CH_TRAILER_VALUE:
            if (c == '\r')
                d->state = CH_TRAILER_LF;
            else if (!is_class(c, C_VALUE))
                goto fail;
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                goto fail;
            d->state = CH_TRAILER_LINE;
            break;
        case CH_LAST_LF:
            if (c != '\n')
                goto fail;
            d->state = CH_DONE;
            *len = r + 1;
            *out = w;
            return 1;
        default:
            assert(!"unreachable chunked state");
            goto fail;
        }
        r++;
    }
    *len = n;
    *out = w;
    return 0;

fail:
    d->state = CH_FAILED;
    *len = r;
    *out = w;
    return -400;
}

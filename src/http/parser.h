/* SPDX-License-Identifier: MIT */
/*
 * Strict HTTP/1.1 request parser (RFC 9112), internal to src/http.
 *
 * The parser is stateless over the request head: the server calls
 * mica__http_parse_head() on everything buffered so far and gets "incomplete"
 * until the whole head (up to the empty line) is present. Heads are small and
 * bounded by max_head_bytes, so re-scanning is cheaper than keeping state.
 * Bodies are framed by the result: Content-Length, or the incremental chunked
 * decoder below, which decodes in place.
 *
 * All returned pointers point into the caller's buffer; nothing is allocated.
 */
#ifndef MICA_HTTP_PARSER_H
#define MICA_HTTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MICA__HTTP_MAX_HEADERS 64

typedef enum mica__http_method {
    MICA__HTTP_OTHER = 0, /* a valid token we do not know; see method/method_len */
    MICA__HTTP_GET,
    MICA__HTTP_HEAD,
    MICA__HTTP_POST,
    MICA__HTTP_PUT,
    MICA__HTTP_DELETE,
    MICA__HTTP_PATCH,
    MICA__HTTP_OPTIONS,
    MICA__HTTP_CONNECT,
    MICA__HTTP_TRACE,
} mica__http_method_t;

typedef struct mica__http_field {
    const char *name; /* as received (case preserved), not NUL-terminated */
    size_t name_len;
    const char *value; /* leading and trailing OWS stripped */
    size_t value_len;
} mica__http_field_t;

typedef struct mica__http_limits {
    size_t max_head_bytes;   /* request line + fields + CRLF CRLF; over -> 431 */
    size_t max_target_bytes; /* request-target length; over -> 414 */
    size_t max_headers;      /* field count, <= MICA__HTTP_MAX_HEADERS; over -> 431 */
} mica__http_limits_t;

typedef struct mica__http_head {
    mica__http_method_t method;
    const char *method_str; /* token as received */
    size_t method_len;
    const char *target; /* request-target as received */
    size_t target_len;
    const char *path; /* target up to '?' (origin-form) */
    size_t path_len;
    const char *query; /* after '?', excluding it; NULL if none */
    size_t query_len;
    int version_minor; /* 0 or 1 (HTTP/1.x only) */

    mica__http_field_t headers[MICA__HTTP_MAX_HEADERS];
    size_t num_headers;

    /* Framing and connection semantics derived from the fields. */
    int64_t content_length; /* -1 when absent */
    bool chunked;           /* Transfer-Encoding: chunked (the only one accepted) */
    bool keep_alive;        /* 1.1 default on unless "close"; 1.0 only with "keep-alive" */
    bool expect_continue;   /* Expect: 100-continue */
    bool has_host;
} mica__http_head_t;

/*
 * Parses the request head at buf[0..len). Returns the head's length in bytes
 * (including the final CRLF CRLF) when complete, 0 when more bytes are
 * needed (and no limit is exceeded yet), or a negative HTTP status when the
 * request must be refused: -400 (syntax, smuggling risks, missing Host on
 * 1.1, a Transfer-Encoding whose final coding is not chunked), -414 (target
 * too long), -431 (head too large / too many fields), -501 (a coding before
 * the final chunked, which we do not implement),
 * -505 (HTTP version other than 1.0/1.1). After any negative result the
 * connection must be closed: framing can no longer be trusted.
 *
 * Strictness (RFC 9112): every line ends in CRLF (a bare LF or bare CR is
 * -400, §2.2 lets us refuse both), no whitespace between field name and
 * colon (§5.1), no obs-fold (§5.2), no control characters (other than HTAB in
 * values), tokens per RFC 9110 §5.6.2, at most one Content-Length (repeated
 * identical values are also rejected), Content-Length with Transfer-Encoding
 * rejected (§6.3), a leading empty line (CRLF) before the request line is
 * tolerated (§2.2) but counts toward the limits. Request line: exactly one SP
 * between the three parts.
 */
int mica__http_parse_head(const char *buf, size_t len, const mica__http_limits_t *limits,
                          mica__http_head_t *out);

/* A response head (RFC 9112 §4), as the client reads it. */
typedef struct mica__http_resp_head {
    int version_minor; /* 0 or 1 */
    int status;        /* 100..999 */
    const char *reason; /* reason-phrase, possibly empty (not NUL-terminated) */
    size_t reason_len;

    mica__http_field_t headers[MICA__HTTP_MAX_HEADERS];
    size_t num_headers;

    int64_t content_length; /* -1 when absent */
    bool chunked;           /* Transfer-Encoding: chunked (the only one accepted) */
    bool keep_alive;        /* 1.1 unless "close"; 1.0 only with "keep-alive" */
} mica__http_resp_head_t;

/*
 * Parses a response head at buf[0..len) (status-line and fields), with the
 * same strictness as requests: CRLF only, no obs-fold, no whitespace before
 * the colon, tokens and field values per RFC 9110, and framing fields that
 * leave no doubt -- Content-Length at most once (repeated, even identical:
 * refused), never with Transfer-Encoding, and Transfer-Encoding only as
 * exactly "chunked" in HTTP/1.1 (anything else would be read to the close,
 * which is where response smuggling lives). Returns the head's length, 0
 * when more bytes are needed, -431 past max_head_bytes or max_headers, or
 * -502 for anything malformed. max_target_bytes is not used.
 */
int mica__http_parse_response_head(const char *buf, size_t len, const mica__http_limits_t *limits,
                                   mica__http_resp_head_t *out);

/* Incremental chunked body decoder (RFC 9112 §7.1), decoding in place. */
typedef struct mica__http_chunked {
    int state;             /* private */
    uint64_t remaining;    /* private: bytes left in the current chunk */
    size_t hex_digits;     /* private */
    size_t trailer_bytes;  /* private: bytes of trailer section seen so far */
    size_t ext_bytes;      /* private: bytes of chunk extension seen so far */
} mica__http_chunked_t;

/** Resets `d` for a new body. */
void mica__http_chunked_init(mica__http_chunked_t *d);

/*
 * Decodes the chunked bytes at buf[0..*len) in place: on return buf[0..*out)
 * holds body data (the caller appends it to the body) and *len holds how many
 * input bytes were consumed. Returns 1 when the last chunk and trailer
 * section have been consumed (bytes after *len belong to the next request),
 * 0 when more input is needed (all input was consumed), or -400 on a
 * malformed chunk size, line ending, extension or trailer (extensions and
 * trailers are parsed and discarded; each is capped at 4 KiB -> -400). Chunk
 * sizes that overflow 63 bits are -400.
 */
int mica__http_chunked_decode(mica__http_chunked_t *d, char *buf, size_t *len, size_t *out);

/* Case-insensitive comparison of a received token with a lower-case literal. */
bool mica__http_token_eq(const char *s, size_t len, const char *lower_lit);

#endif /* MICA_HTTP_PARSER_H */

/* SPDX-License-Identifier: MIT */
/*
 * gRPC server calls over HTTP/2 streams (the "gRPC over HTTP2" spec:
 * https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
 *
 * The HTTP/2 layer hands every application/grpc request stream to serve()
 * in a coroutine of its own as soon as its headers are in. serve() finds the
 * method by its path, turns grpc-timeout into a deadline, reads the
 * length-prefixed messages as they arrive (unpacking with protoc-c's
 * descriptors), runs the handler and ends the stream with grpc-status and
 * grpc-message in the trailers, or in a trailers-only HEADERS frame when no
 * message went out.
 *
 * A call lives on its coroutine's stack; strings it keeps (metadata, status
 * message) and the unary request go to the stream's arena.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/log.h"
#include "grpc/internal.h"
#include "http/internal.h"
#include "mica/grpc.h"

#define MAX_MD 16 /* custom metadata entries each way */

/* Request messages may come gzip-compressed (RFC 1952, as grpc-go and
 * grpc-js send them); responses always go uncompressed ("identity"). */
#define ACCEPT_ENCODING "identity,gzip"

struct mica_grpc_call {
    mica__h2_stream_t *s;
    mica_http_req_t *req;
    const mica__grpc_method_t *m;
    size_t max_msg;
    bool headers_sent;
    bool replied;
    bool gzip; /* grpc-encoding: gzip, so compressed messages are inflated */
    const char *message; /* grpc-message, or NULL */
    mica__http_field_t hdrs[MAX_MD], trls[MAX_MD];
    size_t nhdrs, ntrls;
};

/* ---- registry ---------------------------------------------------------------- */

static void registry_free(void *arg)
{
    mica__grpc_registry_t *r = arg;
    for (size_t i = 0; i < r->n; i++)
        free(r->methods[i].path);
    free(r->methods);
    free(r);
}

static void serve(mica__h2_stream_t *s, void *arg);

mica__grpc_registry_t *mica__grpc_registry(mica_http_server_t *srv)
{
    if (!srv->stream_arg) {
        mica__grpc_registry_t *r = calloc(1, sizeof(*r));
        if (!r)
            return NULL;
        r->srv = srv;
        srv->stream_fn = serve;
        srv->stream_arg = r;
        srv->stream_free = registry_free;
    }
    return srv->stream_arg;
}

static const mica__grpc_method_t *find_method(const mica__grpc_registry_t *r, const char *path,
                                              size_t len)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->methods[i].path_len == len && memcmp(r->methods[i].path, path, len) == 0)
            return &r->methods[i];
    return NULL;
}

int mica_grpc_register(mica_http_server_t *srv, const ProtobufCServiceDescriptor *service,
                       const char *method, mica_grpc_kind_t kind, mica_grpc_handler_fn fn,
                       void *arg)
{
    if (!srv || !service || !method || !fn || kind < MICA_GRPC_UNARY || kind > MICA_GRPC_BIDI)
        return MICA_EINVAL;
    const ProtobufCMethodDescriptor *md = NULL;
    for (unsigned i = 0; i < service->n_methods; i++)
        if (strcmp(service->methods[i].name, method) == 0)
            md = &service->methods[i];
    if (!md)
        return MICA_ENOTFOUND;
    mica__grpc_registry_t *r = mica__grpc_registry(srv);
    if (!r)
        return MICA_ENOMEM;
    char *path;
    if (asprintf(&path, "/%s/%s", service->name, method) < 0)
        return MICA_ENOMEM;
    if (find_method(r, path, strlen(path))) {
        free(path);
        return MICA_EEXIST;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        mica__grpc_method_t *m = realloc(r->methods, cap * sizeof(*m));
        if (!m) {
            free(path);
            return MICA_ENOMEM;
        }
        r->methods = m;
        r->cap = cap;
    }
    r->methods[r->n++] = (mica__grpc_method_t){path, strlen(path), service, md, kind, fn, arg};
    return 0;
}

bool mica__grpc_has_service(const mica__grpc_registry_t *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->methods[i].service->name, name) == 0)
            return true;
    return false;
}

/* ---- statuses ---------------------------------------------------------------- */

static const char *const code_names[] = {
    "OK",        "CANCELLED",           "UNKNOWN",      "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",      "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED",   "OUT_OF_RANGE", "UNIMPLEMENTED",    "INTERNAL",
    "UNAVAILABLE", "DATA_LOSS",         "UNAUTHENTICATED",
};

const char *mica_grpc_code_name(int code)
{
    return code >= 0 && code <= 16 ? code_names[code] : "UNKNOWN";
}

static int code_of(int rc)
{
    if (rc >= 0)
        return rc <= 16 ? rc : MICA_GRPC_UNKNOWN;
    return mica_err_grpc_code(rc); /* the table in include/mica/error.h */
}

int mica_grpc_status(mica_grpc_call_t *call, int code, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return code;
    size_t len = (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1;
    char *m = mica_http_req_alloc(call->req, len + 1);
    if (m) {
        memcpy(m, buf, len);
        m[len] = '\0';
        call->message = m;
    }
    return code;
}

/* Percent-encodes a grpc-message: bytes outside 0x20..0x7e and '%'. */
static char *encode_message(mica_http_req_t *req, const char *msg, size_t *len)
{
    size_t n = strlen(msg);
    char *out = mica_http_req_alloc(req, n * 3 + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c < 0x20 || c > 0x7e || c == '%') {
            static const char hex[] = "0123456789ABCDEF";
            out[k++] = '%';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        } else {
            out[k++] = (char)c;
        }
    }
    out[k] = '\0';
    *len = k;
    return out;
}

/* ---- metadata ---------------------------------------------------------------- */

static mica__http_field_t field(const char *name, const char *value)
{
    return (mica__http_field_t){name, strlen(name), value, strlen(value)};
}

const char *mica_grpc_call_metadata(const mica_grpc_call_t *call, const char *key)
{
    return mica_http_req_header(call->req, key);
}

const char *mica_grpc_call_tls_peer(const mica_grpc_call_t *call)
{
    return mica_http_req_tls_peer(call->req);
}

const char *mica_grpc_call_method(const mica_grpc_call_t *call)
{
    return call->m->path;
}

mica_ctx_t *mica_grpc_call_ctx(mica_grpc_call_t *call)
{
    return mica_http_req_ctx(call->req); /* deadline_ms is the grpc-timeout's */
}

static bool valid_key(const char *k)
{
    if (!*k || strncmp(k, "grpc-", 5) == 0)
        return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
              *p == '.'))
            return false;
    return strcmp(k, "content-type") != 0 && strcmp(k, "te") != 0 &&
           strcmp(k, "connection") != 0 && strcmp(k, "transfer-encoding") != 0;
}

/* Printable ASCII; "-bin" values are sent base64-encoded, which is too. */
static bool valid_value(const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            return false;
    return true;
}

static int add_md(mica_grpc_call_t *call, mica__http_field_t *list, size_t *n, const char *key,
                  const char *value)
{
    if (!key || !value || !valid_key(key) || !valid_value(value))
        return MICA_EINVAL;
    if (*n == MAX_MD)
        return MICA_ELIMIT;
    size_t kl = strlen(key), vl = strlen(value);
    char *k = mica_http_req_alloc(call->req, kl + vl + 2);
    if (!k)
        return MICA_ENOMEM;
    memcpy(k, key, kl + 1);
    memcpy(k + kl + 1, value, vl + 1);
    list[(*n)++] = (mica__http_field_t){k, kl, k + kl + 1, vl};
    return 0;
}

int mica_grpc_call_header(mica_grpc_call_t *call, const char *key, const char *value)
{
    if (call->headers_sent)
        return MICA_EINVAL;
    return add_md(call, call->hdrs, &call->nhdrs, key, value);
}

int mica_grpc_call_trailer(mica_grpc_call_t *call, const char *key, const char *value)
{
    return add_md(call, call->trls, &call->ntrls, key, value);
}

/* ---- messages ---------------------------------------------------------------- */

static mica_ctx_t *wait_ctx(mica_grpc_call_t *call)
{
    return call->req->ctx; /* NULL until the handler asks for it: then waits honour it too */
}

static void *arena_alloc(void *data, size_t size)
{
    return mica_http_req_alloc(data, size);
}

static void arena_free(void *data, void *p)
{
    (void)data;
    (void)p; /* freed with the stream */
}

/*
 * Inflates a gzip message of n bytes into a malloc'ed buffer of at most max
 * bytes (a small message that inflates past the limit is refused as soon as
 * it does, not after). Returns 0, MICA_ELIMIT, MICA_EPROTO (not gzip, or
 * cut short) or MICA_ENOMEM.
 */
static int gunzip(const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *out_len)
{
    z_stream z = {0};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) /* 16: gzip wrapper only */
        return MICA_ENOMEM;
    size_t cap = n * 4 < 4096 ? 4096 : n * 4;
    if (cap > max + 1)
        cap = max + 1; /* one byte over the limit tells "too large" */
    uint8_t *buf = malloc(cap);
    int rc = buf ? 0 : MICA_ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    while (rc == 0) {
        z.next_out = buf + z.total_out;
        z.avail_out = (uInt)(cap - z.total_out);
        int zr = inflate(&z, Z_FINISH);
        if (zr == Z_STREAM_END && z.avail_in == 0) {
            break;
        } else if (zr == Z_STREAM_END || zr == Z_NEED_DICT || zr == Z_DATA_ERROR ||
                   (zr == Z_BUF_ERROR && z.avail_out != 0)) {
            rc = MICA_EPROTO; /* trailing bytes, corrupt, or cut short */
        } else if (z.avail_out == 0) {
            if (z.total_out > max) {
                rc = MICA_ELIMIT;
            } else {
                size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
                uint8_t *nb = realloc(buf, ncap);
                if (!nb)
                    rc = MICA_ENOMEM;
                else
                    buf = nb, cap = ncap;
            }
        } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rc = MICA_EPROTO;
        }
    }
    if (rc == 0 && z.total_out > max)
        rc = MICA_ELIMIT;
    *out_len = z.total_out;
    inflateEnd(&z);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/*
 * Reads one length-prefixed message, inflating it if it is compressed, and
 * unpacks it with `a` (NULL: malloc). Returns 0, MICA_ECLOSED (clean end of
 * the request), MICA_ELIMIT, MICA_EPROTO (truncated, compressed without an
 * encoding, or undecodable), MICA_ENOMEM, or a wait's error.
 */
static int read_message(mica_grpc_call_t *call, ProtobufCAllocator *a, ProtobufCMessage **out)
{
    mica__h2_stream_t *s = call->s;
    int rc = mica__h2_in_wait(s, 5, wait_ctx(call), call->req->deadline_ms);
    size_t len;
    const uint8_t *p = (const uint8_t *)mica__h2_in_data(s, &len);
    if (rc == MICA_ECLOSED)
        return len == 0 ? MICA_ECLOSED : MICA_EPROTO;
    if (rc != 0)
        return rc;
    bool compressed = p[0] == 1;
    if (p[0] > 1 || (compressed && !call->gzip))
        return MICA_EPROTO; /* the spec's INTERNAL: a flag without an encoding */
    size_t n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
    if (n > call->max_msg)
        return MICA_ELIMIT;
    rc = mica__h2_in_wait(s, 5 + n, wait_ctx(call), call->req->deadline_ms);
    if (rc != 0)
        return rc == MICA_ECLOSED ? MICA_EPROTO : rc;
    p = (const uint8_t *)mica__h2_in_data(s, &len);
    if (!compressed) {
        *out = protobuf_c_message_unpack(call->m->method->input, a, n, p + 5);
    } else {
        uint8_t *plain;
        size_t plain_len;
        if ((rc = gunzip(p + 5, n, call->max_msg, &plain, &plain_len)) != 0) {
            mica__h2_in_consume(s, 5 + n);
            return rc;
        }
        *out = protobuf_c_message_unpack(call->m->method->input, a, plain_len, plain);
        free(plain);
    }
    mica__h2_in_consume(s, 5 + n);
    return *out ? 0 : MICA_EPROTO;
}

int mica_grpc_recv(mica_grpc_call_t *call, ProtobufCMessage **out)
{
    *out = NULL;
    if (call->m->kind == MICA_GRPC_UNARY || call->m->kind == MICA_GRPC_SERVER_STREAM)
        return MICA_ECLOSED; /* the one request was the handler's argument */
    return read_message(call, NULL, out);
}

static int send_headers(mica_grpc_call_t *call)
{
    mica__http_field_t f[MAX_MD + 2];
    f[0] = field("content-type", "application/grpc");
    f[1] = field("grpc-accept-encoding", ACCEPT_ENCODING);
    memcpy(f + 2, call->hdrs, call->nhdrs * sizeof(*f));
    int rc = mica__h2_out_headers(call->s, 200, f, call->nhdrs + 2);
    if (rc == 0)
        call->headers_sent = true;
    return rc;
}

int mica_grpc_send(mica_grpc_call_t *call, const ProtobufCMessage *msg)
{
    bool single = call->m->kind == MICA_GRPC_UNARY || call->m->kind == MICA_GRPC_CLIENT_STREAM;
    if (!msg || (single && call->replied) || msg->descriptor != call->m->method->output)
        return MICA_EINVAL;
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > call->max_msg)
        return MICA_ELIMIT;
    int rc;
    if (!call->headers_sent && (rc = send_headers(call)) != 0)
        return rc;
    uint8_t *p = (uint8_t *)mica__h2_out_reserve(call->s, 5 + n);
    if (!p)
        return MICA_ENOMEM;
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    protobuf_c_message_pack(msg, p + 5);
    if ((rc = mica__h2_out_commit(call->s, 5 + n)) != 0)
        return rc;
    call->replied = true;
    return mica__h2_out_wait(call->s, wait_ctx(call), call->req->deadline_ms);
}

/* ---- one call ----------------------------------------------------------------- */

/* Parses grpc-timeout ("1-8 digits" + H M S m u n) into a deadline; false if malformed. */
static bool parse_timeout(const char *v, int64_t *deadline_ms)
{
    size_t n = strlen(v);
    if (n < 2 || n > 9)
        return false;
    int64_t x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        x = x * 10 + (v[i] - '0');
    }
    int64_t ms;
    switch (v[n - 1]) {
    case 'H': ms = x * 3600000; break;
    case 'M': ms = x * 60000; break;
    case 'S': ms = x * 1000; break;
    case 'm': ms = x; break;
    case 'u': ms = (x + 999) / 1000; break;
    case 'n': ms = (x + 999999) / 1000000; break;
    default: return false;
    }
    *deadline_ms = mica_deadline_in(ms);
    return true;
}

static void finish(mica_grpc_call_t *call, int code)
{
    mica__http_field_t f[MAX_MD * 2 + 4];
    size_t n = 0;
    char st[24];
    st[mica__http_u64_dec(st, (uint64_t)code)] = '\0';
    if (!call->headers_sent) { /* trailers-only: one HEADERS frame carries it all */
        f[n++] = field("content-type", "application/grpc");
        f[n++] = field("grpc-accept-encoding", ACCEPT_ENCODING);
        memcpy(f + n, call->hdrs, call->nhdrs * sizeof(*f));
        n += call->nhdrs;
    }
    f[n++] = field("grpc-status", st);
    size_t mlen;
    const char *m = call->message && code != 0 ? encode_message(call->req, call->message, &mlen) : NULL;
    if (m)
        f[n++] = (mica__http_field_t){"grpc-message", 12, m, mlen};
    memcpy(f + n, call->trls, call->ntrls * sizeof(*f));
    n += call->ntrls;
    mica__h2_out_finish(call->s, 200, f, n);
}

/* Maps a failure to read the request to the call's status. */
static int read_failure(mica_grpc_call_t *call, int rc)
{
    switch (rc) {
    case MICA_ELIMIT:
        return mica_grpc_status(call, MICA_GRPC_RESOURCE_EXHAUSTED,
                                "request message larger than %zu bytes", call->max_msg);
    case MICA_EPROTO:
        return mica_grpc_status(call, MICA_GRPC_INTERNAL, "malformed request message");
    case MICA_ENOMEM:
        return mica_grpc_status(call, MICA_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    case MICA_ECLOSED:
        return mica_grpc_status(call, MICA_GRPC_UNIMPLEMENTED, "request message missing");
    default:
        return code_of(rc);
    }
}

static int run(mica_grpc_call_t *call)
{
    const mica__grpc_method_t *m = call->m;
    if (m->kind == MICA_GRPC_CLIENT_STREAM || m->kind == MICA_GRPC_BIDI)
        return m->fn(call, NULL, m->arg);
    ProtobufCAllocator a = {arena_alloc, arena_free, call->req};
    ProtobufCMessage *in;
    int rc = read_message(call, &a, &in);
    if (rc != 0)
        return read_failure(call, rc);
    rc = m->fn(call, in, m->arg);
    return rc;
}

static void serve(mica__h2_stream_t *s, void *arg)
{
    mica__grpc_registry_t *r = arg;
    mica_http_req_t *req = mica__h2_req(s);
    mica_grpc_call_t call = {.s = s, .req = req, .max_msg = r->srv->o.max_message_bytes};
    const char *path = req->path;
    const mica__grpc_method_t *m = find_method(r, path, strlen(path));
    static const mica__grpc_method_t unknown = {.path = "", .kind = MICA_GRPC_UNARY};
    call.m = m ? m : &unknown;

    int code;
    const char *timeout = mica_http_req_header(req, "grpc-timeout");
    const char *encoding = mica_http_req_header(req, "grpc-encoding");
    call.gzip = encoding && strcmp(encoding, "gzip") == 0;
    if (!m) {
        code = mica_grpc_status(&call, MICA_GRPC_UNIMPLEMENTED, "unknown method %s", path);
    } else if (strcmp(req->method, "POST") != 0) {
        code = mica_grpc_status(&call, MICA_GRPC_UNIMPLEMENTED, "gRPC needs POST, not %s", req->method);
    } else if (encoding && !call.gzip && strcmp(encoding, "identity") != 0) {
        code = mica_grpc_status(&call, MICA_GRPC_UNIMPLEMENTED, "grpc-encoding %s not supported",
                                encoding);
    } else if (timeout && !parse_timeout(timeout, &req->deadline_ms)) {
        code = mica_grpc_status(&call, MICA_GRPC_INTERNAL, "malformed grpc-timeout");
    } else {
        int rc = run(&call);
        code = code_of(rc);
        if (code == MICA_GRPC_OK && !call.replied &&
            (m->kind == MICA_GRPC_UNARY || m->kind == MICA_GRPC_CLIENT_STREAM))
            code = mica_grpc_status(&call, MICA_GRPC_INTERNAL, "handler sent no response");
        else if (rc < 0 && !call.message)
            mica_grpc_status(&call, code, "%s", mica_strerror(rc));
        if (req->deadline_ms != MICA_NO_DEADLINE && mica_now_ms() >= req->deadline_ms &&
            code != MICA_GRPC_OK)
            code = MICA_GRPC_DEADLINE_EXCEEDED;
    }
    finish(&call, code);
}

/* SPDX-License-Identifier: MIT */
/*
 * gRPC server calls over the HTTP server's streaming routes (the "gRPC over
 * HTTP2" spec: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md),
 * through include/mica/http.h only.
 *
 * Each registered method is a streaming POST route at its path, so its
 * handler (serve()) starts as soon as the request head is in. serve()
 * checks the content-type (415 otherwise), turns grpc-timeout into the
 * request's deadline, reads the length-prefixed messages as they arrive
 * (unpacking with protoc-c's descriptors), runs the interceptors and the
 * handler, and ends the response with grpc-status and grpc-message as
 * trailers -- which the HTTP layer sends as a trailers-only HEADERS frame
 * when no message went out. Unknown methods reach the HTTP server's
 * fallback route, which answers gRPC requests with UNIMPLEMENTED.
 *
 * A call lives on its coroutine's stack; strings it keeps (status message)
 * and the unary request go to the request's arena.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/alloc.h"
#include "common/log.h"
#include "grpc/internal.h"
#include "mica/grpc.h"

#define STACK_MSG_BYTES 512 /* responses this small are packed on the stack */

/* Request messages may come gzip-compressed (RFC 1952, as grpc-go and
 * grpc-js send them); responses always go uncompressed ("identity"). */
#define ACCEPT_ENCODING "identity,gzip"

struct mica_grpc_call {
    mica_http_req_t *req;
    mica_http_resp_t *resp;
    const mica__grpc_method_t *m;
    mica_grpc_server_t *gs;
    size_t max_msg;
    bool replied;
    bool gzip;           /* grpc-encoding: gzip, so compressed messages are inflated */
    const char *message; /* grpc-message, or NULL */
};

struct mica_grpc_next {
    mica_grpc_call_t *call;
    size_t i; /* the next interceptor */
};

static int serve(mica_http_req_t *req, mica_http_resp_t *resp, void *arg);
static int unknown(mica_http_req_t *req, mica_http_resp_t *resp, void *arg);

/* ---- the server and its methods ------------------------------------------------- */

size_t mica_grpc_server_settings(mica_grpc_server_opts_t *o, mica_setting_t *out, size_t cap)
{
    const mica_setting_t all[] = {
        {"grpc_max_message_bytes", MICA_SETTING_SIZE, "4MiB",
         "a gRPC message either way, beyond: RESOURCE_EXHAUSTED", &o->max_message_bytes, 1,
         1 << 30, NULL},
    };
    size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = all[i];
    return n;
}

int mica_grpc_server_opts_from_env(mica_grpc_server_opts_t *o)
{
    mica_grpc_server_opts_t env = *o;
    mica_setting_t set[MICA_GRPC_SETTINGS];
    size_t n = mica_grpc_server_settings(&env, set, MICA_GRPC_SETTINGS);
    if (mica_config_from_env(set, n) != 0)
        return MICA_EINVAL;
    if (!o->max_message_bytes)
        o->max_message_bytes = env.max_message_bytes;
    return 0;
}

int mica_grpc_server_new(mica_grpc_server_t **out, mica_http_server_t *http,
                         const mica_grpc_server_opts_t *opts)
{
    if (!http)
        return MICA_EINVAL;
    mica_grpc_server_t *gs = mica__calloc(1, sizeof(*gs));
    if (!gs)
        return MICA_ENOMEM;
    gs->http = http;
    if (opts)
        gs->o = *opts;
    if (!gs->o.max_message_bytes)
        gs->o.max_message_bytes = 4 << 20;
    mica__list_init(&gs->methods);
    int rc = mica_http_route_fallback(http, unknown, gs);
    if (rc != 0) {
        mica__free(gs);
        return rc;
    }
    *out = gs;
    return 0;
}

void mica_grpc_server_free(mica_grpc_server_t *gs)
{
    if (!gs)
        return;
    mica__list_foreach_safe(n, nx, &gs->methods) {
        mica__grpc_method_t *m = mica__list_entry(n, mica__grpc_method_t, link);
        mica__free(m->path);
        mica__free(m);
    }
    mica__free(gs->ic);
    mica__free(gs);
}

int mica_grpc_register(mica_grpc_server_t *gs, const ProtobufCServiceDescriptor *service,
                       const char *method, mica_grpc_kind_t kind, mica_grpc_handler_fn fn,
                       void *arg)
{
    if (!gs || !service || !method || !fn || kind < MICA_GRPC_UNARY || kind > MICA_GRPC_BIDI)
        return MICA_EINVAL;
    const ProtobufCMethodDescriptor *md = NULL;
    for (unsigned i = 0; i < service->n_methods; i++)
        if (strcmp(service->methods[i].name, method) == 0)
            md = &service->methods[i];
    if (!md)
        return MICA_ENOTFOUND;
    mica__grpc_method_t *m = mica__calloc(1, sizeof(*m));
    char *path = mica__aprintf("/%s/%s", service->name, method);
    if (!m || !path) {
        mica__free(m);
        mica__free(path);
        return MICA_ENOMEM;
    }
    *m = (mica__grpc_method_t){.path = path, .service = service, .method = md, .kind = kind,
                               .fn = fn, .arg = arg, .gs = gs};
    /* One message and its prefix may wait unread; the sender is slowed beyond. */
    int rc = mica_http_route_stream(gs->http, "POST", path, gs->o.max_message_bytes + 5, serve, m);
    if (rc != 0) {
        mica__free(path);
        mica__free(m);
        return rc;
    }
    mica__list_push_back(&gs->methods, &m->link);
    return 0;
}

mica_http_server_t *mica_grpc_server_http(const mica_grpc_server_t *gs)
{
    return gs->http;
}

int mica_grpc_server_method_kind(const mica_grpc_server_t *gs, const char *path,
                                 mica_grpc_kind_t *out)
{
    mica__list_foreach(n, &gs->methods) {
        const mica__grpc_method_t *m = mica__list_entry(n, mica__grpc_method_t, link);
        if (strcmp(m->path, path) == 0) {
            *out = m->kind;
            return 0;
        }
    }
    return MICA_ENOTFOUND;
}

bool mica__grpc_has_service(const mica_grpc_server_t *gs, const char *name)
{
    mica__list_foreach(n, &gs->methods) {
        const mica__grpc_method_t *m = mica__list_entry(n, mica__grpc_method_t, link);
        if (strcmp(m->service->name, name) == 0)
            return true;
    }
    return false;
}

int mica_grpc_use(mica_grpc_server_t *gs, mica_grpc_interceptor_fn fn, void *arg)
{
    if (!gs || !fn)
        return MICA_EINVAL;
    mica__grpc_interceptor_t *ic = mica__realloc(gs->ic, (gs->nic + 1) * sizeof(*ic));
    if (!ic)
        return MICA_ENOMEM;
    ic[gs->nic++] = (mica__grpc_interceptor_t){fn, arg};
    gs->ic = ic;
    return 0;
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

int mica_grpc_resp_code(const mica_http_resp_t *resp)
{
    const char *v = mica_http_resp_field(resp, "grpc-status");
    if (!v || !*v)
        return -1;
    int code = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9' || code > 100)
            return -1;
        code = code * 10 + (*p - '0');
    }
    return code;
}

/* ---- metadata ---------------------------------------------------------------- */

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

mica_grpc_kind_t mica_grpc_call_kind(const mica_grpc_call_t *call)
{
    return call->m->kind;
}

mica_http_req_t *mica_grpc_call_req(mica_grpc_call_t *call)
{
    return call->req;
}

mica_ctx_t *mica_grpc_call_ctx(mica_grpc_call_t *call)
{
    return mica_http_req_ctx(call->req); /* its deadline is the grpc-timeout's */
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

int mica_grpc_call_header(mica_grpc_call_t *call, const char *key, const char *value)
{
    if (!key || !value || !valid_key(key) || !valid_value(value))
        return MICA_EINVAL;
    return mica_http_resp_header(call->resp, key, value);
}

int mica_grpc_call_trailer(mica_grpc_call_t *call, const char *key, const char *value)
{
    /* The one grpc- trailer a handler may send: gRFC A6's retry pushback. */
    bool pushback = key && strcmp(key, "grpc-retry-pushback-ms") == 0;
    if (!key || !value || !(pushback || valid_key(key)) || !valid_value(value))
        return MICA_EINVAL;
    return mica_http_resp_trailer(call->resp, key, value);
}

/* ---- messages ---------------------------------------------------------------- */

static void *arena_alloc(void *data, size_t size)
{
    return mica_http_req_alloc(data, size);
}

static void arena_free(void *data, void *p)
{
    (void)data;
    (void)p; /* freed with the request */
}

/* Streamed requests are the caller's to free with protobuf_c_message_free_unpacked(m, NULL),
 * which calls free(): mica__malloc's memory is malloc's. */
static void *heap_alloc(void *data, size_t size)
{
    return mica__malloc(size);
}

static void heap_free(void *data, void *p)
{
    mica__free(p);
}

static ProtobufCAllocator heap = {heap_alloc, heap_free, NULL};

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
    uint8_t *buf = mica__malloc(cap);
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
                uint8_t *nb = mica__realloc(buf, ncap);
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
        mica__free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/*
 * Reads one length-prefixed message, inflating it if it is compressed, and
 * unpacks it with `a`. Returns 0, MICA_ECLOSED (clean end of the request),
 * MICA_ELIMIT, MICA_EPROTO (truncated, compressed without an encoding, or
 * undecodable), MICA_ENOMEM, or a wait's error.
 */
static int read_message(mica_grpc_call_t *call, ProtobufCAllocator *a, ProtobufCMessage **out)
{
    mica_http_req_t *req = call->req;
    const void *d;
    size_t len;
    int rc = mica_http_req_body_wait(req, 5, &d, &len);
    const uint8_t *p = d;
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
    rc = mica_http_req_body_wait(req, 5 + n, &d, &len);
    if (rc != 0)
        return rc == MICA_ECLOSED ? MICA_EPROTO : rc;
    p = d;
    if (!compressed) {
        *out = protobuf_c_message_unpack(call->m->method->input, a, n, p + 5);
    } else {
        uint8_t *plain;
        size_t plain_len;
        if ((rc = gunzip(p + 5, n, call->max_msg, &plain, &plain_len)) != 0) {
            mica_http_req_body_consume(req, 5 + n);
            return rc;
        }
        *out = protobuf_c_message_unpack(call->m->method->input, a, plain_len, plain);
        mica__free(plain);
    }
    mica_http_req_body_consume(req, 5 + n);
    return *out ? 0 : MICA_EPROTO;
}

int mica_grpc_recv(mica_grpc_call_t *call, ProtobufCMessage **out)
{
    *out = NULL;
    if (call->m->kind == MICA_GRPC_UNARY || call->m->kind == MICA_GRPC_SERVER_STREAM)
        return MICA_ECLOSED; /* the one request was the handler's argument */
    return read_message(call, &heap, out);
}

int mica_grpc_send(mica_grpc_call_t *call, const ProtobufCMessage *msg)
{
    bool single = call->m->kind == MICA_GRPC_UNARY || call->m->kind == MICA_GRPC_CLIENT_STREAM;
    if (!msg || (single && call->replied) || msg->descriptor != call->m->method->output)
        return MICA_EINVAL;
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > call->max_msg)
        return MICA_ELIMIT;
    uint8_t stack[STACK_MSG_BYTES];
    uint8_t *p = 5 + n <= sizeof(stack) ? stack : mica__malloc(5 + n);
    if (!p)
        return MICA_ENOMEM;
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    protobuf_c_message_pack(msg, p + 5);
    int rc = mica_http_resp_write(call->resp, p, 5 + n); /* copied; waits while the client lags */
    if (p != stack)
        mica__free(p);
    if (rc == 0)
        call->replied = true;
    return rc;
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
    char st[4]; /* 0..16, without printf on every call */
    int k = 0;
    if (code >= 10)
        st[k++] = (char)('0' + code / 10 % 10);
    st[k++] = (char)('0' + code % 10);
    st[k] = '\0';
    mica_http_resp_t *resp = call->resp;
    mica_http_resp_trailer(resp, "grpc-status", st);
    if (call->message && code != 0) {
        size_t mlen;
        const char *m = encode_message(call->req, call->message, &mlen);
        if (m)
            mica_http_resp_trailer(resp, "grpc-message", m);
    }
    mica_http_resp_end(resp);
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

int mica_grpc_next(mica_grpc_next_t *next, const ProtobufCMessage *req)
{
    mica_grpc_call_t *call = next->call;
    mica_grpc_server_t *gs = call->gs;
    if (next->i < gs->nic) {
        const mica__grpc_interceptor_t *ic = &gs->ic[next->i++];
        return ic->fn(call, req, next, ic->arg);
    }
    if (next->i != gs->nic)
        return MICA_GRPC_INTERNAL; /* the handler has run already */
    next->i++;
    return call->m->fn(call, req, call->m->arg);
}

static int run(mica_grpc_call_t *call)
{
    const mica__grpc_method_t *m = call->m;
    ProtobufCMessage *in = NULL;
    if (m->kind == MICA_GRPC_UNARY || m->kind == MICA_GRPC_SERVER_STREAM) {
        ProtobufCAllocator a = {arena_alloc, arena_free, call->req};
        int rc = read_message(call, &a, &in);
        if (rc != 0)
            return read_failure(call, rc);
        /* Exactly one request (PROTOCOL-HTTP2, cardinality): a second one
         * fails the call before the handler runs, INTERNAL as in grpc-go. */
        const void *d;
        size_t len;
        rc = mica_http_req_body_wait(call->req, 1, &d, &len);
        if (rc == 0)
            return mica_grpc_status(call, MICA_GRPC_INTERNAL,
                                    "received more than one request message for a "
                                    "non-client-streaming RPC");
        if (rc != MICA_ECLOSED)
            return read_failure(call, rc);
    }
    if (call->gs->nic == 0)
        return m->fn(call, in, m->arg);
    mica_grpc_next_t next = {call, 0};
    return mica_grpc_next(&next, in);
}

/* application/grpc, optionally followed by "+proto", ";..." (PROTOCOL-HTTP2). */
static bool grpc_content_type(const char *ct)
{
    return ct && strncmp(ct, "application/grpc", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == '+' || ct[16] == ';');
}

static int serve(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    const mica__grpc_method_t *m = arg;
    if (!grpc_content_type(mica_http_req_header(req, "content-type")))
        return mica_http_resp_error(resp, 415, "content-type must be application/grpc");
    mica_grpc_call_t call = {.req = req, .resp = resp, .m = m, .gs = m->gs,
                             .max_msg = m->gs->o.max_message_bytes};
    mica_http_resp_start(resp, 200, "application/grpc");
    const char *timeout = mica_http_req_header(req, "grpc-timeout");
    const char *encoding = mica_http_req_header(req, "grpc-encoding");
    /* Optional in a response (PROTOCOL-HTTP2): said to clients that compress,
     * who need to know what we inflate; a field less on every other call. */
    if (encoding)
        mica_http_resp_header(resp, "grpc-accept-encoding", ACCEPT_ENCODING);

    int code;
    call.gzip = encoding && strcmp(encoding, "gzip") == 0;
    int64_t deadline;
    if (encoding && !call.gzip && strcmp(encoding, "identity") != 0) {
        code = mica_grpc_status(&call, MICA_GRPC_UNIMPLEMENTED, "grpc-encoding %s not supported",
                                encoding);
    } else if (timeout && !parse_timeout(timeout, &deadline)) {
        code = mica_grpc_status(&call, MICA_GRPC_INTERNAL, "malformed grpc-timeout");
    } else {
        if (timeout)
            mica_http_req_set_deadline(req, deadline);
        int rc = run(&call);
        code = code_of(rc);
        if (code == MICA_GRPC_OK && !call.replied &&
            (m->kind == MICA_GRPC_UNARY || m->kind == MICA_GRPC_CLIENT_STREAM))
            code = mica_grpc_status(&call, MICA_GRPC_INTERNAL, "handler sent no response");
        else if (rc < 0 && !call.message)
            mica_grpc_status(&call, code, "%s", mica_strerror(rc));
        int64_t d = mica_http_req_deadline(req);
        if (d != MICA_NO_DEADLINE && mica_now_ms() >= d && code != MICA_GRPC_OK)
            code = MICA_GRPC_DEADLINE_EXCEEDED;
    }
    finish(&call, code);
    return 0;
}

/* The HTTP server's fallback: gRPC requests for methods nobody registered. */
static int unknown(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    if (!grpc_content_type(mica_http_req_header(req, "content-type")))
        return MICA_ENOTFOUND; /* the server's usual 404 */
    static const mica__grpc_method_t none = {.path = "", .kind = MICA_GRPC_UNARY};
    mica_grpc_call_t call = {.req = req, .resp = resp, .m = &none, .gs = arg};
    mica_http_resp_start(resp, 200, "application/grpc");
    mica_http_resp_header(resp, "grpc-accept-encoding", ACCEPT_ENCODING);
    finish(&call, mica_grpc_status(&call, MICA_GRPC_UNIMPLEMENTED, "unknown method %s",
                                   mica_http_req_path(req)));
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * Response serialization and helpers. A response is written straight into
 * the connection's output buffer (status line, Date from the worker's
 * per-second cache, Content-Type, Content-Length, Connection, the handler's
 * extra headers, body), so pipelined responses leave in one write.
 */
#include <string.h>

#include "http/internal.h"

#define OUT_CAP_BYTES (64u << 20) /* one connection's pending output */
#define RESP_HEADERS_CAP 8192

const char *mica_http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

int mica__http_status_of(int err)
{
    return mica_err_http_status(err); /* the table in include/mica/error.h */
}

int mica__http_out_append(mica__http_conn_t *c, const void *p, size_t len)
{
    if (len > c->out_cap - c->out_len) {
        if (len > OUT_CAP_BYTES - c->out_len)
            return MICA_ELIMIT;
        size_t cap = c->out_cap ? c->out_cap : MICA__HTTP_BUF_BYTES;
        while (cap - c->out_len < len)
            cap *= 2;
        if (cap > OUT_CAP_BYTES)
            cap = OUT_CAP_BYTES;
        char *out = !c->out && cap == MICA__HTTP_BUF_BYTES ? mica__http_buf_get(c->w)
                                                            : realloc(c->out, cap);
        if (!out)
            return MICA_ENOMEM;
        c->out = out;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, len);
    c->out_len += len;
    return 0;
}

size_t mica__http_u64_dec(char *buf, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static void refresh_date(mica__http_worker_t *w)
{
    time_t now = time(NULL);
    if (now == w->date_sec && w->date_len)
        return;
    struct tm tm;
    gmtime_r(&now, &tm);
    w->date_len = strftime(w->date, sizeof(w->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    w->date_sec = now;
}

int mica_http_resp_header(mica_http_resp_t *resp, const char *name, const char *value)
{
    if (resp->sent || !name || !*name || !value)
        return MICA_EINVAL;
    for (const char *p = name; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch))
            return MICA_EINVAL;
    }
    for (const char *p = value; *p; p++)
        if (*p == '\r' || *p == '\n')
            return MICA_EINVAL;
    size_t nl = strlen(name), vl = strlen(value), need = nl + vl + 4;
    if (need > RESP_HEADERS_CAP - resp->headers_len)
        return MICA_ELIMIT;
    if (need > resp->headers_cap - resp->headers_len) {
        size_t cap = resp->headers_cap ? resp->headers_cap * 2 : 512;
        while (cap - resp->headers_len < need)
            cap *= 2;
        char *h = mica_http_req_alloc(resp->req, cap);
        if (!h)
            return MICA_ENOMEM;
        if (resp->headers_len)
            memcpy(h, resp->headers, resp->headers_len);
        resp->headers = h;
        resp->headers_cap = cap;
    }
    char *h = resp->headers + resp->headers_len;
    memcpy(h, name, nl);
    memcpy(h + nl, ": ", 2);
    memcpy(h + nl + 2, value, vl);
    memcpy(h + nl + 2 + vl, "\r\n", 2);
    resp->headers_len += need;
    return 0;
}

int mica_http_resp_send(mica_http_resp_t *resp, int status, const char *content_type,
                        const void *body, size_t len)
{
    mica__http_conn_t *c = resp->conn;
    if (resp->sent || status < 200 || status > 599)
        return MICA_EINVAL;
    if (content_type && (strchr(content_type, '\r') || strchr(content_type, '\n')))
        return MICA_EINVAL;
    if (resp->h2)
        return mica__h2_respond(resp, status, content_type, body, len);
    refresh_date(c->w);

    /* Fixed-size part: status line, Date, Content-Length, Connection. */
    char head[256];
    size_t n = 0;
    memcpy(head, "HTTP/1.1 ", 9);
    n = 9;
    n += mica__http_u64_dec(head + n, (uint64_t)status);
    head[n++] = ' ';
    const char *reason = mica_http_status_reason(status);
    size_t rl = strlen(reason);
    memcpy(head + n, reason, rl);
    n += rl;
    memcpy(head + n, "\r\n", 2);
    n += 2;
    memcpy(head + n, c->w->date, c->w->date_len);
    n += c->w->date_len;

    bool no_body = status == 204 || status == 304;
    size_t start = c->out_len;
    int rc = mica__http_out_append(c, head, n);
    if (rc == 0 && content_type && !no_body) {
        rc = mica__http_out_append(c, "Content-Type: ", 14);
        if (rc == 0)
            rc = mica__http_out_append(c, content_type, strlen(content_type));
        if (rc == 0)
            rc = mica__http_out_append(c, "\r\n", 2);
    }
    n = 0;
    if (status != 204) {
        memcpy(head, "Content-Length: ", 16);
        n = 16 + mica__http_u64_dec(head + 16, no_body ? 0 : len);
        memcpy(head + n, "\r\n", 2);
        n += 2;
    }
    if (c->close || mica_worker_stopping()) {
        c->close = true;
        memcpy(head + n, "Connection: close\r\n", 19);
        n += 19;
    } else if (c->version_minor == 0) {
        memcpy(head + n, "Connection: keep-alive\r\n", 24);
        n += 24;
    }
    if (rc == 0)
        rc = mica__http_out_append(c, head, n);
    if (rc == 0 && resp->headers_len)
        rc = mica__http_out_append(c, resp->headers, resp->headers_len);
    if (rc == 0)
        rc = mica__http_out_append(c, "\r\n", 2);
    if (rc == 0 && len && !no_body && !c->head_only)
        rc = mica__http_out_append(c, body, len);
    if (rc != 0) {
        c->out_len = start; /* drop the partial response; the caller maps rc */
        return rc;
    }
    resp->sent = true;
    resp->status = status;
    return 0;
}

int mica_http_resp_text(mica_http_resp_t *resp, int status, const char *text)
{
    return mica_http_resp_send(resp, status, "text/plain; charset=utf-8", text, strlen(text));
}

int mica_http_resp_json_str(mica_http_resp_t *resp, int status, const char *json)
{
    return mica_http_resp_send(resp, status, "application/json; charset=utf-8", json,
                               strlen(json));
}

int mica_http_resp_json(mica_http_resp_t *resp, int status, const json_t *value)
{
    char stack[1024];
    size_t need = json_dumpb(value, stack, sizeof(stack), JSON_COMPACT | JSON_ENCODE_ANY);
    if (need == 0)
        return MICA_EINVAL;
    const char *buf = stack;
    if (need > sizeof(stack)) {
        char *big = mica_http_req_alloc(resp->req, need);
        if (!big)
            return MICA_ENOMEM;
        if (json_dumpb(value, big, need, JSON_COMPACT | JSON_ENCODE_ANY) != need)
            return MICA_EINVAL;
        buf = big;
    }
    return mica_http_resp_send(resp, status, "application/json; charset=utf-8", buf, need);
}

int mica_http_resp_error(mica_http_resp_t *resp, int status, const char *msg)
{
    json_t *o = json_pack("{s:s}", "error", msg ? msg : mica_http_status_reason(status));
    if (!o)
        return MICA_ENOMEM;
    int rc = mica_http_resp_json(resp, status, o);
    json_decref(o);
    return rc;
}

int mica__http_send_error(mica__http_conn_t *c, int status, const char *msg)
{
    c->close = true;
    c->resp.sent = false;
    c->resp.headers_len = 0;
    return mica_http_resp_error(&c->resp, status, msg);
}

/* SPDX-License-Identifier: MIT */
/*
 * Responses, whatever their protocol: header and trailer fields kept as
 * name/value pairs in the request arena (HTTP/1.1 writes them as
 * "Name: value" lines, HTTP/2 as lower-cased HPACK fields; neither parses
 * the other's form), the public send/start/write/end calls that go to the
 * protocol through the request's operations table, and JSON helpers.
 */
#include <string.h>
#include <strings.h>

#include "http/internal.h"
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

void mica__http_date(mica__http_worker_t *w, const char **line, size_t *len)
{
    time_t now = time(NULL);
    if (now != w->date_sec || !w->date_len) {
        struct tm tm;
        gmtime_r(&now, &tm);
        w->date_len =
            strftime(w->date, sizeof(w->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        w->date_sec = now;
    }
    *line = w->date;
    *len = w->date_len;
}

bool mica__http_hop_field(const char *name, size_t len)
{
    switch (len) { /* by length first: most fields are none of these */
    case 7: return mica__http_token_eq(name, len, "upgrade");
    case 10: return mica__http_token_eq(name, len, "connection") ||
                    mica__http_token_eq(name, len, "keep-alive");
    case 16: return mica__http_token_eq(name, len, "proxy-connection");
    case 17: return mica__http_token_eq(name, len, "transfer-encoding");
    default: return false;
    }
}

/* RFC 9110 §5.6.2 tchar, as a table: a field name is checked byte by byte. */
static const bool tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
};

/* ---- fields --------------------------------------------------------------------- */

static int add_field(mica_http_resp_t *resp, mica__http_field_t **list, size_t *n, size_t *bytes,
                     uint64_t *upper, uint64_t *hop, const char *name, const char *value)
{
    if (!name || !*name || !value)
        return MICA_EINVAL;
    size_t nl = 0, vl = 0;
    bool up = false;
    for (; name[nl]; nl++) {
        unsigned char ch = (unsigned char)name[nl];
        if (!tchar[ch])
            return MICA_EINVAL;
        up |= ch >= 'A' && ch <= 'Z';
    }
    vl = strcspn(value, "\r\n"); /* header injection: no CR or LF in a value */
    if (value[vl])
        return MICA_EINVAL;
    if (*n >= MICA__HTTP_RESP_MAX_FIELDS || nl + vl + 4 > MICA__HTTP_RESP_FIELDS_BYTES - *bytes)
        return MICA_ELIMIT;
    if (*n == 0 || (*n >= 8 && (*n & (*n - 1)) == 0)) { /* 8, then double: arena space is cheap */
        size_t room = *n ? *n * 2 : 8;
        mica__http_field_t *grown = mica_http_req_alloc(resp->req, room * sizeof(**list));
        if (!grown)
            return MICA_ENOMEM;
        if (*n)
            memcpy(grown, *list, *n * sizeof(**list));
        *list = grown;
    }
    char *copy = mica_http_req_alloc(resp->req, nl + vl + 2);
    if (!copy)
        return MICA_ENOMEM;
    memcpy(copy, name, nl + 1);
    memcpy(copy + nl + 1, value, vl + 1);
    if (up)
        *upper |= (uint64_t)1 << *n;
    if (mica__http_hop_field(name, nl))
        *hop |= (uint64_t)1 << *n;
    (*list)[(*n)++] = (mica__http_field_t){copy, nl, copy + nl + 1, vl};
    *bytes += nl + vl + 4;
    return 0;
}

int mica_http_resp_header(mica_http_resp_t *resp, const char *name, const char *value)
{
    if (resp->sent)
        return MICA_EINVAL;
    return add_field(resp, &resp->fields, &resp->nfields, &resp->fields_bytes, &resp->fields_upper,
                     &resp->fields_hop, name, value);
}

int mica_http_resp_trailer(mica_http_resp_t *resp, const char *name, const char *value)
{
    if (resp->ended)
        return MICA_EINVAL;
    return add_field(resp, &resp->trailers, &resp->ntrailers, &resp->trailers_bytes,
                     &resp->trailers_upper, &resp->trailers_hop, name, value);
}

const char *mica_http_resp_field(const mica_http_resp_t *resp, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < resp->nfields; i++)
        if (resp->fields[i].name_len == len && strncasecmp(resp->fields[i].name, name, len) == 0)
            return resp->fields[i].value;
    for (size_t i = 0; i < resp->ntrailers; i++)
        if (resp->trailers[i].name_len == len && strncasecmp(resp->trailers[i].name, name, len) == 0)
            return resp->trailers[i].value;
    return NULL;
}

int mica_http_resp_status(const mica_http_resp_t *resp)
{
    return resp->sent || resp->started ? resp->status : 0;
}

/* ---- sending --------------------------------------------------------------------- */

static bool bad_content_type(const char *ct)
{
    return ct && (strchr(ct, '\r') || strchr(ct, '\n'));
}

int mica_http_resp_send(mica_http_resp_t *resp, int status, const char *content_type,
                        const void *body, size_t len)
{
    if (resp->sent || resp->started || status < 200 || status > 599 || bad_content_type(content_type))
        return MICA_EINVAL;
    resp->status = status;
    int rc = resp->req->ops->send(resp, content_type, body, len);
    if (rc == 0)
        resp->sent = resp->ended = true;
    return rc;
}

int mica_http_resp_start(mica_http_resp_t *resp, int status, const char *content_type)
{
    if (resp->sent || resp->started || status < 200 || status > 599 || bad_content_type(content_type))
        return MICA_EINVAL;
    resp->status = status;
    resp->content_type = content_type;
    resp->started = true;
    return 0;
}

int mica_http_resp_write(mica_http_resp_t *resp, const void *data, size_t len)
{
    if (!resp->started || resp->ended)
        return MICA_EINVAL;
    if (len > MICA__HTTP_OUT_CAP_BYTES)
        return MICA_ELIMIT;
    return resp->req->ops->write(resp, data, len);
}

int mica_http_resp_end(mica_http_resp_t *resp)
{
    if (!resp->started || resp->ended)
        return MICA_EINVAL;
    resp->ended = true;
    return resp->req->ops->end(resp);
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

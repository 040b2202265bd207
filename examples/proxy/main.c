/* SPDX-License-Identifier: MIT */
/*
 * proxy: a minimal reverse proxy, the gateway's core. Every request, any
 * method and path, is forwarded to one upstream target through mica's
 * HTTP/1.1 client (keep-alive pools per worker), and the answer comes back.
 *
 *   MICA_PROXY_UPSTREAM   the target: "http://127.0.0.1:8081" (default),
 *                         "https://…" (with MICA_PROXY_CA), "static:///a,b",
 *                         "dns:///name:port"
 *   MICA_PROXY_CA         PEM CA bundle for an https upstream
 *   MICA_LISTEN / PORT    where to listen (default :8080)
 *   MICA_WORKERS, MICA_HTTP_* (this server), MICA_HTTP_CLIENT_* (the client)
 *
 * What it does to a request (RFC 9110 §7.6): hop-by-hop fields are dropped
 * both ways -- Connection and every field it names, Keep-Alive,
 * Proxy-Connection, TE, Transfer-Encoding, Upgrade, Trailer -- as are
 * Content-Length (the client and server frame bodies themselves) and the
 * upstream's Date (ours goes out); the client's address is appended to
 * X-Forwarded-For; Host is passed through. Bodies stream both ways: the
 * request body is read as it arrives and sent on (Content-Length kept when
 * known, else chunked), a response body of unknown or large size is
 * forwarded in parts. An upstream that cannot be reached or answers
 * garbage gets the client a 502; one that times out, a 504.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mica/http.h"
#include "mica/http_client.h"
#include "mica/runtime.h"

#define MAX_FIELDS 64
#define SMALL_BODY 16384 /* bodies of known length up to this go out in one response */

static mica_http_client_t *upstream;

/* Whether `name` is one of the fields a proxy never forwards (RFC 9110 §7.6.1). */
static bool hop_by_hop(const char *name, const char *connection)
{
    static const char *const fixed[] = {"connection", "keep-alive", "proxy-connection", "te",
                                        "transfer-encoding", "upgrade", "trailer",
                                        "content-length"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strcasecmp(name, fixed[i]) == 0)
            return true;
    /* And whatever the Connection field names ("Connection: close, x-secret"). */
    size_t n = strlen(name);
    for (const char *p = connection; p && *p;) {
        p += strspn(p, " \t,");
        size_t k = strcspn(p, " \t,");
        if (k == n && strncasecmp(p, name, n) == 0)
            return true;
        p += k;
    }
    return false;
}

/* The request body, pulled as the upstream request is written. */
static ssize_t read_body(void *buf, size_t len, void *arg)
{
    return mica_http_req_read(arg, buf, len);
}

static int upstream_failed(mica_http_resp_t *resp, int rc)
{
    int status = rc == MICA_ETIMEDOUT ? 504 : 502;
    return mica_http_resp_error(resp, status, status == 504 ? "upstream timed out"
                                                            : "upstream unavailable");
}

static int proxy(mica_http_req_t *req, mica_http_resp_t *resp, void *arg)
{
    /* Request fields: everything but hop-by-hop ones, then X-Forwarded-For. */
    mica_http_header_t fields[MAX_FIELDS];
    size_t n = 0, count = mica_http_req_header_count(req);
    const char *connection = mica_http_req_header(req, "connection");
    const char *xff = NULL;
    for (size_t i = 0; i < count && n < MAX_FIELDS - 1; i++) {
        const char *name, *value;
        mica_http_req_header_at(req, i, &name, &value);
        if (*name == ':' || hop_by_hop(name, connection))
            continue; /* (HTTP/2 pseudo-fields never reach here, but be sure) */
        if (strcasecmp(name, "x-forwarded-for") == 0) {
            xff = value;
            continue;
        }
        fields[n++] = (mica_http_header_t){name, value};
    }
    char peer[64], forwarded[512];
    if (mica_http_req_remote_addr(req, peer, sizeof(peer)) == 0) {
        int k = xff ? snprintf(forwarded, sizeof(forwarded), "%s, %s", xff, peer)
                    : snprintf(forwarded, sizeof(forwarded), "%s", peer);
        if (k > 0 && (size_t)k < sizeof(forwarded))
            fields[n++] = (mica_http_header_t){"X-Forwarded-For", forwarded};
    }

    /* The body: as long as the client said, chunked when it did not know. */
    const char *method = mica_http_req_method(req);
    const char *cl = mica_http_req_header(req, "content-length");
    const char *te = mica_http_req_header(req, "transfer-encoding");
    bool bodyless = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ||
                    strcmp(method, "DELETE") == 0 || strcmp(method, "OPTIONS") == 0;
    const char *path = mica_http_req_path(req), *query = mica_http_req_query(req);
    char *target = (char *)path;
    if (query) { /* the target as received: path "?" query */
        size_t tl = strlen(path) + 1 + strlen(query) + 1;
        if (!(target = mica_http_req_alloc(req, tl)))
            return MICA_ENOMEM;
        snprintf(target, tl, "%s?%s", path, query);
    }
    mica_http_request_t up = {.method = method, .path = target};
    if (cl && strcmp(cl, "0") != 0) {
        up.body_fn = read_body;
        up.body_arg = req;
        up.body_len_hint = strtoll(cl, NULL, 10);
    } else if (te || (!cl && !bodyless && mica_http_req_version(req) == 20)) {
        up.body_fn = read_body;
        up.body_arg = req;
        up.body_len_hint = -1;
    }
    mica_http_call_opts_t opts = {.headers = fields, .nheaders = n};
    mica_http_response_t *r;
    int rc = mica_http_client_open(upstream, mica_http_req_ctx(req), &up, &opts, &r, NULL);
    if (rc != 0)
        return upstream_failed(resp, rc);

    /* Response fields, but hop-by-hop ones, Date and Content-Type (passed apart). */
    int status = mica_http_response_status(r);
    const char *ctype = NULL, *rconn = mica_http_response_header(r, "connection");
    count = mica_http_response_header_count(r);
    for (size_t i = 0; i < count; i++) {
        const char *name, *value;
        mica_http_response_header_at(r, i, &name, &value);
        if (strcasecmp(name, "content-type") == 0) {
            /* The server keeps the pointer until the response ends: copy it
             * into the request's memory, which outlives the upstream response. */
            size_t vlen = strlen(value) + 1;
            char *copy = mica_http_req_alloc(req, vlen);
            if (copy)
                ctype = memcpy(copy, value, vlen);
        }
        else if (!hop_by_hop(name, rconn) && strcasecmp(name, "date") != 0)
            mica_http_resp_header(resp, name, value);
    }
    int64_t len = mica_http_response_content_length(r);
    char body[SMALL_BODY];
    if (len >= 0 && len <= SMALL_BODY) { /* the common case: one response, one write */
        size_t have = 0;
        ssize_t k;
        while ((k = mica_http_response_read(r, body + have, sizeof(body) - have)) > 0)
            have += (size_t)k;
        mica_http_response_free(r);
        if (k < 0)
            return upstream_failed(resp, (int)k);
        return mica_http_resp_send(resp, status, ctype, body, have);
    }
    /* Streamed: the first piece decides between a 502/504 and a response. */
    ssize_t k = mica_http_response_read(r, body, sizeof(body));
    if (k < 0) {
        mica_http_response_free(r);
        return upstream_failed(resp, (int)k);
    }
    rc = mica_http_resp_start(resp, status, ctype);
    while (rc == 0 && k > 0) {
        if ((rc = mica_http_resp_write(resp, body, (size_t)k)) == 0)
            k = mica_http_response_read(r, body, sizeof(body));
        if (k < 0) /* the head went out already: cut the response short */
            rc = (int)k;
    }
    mica_http_response_free(r);
    return rc != 0 ? rc : mica_http_resp_end(resp);
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "proxy: %s: %s\n", what, mica_strerror(rc));
    return 1;
}

int main(void)
{
    mica_runtime_t *rt;
    int rc = mica_runtime_new(&rt, NULL);
    if (rc != 0)
        return fail("runtime", rc);

    const char *target = getenv("MICA_PROXY_UPSTREAM");
    mica_http_client_opts_t co = {.tls_ca_file = getenv("MICA_PROXY_CA")};
    if ((rc = mica_http_client_opts_from_env(&co)) != 0 ||
        (rc = mica_http_client_new(&upstream, rt, target && *target ? target
                                                                     : "http://127.0.0.1:8081",
                                   &co)) != 0)
        return fail("upstream", rc);

    mica_http_server_opts_t opts = {0};
    mica_http_server_t *srv;
    if ((rc = mica_http_server_opts_from_env(&opts)) != 0 ||
        (rc = mica_http_server_new(&srv, &opts)) != 0)
        return fail("server options", rc);
    mica_http_route_fallback(srv, proxy, NULL); /* every method, every path */

    const char *listen = getenv("MICA_LISTEN");
    const char *port = getenv("PORT");
    char addr[64];
    if (!listen || !*listen) {
        snprintf(addr, sizeof(addr), ":%s", port && *port ? port : "8080");
        listen = addr;
    }
    if ((rc = mica_http_server_listen_list(srv, listen)) != 0)
        return fail("bad listen address", rc);
    if ((rc = mica_http_server_attach(srv, rt)) != 0)
        return fail("listen", rc);

    rc = mica_runtime_run(rt);
    mica_http_server_free(srv);
    mica_http_client_free(upstream);
    mica_runtime_free(rt);
    return rc == 0 ? 0 : fail("shutdown", rc);
}

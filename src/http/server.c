/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.1 server: listeners, the accept loop, one coroutine per connection.
 *
 * Every worker has its own SO_REUSEPORT socket per address and accepts on
 * it, so connections never cross threads. A connection coroutine loops:
 * read until a complete head is buffered, frame the body (Content-Length or
 * chunked, decoded in place), route, run the handler, append the response
 * to the output buffer. Output is flushed only when the coroutine is about
 * to wait for input, so a burst of pipelined requests is answered with one
 * write, in order (RFC 9112 §9.3.2).
 *
 * Reads: after a read that did not fill the buffer the socket is drained,
 * so the next read first waits for the fd's edge; in the steady state a
 * keep-alive request costs one read and one write system call.
 *
 * Errors that leave the framing in doubt (anything the parser rejects, a
 * body over the limit, a timeout mid-request) get their 4xx/5xx and then a
 * lingering close: shut down our side, discard what the client still sends
 * for a moment, then close, so the response is not destroyed by an RST.
 *
 * Shutdown: the worker's stop hook cancels the accept loops and the
 * connections idling between requests; a connection that is mid-request
 * finishes it, answers with "Connection: close" and closes.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "http/internal.h"
#include "mica/net.h"

#define IN_INITIAL_BYTES MICA__HTTP_BUF_BYTES
#define MAX_FREE_BUFS 1024
#define OUT_FLUSH_BYTES (64 * 1024)  /* flush pipelined responses past this */
#define OUT_KEEP_BYTES (16 * 1024)   /* shrink the output buffer past this when idle */
#define LINGER_MS 1000
#define LINGER_BYTES (256 * 1024)

/* ---- options ------------------------------------------------------------------ */

static int env_size(const char *name, size_t *field, int64_t max)
{
    int64_t v = (int64_t)*field;
    if (v)
        return 0;
    const char *s = getenv(name);
    if (!s || !*s)
        return 0;
    char *end;
    long long n = strtoll(s, &end, 10);
    if (*end || n <= 0 || n > max) {
        mica__log_error("invalid environment variable", "name", name, "value", s);
        return MICA_EINVAL;
    }
    *field = (size_t)n;
    return 0;
}

static int env_ms(const char *name, int *field)
{
    size_t v = (size_t)*field;
    int rc = env_size(name, &v, 24 * 3600 * 1000);
    *field = (int)v;
    return rc;
}

int mica_http_server_opts_from_env(mica_http_server_opts_t *o)
{
    int rc = 0;
    rc |= env_size("MICA_HTTP_MAX_HEAD_BYTES", &o->max_head_bytes, 1 << 20);
    rc |= env_size("MICA_HTTP_MAX_TARGET_BYTES", &o->max_target_bytes, 1 << 20);
    rc |= env_size("MICA_HTTP_MAX_HEADERS", &o->max_headers, MICA__HTTP_MAX_HEADERS);
    rc |= env_size("MICA_HTTP_MAX_BODY_BYTES", &o->max_body_bytes, (int64_t)1 << 40);
    rc |= env_ms("MICA_HTTP_HEADER_TIMEOUT_MS", &o->header_timeout_ms);
    rc |= env_ms("MICA_HTTP_BODY_TIMEOUT_MS", &o->body_timeout_ms);
    rc |= env_ms("MICA_HTTP_WRITE_TIMEOUT_MS", &o->write_timeout_ms);
    rc |= env_ms("MICA_HTTP_IDLE_TIMEOUT_MS", &o->idle_timeout_ms);
    rc |= env_ms("MICA_HTTP_REQUEST_TIMEOUT_MS", &o->request_timeout_ms);
    rc |= env_size("MICA_GRPC_MAX_MESSAGE_BYTES", &o->max_message_bytes, (int64_t)1 << 30);
    size_t conns = (size_t)o->max_conns;
    rc |= env_size("MICA_HTTP_MAX_CONNS", &conns, 1 << 24);
    o->max_conns = (int)conns;
    return rc ? MICA_EINVAL : 0;
}

int mica_http_server_new(mica_http_server_t **out, const mica_http_server_opts_t *opts)
{
    mica_http_server_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.header_timeout_ms < 0 || o.body_timeout_ms < 0 || o.write_timeout_ms < 0 ||
        o.idle_timeout_ms < 0 || o.request_timeout_ms < 0 || o.max_conns < 0 || o.max_headers > MICA__HTTP_MAX_HEADERS)
        return MICA_EINVAL;
    if (!o.max_head_bytes)
        o.max_head_bytes = 8192;
    if (!o.max_target_bytes)
        o.max_target_bytes = 4096;
    if (!o.max_headers)
        o.max_headers = 64;
    if (!o.max_body_bytes)
        o.max_body_bytes = 1 << 20;
    if (!o.header_timeout_ms)
        o.header_timeout_ms = 5000;
    if (!o.body_timeout_ms)
        o.body_timeout_ms = 5000;
    if (!o.write_timeout_ms)
        o.write_timeout_ms = 5000;
    if (!o.idle_timeout_ms)
        o.idle_timeout_ms = 60000;
    if (!o.max_conns)
        o.max_conns = 100000;
    if (!o.request_timeout_ms)
        o.request_timeout_ms = 30000;
    if (!o.max_message_bytes)
        o.max_message_bytes = 4 << 20;
    if (o.max_head_bytes < 64 || o.max_target_bytes < 1)
        return MICA_EINVAL;

    mica_http_server_t *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return MICA_ENOMEM;
    srv->o = o;
    srv->limits = (mica__http_limits_t){o.max_head_bytes, o.max_target_bytes, o.max_headers};
    srv->stream_max_buffer = o.max_message_bytes + 5; /* one gRPC message and its prefix */
    int rc = mica__router_new(&srv->router);
    if (rc != 0) {
        free(srv);
        return rc;
    }
    *out = srv;
    return 0;
}

int mica_http_route(mica_http_server_t *srv, const char *method, const char *pattern,
                    mica_http_handler_fn fn, void *arg)
{
    return mica__router_add(srv->router, method, pattern, fn, arg);
}

static int add_listener(mica_http_server_t *srv, const char *addr, bool tls)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (srv->fds || mica_net_parse_addr(addr, &ss, &len) != 0)
        return MICA_EINVAL;
    char **addrs = realloc(srv->addrs, (srv->naddrs + 1) * sizeof(*addrs));
    if (!addrs)
        return MICA_ENOMEM;
    srv->addrs = addrs;
    bool *flags = realloc(srv->addr_tls, (srv->naddrs + 1) * sizeof(*flags));
    if (!flags)
        return MICA_ENOMEM;
    srv->addr_tls = flags;
    if (!(addrs[srv->naddrs] = strdup(addr)))
        return MICA_ENOMEM;
    flags[srv->naddrs] = tls;
    srv->naddrs++;
    return 0;
}

int mica_http_server_listen(mica_http_server_t *srv, const char *addr)
{
    return add_listener(srv, addr, false);
}

int mica_http_server_listen_tls(mica_http_server_t *srv, const char *addr)
{
    return add_listener(srv, addr, true);
}

int mica_http_server_tls(mica_http_server_t *srv, const char *cert_file, const char *key_file)
{
    if (srv->fds || !cert_file || !key_file)
        return MICA_EINVAL;
    struct ssl_ctx_st *ctx;
    int rc = mica__tls_server_ctx_new(&ctx, cert_file, key_file);
    if (rc != 0)
        return rc;
    mica__tls_ctx_free(srv->tls);
    srv->tls = ctx;
    return 0;
}

int mica_http_server_tls_client_ca(mica_http_server_t *srv, const char *ca_file)
{
    if (srv->fds || !srv->tls || !ca_file)
        return MICA_EINVAL;
    return mica__tls_server_ctx_verify_clients(srv->tls, ca_file);
}

static int listen_each(mica_http_server_t *srv, const char *list, bool tls);

int mica_http_server_tls_from_env(mica_http_server_t *srv)
{
    const char *list = getenv("MICA_TLS_LISTEN");
    if (!list || !*list)
        return 0;
    const char *cert = getenv("MICA_TLS_CERT"), *key = getenv("MICA_TLS_KEY");
    if (!cert || !*cert || !key || !*key) {
        mica__log_error("MICA_TLS_LISTEN needs MICA_TLS_CERT and MICA_TLS_KEY");
        return MICA_EINVAL;
    }
    int rc = mica_http_server_tls(srv, cert, key);
    const char *client_ca = getenv("MICA_TLS_CLIENT_CA");
    if (rc == 0 && client_ca && *client_ca)
        rc = mica_http_server_tls_client_ca(srv, client_ca);
    if (rc != 0)
        return rc; /* logged with OpenSSL's reason */
    if ((rc = listen_each(srv, list, true)) != 0)
        mica__log_error("invalid environment variable", "name", "MICA_TLS_LISTEN", "value", list);
    return rc;
}

int mica_http_server_listen_list(mica_http_server_t *srv, const char *list)
{
    return listen_each(srv, list, false);
}

static int listen_each(mica_http_server_t *srv, const char *list, bool tls)
{
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        return MICA_ENOMEM;
    int rc = 0, n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        char *end = tok + strlen(tok);
        while (end > tok && end[-1] == ' ')
            *--end = '\0';
        if (*tok) {
            rc = add_listener(srv, tok, tls);
            n++;
        }
    }
    free(copy);
    return rc ? rc : n ? 0 : MICA_EINVAL;
}

int mica_http_server_port(const mica_http_server_t *srv, size_t i)
{
    if (!srv->ports || i >= srv->naddrs)
        return MICA_EINVAL;
    return srv->ports[i];
}

void mica_http_server_free(mica_http_server_t *srv)
{
    if (!srv)
        return;
    for (size_t i = 0; i < srv->naddrs; i++)
        free(srv->addrs[i]);
    free(srv->addrs);
    free(srv->addr_tls);
    mica__tls_ctx_free(srv->tls);
    free(srv->fds);
    free(srv->ports);
    for (int i = 0; srv->workers && i < srv->nworkers; i++) {
        mica__http_worker_t *w = &srv->workers[i];
        while (w->free_bufs) {
            char *b = w->free_bufs;
            memcpy(&w->free_bufs, b, sizeof(char *));
            free(b);
        }
        mica__h2_worker_free(w);
    }
    free(srv->workers);
    mica__router_free(srv->router);
    if (srv->stream_free)
        srv->stream_free(srv->stream_arg);
    free(srv);
}

/* ---- connections ---------------------------------------------------------- */

char *mica__http_buf_get(mica__http_worker_t *w)
{
    char *b = w->free_bufs;
    if (!b)
        return malloc(MICA__HTTP_BUF_BYTES);
    memcpy(&w->free_bufs, b, sizeof(char *));
    w->nfree_bufs--;
    return b;
}

void mica__http_buf_put(mica__http_worker_t *w, char *buf, size_t cap)
{
    if (!buf)
        return;
    if (cap != MICA__HTTP_BUF_BYTES || w->nfree_bufs >= MAX_FREE_BUFS) {
        free(buf);
        return;
    }
    memcpy(buf, &w->free_bufs, sizeof(char *));
    w->free_bufs = buf;
    w->nfree_bufs++;
}

static void release_buffers(mica__http_conn_t *c)
{
    mica__http_buf_put(c->w, c->in, c->in_cap);
    mica__http_buf_put(c->w, c->out, c->out_cap);
    c->in = c->out = NULL;
    c->in_cap = c->in_len = c->out_cap = c->out_len = 0;
    mica__arena_destroy(&c->arena);
}

static void idle_unlink(mica__http_conn_t *c)
{
    mica__http_worker_t *w = c->w;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        w->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        w->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->parked = false;
}

static void conn_close(mica__http_conn_t *c)
{
    mica__http_worker_t *w = c->w;
    if (c->parked)
        idle_unlink(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    if (c->tls.ssl) {
        mica__tls_shutdown(&c->tls);
        mica__tls_free(&c->tls);
    }
    mica_net_close(c->fd);
    release_buffers(c);
    free(c);
}

ssize_t mica__http_conn_recv(mica__http_conn_t *c, void *buf, size_t len, int64_t deadline)
{
    if (c->tls.ssl)
        return mica__tls_read(&c->tls, buf, len, deadline);
    for (;;) {
        /* recv(2), not read(2): the socket call skips the VFS layer, ~2% of
         * a keep-alive request's CPU in docs/benchmarks.md's runs. */
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

int mica__http_conn_write(mica__http_conn_t *c, const void *buf, size_t len, int64_t deadline)
{
    if (c->tls.ssl)
        return mica__tls_write(&c->tls, buf, len, deadline);
    return mica_net_write(c->fd, buf, len, NULL, deadline);
}

/*
 * Reads what is available into c->in. Returns bytes read, 0 at EOF, or an
 * error; MICA_EAGAIN when `may_park` and the socket is drained.
 */
static ssize_t conn_fill(mica__http_conn_t *c, int64_t deadline, bool may_park)
{
    for (;;) {
        if (c->must_wait) {
            int rc = mica_net_wait(c->fd, MICA_NET_READABLE, NULL, deadline);
            if (rc != 0)
                return rc;
        }
        size_t room = c->in_cap - c->in_len;
        ssize_t n = mica__http_conn_recv(c, c->in + c->in_len, room,
                                         mica_deadline_in(c->w->srv->o.write_timeout_ms));
        if (n > 0) {
            /* A short read drained the socket; TLS may still hold records. */
            c->must_wait = c->tls.ssl ? mica__tls_drained(&c->tls) : (size_t)n < room;
            c->in_len += (size_t)n;
            return n;
        }
        if (n != MICA_EAGAIN)
            return n;
        c->must_wait = true;
        if (may_park)
            return MICA_EAGAIN;
    }
}

static int conn_flush(mica__http_conn_t *c)
{
    int rc = 0;
    if (c->out_len)
        rc = mica__http_conn_write(c, c->out, c->out_len,
                                   mica_deadline_in(c->w->srv->o.write_timeout_ms));
    c->out_len = 0;
    if (c->out_cap > OUT_KEEP_BYTES) {
        mica__http_buf_put(c->w, c->out, c->out_cap);
        c->out = NULL;
        c->out_cap = 0;
    }
    return rc;
}

static int grow_in(mica__http_conn_t *c, size_t need)
{
    if (need <= c->in_cap)
        return 0;
    size_t cap = c->in_cap ? c->in_cap : IN_INITIAL_BYTES;
    while (cap < need)
        cap *= 2;
    char *in = !c->in && cap == IN_INITIAL_BYTES ? mica__http_buf_get(c->w) : realloc(c->in, cap);
    if (!in)
        return MICA_ENOMEM;
    c->in = in;
    c->in_cap = cap;
    return 0;
}

/* Flush, half-close, drain the client's unread bytes briefly, then close. */
static void conn_linger_close(mica__http_conn_t *c)
{
    bool flushed = conn_flush(c) == 0;
    if (flushed)
        mica__tls_shutdown(&c->tls); /* TLS: close_notify before the FIN */
    if (flushed && shutdown(c->fd, SHUT_WR) == 0) {
        int64_t deadline = mica_deadline_in(LINGER_MS);
        char sink[4096];
        size_t total = 0;
        while (total < LINGER_BYTES) {
            ssize_t n = mica_net_read(c->fd, sink, sizeof(sink), NULL, deadline);
            if (n <= 0)
                break;
            total += (size_t)n;
        }
    }
    conn_close(c);
}

/* Result of reading one request's head: the parser's length, or why not. */
enum { READ_EOF = -1, READ_QUIET = -2, READ_PARK = -3, READ_H2 = -4 };

/*
 * Buffers a complete head. Returns its length (> 0), READ_EOF / READ_QUIET
 * (close without answering), READ_PARK (idle between requests with the
 * socket drained: wait without a coroutine), or a negative HTTP status.
 */
static int read_head(mica__http_conn_t *c, int64_t *head_deadline)
{
    mica_http_server_t *srv = c->w->srv;
    for (;;) {
        if (c->in_len) {
            /* A new connection that opens with the HTTP/2 preface is h2c. */
            if (c->requests == 0 && c->in[0] == 'P') {
                size_t n = c->in_len < MICA__H2_PREFACE_LEN ? c->in_len : MICA__H2_PREFACE_LEN;
                if (memcmp(c->in, MICA__H2_PREFACE, n) == 0) {
                    if (n == MICA__H2_PREFACE_LEN)
                        return READ_H2;
                    goto more;
                }
            }
            int r = mica__http_parse_head(c->in, c->in_len, &srv->limits, c->head);
            if (r != 0)
                return r;
            if (c->in_len >= c->in_cap) {
                int rc = grow_in(c, c->in_cap * 2);
                if (rc != 0)
                    return -503;
            }
        }
    more:
        if (c->out_len && conn_flush(c) != 0)
            return READ_QUIET;
        int64_t deadline;
        if (c->in_len == 0) {
            if (mica_worker_stopping())
                return READ_QUIET;
            if (c->requests > 0 && c->must_wait)
                return READ_PARK;
            c->idle = true;
            deadline = mica_deadline_in(srv->o.idle_timeout_ms);
            if (*head_deadline < deadline)
                deadline = *head_deadline; /* a new connection's first request */
        } else {
            deadline = *head_deadline;
        }
        ssize_t n = conn_fill(c, deadline, c->in_len == 0 && c->requests > 0);
        if (n == MICA_EAGAIN) { /* TLS found the socket drained between requests */
            c->idle = false;
            return READ_PARK;
        }
        if (c->idle) {
            c->idle = false;
            *head_deadline = mica_deadline_in(srv->o.header_timeout_ms);
        }
        if (n == 0)
            return READ_EOF;
        if (n == MICA_ETIMEDOUT)
            return c->in_len ? -408 : READ_QUIET;
        if (n < 0)
            return READ_QUIET;
    }
}

/*
 * Reads the body framed by c->head after a head of `head_len` bytes.
 * Returns 0 with req.body set and *consumed = bytes of this request in c->in,
 * or a negative HTTP status, or READ_EOF/READ_QUIET.
 */
static int read_body(mica__http_conn_t *c, size_t head_len, size_t *consumed, bool *moved)
{
    mica_http_server_t *srv = c->w->srv;
    mica__http_head_t *h = c->head;
    mica_http_req_t *req = &c->req;
    char *before = c->in;
    *moved = false;

    if (!h->chunked && h->content_length <= 0) {
        req->body = "";
        req->body_len = 0;
        *consumed = head_len;
        return 0;
    }
    if (h->content_length > 0 && (uint64_t)h->content_length > srv->o.max_body_bytes)
        return -413;
    size_t need = h->chunked ? 0 : head_len + (size_t)h->content_length;
    if (h->expect_continue && c->version_minor == 1 &&
        c->in_len < (h->chunked ? head_len + 1 : need)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (mica__http_out_append(c, cont, sizeof(cont) - 1) != 0 || conn_flush(c) != 0)
            return READ_QUIET;
    }

    if (!h->chunked) {
        if (grow_in(c, need) != 0)
            return -503;
        while (c->in_len < need) {
            ssize_t n = conn_fill(c, mica_deadline_in(srv->o.body_timeout_ms), false);
            if (n == 0)
                return READ_EOF;
            if (n == MICA_ETIMEDOUT)
                return -408;
            if (n < 0)
                return READ_QUIET;
        }
        *moved = c->in != before;
        req->body = c->in + head_len;
        req->body_len = (size_t)h->content_length;
        *consumed = need;
        return 0;
    }

    /* Chunked: decode in place, decoded bytes packed right after the head. */
    mica__http_chunked_t d;
    mica__http_chunked_init(&d);
    size_t body_end = head_len, raw = head_len;
    for (;;) {
        size_t len = c->in_len - raw, out = 0;
        int r = len ? mica__http_chunked_decode(&d, c->in + raw, &len, &out) : 0;
        if (r < 0)
            return -400;
        memmove(c->in + body_end, c->in + raw, out);
        body_end += out;
        raw += len;
        if (body_end - head_len > srv->o.max_body_bytes)
            return -413;
        if (r == 1)
            break;
        /* Everything raw was consumed: keep the buffer compact, then read more. */
        c->in_len = body_end;
        raw = body_end;
        if (c->in_cap - c->in_len < 1024 &&
            grow_in(c, c->in_cap * 2 > head_len + srv->o.max_body_bytes + 65536
                           ? head_len + srv->o.max_body_bytes + 65536
                           : c->in_cap * 2) != 0)
            return -503;
        if (c->in_len == c->in_cap)
            return -413;
        ssize_t n = conn_fill(c, mica_deadline_in(srv->o.body_timeout_ms), false);
        if (n == 0)
            return READ_EOF;
        if (n == MICA_ETIMEDOUT)
            return -408;
        if (n < 0)
            return READ_QUIET;
    }
    /* Move what follows (pipelined requests) right after the decoded body. */
    size_t rest = c->in_len - raw;
    memmove(c->in + body_end, c->in + raw, rest);
    c->in_len = body_end + rest;
    *moved = c->in != before;
    req->body = c->in + head_len;
    req->body_len = body_end - head_len;
    *consumed = body_end;
    return 0;
}

/* NUL-terminates the head's strings in place (their delimiters are no longer needed). */
static void terminate_strings(mica__http_conn_t *c)
{
    mica__http_head_t *h = c->head;
    ((char *)h->method_str)[h->method_len] = '\0';
    ((char *)h->target)[h->target_len] = '\0';
    if (h->query)
        ((char *)h->path)[h->path_len] = '\0';
    for (size_t i = 0; i < h->num_headers; i++) {
        ((char *)h->headers[i].name)[h->headers[i].name_len] = '\0';
        ((char *)h->headers[i].value)[h->headers[i].value_len] = '\0';
    }
}

static const char *error_message(int status)
{
    switch (status) {
    case 400: return "malformed request";
    case 408: return "request timed out";
    case 413: return "request body too large";
    case 414: return "request target too long";
    case 431: return "request header fields too large";
    case 501: return "transfer coding not implemented";
    case 505: return "HTTP version not supported";
    default: return mica_http_status_reason(status);
    }
}

static void dispatch(mica__http_conn_t *c)
{
    mica__http_head_t *h = c->head;
    mica_http_req_t *req = &c->req;
    mica_http_resp_t *resp = &c->resp;

    const char *path = h->path;
    size_t path_len = h->path_len;
    if (path_len && path[0] != '/') {
        /* absolute-form (RFC 9112 §3.2.2): route on its path. */
        if (path_len > 7 && (strncasecmp(path, "http://", 7) == 0 ||
                             strncasecmp(path, "https://", 8) == 0)) {
            const char *p = memchr(path + 8, '/', path_len - 8);
            path_len = p ? path_len - (size_t)(p - path) : 0;
            path = p ? p : "/";
            if (!p)
                path_len = 1;
        } else if (!(path_len == 1 && path[0] == '*' && h->method == MICA__HTTP_OPTIONS)) {
            mica__http_send_error(c, 400, "malformed request target");
            return;
        }
    }
    req->method = h->method_str;
    req->path = path;
    req->query = h->query;
    mica__http_call(c->w->srv, req, resp, h->method_len, path_len);
}

void mica__http_call(mica_http_server_t *srv, mica_http_req_t *req, mica_http_resp_t *resp,
                     size_t method_len, size_t path_len)
{
    int r = mica__router_match(srv->router, req->method, method_len, req->path, path_len,
                               &req->match);
    if (r == -404) {
        mica_http_resp_error(resp, 404, "not found");
        return;
    }
    if (r == -405) {
        if (method_len == 7 && memcmp(req->method, "OPTIONS", 7) == 0) {
            mica_http_resp_header(resp, "Allow", req->match.allow);
            mica_http_resp_send(resp, 204, NULL, NULL, 0);
            return;
        }
        mica_http_resp_header(resp, "Allow", req->match.allow);
        mica_http_resp_error(resp, 405, "method not allowed");
        return;
    }
    req->deadline_ms = mica_deadline_in(srv->o.request_timeout_ms);
    int rc = req->match.fn(req, resp, req->match.arg);
    if (req->ctx) {
        if (req->fd >= 0)
            mica_net_cancel_on_hup(req->fd, NULL);
        mica_ctx_free(req->ctx);
        req->ctx = NULL;
    }
    if (resp->sent)
        return;
    if (rc == 0) {
        mica__log_error("handler returned without a response", "path", req->path);
        rc = MICA_EPROTO;
    }
    resp->headers_len = 0;
    int status = mica__http_status_of(rc);
    if (mica_http_resp_error(resp, status, mica_strerror(rc)) != 0) {
        resp->headers_len = 0;
        mica_http_resp_send(resp, 500, NULL, NULL, 0);
    }
}

static void conn_main(void *arg);

/*
 * Parks an idle keep-alive connection: its coroutine ends and its buffers go
 * back to the pool; the next readable edge spawns conn_main() again. Returns
 * false when data is already there (keep going in this coroutine).
 */
static bool park(mica__http_conn_t *c)
{
    release_buffers(c);
    int rc = mica_net_on_readable(c->fd, conn_main, c);
    if (rc == MICA_EAGAIN) {
        c->must_wait = false;
        return false;
    }
    if (rc != 0)
        return false; /* cannot arm: wait in this coroutine instead */
    mica__http_worker_t *w = c->w;
    c->parked = true;
    c->idle_since_ms = mica_now_ms();
    c->idle_prev = w->idle_tail;
    c->idle_next = NULL;
    if (w->idle_tail)
        w->idle_tail->idle_next = c;
    else
        w->idle_head = c;
    w->idle_tail = c;
    return true;
}

static void conn_main(void *arg)
{
    mica__http_conn_t *c = arg;
    mica_http_server_t *srv = c->w->srv;
    mica__http_head_t head;
    c->head = &head;
    if (c->parked) { /* woken by data (or a hang-up) on a parked connection */
        idle_unlink(c);
        c->must_wait = false;
    }
    int64_t head_deadline = mica_deadline_in(srv->o.header_timeout_ms);
    if (c->tls_pending) { /* the handshake counts against the first head's time */
        c->tls_pending = false;
        c->idle = true; /* no request yet: the drain may close it */
        bool h2 = false;
        int rc = mica__tls_accept(&c->tls, srv->tls, c->fd, head_deadline, &h2);
        c->idle = false;
        if (rc != 0) {
            conn_close(c);
            return;
        }
        if (h2) {
            if (grow_in(c, IN_INITIAL_BYTES) == 0)
                mica__h2_serve(c);
            conn_close(c);
            return;
        }
    }

    for (;;) {
        if (!c->in && grow_in(c, IN_INITIAL_BYTES) != 0) {
            conn_close(c);
            return;
        }
        int r = read_head(c, &head_deadline);
        if (r == READ_H2) {
            mica__h2_serve(c);
            conn_close(c);
            return;
        }
        if (r == READ_PARK) {
            if (park(c))
                return;
            if (c->must_wait)
                c->requests = 0; /* could not arm: wait in this coroutine for once */
            continue;
        }
        if (r == READ_EOF || r == READ_QUIET) {
            conn_flush(c);
            conn_close(c);
            return;
        }
        c->version_minor = r > 0 ? c->head->version_minor : 1;
        c->head_only = false;
        c->resp = (mica_http_resp_t){.conn = c, .req = &c->req};
        if (r < 0) {
            mica__http_send_error(c, -r, error_message(-r));
            conn_linger_close(c);
            return;
        }
        size_t head_len = (size_t)r, consumed = 0;
        mica__http_head_t *h = c->head;
        c->close = !h->keep_alive;
        c->head_only = h->method == MICA__HTTP_HEAD;
        c->req = (mica_http_req_t){.conn = c, .fd = c->fd, .arena = &c->arena,
                                   .tls_peer = c->tls.peer};

        /* An expectation other than 100-continue cannot be met (RFC 9110 §10.1.1). */
        if (!h->expect_continue && c->version_minor == 1) {
            for (size_t i = 0; i < h->num_headers; i++)
                if (mica__http_token_eq(h->headers[i].name, h->headers[i].name_len, "expect")) {
                    mica__http_send_error(c, 417, "unsupported expectation");
                    conn_linger_close(c);
                    return;
                }
        }
        bool moved;
        r = read_body(c, head_len, &consumed, &moved);
        if (r == READ_EOF || r == READ_QUIET) {
            conn_close(c);
            return;
        }
        if (r < 0) {
            mica__http_send_error(c, -r, error_message(-r));
            conn_linger_close(c);
            return;
        }
        if (moved) { /* the buffer moved: the head's pointers must be re-derived */
            size_t body_off = (size_t)(c->req.body - c->in);
            mica__http_parse_head(c->in, head_len, &srv->limits, c->head);
            c->req.body = c->in + body_off;
        }
        terminate_strings(c);
        c->req.headers = c->head->headers;
        c->req.nheaders = c->head->num_headers;
        c->w->requests++;
        c->requests++;
        dispatch(c);
        mica__arena_reset(&c->arena);

        /* Keep what follows this request (pipelining) at the front. */
        c->in_len -= consumed;
        if (c->in_len)
            memmove(c->in, c->in + consumed, c->in_len);
        if (c->in_cap > IN_INITIAL_BYTES * 4 && c->in_len <= IN_INITIAL_BYTES) {
            char *in = mica__http_buf_get(c->w);
            if (in) {
                memcpy(in, c->in, c->in_len);
                free(c->in);
                c->in = in;
                c->in_cap = IN_INITIAL_BYTES;
            }
        }
        if (c->close || mica_worker_stopping()) {
            conn_linger_close(c);
            return;
        }
        if (c->out_len >= OUT_FLUSH_BYTES && conn_flush(c) != 0) {
            conn_close(c);
            return;
        }
        head_deadline = mica_deadline_in(srv->o.header_timeout_ms);
    }
}

/* ---- accepting -------------------------------------------------------------- */

static void note_refused(mica__http_worker_t *w, const char *why)
{
    w->refused++;
    int64_t now = mica_now_ms();
    if (now - w->last_refuse_log_ms >= 1000) {
        w->last_refuse_log_ms = now;
        char n[24], id[12];
        snprintf(n, sizeof(n), "%llu", (unsigned long long)w->refused);
        snprintf(id, sizeof(id), "%d", w->id);
        mica__log_warn("connection refused", "reason", why, "worker", id, "refused_total", n);
    }
}

struct acceptor {
    mica__http_worker_t *w;
    int fd;
    bool tls;
};

static void accept_main(void *arg)
{
    struct acceptor a = *(struct acceptor *)arg;
    free(arg);
    mica__http_worker_t *w = a.w;
    while (!mica_worker_stopping()) {
        int fd = accept4(a.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EAGAIN) {
                if (mica_net_wait(a.fd, MICA_NET_READABLE, NULL, MICA_NO_DEADLINE) == MICA_ECANCELED)
                    break;
            } else if (err == EMFILE || err == ENFILE) {
                /* Out of fds: use the spare to take the connection off the queue
                 * and close it, rather than leave clients hanging (libuv's trick). */
                if (w->spare_fd >= 0) {
                    close(w->spare_fd);
                    int c = accept4(a.fd, NULL, NULL, SOCK_CLOEXEC);
                    int cerr = errno;
                    if (c >= 0)
                        close(c);
                    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                    if (c >= 0) {
                        note_refused(w, "out of file descriptors");
                        mica_yield(); /* let the connections we have run (and free fds) */
                    } else if (cerr == EAGAIN) {
                        /* accept(2) reports EMFILE before it looks at the queue:
                         * with the queue empty, wait for a connection instead
                         * of spinning (the edge may be gone: poll now and then). */
                        if (mica_net_wait(a.fd, MICA_NET_READABLE, NULL, mica_deadline_in(100)) ==
                            MICA_ECANCELED)
                            break;
                    }
                } else {
                    note_refused(w, "out of file descriptors");
                    mica_sleep_ms(10);
                }
            } else if (err == ENOBUFS || err == ENOMEM) {
                note_refused(w, "out of memory");
                mica_sleep_ms(10);
            } else if (err != EINTR && err != ECONNABORTED && err != EPROTO) {
                mica__log_error("accept failed", "error", mica_strerror(-err));
                mica_sleep_ms(10);
            }
            continue;
        }
        if (w->nconns >= w->srv->o.max_conns) {
            close(fd);
            note_refused(w, "connection limit");
            continue;
        }
        mica__http_conn_t *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            note_refused(w, "out of memory");
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        c->w = w;
        c->tls_pending = a.tls;
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        w->nconns++;
        w->accepted++;
        if (mica_go(conn_main, c) != 0) {
            conn_close(c);
            note_refused(w, "out of memory");
        }
    }
    mica_net_close(a.fd);
}

/*
 * Closes parked connections idle for longer than idle_timeout_ms. The idle
 * list is in parking order, so only expired entries are ever looked at.
 */
static void reaper_main(void *arg)
{
    mica__http_worker_t *w = arg;
    int64_t timeout = w->srv->o.idle_timeout_ms;
    int64_t every = timeout / 4 < 5 ? 5 : timeout / 4 > 1000 ? 1000 : timeout / 4;
    while (mica_ctx_sleep(w->reaper_ctx, every) == 0) {
        int64_t now = mica_now_ms();
        while (w->idle_head && now - w->idle_head->idle_since_ms >= timeout)
            conn_close(w->idle_head);
    }
    mica_ctx_free(w->reaper_ctx);
    w->reaper_ctx = NULL;
}

static void worker_start(int id, void *arg)
{
    mica_http_server_t *srv = arg;
    mica__http_worker_t *w = &srv->workers[id];
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (mica_ctx_with_cancel(NULL, &w->reaper_ctx) != 0 || mica_go(reaper_main, w) != 0) {
        mica_ctx_free(w->reaper_ctx);
        w->reaper_ctx = NULL;
        mica__log_error("cannot start idle reaper: out of memory");
    }
    for (size_t i = 0; i < srv->naddrs; i++) {
        struct acceptor *a = malloc(sizeof(*a));
        int fd = srv->fds[(size_t)id * srv->naddrs + i];
        if (!a || mica_go(accept_main, a) != 0) {
            free(a);
            mica__log_error("cannot start accept loop: out of memory");
            continue;
        }
        *a = (struct acceptor){w, fd, srv->addr_tls[i]};
    }
}

static void worker_stop(int id, void *arg)
{
    mica_http_server_t *srv = arg;
    mica__http_worker_t *w = &srv->workers[id];
    for (size_t i = 0; i < srv->naddrs; i++)
        mica_net_cancel(srv->fds[(size_t)id * srv->naddrs + i]);
    for (mica__http_conn_t *c = w->conns; c; c = c->next)
        if (c->idle)
            mica_net_cancel(c->fd);
    while (w->idle_head)
        conn_close(w->idle_head);
    mica_ctx_cancel(w->reaper_ctx);
    if (w->spare_fd >= 0) {
        close(w->spare_fd);
        w->spare_fd = -1;
    }
    char id_s[12], acc[24], ref[24], req[24];
    snprintf(id_s, sizeof(id_s), "%d", id);
    snprintf(acc, sizeof(acc), "%llu", (unsigned long long)w->accepted);
    snprintf(ref, sizeof(ref), "%llu", (unsigned long long)w->refused);
    snprintf(req, sizeof(req), "%llu", (unsigned long long)w->requests);
    mica__log_info("http worker draining", "worker", id_s, "accepted", acc, "refused", ref,
                   "requests", req);
}

int mica_http_server_attach(mica_http_server_t *srv, mica_runtime_t *rt)
{
    if (srv->naddrs == 0 || srv->fds)
        return MICA_EINVAL;
    for (size_t i = 0; i < srv->naddrs; i++)
        if (srv->addr_tls[i] && !srv->tls) {
            mica__log_error("TLS listener without a certificate (mica_http_server_tls)", "addr",
                            srv->addrs[i]);
            return MICA_EINVAL;
        }
    int nw = mica_runtime_workers(rt);
    size_t nfds = (size_t)nw * srv->naddrs;
    srv->fds = malloc(nfds * sizeof(int));
    srv->ports = calloc(srv->naddrs, sizeof(int));
    srv->workers = calloc((size_t)nw, sizeof(*srv->workers));
    if (!srv->fds || !srv->ports || !srv->workers)
        goto nomem;
    for (size_t i = 0; i < nfds; i++)
        srv->fds[i] = -1;
    int rc = 0;
    for (size_t i = 0; i < srv->naddrs && rc == 0; i++) {
        char bound[80];
        snprintf(bound, sizeof(bound), "%s", srv->addrs[i]);
        for (int wi = 0; wi < nw; wi++) {
            int fd = mica_net_listen(bound, 4096, 1);
            if (fd < 0) {
                rc = fd;
                mica__log_error("cannot listen", "addr", srv->addrs[i], "error", mica_strerror(fd));
                break;
            }
            srv->fds[(size_t)wi * srv->naddrs + i] = fd;
            if (wi == 0) { /* later sockets bind the port the first one got (":0") */
                struct sockaddr_storage ss;
                socklen_t len = sizeof(ss);
                getsockname(fd, (struct sockaddr *)&ss, &len);
                mica_net_format_addr((struct sockaddr *)&ss, bound, sizeof(bound));
                srv->ports[i] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            }
        }
        if (rc == 0) {
            char workers[12];
            snprintf(workers, sizeof(workers), "%d", nw);
            mica__log_info("listening", "addr", bound, "workers", workers, "tls",
                           srv->addr_tls[i] ? "yes" : "no");
        }
    }
    if (rc == 0) {
        srv->nworkers = nw;
        for (int wi = 0; wi < nw; wi++)
            srv->workers[wi] = (mica__http_worker_t){.srv = srv, .id = wi, .spare_fd = -1};
        if (mica_runtime_on_start(rt, worker_start, srv) != 0 ||
            mica_runtime_on_stop(rt, worker_stop, srv) != 0)
            rc = MICA_ENOMEM;
    }
    if (rc == 0)
        return 0;
    for (size_t i = 0; i < nfds; i++)
        if (srv->fds[i] >= 0)
            close(srv->fds[i]);
    free(srv->fds);
    srv->fds = NULL;
    return rc;
nomem:
    free(srv->fds);
    srv->fds = NULL;
    return MICA_ENOMEM;
}

/* ---- request accessors --------------------------------------------------------- */

mica_ctx_t *mica_http_req_ctx(mica_http_req_t *req)
{
    if (!req->ctx) {
        if (mica_ctx_with_deadline(NULL, req->deadline_ms, &req->ctx) != 0)
            return mica_ctx_background(); /* out of memory: run without a deadline */
        if (req->fd >= 0) /* HTTP/2 streams are cancelled by their connection */
            mica_net_cancel_on_hup(req->fd, req->ctx);
    }
    return req->ctx;
}

const char *mica_http_req_tls_peer(const mica_http_req_t *req)
{
    return req->tls_peer;
}

const char *mica_http_req_method(const mica_http_req_t *req)
{
    return req->method;
}

const char *mica_http_req_path(const mica_http_req_t *req)
{
    return req->path;
}

const char *mica_http_req_query(const mica_http_req_t *req)
{
    return req->query;
}

const char *mica_http_req_header(const mica_http_req_t *req, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == len && strncasecmp(req->headers[i].name, name, len) == 0)
            return req->headers[i].value;
    return NULL;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

const char *mica_http_req_param(const mica_http_req_t *req, const char *name)
{
    const mica__route_match_t *m = &req->match;
    for (size_t i = 0; i < m->nparams; i++) {
        if (strcmp(m->names[i], name) != 0)
            continue;
        if (req->params[i])
            return req->params[i];
        char *out = mica_http_req_alloc((mica_http_req_t *)req, m->value_lens[i] + 1);
        if (!out)
            return NULL;
        size_t n = 0;
        const char *v = m->values[i];
        for (size_t j = 0; j < m->value_lens[i]; j++) {
            int hi, lo;
            /* %00 stays literal: a NUL would silently cut the C string. */
            if (v[j] == '%' && j + 2 < m->value_lens[i] && (hi = hexval(v[j + 1])) >= 0 &&
                (lo = hexval(v[j + 2])) >= 0 && (hi || lo)) {
                out[n++] = (char)(hi * 16 + lo);
                j += 2;
            } else {
                out[n++] = v[j];
            }
        }
        out[n] = '\0';
        ((mica_http_req_t *)req)->params[i] = out;
        return out;
    }
    return NULL;
}

int mica_http_req_param_i64(const mica_http_req_t *req, const char *name, int64_t *out)
{
    const char *v = mica_http_req_param(req, name);
    if (!v)
        return MICA_ENOTFOUND;
    if (!*v || (*v != '-' && (*v < '0' || *v > '9')))
        return MICA_EINVAL;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end)
        return MICA_EINVAL;
    *out = n;
    return 0;
}

const char *mica_http_req_body(const mica_http_req_t *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body ? req->body : "";
}

void *mica_http_req_alloc(mica_http_req_t *req, size_t size)
{
    return mica__arena_alloc(req->arena, size);
}

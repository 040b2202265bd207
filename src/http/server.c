/* SPDX-License-Identifier: MIT */
/*
 * The server object: options, routes, listeners, and per worker the accept
 * loop, the idle reaper and the buffer pool. Connections are conn.c's
 * (HTTP/1.1) and h2.c's (HTTP/2); requests are request.c's.
 *
 * Every worker has its own SO_REUSEPORT socket per address and accepts on
 * it, so connections never cross threads; each connection gets a coroutine
 * (mica__http_conn_main).
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

#include "common/alloc.h"
#include "common/log.h"
#include "http/internal.h"
#include "mica/net.h"

#define MAX_FREE_BUFS 1024
#define CHUNK_SLACK_BYTES (64 * 1024) /* chunk framing an input buffer may hold beyond the body */

/* ---- options ------------------------------------------------------------------ */

/* The server's settings, declared once: what mica_config_load() and
 * mica_http_server_opts_from_env() read, and what --help lists. The defaults
 * shown are the ones mica_http_server_new() applies to zero fields. */
size_t mica_http_server_settings(mica_http_server_opts_t *o, mica_http_tls_settings_t *tls,
                                 mica_setting_t *out, size_t cap)
{
    const mica_setting_t all[] = {
        {"http_max_head_bytes", MICA_SETTING_SIZE, "16384", "request line + fields, beyond: 431",
         &o->max_head_bytes, 64, 1 << 20, NULL},
        {"http_max_target_bytes", MICA_SETTING_SIZE, "8192", "request target, beyond: 414",
         &o->max_target_bytes, 1, 1 << 20, NULL},
        {"http_max_headers", MICA_SETTING_COUNT, "64", "fields per request, beyond: 431",
         &o->max_headers, 1, MICA__HTTP_MAX_HEADERS, NULL},
        {"http_max_body_bytes", MICA_SETTING_SIZE, "1MiB", "decoded request body, beyond: 413",
         &o->max_body_bytes, 1, (int64_t)1 << 40, NULL},
        {"http_header_timeout_ms", MICA_SETTING_MS, "5000", "a request head must arrive within this (408)",
         &o->header_timeout_ms, 1, 24 * 3600 * 1000, NULL},
        {"http_body_timeout_ms", MICA_SETTING_MS, "5000", "longest pause while a body arrives (408)",
         &o->body_timeout_ms, 1, 24 * 3600 * 1000, NULL},
        {"http_write_timeout_ms", MICA_SETTING_MS, "5000", "a response flush must finish within this",
         &o->write_timeout_ms, 1, 24 * 3600 * 1000, NULL},
        {"http_idle_timeout_ms", MICA_SETTING_MS, "60000", "idle keep-alive connections close after this",
         &o->idle_timeout_ms, 1, 24 * 3600 * 1000, NULL},
        {"http_request_timeout_ms", MICA_SETTING_MS, "30000", "deadline of a handler's request ctx",
         &o->request_timeout_ms, 1, 24 * 3600 * 1000, NULL},
        {"http_max_conns", MICA_SETTING_INT, "100000", "open connections per worker; more are refused",
         &o->max_conns, 1, 1 << 24, NULL},
    };
    const mica_setting_t tls_all[] = {
        {"tls_listen", MICA_SETTING_STR, NULL, "TLS listen addresses, comma-separated (ALPN h2, http/1.1)",
         tls ? (void *)&tls->listen : NULL, 0, 0, NULL},
        {"tls_cert", MICA_SETTING_STR, NULL, "PEM certificate chain of the TLS listeners",
         tls ? (void *)&tls->cert : NULL, 0, 0, NULL},
        {"tls_key", MICA_SETTING_STR, NULL, "PEM private key of the TLS listeners",
         tls ? (void *)&tls->key : NULL, 0, 0, NULL},
        {"tls_client_ca", MICA_SETTING_STR, NULL, "PEM CA bundle client certificates must chain to (mTLS)",
         tls ? (void *)&tls->client_ca : NULL, 0, 0, NULL},
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++, n++)
        if (n < cap)
            out[n] = all[i];
    for (size_t i = 0; tls && i < sizeof(tls_all) / sizeof(tls_all[0]); i++, n++)
        if (n < cap)
            out[n] = tls_all[i];
    return n;
}

int mica_http_server_opts_from_env(mica_http_server_opts_t *o)
{
    /* Read into a copy, then fill only the fields the caller left zero. */
    mica_http_server_opts_t env = *o;
    mica_setting_t set[MICA_HTTP_SETTINGS];
    size_t n = mica_http_server_settings(&env, NULL, set, MICA_HTTP_SETTINGS);
    if (mica_config_from_env(set, n) != 0)
        return MICA_EINVAL;
#define FILL(f)                                                                                    \
    if (!o->f)                                                                                     \
        o->f = env.f;
    FILL(max_head_bytes) FILL(max_target_bytes) FILL(max_headers) FILL(max_body_bytes)
    FILL(header_timeout_ms) FILL(body_timeout_ms) FILL(write_timeout_ms) FILL(idle_timeout_ms)
    FILL(request_timeout_ms) FILL(max_conns)
#undef FILL
    return 0;
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
        o.max_head_bytes = 16384;
    if (!o.max_target_bytes)
        o.max_target_bytes = 8192; /* RFC 9110 §4.1: at least 8000 octets */
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
    if (o.max_head_bytes < 64 || o.max_target_bytes < 1)
        return MICA_EINVAL;

    mica_http_server_t *srv = mica__calloc(1, sizeof(*srv));
    if (!srv)
        return MICA_ENOMEM;
    srv->o = o;
    srv->limits = (mica__http_limits_t){o.max_head_bytes, o.max_target_bytes, o.max_headers};
    int rc = mica__router_new(&srv->router);
    if (rc != 0) {
        mica__free(srv);
        return rc;
    }
    *out = srv;
    return 0;
}

int mica_http_route(mica_http_server_t *srv, const char *method, const char *pattern,
                    mica_http_handler_fn fn, void *arg)
{
    if (srv->fds)
        return MICA_EINVAL;
    return mica__router_add(srv->router, method, pattern, fn, arg, false, 0);
}

int mica_http_route_stream(mica_http_server_t *srv, const char *method, const char *pattern,
                           size_t max_buffer_bytes, mica_http_handler_fn fn, void *arg)
{
    if (srv->fds)
        return MICA_EINVAL;
    size_t max = max_buffer_bytes ? max_buffer_bytes : srv->o.max_body_bytes;
    int rc = mica__router_add(srv->router, method, pattern, fn, arg, true, max);
    if (rc == 0 && max > srv->max_stream_buffer)
        srv->max_stream_buffer = max;
    return rc;
}

int mica_http_route_fallback(mica_http_server_t *srv, mica_http_handler_fn fn, void *arg)
{
    if (!fn || srv->fds)
        return MICA_EINVAL;
    srv->fallback = (mica__route_t){.fn = fn, .arg = arg, .stream = true,
                                    .max_buffer = srv->o.max_body_bytes};
    return 0;
}

static int add_listener(mica_http_server_t *srv, const char *addr, bool tls)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (srv->fds || mica_net_parse_addr(addr, &ss, &len) != 0)
        return MICA_EINVAL;
    char **addrs = mica__realloc(srv->addrs, (srv->naddrs + 1) * sizeof(*addrs));
    if (!addrs)
        return MICA_ENOMEM;
    srv->addrs = addrs;
    bool *flags = mica__realloc(srv->addr_tls, (srv->naddrs + 1) * sizeof(*flags));
    if (!flags)
        return MICA_ENOMEM;
    srv->addr_tls = flags;
    if (!(addrs[srv->naddrs] = mica__strdup(addr)))
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

int mica_http_server_tls_apply(mica_http_server_t *srv, const mica_http_tls_settings_t *tls)
{
    if (!tls || !tls->listen || !*tls->listen)
        return 0;
    if (!tls->cert || !*tls->cert || !tls->key || !*tls->key) {
        mica__log_error("MICA_TLS_LISTEN (tls_listen) needs MICA_TLS_CERT and MICA_TLS_KEY (tls_cert, tls_key)");
        return MICA_EINVAL;
    }
    int rc = mica_http_server_tls(srv, tls->cert, tls->key);
    if (rc == 0 && tls->client_ca && *tls->client_ca)
        rc = mica_http_server_tls_client_ca(srv, tls->client_ca);
    if (rc != 0)
        return rc; /* logged with OpenSSL's reason */
    if ((rc = listen_each(srv, tls->listen, true)) != 0)
        mica__log_error("invalid TLS listen list", "tls_listen", tls->listen);
    return rc;
}

int mica_http_server_tls_from_env(mica_http_server_t *srv)
{
    mica_http_server_opts_t unused = {0};
    mica_http_tls_settings_t tls = {0};
    mica_setting_t set[MICA_HTTP_SETTINGS];
    size_t n = mica_http_server_settings(&unused, &tls, set, MICA_HTTP_SETTINGS);
    /* Only the TLS entries: the limits are mica_http_server_opts_from_env()'s. */
    if (mica_config_from_env(set + (n - 4), 4) != 0)
        return MICA_EINVAL;
    return mica_http_server_tls_apply(srv, &tls);
}

int mica_http_server_listen_list(mica_http_server_t *srv, const char *list)
{
    return listen_each(srv, list, false);
}

static int listen_each(mica_http_server_t *srv, const char *list, bool tls)
{
    char *copy = mica__strdup(list), *save = NULL;
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
    mica__free(copy);
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
        mica__free(srv->addrs[i]);
    mica__free(srv->addrs);
    mica__free(srv->addr_tls);
    mica__tls_ctx_free(srv->tls);
    mica__free(srv->fds);
    mica__free(srv->ports);
    for (int i = 0; srv->workers && i < srv->nworkers; i++) {
        mica__http_worker_t *w = &srv->workers[i];
        while (w->free_bufs) {
            char *b = w->free_bufs;
            memcpy(&w->free_bufs, b, sizeof(char *));
            mica__free(b);
        }
        mica__h2_worker_free(w);
    }
    mica__free(srv->workers);
    mica__router_free(srv->router);
    mica__free(srv->mw);
    mica__free(srv->obs);
    mica__free(srv);
}

/* ---- the buffer pool ----------------------------------------------------------- */

char *mica__http_buf_get(mica__http_worker_t *w)
{
    char *b = w->free_bufs;
    if (!b)
        return mica__malloc(MICA__HTTP_BUF_BYTES);
    memcpy(&w->free_bufs, b, sizeof(char *));
    w->nfree_bufs--;
    return b;
}

void mica__http_buf_put(mica__http_worker_t *w, char *buf, size_t cap)
{
    if (!buf)
        return;
    if (cap != MICA__HTTP_BUF_BYTES || w->nfree_bufs >= MAX_FREE_BUFS) {
        mica__free(buf);
        return;
    }
    memcpy(buf, &w->free_bufs, sizeof(char *));
    w->free_bufs = buf;
    w->nfree_bufs++;
}

void mica__http_buf_release(mica__http_worker_t *w, mica__buf_t *b)
{
    mica__http_buf_put(w, b->data, b->cap);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

int mica__http_buf_ready(mica__http_worker_t *w, mica__buf_t *b)
{
    if (b->data)
        return 0;
    if (b->max < MICA__HTTP_BUF_BYTES) /* a small cap: let the buffer grow to it alone */
        return 0;
    if (!(b->data = mica__http_buf_get(w)))
        return MICA_ENOMEM;
    b->off = b->len = 0;
    b->cap = MICA__HTTP_BUF_BYTES;
    return 0;
}

/* ---- accepting -------------------------------------------------------------- */

static void note_refused(mica__http_worker_t *w, const char *why)
{
    MICA__HTTP_COUNT(&w->refused, 1);
    int64_t now = mica_now_ms();
    if (now - w->last_refuse_log_ms >= 1000) {
        w->last_refuse_log_ms = now;
        char n[24], id[12];
        snprintf(n, sizeof(n), "%llu", (unsigned long long)MICA__HTTP_GET(&w->refused));
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
    mica__free(arg);
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
        if (MICA__HTTP_GET(&w->nconns) >= w->srv->o.max_conns) {
            close(fd);
            note_refused(w, "connection limit");
            continue;
        }
        mica__http_conn_t *c = mica__calloc(1, sizeof(*c));
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
        mica_http_server_t *srv = w->srv;
        size_t body = srv->o.max_body_bytes > srv->max_stream_buffer ? srv->o.max_body_bytes
                                                                      : srv->max_stream_buffer;
        mica__buf_init(&c->in, srv->o.max_head_bytes + body + CHUNK_SLACK_BYTES);
        mica__buf_init(&c->out, MICA__HTTP_OUT_CAP_BYTES);
        mica__list_init(&c->idle_link);
        mica__list_push_front(&w->conns, &c->link);
        MICA__HTTP_COUNT(&w->nconns, 1);
        MICA__HTTP_COUNT(&w->accepted, 1);
        if (mica_go(mica__http_conn_main, c) != 0) {
            mica__http_conn_close(c);
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
        mica__list_t *n;
        while ((n = mica__list_first(&w->idle))) {
            mica__http_conn_t *c = mica__list_entry(n, mica__http_conn_t, idle_link);
            if (now - c->idle_since_ms < timeout)
                break;
            mica__http_conn_close(c);
        }
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
        struct acceptor *a = mica__malloc(sizeof(*a));
        int fd = srv->fds[(size_t)id * srv->naddrs + i];
        if (!a || mica_go(accept_main, a) != 0) {
            mica__free(a);
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
    mica__list_foreach(n, &w->conns) {
        mica__http_conn_t *c = mica__list_entry(n, mica__http_conn_t, link);
        if (c->idle)
            mica_net_cancel(c->fd);
    }
    mica__list_t *n;
    while ((n = mica__list_first(&w->idle)))
        mica__http_conn_close(mica__list_entry(n, mica__http_conn_t, idle_link));
    mica_ctx_cancel(w->reaper_ctx);
    if (w->spare_fd >= 0) {
        close(w->spare_fd);
        w->spare_fd = -1;
    }
    char id_s[12], acc[24], ref[24], req[24];
    snprintf(id_s, sizeof(id_s), "%d", id);
    snprintf(acc, sizeof(acc), "%llu", (unsigned long long)MICA__HTTP_GET(&w->accepted));
    snprintf(ref, sizeof(ref), "%llu", (unsigned long long)MICA__HTTP_GET(&w->refused));
    snprintf(req, sizeof(req), "%llu", (unsigned long long)MICA__HTTP_GET(&w->requests));
    mica__log_info("http worker draining", "worker", id_s, "accepted", acc, "refused", ref,
                   "requests", req);
}

void mica_http_server_stats(const mica_http_server_t *srv, mica_http_server_stats_t *out)
{
    *out = (mica_http_server_stats_t){0};
    for (int i = 0; i < srv->nworkers; i++) {
        mica__http_worker_t *w = &srv->workers[i];
        int open = MICA__HTTP_GET(&w->nconns);
        out->open_conns += open > 0 ? (uint64_t)open : 0;
        out->accepted += MICA__HTTP_GET(&w->accepted);
        out->refused += MICA__HTTP_GET(&w->refused);
        out->requests += MICA__HTTP_GET(&w->requests);
    }
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
    srv->fds = mica__malloc(nfds * sizeof(int));
    srv->ports = mica__calloc(srv->naddrs, sizeof(int));
    srv->workers = mica__calloc((size_t)nw, sizeof(*srv->workers));
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
        for (int wi = 0; wi < nw; wi++) {
            mica__http_worker_t *w = &srv->workers[wi];
            *w = (mica__http_worker_t){.srv = srv, .id = wi, .spare_fd = -1};
            mica__list_init(&w->conns);
            mica__list_init(&w->idle);
            mica__list_init(&w->h2_spare);
        }
        if (mica_runtime_on_start(rt, worker_start, srv) != 0 ||
            mica_runtime_on_stop(rt, worker_stop, srv) != 0)
            rc = MICA_ENOMEM;
    }
    if (rc == 0)
        return 0;
    for (size_t i = 0; i < nfds; i++)
        if (srv->fds[i] >= 0)
            close(srv->fds[i]);
    mica__free(srv->fds);
    srv->fds = NULL;
    return rc;
nomem:
    mica__free(srv->fds);
    srv->fds = NULL;
    return MICA_ENOMEM;
}


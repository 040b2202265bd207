/* SPDX-License-Identifier: MIT */
/*
 * Built-in metrics of HTTP servers, gRPC servers and gRPC clients, through
 * the seams below us: an HTTP completion observer and a middleware, and a
 * gRPC client interceptor. Nothing in src/http or src/grpc knows about it.
 *
 * A request's series depends on its labels (method, route, status; gRPC
 * service, method, code). Resolving labels through the registry takes its
 * lock, so each thread keeps a small cache from a request's *identity* --
 * the route's pattern pointer (stable for the server's life), the method's
 * index among the standard ones, the status -- to the series handles; a
 * request costs one hash probe, then the updates. The key also holds the
 * instrumented server's serial number, so a freed server's pattern
 * addresses reused by a later server can never hit a stale entry.
 *
 * Route patterns come from the router, never from the path, so the
 * number of series is bounded by the routes times methods times statuses;
 * requests no route matched share http_route="unmatched". Methods outside
 * the standard nine are "_OTHER" (OTel's rule).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "observe/internal.h"

#define SIZE_NBUCKETS 10
static const double size_buckets[SIZE_NBUCKETS] = {64,    256,    1024,    4096,    16384,
                                                   65536, 262144, 1048576, 4194304, 16777216};
/* go-grpc-prometheus's (client_golang's DefBuckets). */
#define GRPC_NBUCKETS 11
static const double grpc_buckets[GRPC_NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                   0.5,   1,    2.5,   5,    10};

static const char *const methods[] = {"_OTHER", "GET",     "HEAD",    "POST",  "PUT",
                                      "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"};
static const char *const kinds[] = {"unary", "server_stream", "client_stream", "bidi_stream"};

/* The families, in the default registry; made once. */
static struct {
    mica_histogram_vec_t *duration, *req_size, *resp_size;
    mica_gauge_t *active;
    mica_counter_vec_t *srv_handled, *cli_started, *cli_handled;
    mica_histogram_vec_t *srv_seconds, *cli_seconds;
    mica_counter_t *unresolved; /* requests whose series could not be made */
    int err;
} fam;
static pthread_once_t fam_once = PTHREAD_ONCE_INIT;

static void make_families(void)
{
    const char *http_labels[] = {"http_request_method", "http_route", "http_response_status_code"};
    const char *grpc_labels[] = {"grpc_type", "grpc_service", "grpc_method", "grpc_code"};
    mica_metrics_t *reg = mica_metrics_default();
    int rc = mica_histogram_vec_new(&fam.duration, reg, "http_server_request_duration_seconds",
                                    "Duration of HTTP server requests.",
                                    MICA_METRICS_DURATION_BUCKETS, MICA_METRICS_DURATION_NBUCKETS,
                                    http_labels, 3);
    if (rc == 0)
        rc = mica_histogram_vec_new(&fam.req_size, reg, "http_server_request_size_bytes",
                                    "Size of HTTP server requests: head and body as received.",
                                    size_buckets, SIZE_NBUCKETS, http_labels, 3);
    if (rc == 0)
        rc = mica_histogram_vec_new(&fam.resp_size, reg, "http_server_response_size_bytes",
                                    "Size of HTTP server responses: head, body and trailers.",
                                    size_buckets, SIZE_NBUCKETS, http_labels, 3);
    if (rc == 0)
        rc = mica_gauge_new(&fam.active, reg, "http_server_active_requests",
                            "HTTP server requests being handled.");
    if (rc == 0)
        rc = mica_counter_vec_new(&fam.srv_handled, reg, "grpc_server_handled_total",
                                  "RPCs completed on the server, whatever their status.",
                                  grpc_labels, 4);
    if (rc == 0)
        rc = mica_histogram_vec_new(&fam.srv_seconds, reg, "grpc_server_handling_seconds",
                                    "Time from a server RPC's start to its status.", grpc_buckets,
                                    GRPC_NBUCKETS, grpc_labels, 3);
    if (rc == 0)
        rc = mica_counter_vec_new(&fam.cli_started, reg, "grpc_client_started_total",
                                  "RPCs started by the client.", grpc_labels, 3);
    if (rc == 0)
        rc = mica_counter_vec_new(&fam.cli_handled, reg, "grpc_client_handled_total",
                                  "RPCs completed by the client, whatever their status.",
                                  grpc_labels, 4);
    if (rc == 0)
        rc = mica_histogram_vec_new(&fam.cli_seconds, reg, "grpc_client_handling_seconds",
                                    "Time from a client RPC's start to its status.", grpc_buckets,
                                    GRPC_NBUCKETS, grpc_labels, 3);
    if (rc == 0)
        rc = mica_counter_new(&fam.unresolved, reg, "mica_observe_unrecorded_total",
                              "Requests and calls left out of the metrics (no memory, or a "
                              "vector at MICA_METRICS_MAX_SERIES).");
    fam.err = rc;
}

static int families(void)
{
    pthread_once(&fam_once, make_families);
    return fam.err;
}

/* ---- instrumented servers ----------------------------------------------------------- */

typedef struct server_state {
    struct server_state *next;
    uint32_t serial;
    _Atomic(mica_http_server_t *) srv; /* NULL once detached: scrapes leave it alone */
    mica_grpc_server_t *grpc;          /* its gRPC server, if instrumented */
    char port[12];
} server_state_t;

static pthread_mutex_t servers_lock = PTHREAD_MUTEX_INITIALIZER;
static server_state_t *servers; /* every instrumented server, never freed */
static uint32_t next_serial = 1;

/* ---- the per-thread cache ------------------------------------------------------------ */

enum { TAG_HTTP = 1, TAG_GRPC_SERVER = 2, TAG_GRPC_CLIENT = 3, TAG_GRPC_STARTED = 4 };

typedef struct centry {
    const void *key; /* route pattern / method descriptor; NULL: empty */
    uint64_t k2;     /* serial, tag, method, status or code */
    void *v[3];
} centry_t;

typedef struct tcache {
    centry_t *e;
    size_t cap, n; /* cap a power of two */
} tcache_t;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static _Thread_local tcache_t *cache;

static void cache_free(void *p)
{
    tcache_t *c = p;
    mica__free(c->e);
    mica__free(c);
}

static void make_cache_key(void)
{
    pthread_key_create(&cache_key, cache_free);
}

static inline size_t slot_of(const void *key, uint64_t k2, size_t mask)
{
    uint64_t h = ((uint64_t)(uintptr_t)key ^ (k2 * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
    return (size_t)(h >> 32) & mask;
}

static inline centry_t *cache_find(const void *key, uint64_t k2)
{
    tcache_t *c = cache;
    if (!c || !c->cap)
        return NULL;
    size_t mask = c->cap - 1;
    for (size_t i = slot_of(key, k2, mask);; i = (i + 1) & mask) {
        centry_t *e = &c->e[i];
        if (e->key == key && e->k2 == k2)
            return e;
        if (!e->key)
            return NULL;
    }
}

static centry_t *cache_put(const void *key, uint64_t k2, void *v0, void *v1, void *v2)
{
    tcache_t *c = cache;
    if (!c) {
        pthread_once(&cache_once, make_cache_key);
        if (!(c = mica__calloc(1, sizeof(*c))))
            return NULL;
        cache = c;
        pthread_setspecific(cache_key, c);
    }
    if ((c->n + 1) * 2 > c->cap) { /* at most half full */
        size_t cap = c->cap ? c->cap * 2 : 64;
        centry_t *e = mica__calloc(cap, sizeof(*e));
        if (!e)
            return NULL;
        for (size_t i = 0; i < c->cap; i++) {
            if (!c->e[i].key)
                continue;
            size_t j = slot_of(c->e[i].key, c->e[i].k2, cap - 1);
            while (e[j].key)
                j = (j + 1) & (cap - 1);
            e[j] = c->e[i];
        }
        mica__free(c->e);
        c->e = e;
        c->cap = cap;
    }
    size_t mask = c->cap - 1, i = slot_of(key, k2, mask);
    while (c->e[i].key)
        i = (i + 1) & mask;
    c->e[i] = (centry_t){key, k2, {v0, v1, v2}};
    c->n++;
    return &c->e[i];
}

static const char unmatched[] = "unmatched"; /* the key of requests without a route */

static int method_index(const char *m)
{
    if (m[0] == 'G' && m[1] == 'E' && m[2] == 'T' && !m[3]) /* most requests: no call */
        return 1;
    switch (m[0]) {
    case 'G': return strcmp(m, "GET") == 0 ? 1 : 0;
    case 'H': return strcmp(m, "HEAD") == 0 ? 2 : 0;
    case 'P':
        return strcmp(m, "POST") == 0 ? 3 : strcmp(m, "PUT") == 0 ? 4 : strcmp(m, "PATCH") == 0 ? 9 : 0;
    case 'D': return strcmp(m, "DELETE") == 0 ? 5 : 0;
    case 'C': return strcmp(m, "CONNECT") == 0 ? 6 : 0;
    case 'O': return strcmp(m, "OPTIONS") == 0 ? 7 : 0;
    case 'T': return strcmp(m, "TRACE") == 0 ? 8 : 0;
    default: return 0;
    }
}

/* "/pkg.Service/Method" -> service and method, copied into buf. */
static bool split_path(const char *path, char *buf, size_t cap, const char **svc, const char **m)
{
    const char *slash = path && path[0] == '/' ? strchr(path + 1, '/') : NULL;
    if (!slash || strlen(path) >= cap)
        return false;
    memcpy(buf, path + 1, strlen(path));
    buf[slash - path - 1] = '\0';
    *svc = buf;
    *m = buf + (slash - path);
    return true;
}

/* ---- HTTP and gRPC servers: the observer --------------------------------------------- */

static void record_grpc_server(server_state_t *st, const mica_http_completion_t *c, int code)
{
    uint64_t k2 = (uint64_t)st->serial << 32 | (uint64_t)TAG_GRPC_SERVER << 24 | (uint64_t)code;
    const void *key = c->route ? (const void *)c->route : unmatched;
    centry_t *e = cache_find(key, k2);
    if (!e) {
        mica_grpc_kind_t kind;
        char buf[512];
        const char *svc = "unknown", *m = "unknown", *type = "unknown";
        if (c->route && split_path(c->route, buf, sizeof(buf), &svc, &m) &&
            mica_grpc_server_method_kind(st->grpc, c->route, &kind) == 0)
            type = kinds[kind];
        const char *v[] = {type, svc, m, mica_grpc_code_name(code)};
        mica_counter_t *handled;
        mica_histogram_t *secs;
        if (mica_counter_vec_with(fam.srv_handled, v, &handled) != 0 ||
            mica_histogram_vec_with(fam.srv_seconds, v, &secs) != 0 ||
            !(e = cache_put(key, k2, handled, secs, NULL))) {
            mica_counter_inc(fam.unresolved);
            return;
        }
    }
    mica_counter_inc(e->v[0]);
    mica_histogram_observe(e->v[1], (double)c->duration_us / 1e6);
}

static void access_line(const mica_http_completion_t *c, int grpc_code)
{
    mica_log_field_t f[10];
    size_t n = 0;
    f[n++] = MICA_LOG_STR("method", c->method);
    f[n++] = MICA_LOG_STR("path", c->path);
    f[n++] = MICA_LOG_STR("route", c->route ? c->route : "");
    f[n++] = MICA_LOG_INT("status", c->status);
    if (grpc_code >= 0)
        f[n++] = MICA_LOG_INT("grpc_code", grpc_code);
    f[n++] = MICA_LOG_STR("proto", c->http_version == 20   ? "HTTP/2"
                                   : c->http_version == 10 ? "HTTP/1.0"
                                                           : "HTTP/1.1");
    f[n++] = MICA_LOG_INT("bytes_in", c->bytes_in);
    f[n++] = MICA_LOG_INT("bytes_out", c->bytes_out);
    f[n++] = MICA_LOG_FLOAT("duration_ms", (double)c->duration_us / 1000.0);
    mica_ctx_t *ctx = c->req && mica_log_has_trace() ? mica_http_req_ctx(c->req) : NULL;
    char line[MICA_LOG_LINE_MAX + 1];
    size_t len = mica_log_format(line, sizeof(line), ctx, MICA_LOG_INFO, "request", f, n);
    if (len)
        mica__logw_push(MICA__LOG_ACCESS, MICA_LOG_INFO, line, len);
}

static void observer(const mica_http_completion_t *c, void *arg)
{
    server_state_t *st = arg;
    int grpc_code = -1;
    if (st->grpc && c->method[0] == 'P' && (grpc_code = mica_grpc_resp_code(c->resp)) >= 0) {
        record_grpc_server(st, c, grpc_code);
    } else {
        int mi = method_index(c->method);
        int status = c->status >= 0 && c->status < 1000 ? c->status : 0;
        uint64_t k2 = (uint64_t)st->serial << 32 | (uint64_t)TAG_HTTP << 24 | (uint64_t)mi << 16 |
                      (uint64_t)status;
        const void *key = c->route ? (const void *)c->route : unmatched;
        centry_t *e = cache_find(key, k2);
        if (!e) {
            char code[12];
            snprintf(code, sizeof(code), "%d", status);
            const char *v[] = {methods[mi], c->route ? c->route : unmatched, code};
            mica_histogram_t *d, *rq, *rs;
            if (mica_histogram_vec_with(fam.duration, v, &d) != 0 ||
                mica_histogram_vec_with(fam.req_size, v, &rq) != 0 ||
                mica_histogram_vec_with(fam.resp_size, v, &rs) != 0 ||
                !(e = cache_put(key, k2, d, rq, rs)))
                mica_counter_inc(fam.unresolved);
        }
        if (e) {
            mica_histogram_observe(e->v[0], (double)c->duration_us / 1e6);
            mica_histogram_observe(e->v[1], (double)c->bytes_in);
            mica_histogram_observe(e->v[2], (double)c->bytes_out);
        }
    }
    if (mica__logw_access_on())
        access_line(c, grpc_code);
}

static int in_flight(mica_http_req_t *req, mica_http_resp_t *resp, mica_http_next_t *next,
                     void *arg)
{
    mica_gauge_inc(fam.active);
    int rc = mica_http_next(next);
    mica_gauge_dec(fam.active);
    return rc;
}

static server_state_t *find_state(mica_http_server_t *srv)
{
    for (server_state_t *s = servers; s; s = s->next)
        if (atomic_load(&s->srv) == srv)
            return s;
    return NULL;
}

static int instrument(mica_http_server_t *srv, server_state_t **out)
{
    int rc = families();
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&servers_lock);
    server_state_t *st = find_state(srv);
    if (st) {
        pthread_mutex_unlock(&servers_lock);
        *out = st;
        return MICA_EEXIST;
    }
    st = mica__calloc(1, sizeof(*st));
    if (!st) {
        pthread_mutex_unlock(&servers_lock);
        return MICA_ENOMEM;
    }
    st->serial = next_serial++;
    atomic_store(&st->srv, srv);
    if ((rc = mica_http_use(srv, in_flight, st)) != 0 ||
        (rc = mica_http_observe(srv, observer, st)) != 0) {
        /* After a failed observe the middleware stays: harmless, it only counts. */
        mica__free(st);
        pthread_mutex_unlock(&servers_lock);
        return rc;
    }
    st->next = servers;
    servers = st;
    pthread_mutex_unlock(&servers_lock);
    *out = st;
    return 0;
}

int mica_observe_http_server(mica_http_server_t *srv)
{
    server_state_t *st;
    int rc = instrument(srv, &st);
    return rc == MICA_EEXIST ? MICA_EINVAL : rc;
}

int mica_observe_grpc_server(mica_grpc_server_t *gs)
{
    server_state_t *st;
    int rc = instrument(mica_grpc_server_http(gs), &st);
    if (rc != 0 && rc != MICA_EEXIST)
        return rc;
    pthread_mutex_lock(&servers_lock);
    if (st->grpc && st->grpc != gs)
        rc = MICA_EINVAL;
    else
        st->grpc = gs, rc = 0;
    pthread_mutex_unlock(&servers_lock);
    return rc;
}

/* ---- connections: a collector over the instrumented servers ---------------------------- */

static void collect_conns(mica_collect_t *out, void *arg)
{
    const char *label[] = {"server_port"};
    pthread_mutex_lock(&servers_lock);
    for (server_state_t *s = servers; s; s = s->next) {
        mica_http_server_t *srv = atomic_load(&s->srv);
        if (!srv)
            continue;
        if (!s->port[0]) {
            int port = mica_http_server_port(srv, 0);
            if (port <= 0)
                continue; /* not attached (yet) */
            snprintf(s->port, sizeof(s->port), "%d", port);
        }
        const char *v[] = {s->port};
        mica_http_server_stats_t st;
        mica_http_server_stats(srv, &st);
        mica_collect_sample(out, MICA_METRIC_GAUGE, "mica_http_server_open_connections",
                            "Open connections of the HTTP server.", label, v, 1,
                            (double)st.open_conns);
        mica_collect_sample(out, MICA_METRIC_COUNTER, "mica_http_server_accepted_connections_total",
                            "Connections the HTTP server accepted.", label, v, 1,
                            (double)st.accepted);
        mica_collect_sample(out, MICA_METRIC_COUNTER, "mica_http_server_refused_connections_total",
                            "Connections refused: connection limit, out of fds or memory.", label,
                            v, 1, (double)st.refused);
    }
    pthread_mutex_unlock(&servers_lock);
}

int mica__instrument_collectors(mica_metrics_t *reg)
{
    static atomic_bool added;
    if (atomic_exchange(&added, true))
        return 0;
    int rc = mica_metrics_add_collector(reg, collect_conns, NULL);
    if (rc != 0)
        atomic_store(&added, false);
    return rc;
}

void mica__instrument_detach(void)
{
    pthread_mutex_lock(&servers_lock);
    for (server_state_t *s = servers; s; s = s->next)
        atomic_store(&s->srv, NULL);
    pthread_mutex_unlock(&servers_lock);
}

/* ---- gRPC clients: an interceptor ------------------------------------------------------ */

typedef struct stream_end {
    int64_t start_ns;
    const void *key; /* the method descriptor */
    const char *service, *method;
} stream_end_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void record_client(const void *key, bool streaming, const char *svc, const char *m,
                          int code, int64_t start_ns)
{
    if (code < 0 || code > 16)
        code = MICA_GRPC_UNKNOWN;
    uint64_t k2 = (uint64_t)TAG_GRPC_CLIENT << 24 | (uint64_t)streaming << 8 | (uint64_t)code;
    centry_t *e = cache_find(key, k2);
    if (!e) {
        const char *v[] = {streaming ? "stream" : "unary", svc, m, mica_grpc_code_name(code)};
        mica_counter_t *handled;
        mica_histogram_t *secs;
        if (mica_counter_vec_with(fam.cli_handled, v, &handled) != 0 ||
            mica_histogram_vec_with(fam.cli_seconds, v, &secs) != 0 ||
            !(e = cache_put(key, k2, handled, secs, NULL))) {
            mica_counter_inc(fam.unresolved);
            return;
        }
    }
    mica_counter_inc(e->v[0]);
    mica_histogram_observe(e->v[1], (double)(now_ns() - start_ns) / 1e9);
}

static void stream_finished(const mica_grpc_result_t *res, void *arg)
{
    stream_end_t *s = arg;
    record_client(s->key, true, s->service, s->method, res->code, s->start_ns);
    mica__free(s);
}

static int client_interceptor(mica_grpc_call_info_t *call, mica_grpc_next_fn next, void *arg)
{
    const void *key = call->method;
    const char *svc = call->service->name, *m = call->method->name;
    uint64_t k2 = (uint64_t)TAG_GRPC_STARTED << 24 | (uint64_t)call->streaming << 8;
    centry_t *e = cache_find(key, k2);
    if (!e) {
        const char *v[] = {call->streaming ? "stream" : "unary", svc, m};
        mica_counter_t *started;
        if (mica_counter_vec_with(fam.cli_started, v, &started) == 0)
            e = cache_put(key, k2, started, NULL, NULL);
    }
    if (e)
        mica_counter_inc(e->v[0]);
    else
        mica_counter_inc(fam.unresolved);
    int64_t t0 = now_ns();
    int code = next(call);
    if (!call->streaming || code != MICA_GRPC_OK) {
        record_client(key, call->streaming, svc, m, code, t0);
        return code;
    }
    stream_end_t *s = mica__malloc(sizeof(*s));
    if (!s || mica_grpc_stream_on_finish(call->stream, stream_finished, s) != 0) {
        mica__free(s);
        mica_counter_inc(fam.unresolved);
        return code;
    }
    *s = (stream_end_t){t0, key, svc, m};
    return code;
}

int mica_observe_grpc_client(mica_grpc_client_t *c)
{
    int rc = families();
    return rc ? rc : mica_grpc_client_intercept(c, client_interceptor, NULL);
}

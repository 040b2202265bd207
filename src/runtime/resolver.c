/* SPDX-License-Identifier: MIT */
/*
 * Resolvers (include/mica/resolver.h): target parsing, the scheme registry,
 * publication of endpoint lists, and the built-in static backend. The DNS
 * backend is dns.c, the round-robin picker picker_rr.c.
 *
 * Publication is built for readers on the call path: a list is immutable
 * and reference-counted, and its generation number is also kept in one
 * atomic that readers compare with the generation they hold. Only when it
 * moved do they take the mutex, for the few instructions of taking a
 * reference. Writers (a backend's coroutine, an application replacing a
 * static list, any thread) build the new list outside the lock, swap it in
 * under the lock and set the watchers' events, so a worker that waits for
 * a change learns of it at once. An update equal to the current list
 * publishes nothing: a DNS refresh that finds the same addresses costs its
 * readers nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/net.h"
#include "mica/resolver.h"

#define MAX_SCHEMES 16

struct mica_resolver {
    const mica_resolver_ops_t *ops;
    void *state;
    char *buf; /* the parsed target's strings */
    mica_target_t t;
    pthread_mutex_t lock;
    mica_endpoints_t *cur; /* under lock */
    uint64_t last_gen;     /* under lock */
    _Atomic uint64_t gen;  /* cur's generation, for lock-free readers */
    mica_event_t **watch;  /* under lock */
    size_t nwatch;
    atomic_bool started;
};

/* ---- endpoint lists ------------------------------------------------------------ */

void mica_endpoints_ref(mica_endpoints_t *l)
{
    atomic_fetch_add_explicit(&l->_refs, 1, memory_order_relaxed);
}

void mica_endpoints_unref(mica_endpoints_t *l)
{
    if (l && atomic_fetch_sub_explicit(&l->_refs, 1, memory_order_acq_rel) == 1)
        mica__free(l);
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static uint32_t weight_of(const mica_endpoint_t *e)
{
    return e->weight ? e->weight : 1;
}

/* One allocation: the header, the endpoints, then their strings. Drops duplicates. */
static mica_endpoints_t *list_new(const mica_endpoint_t *eps, size_t n, int err)
{
    size_t bytes = sizeof(mica_endpoints_t) + n * sizeof(mica_endpoint_t);
    for (size_t i = 0; i < n; i++)
        bytes += strlen(eps[i].addr) + 1 + (eps[i].metadata ? strlen(eps[i].metadata) + 1 : 0) +
                 (eps[i].zone ? strlen(eps[i].zone) + 1 : 0);
    mica_endpoints_t *l = mica__malloc(bytes);
    if (!l)
        return NULL;
    mica_endpoint_t *out = (mica_endpoint_t *)(l + 1);
    char *s = (char *)(out + n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool dup = false;
        for (size_t j = 0; j < k && !dup; j++)
            dup = strcmp(out[j].addr, eps[i].addr) == 0;
        if (dup)
            continue;
        size_t len = strlen(eps[i].addr) + 1;
        out[k] = (mica_endpoint_t){.addr = memcpy(s, eps[i].addr, len), .weight = weight_of(&eps[i])};
        s += len;
        if (eps[i].metadata) {
            len = strlen(eps[i].metadata) + 1;
            out[k].metadata = memcpy(s, eps[i].metadata, len);
            s += len;
        }
        if (eps[i].zone) {
            len = strlen(eps[i].zone) + 1;
            out[k].zone = memcpy(s, eps[i].zone, len);
            s += len;
        }
        k++;
    }
    *l = (mica_endpoints_t){.error = err, .n = k, .eps = out};
    atomic_init(&l->_refs, 1);
    return l;
}

static bool list_equal(const mica_endpoints_t *a, const mica_endpoints_t *b)
{
    if (!a || !b || a->n != b->n || a->error != b->error)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->eps[i].addr, b->eps[i].addr) != 0 || a->eps[i].weight != b->eps[i].weight ||
            !same_str(a->eps[i].metadata, b->eps[i].metadata) ||
            !same_str(a->eps[i].zone, b->eps[i].zone))
            return false;
    return true;
}

/* Swaps in `l` (ours) unless equal to the current list, and tells the watchers. */
static void publish(mica_resolver_t *r, mica_endpoints_t *l)
{
    pthread_mutex_lock(&r->lock);
    if (list_equal(r->cur, l)) {
        pthread_mutex_unlock(&r->lock);
        mica_endpoints_unref(l);
        return;
    }
    mica_endpoints_t *old = r->cur;
    l->generation = ++r->last_gen;
    r->cur = l;
    atomic_store_explicit(&r->gen, l->generation, memory_order_release);
    for (size_t i = 0; i < r->nwatch; i++)
        mica_event_set(r->watch[i]);
    pthread_mutex_unlock(&r->lock);
    mica_endpoints_unref(old);
}

int mica_resolver_update(mica_resolver_t *r, const mica_endpoint_t *eps, size_t n)
{
    struct sockaddr_storage ss;
    socklen_t len;
    for (size_t i = 0; i < n; i++)
        if (!eps[i].addr || mica_net_parse_addr(eps[i].addr, &ss, &len) != 0)
            return MICA_EINVAL;
    mica_endpoints_t *l = list_new(eps, n, 0);
    if (!l)
        return MICA_ENOMEM;
    publish(r, l);
    return 0;
}

void mica_resolver_report_error(mica_resolver_t *r, int err)
{
    pthread_mutex_lock(&r->lock);
    bool have_list = r->cur && !r->cur->error; /* the last good list stays */
    pthread_mutex_unlock(&r->lock);
    if (have_list || !err)
        return;
    mica_endpoints_t *l = list_new(NULL, 0, err);
    if (l)
        publish(r, l);
}

uint64_t mica_resolver_generation(const mica_resolver_t *r)
{
    return atomic_load_explicit(&r->gen, memory_order_acquire);
}

mica_endpoints_t *mica_resolver_get(mica_resolver_t *r)
{
    pthread_mutex_lock(&r->lock);
    mica_endpoints_t *l = r->cur;
    if (l)
        mica_endpoints_ref(l);
    pthread_mutex_unlock(&r->lock);
    return l;
}

int mica_resolver_watch(mica_resolver_t *r, mica_event_t *ev)
{
    pthread_mutex_lock(&r->lock);
    mica_event_t **w = mica__realloc(r->watch, (r->nwatch + 1) * sizeof(*w));
    if (w) {
        w[r->nwatch++] = ev;
        r->watch = w;
    }
    pthread_mutex_unlock(&r->lock);
    return w ? 0 : MICA_ENOMEM;
}

void mica_resolver_unwatch(mica_resolver_t *r, mica_event_t *ev)
{
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->nwatch; i++)
        if (r->watch[i] == ev) {
            r->watch[i] = r->watch[--r->nwatch];
            break;
        }
    pthread_mutex_unlock(&r->lock);
}

/* ---- targets and schemes ------------------------------------------------------------ */

static bool scheme_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '+' || ch == '-' || ch == '.'))
            return false;
    }
    return true;
}

int mica_target_parse(const char *target, mica_target_t *t, char *buf, size_t size)
{
    if (!target || !*target)
        return MICA_EINVAL;
    size_t len = strlen(target);
    const char *sep = strstr(target, "://");
    if (!sep) {
        /* A bare address: a literal is static, a name goes to DNS. */
        struct sockaddr_storage ss;
        socklen_t sl;
        const char *scheme = mica_net_parse_addr(target, &ss, &sl) == 0 ? "static" : "dns";
        size_t need = strlen(scheme) + 1 + 1 + len + 1;
        if (need > size)
            return MICA_ELIMIT;
        size_t k = strlen(scheme) + 1;
        memcpy(buf, scheme, k);
        buf[k] = '\0';
        memcpy(buf + k + 1, target, len + 1);
        *t = (mica_target_t){.scheme = buf, .authority = buf + k, .endpoint = buf + k + 1};
        return 0;
    }
    size_t slen = (size_t)(sep - target);
    const char *auth = sep + 3;
    const char *slash = strchr(auth, '/');
    if (!scheme_ok(target, slen) || !slash)
        return MICA_EINVAL;
    if (len + 1 > size)
        return MICA_ELIMIT;
    /* "scheme://authority/endpoint" -> "scheme\0authority\0endpoint\0" (as long as the target) */
    size_t alen = (size_t)(slash - auth);
    memcpy(buf, target, slen);
    buf[slen] = '\0';
    memcpy(buf + slen + 1, auth, alen);
    buf[slen + 1 + alen] = '\0';
    memcpy(buf + slen + 2 + alen, slash + 1, strlen(slash + 1) + 1);
    *t = (mica_target_t){.scheme = buf, .authority = buf + slen + 1,
                         .endpoint = buf + slen + 2 + alen};
    for (char *p = buf; *p; p++) /* schemes are case-insensitive (RFC 3986 3.1) */
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return 0;
}

static const mica_resolver_ops_t static_ops;
extern const mica_resolver_ops_t mica__resolver_dns;

static pthread_mutex_t schemes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[32];
    const mica_resolver_ops_t *ops;
} schemes[MAX_SCHEMES];
static size_t nschemes;

static const mica_resolver_ops_t *builtin(const char *scheme)
{
    if (strcmp(scheme, "static") == 0)
        return &static_ops;
    if (strcmp(scheme, "dns") == 0)
        return &mica__resolver_dns;
    return NULL;
}

int mica_resolver_register(const char *scheme, const mica_resolver_ops_t *ops)
{
    if (!scheme || !ops || !ops->init || strlen(scheme) >= sizeof(schemes[0].name) ||
        !scheme_ok(scheme, strlen(scheme)))
        return MICA_EINVAL;
    char name[32];
    size_t n = strlen(scheme);
    for (size_t i = 0; i <= n; i++)
        name[i] = scheme[i] >= 'A' && scheme[i] <= 'Z' ? (char)(scheme[i] - 'A' + 'a') : scheme[i];
    if (builtin(name))
        return MICA_EEXIST;
    int rc = 0;
    pthread_mutex_lock(&schemes_lock);
    for (size_t i = 0; i < nschemes && rc == 0; i++)
        if (strcmp(schemes[i].name, name) == 0)
            rc = MICA_EEXIST;
    if (rc == 0 && nschemes == MAX_SCHEMES)
        rc = MICA_ELIMIT;
    if (rc == 0) {
        memcpy(schemes[nschemes].name, name, n + 1);
        schemes[nschemes++].ops = ops;
    }
    pthread_mutex_unlock(&schemes_lock);
    return rc;
}

static const mica_resolver_ops_t *lookup(const char *scheme)
{
    const mica_resolver_ops_t *ops = builtin(scheme);
    pthread_mutex_lock(&schemes_lock);
    for (size_t i = 0; !ops && i < nschemes; i++)
        if (strcmp(schemes[i].name, scheme) == 0)
            ops = schemes[i].ops;
    pthread_mutex_unlock(&schemes_lock);
    return ops;
}

/* ---- resolvers ---------------------------------------------------------------------- */

static void on_stop(int worker, void *arg)
{
    mica_resolver_t *r = arg;
    if (atomic_load(&r->started) && r->ops->stop)
        r->ops->stop(r->state, worker);
}

int mica_resolver_new(mica_resolver_t **out, mica_runtime_t *rt, const char *target,
                      const mica_resolver_opts_t *opts)
{
    if (!rt || !target)
        return MICA_EINVAL;
    mica_resolver_t *r = mica__calloc(1, sizeof(*r));
    size_t size = strlen(target) + 16;
    if (!r || !(r->buf = mica__malloc(size))) {
        mica__free(r);
        return MICA_ENOMEM;
    }
    int rc = mica_target_parse(target, &r->t, r->buf, size);
    if (rc == 0 && !(r->ops = lookup(r->t.scheme))) {
        mica__log_error("resolver: unknown scheme", "target", target, "scheme", r->t.scheme);
        rc = MICA_EINVAL;
    } else if (rc != 0) {
        mica__log_error("resolver: bad target", "target", target);
    }
    if (rc != 0) {
        mica__free(r->buf);
        mica__free(r);
        return rc;
    }
    pthread_mutex_init(&r->lock, NULL);
    mica_resolver_opts_t o = opts ? *opts : (mica_resolver_opts_t){0};
    if (o.refresh_interval_ms <= 0)
        o.refresh_interval_ms = 30000;
    if ((rc = r->ops->init(r, &r->t, &o, &r->state)) != 0)
        r->state = NULL; /* a failed init cleans up after itself */
    if (rc != 0 || (rc = mica_runtime_on_stop(rt, on_stop, r)) != 0) {
        mica_resolver_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void mica_resolver_free(mica_resolver_t *r)
{
    if (!r)
        return;
    if (r->state && r->ops->destroy)
        r->ops->destroy(r->state);
    mica_endpoints_unref(r->cur);
    pthread_mutex_destroy(&r->lock);
    mica__free(r->watch);
    mica__free(r->buf);
    mica__free(r);
}

static void run_start(void *arg)
{
    mica_resolver_t *r = arg;
    r->ops->start(r->state);
}

int mica_resolver_start(mica_resolver_t *r)
{
    if (mica_worker_id() < 0)
        return MICA_EINVAL;
    if (atomic_exchange(&r->started, true))
        return 0;
    if (!r->ops->start)
        return 0;
    int rc = mica_go(run_start, r);
    if (rc != 0)
        atomic_store(&r->started, false);
    return rc;
}

void mica_resolver_resolve_now(mica_resolver_t *r)
{
    if (atomic_load_explicit(&r->started, memory_order_relaxed) && r->ops->resolve_now)
        r->ops->resolve_now(r->state);
}

const char *mica_resolver_endpoint(const mica_resolver_t *r)
{
    return r->t.endpoint;
}

const char *mica_resolver_authority(const mica_resolver_t *r)
{
    if (strcmp(r->t.scheme, "static") == 0)
        return NULL; /* several hosts: each endpoint's address */
    /* A path is no authority (RFC 3986, 3.2): file:///etc/reg.json#user is "user". */
    const char *hash = strrchr(r->t.endpoint, '#');
    const char *name = hash ? hash + 1 : r->t.endpoint;
    return *name && !strchr(name, '/') ? name : NULL;
}

const char *mica_resolver_scheme(const mica_resolver_t *r)
{
    return r->t.scheme;
}

/* ---- static:///addr,addr ------------------------------------------------------------- */

#define STATIC_MAX 256

static int static_init(mica_resolver_t *r, const mica_target_t *t,
                       const mica_resolver_opts_t *opts, void **state)
{
    if (*t->authority) {
        mica__log_error("static resolver: no authority allowed", "authority", t->authority);
        return MICA_EINVAL;
    }
    char *copy = mica__strdup(t->endpoint);
    mica_endpoint_t *eps = mica__calloc(STATIC_MAX, sizeof(*eps));
    int rc = copy && eps ? 0 : MICA_ENOMEM;
    size_t n = 0;
    for (char *p = copy, *next; rc == 0 && p; p = next) {
        if ((next = strchr(p, ',')))
            *next++ = '\0';
        struct sockaddr_storage ss;
        socklen_t len;
        if (n == STATIC_MAX) {
            rc = MICA_ELIMIT;
        } else if (mica_net_parse_addr(p, &ss, &len) != 0) {
            mica__log_error("static resolver: not an IP address with a port", "endpoint", p);
            rc = MICA_EINVAL;
        } else {
            eps[n++] = (mica_endpoint_t){.addr = p, .weight = 1};
        }
    }
    if (rc == 0)
        rc = mica_resolver_update(r, eps, n);
    mica__free(eps);
    mica__free(copy);
    *state = NULL;
    return rc;
}

static const mica_resolver_ops_t static_ops = {.init = static_init};

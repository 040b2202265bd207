/* SPDX-License-Identifier: MIT */
/*
 * Registries (include/mica/registry.h): the object every backend sits
 * behind, service views, and the resolver schemes "file" and "etcd".
 *
 * Reading path. A client of "etcd:///user" gets a resolver whose backend
 * state (rsv_t) attaches to the view of "user" in the process's etcd
 * registry; the first resolver to start asks the backend to follow the
 * service, and from then on every list the backend reports goes through
 * mica__svc_publish(): copied, sorted by id, compared with the last one,
 * and only when it differs handed to each attached resolver
 * (mica_resolver_update(), which the clients' workers pick up by
 * generation) and to watchers' events. A "file:///path#user" resolver has a
 * private file registry of its own, so it needs no registry object from
 * the application.
 *
 * Static stability. A backend that cannot reach its registry calls
 * mica__svc_unreachable(): the view keeps its list (clients go on calling
 * what they last saw), is marked stale, and says so once in a log line; the
 * outage is counted once per registry. Before any list, the failure is
 * reported to the resolvers, so that calls fail at once instead of waiting.
 *
 * Writing path. mica_registry_register() keeps a copy of the instance
 * (mica__rinst_t) on the registry's list and asks the backend to write it;
 * the backend keeps it written (etcd: re-grants and re-writes after a lease
 * loss). In the MICA_SHUTDOWN_DEREGISTER phase the registry marks itself
 * closing (no more writes), removes every instance in one call, and waits
 * deregister_wait_ms for peers to see it before the servers drain.
 *
 * Counters. Every registry's counters (mica_registry_stats()) are also
 * scraped from the default metrics registry as mica_registry_*_total
 * {registry="<url>"}, with mica_registry_reachable and
 * mica_registry_stale_services gauges (a collector: nothing on the hot path).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/alloc.h"
#include "common/log.h"
#include "discovery/internal.h"
#include "mica/metrics.h"
#include "mica/net.h"

/* The registry "etcd:///" targets resolve through: the first etcd registry made. */
static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;
static mica_registry_t *default_etcd;

static void registry_unref(mica_registry_t *reg);

/* ---- names and records ------------------------------------------------------------- */

bool mica__name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > MICA__NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':' || c == '[' || c == ']'))
            return false;
    }
    return true;
}

static size_t slen(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static char *put_str(char **at, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *out = memcpy(*at, s, n);
    *at += n;
    return out;
}

mica_instance_t *mica__instance_dup(const mica_instance_t *i)
{
    size_t bytes = sizeof(*i) + slen(i->service) + slen(i->id) + slen(i->addr) + slen(i->zone) +
                   slen(i->metadata);
    mica_instance_t *out = mica__malloc(bytes);
    if (!out)
        return NULL;
    char *s = (char *)(out + 1);
    *out = (mica_instance_t){.weight = i->weight};
    out->service = put_str(&s, i->service);
    out->id = put_str(&s, i->id);
    out->addr = put_str(&s, i->addr);
    out->zone = put_str(&s, i->zone);
    out->metadata = put_str(&s, i->metadata);
    return out;
}

static bool addr_ok(const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return addr && mica_net_parse_addr(addr, &ss, &len) == 0 && strchr(addr, ':') != addr;
}

mica_instance_t *mica__instance_from_json(const void *obj, const char *service)
{
    const json_t *o = obj;
    if (!json_is_object(o))
        return NULL;
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *addr = json_string_value(json_object_get(o, "addr"));
    const char *zone = json_string_value(json_object_get(o, "zone"));
    json_t *w = json_object_get(o, "weight");
    json_t *md = json_object_get(o, "metadata");
    if (!addr_ok(addr) || (id && !mica__name_ok(id)) ||
        (w && (!json_is_integer(w) || json_integer_value(w) < 0 ||
               json_integer_value(w) > UINT32_MAX))) {
        mica__log_debug("registry: record skipped (needs addr \"ip:port\", a valid id, weight >= 0)",
                        "svc", service);
        return NULL;
    }
    char *mdtext = NULL;
    if (md && json_is_string(md))
        mdtext = mica__strdup(json_string_value(md));
    else if (md && !json_is_null(md)) {
        char *t = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS);
        mdtext = t ? mica__strdup(t) : NULL;
        free(t);
    }
    mica_instance_t tmp = {.service = service, .id = id ? id : addr, .addr = addr,
                           .weight = w ? (uint32_t)json_integer_value(w) : 1, .zone = zone,
                           .metadata = mdtext};
    mica_instance_t *out = mica__instance_dup(&tmp);
    mica__free(mdtext);
    return out;
}

mica_instance_t *mica__instance_parse(const char *text, size_t len, const char *service)
{
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    mica_instance_t *out = o ? mica__instance_from_json(o, service) : NULL;
    json_decref(o);
    return out;
}

char *mica__instance_record(const mica_instance_t *i)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int rc = json_object_set_new(o, "id", json_string(i->id));
    rc |= json_object_set_new(o, "addr", json_string(i->addr));
    rc |= json_object_set_new(o, "weight", json_integer(i->weight ? i->weight : 1));
    if (i->zone)
        rc |= json_object_set_new(o, "zone", json_string(i->zone));
    if (i->metadata) { /* JSON text stays JSON; anything else is a string */
        json_t *md = json_loads(i->metadata, JSON_DECODE_ANY, NULL);
        rc |= json_object_set_new(o, "metadata", md ? md : json_string(i->metadata));
    }
    char *t = rc == 0 ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    char *out = t ? mica__strdup(t) : NULL;
    free(t);
    return out;
}

/* ---- service views ------------------------------------------------------------------ */

static int cmp_id(const void *a, const void *b)
{
    return strcmp(((const mica_instance_t *)a)->id, ((const mica_instance_t *)b)->id);
}

static bool same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool lists_equal(const mica_instance_t *a, size_t na, const mica_instance_t *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i].id, b[i].id) != 0 || strcmp(a[i].addr, b[i].addr) != 0 ||
            a[i].weight != b[i].weight || !same(a[i].zone, b[i].zone) ||
            !same(a[i].metadata, b[i].metadata))
            return false;
    return true;
}

/* One allocation: the array, the service name, then every string. Sorted by id. */
static mica_instance_t *list_copy(const mica_instance_t *v, size_t n, const char *service)
{
    size_t bytes = n * sizeof(*v) + slen(service);
    for (size_t i = 0; i < n; i++)
        bytes += slen(v[i].id) + slen(v[i].addr) + slen(v[i].zone) + slen(v[i].metadata);
    mica_instance_t *out = mica__malloc(bytes ? bytes : 1);
    if (!out)
        return NULL;
    char *s = (char *)(out + n);
    const char *name = put_str(&s, service);
    for (size_t i = 0; i < n; i++) {
        out[i] = (mica_instance_t){.service = name, .weight = v[i].weight ? v[i].weight : 1};
        out[i].id = put_str(&s, v[i].id);
        out[i].addr = put_str(&s, v[i].addr);
        out[i].zone = put_str(&s, v[i].zone);
        out[i].metadata = put_str(&s, v[i].metadata);
    }
    qsort(out, n, sizeof(*out), cmp_id);
    return out;
}

/* Hands `svc`'s list to resolver `r` (under reg->lock). */
static void feed(mica__svc_t *svc, mica_resolver_t *r)
{
    mica_endpoint_t stack[64];
    mica_endpoint_t *eps = svc->n <= 64 ? stack : mica__calloc(svc->n, sizeof(*eps));
    if (!eps)
        return; /* the resolver keeps its list; the next change tries again */
    for (size_t i = 0; i < svc->n; i++)
        eps[i] = (mica_endpoint_t){.addr = svc->v[i].addr, .weight = svc->v[i].weight,
                                   .metadata = svc->v[i].metadata, .zone = svc->v[i].zone};
    mica_resolver_update(r, eps, svc->n);
    if (eps != stack)
        mica__free(eps);
}

void mica__svc_publish(mica__svc_t *svc, const mica_instance_t *v, size_t n)
{
    mica_registry_t *reg = svc->reg;
    mica_instance_t *copy = list_copy(v, n, svc->name);
    if (!copy) {
        mica__log_error("registry: no memory for a service list: keeping the last one", "svc",
                        svc->name);
        return;
    }
    pthread_mutex_lock(&reg->lock);
    bool was_stale = svc->stale;
    svc->stale = false;
    if (svc->have && lists_equal(svc->v, svc->n, copy, n)) {
        pthread_mutex_unlock(&reg->lock);
        mica__free(copy);
        if (was_stale)
            mica__log_info("registry: service list current again", "svc", svc->name);
        return;
    }
    mica__free(svc->v);
    svc->v = copy;
    svc->n = n;
    svc->have = true;
    svc->gen++;
    for (size_t i = 0; i < svc->nrs; i++)
        feed(svc, svc->rs[i]);
    for (size_t i = 0; i < svc->nevs; i++)
        mica_event_set(svc->evs[i]);
    mica_event_set(&svc->first);
    pthread_mutex_unlock(&reg->lock);
    MICA__COUNT(reg, updates);
    if (mica_log_enabled(MICA_LOG_DEBUG))
        mica_log_fields(MICA_LOG_DEBUG, "registry: service list changed",
                        (mica_log_field_t[]){MICA_LOG_STR("svc", svc->name),
                                             MICA_LOG_INT("instances", n)},
                        2);
    if (was_stale)
        mica__log_info("registry: service list current again", "svc", svc->name);
}

void mica__svc_unreachable(mica__svc_t *svc, int err)
{
    mica_registry_t *reg = svc->reg;
    pthread_mutex_lock(&reg->lock);
    bool log = !svc->stale;
    svc->stale = true;
    size_t n = svc->n;
    bool have = svc->have;
    if (!have) { /* nothing to keep: calls fail at once instead of waiting */
        svc->first_error = err ? err : MICA_EUNAVAILABLE;
        for (size_t i = 0; i < svc->nrs; i++)
            mica_resolver_report_error(svc->rs[i], svc->first_error);
        mica_event_set(&svc->first);
    }
    pthread_mutex_unlock(&reg->lock);
    if (log)
        mica_log_fields(MICA_LOG_WARN,
                        have ? "registry unreachable: clients keep the endpoints last seen"
                             : "registry unreachable: no endpoints known yet",
                        (mica_log_field_t[]){MICA_LOG_STR("svc", svc->name),
                                             MICA_LOG_INT("endpoints", n),
                                             MICA_LOG_STR("error", mica_strerror(err))},
                        3);
}

void mica__registry_reachable(mica_registry_t *reg, bool ok, int err)
{
    bool was = atomic_exchange(&reg->st.reachable, ok);
    if (was && !ok) {
        MICA__COUNT(reg, outages);
        mica__log_warn("registry unreachable: retrying; resolvers keep what they saw", "registry",
                       reg->url, "error", mica_strerror(err));
    } else if (!was && ok) {
        mica__log_info("registry reachable", "registry", reg->url);
    }
    if (!ok)
        MICA__COUNT(reg, errors);
}

/* The view of `name`, made if needed (under reg->lock). NULL: no memory. */
static mica__svc_t *svc_get(mica_registry_t *reg, const char *name)
{
    mica__list_foreach(n, &reg->svcs)
    {
        mica__svc_t *s = mica__list_entry(n, mica__svc_t, link);
        if (strcmp(s->name, name) == 0)
            return s;
    }
    mica__svc_t *s = mica__calloc(1, sizeof(*s));
    if (!s || !(s->name = mica__strdup(name))) {
        mica__free(s);
        return NULL;
    }
    s->reg = reg;
    mica__list_push_back(&reg->svcs, &s->link);
    return s;
}

static void svc_free(mica__svc_t *s)
{
    mica__free(s->v);
    mica__free(s->rs);
    mica__free(s->evs);
    mica__free(s->name);
    mica__free(s);
}

/* Asks the backend to follow `svc`, once; from a coroutine on a worker. */
static int svc_follow(mica__svc_t *svc)
{
    if (atomic_exchange(&svc->followed, true))
        return 0;
    int rc = svc->reg->ops->follow(svc->reg->state, svc);
    if (rc != 0)
        atomic_store(&svc->followed, false);
    return rc;
}

/* ---- own instances ----------------------------------------------------------------- */

void mica__rinst_unref(mica__rinst_t *ri)
{
    if (ri && atomic_fetch_sub(&ri->refs, 1) == 1) {
        mica__free(ri->record);
        mica__free((void *)ri->i.service); /* one block: the strings of i */
        mica__free(ri);
    }
}

mica__rinst_t **mica__registry_insts(mica_registry_t *reg, size_t *n)
{
    pthread_mutex_lock(&reg->lock);
    size_t k = 0;
    mica__list_foreach(it, &reg->insts) k++;
    mica__rinst_t **out = k ? mica__calloc(k, sizeof(*out)) : NULL;
    k = 0;
    if (out)
        mica__list_foreach(it, &reg->insts)
        {
            mica__rinst_t *ri = mica__list_entry(it, mica__rinst_t, link);
            atomic_fetch_add(&ri->refs, 1);
            out[k++] = ri;
        }
    pthread_mutex_unlock(&reg->lock);
    *n = k;
    return out;
}

void mica__rinst_written(mica_registry_t *reg, mica__rinst_t *ri)
{
    MICA__COUNT(reg, registrations);
    if (atomic_exchange(&ri->ever_written, true)) {
        MICA__COUNT(reg, reregistrations);
        mica__log_info("registry: instance registered again", "svc", ri->i.service, "id",
                       ri->i.id, "addr", ri->i.addr, "registry", reg->url);
    } else {
        mica__log_info("registry: instance registered", "svc", ri->i.service, "id", ri->i.id,
                       "addr", ri->i.addr, "registry", reg->url);
    }
}

static mica__rinst_t *rinst_new(const mica_instance_t *in)
{
    mica__rinst_t *ri = mica__calloc(1, sizeof(*ri));
    mica_instance_t tmp = *in;
    if (!tmp.id)
        tmp.id = tmp.addr;
    if (!tmp.weight)
        tmp.weight = 1;
    /* the strings in one block starting at i.service (freed through it) */
    size_t bytes = slen(tmp.service) + slen(tmp.id) + slen(tmp.addr) + slen(tmp.zone) +
                   slen(tmp.metadata);
    char *s = ri ? mica__malloc(bytes) : NULL;
    if (!s) {
        mica__free(ri);
        return NULL;
    }
    ri->i.weight = tmp.weight;
    ri->i.service = put_str(&s, tmp.service);
    ri->i.id = put_str(&s, tmp.id);
    ri->i.addr = put_str(&s, tmp.addr);
    ri->i.zone = put_str(&s, tmp.zone);
    ri->i.metadata = put_str(&s, tmp.metadata);
    if (!(ri->record = mica__instance_record(&ri->i))) {
        mica__free((void *)ri->i.service);
        mica__free(ri);
        return NULL;
    }
    atomic_init(&ri->refs, 1);
    mica__list_init(&ri->link);
    return ri;
}

/* ---- the public API ---------------------------------------------------------------- */

static void on_stop(int worker, void *arg)
{
    mica_registry_t *reg = arg;
    if (worker == 0 && !atomic_exchange(&reg->stopped, true) && reg->ops->stop)
        reg->ops->stop(reg->state);
}

/* MICA_SHUTDOWN_DEREGISTER: leave the registry, then give peers time to notice. */
static void on_deregister(mica_ctx_t *ctx, void *arg)
{
    mica_registry_t *reg = arg;
    atomic_store(&reg->closing, true);
    size_t n;
    mica__rinst_t **v = mica__registry_insts(reg, &n);
    for (size_t i = 0; i < n; i++)
        mica__rinst_unref(v[i]);
    mica__free(v);
    if (n == 0)
        return;
    mica_ctx_t *cctx = NULL;
    int rc = mica_ctx_with_timeout(ctx, reg->o.call_timeout_ms, &cctx);
    if (rc == 0)
        rc = reg->ops->del_all(reg->state, cctx);
    mica_ctx_free(cctx);
    if (rc == 0) {
        atomic_fetch_add(&reg->st.deregistrations, n);
        mica_log_fields(MICA_LOG_INFO, "registry: deregistered for shutdown; waiting for peers",
                        (mica_log_field_t[]){MICA_LOG_STR("registry", reg->url),
                                             MICA_LOG_INT("instances", n),
                                             MICA_LOG_INT("wait_ms", reg->o.deregister_wait_ms)},
                        3);
    } else {
        mica__log_warn("registry: could not deregister at shutdown (leases expire by themselves)",
                       "registry", reg->url, "error", mica_strerror(rc));
    }
    mica_ctx_sleep(ctx, reg->o.deregister_wait_ms);
}

static const mica__registry_ops_t *backend_of(const char *url, const char **rest)
{
    static const mica__registry_ops_t *const all[] = {&mica__registry_file, &mica__registry_etcd,
                                                      &mica__registry_dns};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        size_t n = strlen(all[i]->scheme);
        if (strncmp(url, all[i]->scheme, n) == 0 && strncmp(url + n, "://", 3) == 0) {
            *rest = url + n + 3;
            return all[i];
        }
    }
    return NULL;
}

static void set_defaults(mica_registry_opts_t *o)
{
    if (o->ttl_s <= 0)
        o->ttl_s = 10;
    if (o->call_timeout_ms <= 0)
        o->call_timeout_ms = 3000;
    if (o->deregister_wait_ms < 0)
        o->deregister_wait_ms = 0;
    else if (o->deregister_wait_ms == 0)
        o->deregister_wait_ms = 1000;
    if (o->relist_grace_ms <= 0)
        o->relist_grace_ms = 5000;
    if (o->dns_refresh_ms <= 0)
        o->dns_refresh_ms = 30000;
    if (o->retry_max_ms <= 0)
        o->retry_max_ms = 1000;
}

/* A registry without hooks: mica_registry_new()'s core, and a file resolver's own. */
static int registry_open(mica_registry_t **out, mica_runtime_t *rt, const char *url,
                         const mica_registry_opts_t *opts)
{
    const char *rest;
    const mica__registry_ops_t *ops = url ? backend_of(url, &rest) : NULL;
    if (!ops) {
        mica__log_error("registry: unknown URL (file://, etcd://, dns://)", "url", url);
        return MICA_EINVAL;
    }
    mica_registry_t *reg = mica__calloc(1, sizeof(*reg));
    if (!reg || !(reg->url = mica__strdup(url))) {
        mica__free(reg);
        return MICA_ENOMEM;
    }
    reg->ops = ops;
    reg->rt = rt;
    reg->o = opts ? *opts : (mica_registry_opts_t){0};
    set_defaults(&reg->o);
    pthread_mutex_init(&reg->lock, NULL);
    mica__list_init(&reg->svcs);
    mica__list_init(&reg->insts);
    atomic_init(&reg->refs, 1);
    atomic_init(&reg->st.reachable, true);
    int rc = ops->open(reg, rest, &reg->state);
    if (rc != 0) {
        reg->state = NULL;
        registry_unref(reg);
        return rc;
    }
    *out = reg;
    return 0;
}

static void registry_unref(mica_registry_t *reg)
{
    if (!reg || atomic_fetch_sub(&reg->refs, 1) != 1)
        return;
    if (reg->state && reg->ops->close)
        reg->ops->close(reg->state);
    mica__list_foreach_safe(n, nx, &reg->svcs) svc_free(mica__list_entry(n, mica__svc_t, link));
    mica__list_foreach_safe(n, nx, &reg->insts)
    {
        mica__rinst_t *ri = mica__list_entry(n, mica__rinst_t, link);
        mica__list_remove(&ri->link);
        mica__rinst_unref(ri);
    }
    pthread_mutex_destroy(&reg->lock);
    mica__free(reg->url);
    mica__free(reg);
}

/* Scrape time: the counters of one registry, labelled with its URL. */
static void collect(mica_collect_t *out, void *arg)
{
    mica_registry_t *reg = arg;
    mica_registry_stats_t st;
    mica_registry_stats(reg, &st);
    static const char *const label[] = {"registry"};
    const char *const value[] = {reg->url};
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
#define C(f, h) {"mica_registry_" #f "_total", h, offsetof(mica_registry_stats_t, f)}
        C(registrations, "Instance records written (first ones and re-registrations)."),
        C(reregistrations, "Instance records written again after a lease loss or an outage."),
        C(deregistrations, "Instances removed from the registry."),
        C(lease_grants, "etcd leases granted."),
        C(lease_losses, "etcd leases lost (expired or unknown to etcd)."),
        C(watch_restarts, "Watches that listed again and resumed."),
        C(compactions, "Watches cancelled because their revision was compacted."),
        C(outages, "Times the registry became unreachable."),
        C(updates, "Service lists published to resolvers."),
        C(errors, "Failed calls to the registry."),
#undef C
    };
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        uint64_t v;
        memcpy(&v, (const char *)&st + counters[i].off, sizeof(v));
        mica_collect_sample(out, MICA_METRIC_COUNTER, counters[i].name, counters[i].help, label,
                            value, 1, (double)v);
    }
    mica_collect_sample(out, MICA_METRIC_GAUGE, "mica_registry_reachable",
                        "1 when the registry's last call got an answer.", label, value, 1,
                        st.reachable ? 1 : 0);
    size_t stale = 0;
    pthread_mutex_lock(&reg->lock);
    mica__list_foreach(n, &reg->svcs) stale += mica__list_entry(n, mica__svc_t, link)->stale;
    pthread_mutex_unlock(&reg->lock);
    mica_collect_sample(out, MICA_METRIC_GAUGE, "mica_registry_stale_services",
                        "Services whose endpoints are the last seen (registry unreachable).",
                        label, value, 1, (double)stale);
}

int mica_registry_new(mica_registry_t **out, mica_runtime_t *rt, const char *url,
                      const mica_registry_opts_t *opts)
{
    if (!out || !rt)
        return MICA_EINVAL;
    mica_registry_schemes_init();
    mica_registry_t *reg;
    int rc = registry_open(&reg, rt, url, opts);
    if (rc != 0)
        return rc;
    if ((rc = mica_runtime_on_stop(rt, on_stop, reg)) != 0 ||
        (rc = mica_runtime_on_shutdown(rt, MICA_SHUTDOWN_DEREGISTER, on_deregister, reg)) != 0 ||
        (rc = mica_metrics_add_collector(NULL, collect, reg)) != 0) {
        registry_unref(reg);
        return rc;
    }
    if (reg->ops == &mica__registry_etcd) {
        pthread_mutex_lock(&default_lock);
        if (!default_etcd)
            default_etcd = reg;
        pthread_mutex_unlock(&default_lock);
    }
    *out = reg;
    return 0;
}

void mica_registry_free(mica_registry_t *reg)
{
    if (!reg)
        return;
    pthread_mutex_lock(&default_lock);
    if (default_etcd == reg)
        default_etcd = NULL;
    pthread_mutex_unlock(&default_lock);
    mica_metrics_remove_collector(NULL, collect, reg);
    registry_unref(reg);
}

static int env_int(const char *name, int *out)
{
    const char *v = getenv(name);
    if (!v || *out)
        return 0;
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x <= 0 || x > 86400000) {
        mica__log_error("registry: bad number in the environment", "variable", name, "value", v);
        return MICA_EINVAL;
    }
    *out = (int)x;
    return 0;
}

int mica_registry_opts_from_env(mica_registry_opts_t *o)
{
    int rc = env_int("MICA_REGISTRY_TTL_S", &o->ttl_s);
    rc |= env_int("MICA_REGISTRY_CALL_TIMEOUT_MS", &o->call_timeout_ms);
    rc |= env_int("MICA_REGISTRY_DEREGISTER_WAIT_MS", &o->deregister_wait_ms);
    rc |= env_int("MICA_REGISTRY_RELIST_GRACE_MS", &o->relist_grace_ms);
    return rc ? MICA_EINVAL : 0;
}

int mica_registry_register(mica_registry_t *reg, mica_ctx_t *ctx, const mica_instance_t *inst)
{
    if (!reg || !inst || !mica__name_ok(inst->service) || !addr_ok(inst->addr) ||
        (inst->id && !mica__name_ok(inst->id)) || mica_worker_id() < 0) {
        mica__log_error("registry: bad instance (service and id: letters, digits, - _ . : [ ];"
                        " addr: ip:port)",
                        "svc", inst ? inst->service : NULL, "addr", inst ? inst->addr : NULL);
        return MICA_EINVAL;
    }
    if (atomic_load(&reg->closing))
        return MICA_ECANCELED;
    mica__rinst_t *ri = rinst_new(inst);
    if (!ri)
        return MICA_ENOMEM;
    /* The same service and id replaces the instance kept. */
    mica__rinst_t *old = NULL;
    pthread_mutex_lock(&reg->lock);
    mica__list_foreach(n, &reg->insts)
    {
        mica__rinst_t *o = mica__list_entry(n, mica__rinst_t, link);
        if (strcmp(o->i.service, ri->i.service) == 0 && strcmp(o->i.id, ri->i.id) == 0) {
            old = o;
            mica__list_remove(&o->link);
            atomic_store(&o->removed, true);
            atomic_store(&ri->ever_written, atomic_load(&o->ever_written));
            break;
        }
    }
    atomic_fetch_add(&ri->refs, 1); /* ours, for the call below */
    mica__list_push_back(&reg->insts, &ri->link);
    pthread_mutex_unlock(&reg->lock);
    mica__rinst_unref(old);
    int rc = reg->ops->put(reg->state, ctx, ri);
    mica__rinst_unref(ri);
    return rc;
}

int mica_registry_deregister(mica_registry_t *reg, mica_ctx_t *ctx, const char *service,
                             const char *id)
{
    if (!reg || !service || !id || mica_worker_id() < 0)
        return MICA_EINVAL;
    mica__rinst_t *ri = NULL;
    pthread_mutex_lock(&reg->lock);
    mica__list_foreach(n, &reg->insts)
    {
        mica__rinst_t *o = mica__list_entry(n, mica__rinst_t, link);
        if (strcmp(o->i.service, service) == 0 && strcmp(o->i.id, id) == 0) {
            ri = o;
            mica__list_remove(&o->link);
            break;
        }
    }
    pthread_mutex_unlock(&reg->lock);
    if (!ri)
        return MICA_ENOTFOUND;
    atomic_store(&ri->removed, true);
    int rc = reg->ops->del(reg->state, ctx, ri);
    if (rc == 0) {
        MICA__COUNT(reg, deregistrations);
        mica__log_info("registry: instance deregistered", "svc", service, "id", id,
                       "registry", reg->url);
    }
    mica__rinst_unref(ri);
    return rc;
}

/* The view of `service`, followed; from a coroutine. */
static int followed_view(mica_registry_t *reg, const char *service, mica__svc_t **out)
{
    if (!mica__name_ok(service) || mica_worker_id() < 0)
        return MICA_EINVAL;
    pthread_mutex_lock(&reg->lock);
    mica__svc_t *svc = svc_get(reg, service);
    pthread_mutex_unlock(&reg->lock);
    if (!svc)
        return MICA_ENOMEM;
    *out = svc;
    return svc_follow(svc);
}

int mica_registry_resolve(mica_registry_t *reg, mica_ctx_t *ctx, const char *service,
                          mica_instances_t **out)
{
    mica__svc_t *svc;
    int rc = followed_view(reg, service, &svc);
    if (rc != 0)
        return rc;
    if ((rc = mica_event_wait(&svc->first, ctx, MICA_NO_DEADLINE)) != 0)
        return rc;
    mica_instances_t *l = mica__calloc(1, sizeof(*l));
    if (!l)
        return MICA_ENOMEM;
    pthread_mutex_lock(&reg->lock);
    if (!svc->have) {
        rc = MICA_EUNAVAILABLE;
    } else if (svc->n && !(l->v = list_copy(svc->v, svc->n, svc->name))) {
        rc = MICA_ENOMEM;
    } else {
        l->n = svc->n;
        l->stale = svc->stale;
    }
    pthread_mutex_unlock(&reg->lock);
    if (rc != 0) {
        mica_instances_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

void mica_instances_free(mica_instances_t *l)
{
    if (l) {
        mica__free(l->v);
        mica__free(l);
    }
}

int mica_registry_watch(mica_registry_t *reg, const char *service, mica_event_t *ev)
{
    if (!reg || !ev || !mica__name_ok(service))
        return MICA_EINVAL;
    pthread_mutex_lock(&reg->lock);
    mica__svc_t *svc = svc_get(reg, service);
    mica_event_t **e = svc ? mica__realloc(svc->evs, (svc->nevs + 1) * sizeof(*e)) : NULL;
    if (e) {
        e[svc->nevs++] = ev;
        svc->evs = e;
    }
    pthread_mutex_unlock(&reg->lock);
    if (!e)
        return MICA_ENOMEM;
    return mica_worker_id() >= 0 ? svc_follow(svc) : 0; /* else: at the first resolve */
}

void mica_registry_unwatch(mica_registry_t *reg, const char *service, mica_event_t *ev)
{
    pthread_mutex_lock(&reg->lock);
    mica__list_foreach(n, &reg->svcs)
    {
        mica__svc_t *s = mica__list_entry(n, mica__svc_t, link);
        for (size_t i = 0; s->name && strcmp(s->name, service) == 0 && i < s->nevs; i++)
            if (s->evs[i] == ev) {
                s->evs[i] = s->evs[--s->nevs];
                break;
            }
    }
    pthread_mutex_unlock(&reg->lock);
}

void mica_registry_stats(const mica_registry_t *reg, mica_registry_stats_t *out)
{
    const mica__reg_stats_t *s = &reg->st;
#define L(f) atomic_load_explicit(&s->f, memory_order_relaxed)
    *out = (mica_registry_stats_t){
        .registrations = L(registrations),
        .reregistrations = L(reregistrations),
        .deregistrations = L(deregistrations),
        .lease_grants = L(lease_grants),
        .lease_losses = L(lease_losses),
        .watch_restarts = L(watch_restarts),
        .compactions = L(compactions),
        .outages = L(outages),
        .updates = L(updates),
        .errors = L(errors),
        .reachable = L(reachable),
    };
#undef L
}

/* ---- resolver schemes: etcd:///service, file:///path#service -------------------------- */

typedef struct rsv {
    mica_registry_t *reg;
    mica__svc_t *svc;
    mica_resolver_t *r;
    bool own; /* a private registry (file): stopped with the resolver */
} rsv_t;

static int attach(mica_registry_t *reg, bool own, const char *service, mica_resolver_t *r,
                  void **state)
{
    rsv_t *s = mica__calloc(1, sizeof(*s));
    if (!s)
        return MICA_ENOMEM;
    pthread_mutex_lock(&reg->lock);
    mica__svc_t *svc = svc_get(reg, service);
    mica_resolver_t **rs = svc ? mica__realloc(svc->rs, (svc->nrs + 1) * sizeof(*rs)) : NULL;
    if (rs) {
        rs[svc->nrs++] = r;
        svc->rs = rs;
        if (svc->have)
            feed(svc, r);
    }
    pthread_mutex_unlock(&reg->lock);
    if (!rs) {
        mica__free(s);
        return MICA_ENOMEM;
    }
    *s = (rsv_t){.reg = reg, .svc = svc, .r = r, .own = own};
    *state = s;
    return 0;
}

static int etcd_res_init(mica_resolver_t *r, const mica_target_t *t,
                         const mica_resolver_opts_t *opts, void **state)
{
    if (*t->authority || !mica__name_ok(t->endpoint)) {
        mica__log_error("etcd resolver: the target is etcd:///<service>", "endpoint", t->endpoint);
        return MICA_EINVAL;
    }
    pthread_mutex_lock(&default_lock);
    mica_registry_t *reg = default_etcd;
    if (reg)
        atomic_fetch_add(&reg->refs, 1);
    pthread_mutex_unlock(&default_lock);
    if (!reg) {
        mica__log_error("etcd resolver: no etcd registry: make one with mica_registry_new() first",
                        "svc", t->endpoint);
        return MICA_EINVAL;
    }
    int rc = attach(reg, false, t->endpoint, r, state);
    if (rc != 0)
        registry_unref(reg);
    return rc;
}

static int file_res_init(mica_resolver_t *r, const mica_target_t *t,
                         const mica_resolver_opts_t *opts, void **state)
{
    const char *hash = strrchr(t->endpoint, '#');
    if (*t->authority || !hash || hash == t->endpoint || !mica__name_ok(hash + 1)) {
        mica__log_error("file resolver: the target is file:///<absolute path>#<service>",
                        "endpoint", t->endpoint);
        return MICA_EINVAL;
    }
    char *url = mica__aprintf("file:///%.*s", (int)(hash - t->endpoint), t->endpoint);
    if (!url)
        return MICA_ENOMEM;
    mica_registry_t *reg;
    int rc = registry_open(&reg, NULL, url, NULL);
    mica__free(url);
    if (rc != 0)
        return rc;
    if ((rc = attach(reg, true, hash + 1, r, state)) != 0)
        registry_unref(reg);
    return rc;
}

static void res_start(void *state)
{
    rsv_t *s = state;
    int rc = svc_follow(s->svc);
    if (rc != 0)
        mica__svc_unreachable(s->svc, rc);
}

static void res_stop(void *state, int worker)
{
    rsv_t *s = state;
    if (s->own && !atomic_exchange(&s->reg->stopped, true) && s->reg->ops->stop)
        s->reg->ops->stop(s->reg->state);
}

static void res_destroy(void *state)
{
    rsv_t *s = state;
    mica_registry_t *reg = s->reg;
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < s->svc->nrs; i++)
        if (s->svc->rs[i] == s->r) {
            s->svc->rs[i] = s->svc->rs[--s->svc->nrs];
            break;
        }
    pthread_mutex_unlock(&reg->lock);
    registry_unref(reg);
    mica__free(s);
}

static const mica_resolver_ops_t etcd_scheme = {
    .init = etcd_res_init,
    .start = res_start,
    .stop = res_stop,
    .destroy = res_destroy,
};

static const mica_resolver_ops_t file_scheme = {
    .init = file_res_init,
    .start = res_start,
    .stop = res_stop,
    .destroy = res_destroy,
};

static pthread_once_t schemes_once = PTHREAD_ONCE_INIT;

static void schemes_register(void)
{
    /* EEXIST would mean an application took the name first: its choice stands. */
    mica_resolver_register("etcd", &etcd_scheme);
    mica_resolver_register("file", &file_scheme);
}

int mica_registry_schemes_init(void)
{
    pthread_once(&schemes_once, schemes_register);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * The Redis client's and the cache's counters as Prometheus metrics
 * (include/mica/metrics.h): a collector reads mica_redis_stats() /
 * mica_cache_stats() at each scrape, labelled with the name the app gave.
 * Nothing is added to the request path. An export is forgotten when its
 * client or cache is freed (the frees call mica__store_unexport()).
 */
#include <pthread.h>
#include <string.h>

#include "common/alloc.h"
#include "mica/cache.h"
#include "mica/metrics.h"
#include "mica/redis.h"
#include "store/internal.h"

typedef struct export {
    struct export *next;
    const void *obj; /* the client or cache */
    bool redis;
    mica_metrics_t *reg;
    char name[64];
} export_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static export_t *exports;

static void counter(mica_collect_t *out, const char *metric, const char *help, const char *label,
                    const char *name, uint64_t v)
{
    const char *l[] = {label}, *val[] = {name};
    mica_collect_sample(out, MICA_METRIC_COUNTER, metric, help, l, val, 1, (double)v);
}

static void collect(mica_collect_t *out, void *arg)
{
    export_t *e = arg;
    if (e->redis) {
        mica_redis_stats_t s;
        mica_redis_stats(e->obj, &s);
        const char *n = e->name;
        counter(out, "mica_redis_commands_total", "Commands sent.", "client", n, s.commands);
        counter(out, "mica_redis_batches_total", "Writes of the pipelined connections.", "client",
                n, s.batches);
        counter(out, "mica_redis_error_replies_total", "Error replies.", "client", n,
                s.error_replies);
        counter(out, "mica_redis_failures_total",
                "Calls failed by connection loss, read timeout or reconnecting.", "client", n,
                s.failures);
        counter(out, "mica_redis_timeouts_total", "Calls whose ctx ended before their reply.",
                "client", n, s.timeouts);
        counter(out, "mica_redis_connects_total", "Connections opened.", "client", n, s.connects);
        counter(out, "mica_redis_connect_errors_total", "Failed connection attempts.", "client", n,
                s.connect_errors);
        counter(out, "mica_redis_connections_lost_total", "Connections closed by an error.",
                "client", n, s.conns_lost);
        return;
    }
    mica_cache_stats_t s;
    mica_cache_stats(e->obj, &s);
    const char *n = e->name;
    counter(out, "mica_cache_hits_total", "Values found.", "cache", n, s.hits);
    counter(out, "mica_cache_negative_hits_total", "Cached not-founds found.", "cache", n,
            s.negative_hits);
    counter(out, "mica_cache_misses_total", "Lookups that had to load or wait for a load.",
            "cache", n, s.misses);
    counter(out, "mica_cache_loads_total", "Loader runs.", "cache", n, s.loads);
    counter(out, "mica_cache_shared_loads_total", "Misses that waited for another caller's load.",
            "cache", n, s.shared);
    counter(out, "mica_cache_load_errors_total", "Loader failures (not cached).", "cache", n,
            s.load_errors);
    counter(out, "mica_cache_backend_errors_total", "Backend gets and sets that failed.", "cache",
            n, s.backend_errors);
}

static int export(const void *obj, bool redis, mica_metrics_t *reg, const char *name)
{
    if (!obj || !name || !*name || strlen(name) >= sizeof(((export_t *)0)->name))
        return MICA_EINVAL;
    export_t *e = mica__calloc(1, sizeof(*e));
    if (!e)
        return MICA_ENOMEM;
    *e = (export_t){.obj = obj, .redis = redis, .reg = reg ? reg : mica_metrics_default()};
    memcpy(e->name, name, strlen(name) + 1);
    int rc = mica_metrics_add_collector(e->reg, collect, e);
    if (rc != 0) {
        mica__free(e);
        return rc;
    }
    pthread_mutex_lock(&lock);
    e->next = exports;
    exports = e;
    pthread_mutex_unlock(&lock);
    return 0;
}

int mica_redis_export_metrics(mica_redis_t *r, mica_metrics_t *reg, const char *name)
{
    return export(r, true, reg, name);
}

int mica_cache_export_metrics(mica_cache_t *c, mica_metrics_t *reg, const char *name)
{
    return export(c, false, reg, name);
}

void mica__store_unexport(const void *obj)
{
    pthread_mutex_lock(&lock);
    for (export_t **p = &exports; *p;) {
        export_t *e = *p;
        if (e->obj != obj) {
            p = &e->next;
            continue;
        }
        *p = e->next;
        mica_metrics_remove_collector(e->reg, collect, e);
        mica__free(e);
    }
    pthread_mutex_unlock(&lock);
}

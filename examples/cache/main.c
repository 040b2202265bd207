/* SPDX-License-Identifier: MIT */
/*
 * Cache-aside in front of a slow loader (one idea: mica/cache.h).
 *
 * A "database" takes 100 ms per lookup. 100 coroutines ask for the same
 * user at once: singleflight runs one lookup and they all share it. The
 * next read is a cache hit; a user that does not exist is looked up once
 * and then answered from the cache (negative caching).
 *
 * The cache is Redis when MICA_REDIS_URL is set (redis://127.0.0.1:6379),
 * else an in-process LRU. The output is the same either way:
 *
 *     $ build/examples/cache
 *     $ MICA_REDIS_URL=redis://127.0.0.1:6379 build/examples/cache
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/cache.h"
#include "mica/redis.h"
#include "mica/runtime.h"
#include "mica/sync.h"

static mica_runtime_t *rt;
static mica_cache_t *cache;
static int db_lookups;
static int exit_code = 1;

/* The slow source of truth: 100 ms a lookup; users 1..999 exist. */
static int load_user(mica_ctx_t *ctx, const char *key, void *arg, mica_cache_value_t **out)
{
    db_lookups++;
    int rc = mica_ctx_sleep(ctx, 100);
    if (rc != 0)
        return rc;
    long id = strtol(key + strlen("user:"), NULL, 10);
    if (id < 1 || id > 999)
        return MICA_ENOTFOUND;
    char json[64];
    int n = snprintf(json, sizeof(json), "{\"id\":%ld,\"name\":\"user %ld\"}", id, id);
    return mica_cache_value_new(out, json, (size_t)n);
}

static mica_wg_t *wg;
static int same;

static void reader(void *arg)
{
    mica_cache_value_t *v;
    if (mica_cache_get(cache, NULL, "user:42", load_user, NULL, &v) == 0) {
        same += strcmp(v->data, "{\"id\":42,\"name\":\"user 42\"}") == 0;
        mica_cache_value_unref(v);
    }
    mica_wg_done(wg);
}

static void run(int worker, void *arg)
{
    if (worker != 0)
        return;
    mica_cache_del(cache, NULL, "user:42"); /* a clean start, also in a shared Redis */
    mica_cache_del(cache, NULL, "user:0");

    mica_wg_new(&wg);
    mica_wg_add(wg, 100);
    int64_t t0 = mica_now_ms();
    for (int i = 0; i < 100; i++)
        mica_go(reader, NULL);
    mica_wg_wait(wg, NULL);
    mica_wg_free(wg);
    printf("100 concurrent gets of user:42: %d got the user, %d database lookup(s)%s\n", same,
           db_lookups, mica_now_ms() - t0 < 1000 ? ", in about 100 ms" : "");

    mica_cache_value_t *v;
    t0 = mica_now_ms();
    int rc = mica_cache_get(cache, NULL, "user:42", load_user, NULL, &v);
    printf("next get of user:42: %s, %s\n", rc == 0 ? v->data : mica_err_name(rc),
           mica_now_ms() - t0 < 50 ? "from the cache" : "slow");
    if (rc == 0)
        mica_cache_value_unref(v);

    int before = db_lookups;
    int rc1 = mica_cache_get(cache, NULL, "user:0", load_user, NULL, &v);
    int rc2 = mica_cache_get(cache, NULL, "user:0", load_user, NULL, &v);
    printf("two gets of user:0: %s and %s, %d database lookup(s) (\"not found\" is cached too)\n",
           mica_err_name(rc1), mica_err_name(rc2), db_lookups - before);

    mica_cache_stats_t st;
    mica_cache_stats(cache, &st);
    printf("stats: hits=%llu negative_hits=%llu misses=%llu loads=%llu shared=%llu\n",
           (unsigned long long)st.hits, (unsigned long long)st.negative_hits,
           (unsigned long long)st.misses, (unsigned long long)st.loads,
           (unsigned long long)st.shared);
    exit_code = db_lookups == 2 && same == 100 ? 0 : 1;
    mica_runtime_stop(rt);
}

int main(void)
{
    mica_runtime_opts_t o = {.workers = 1};
    if (mica_runtime_new(&rt, &o) != 0)
        return 1;
    mica_redis_t *r = NULL;
    mica_cache_backend_t be;
    const char *url = getenv("MICA_REDIS_URL");
    int rc = url && *url ? mica_redis_new(&r, rt, url, NULL) : 0;
    if (rc == 0)
        rc = r ? mica_cache_backend_redis(&be, r, "example:cache:")
               : mica_cache_backend_lru(&be, rt, 10000, 16 << 20);
    if (rc == 0)
        rc = mica_cache_new(&cache, rt, be, &(mica_cache_opts_t){.ttl_ms = 60000});
    if (rc != 0) {
        fprintf(stderr, "cache: %s\n", mica_strerror(rc));
        return 1;
    }
    mica_runtime_on_start(rt, run, NULL);
    mica_runtime_run(rt);
    mica_cache_free(cache);
    mica_redis_free(r);
    mica_runtime_free(rt);
    return exit_code;
}

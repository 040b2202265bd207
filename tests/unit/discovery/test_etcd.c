/* SPDX-License-Identifier: MIT */
/*
 * The etcd registry against a real etcd 3.4 on loopback (TTL 2 s):
 * instances registered under one lease, kept alive past its TTL, resolve
 * through "etcd:///" targets, one key each; an instance whose keep-alives
 * stop is gone within TTL + 1 s and comes back under a new lease; after
 * etcd restarts (data kept, and data wiped) every instance is written
 * again by itself within 2 s of etcd answering, under a new lease, while
 * resolvers keep the list they had and say so once (log line, counters,
 * /metrics); a watch cancelled by compaction lists again and loses
 * nothing. etcd is started and stopped from the offload pool, so no
 * worker blocks while it boots.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "discovery/internal.h"
#include "disc_helpers.h"
#include "mica/log.h"
#include "mica/metrics.h"
#include "mica/registry.h"
#include "mica/resolver.h"
#include "mica/sync.h"

static struct etcd_server etcd;

static int group_setup(void **state)
{
    if (etcd_new(&etcd) != 0) {
        fprintf(stderr, "test_etcd: cannot start etcd (apt-get install etcd-server etcd-client)\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    etcd_free(&etcd);
    return 0;
}

/* ---- etcd control on the offload pool ------------------------------------------------ */

enum { STOP, START, WIPE_START, COMPACT_CHURN };

struct ctl {
    int op;
    int rc;
    int64_t done_ms; /* when the op ended (etcd answering, for starts) */
    const char *prefix;
};

static int ctl_run(void *arg)
{
    struct ctl *c = arg;
    switch (c->op) {
    case STOP:
        etcd_stop(&etcd, 1);
        c->rc = 0;
        break;
    case START:
        c->rc = etcd_start(&etcd);
        break;
    case WIPE_START:
        etcd_wipe(&etcd);
        c->rc = etcd_start(&etcd);
        break;
    case COMPACT_CHURN: {
        /* changes the list, then compacts everything up to now */
        char cmd[512];
        snprintf(cmd, sizeof(cmd),
                 "put %s/user/c1 '{\"id\":\"c1\",\"addr\":\"127.0.0.1:7101\"}'", c->prefix);
        c->rc = etcdctl(&etcd, cmd);
        snprintf(cmd, sizeof(cmd),
                 "put %s/user/c2 '{\"id\":\"c2\",\"addr\":\"127.0.0.1:7102\"}'", c->prefix);
        c->rc |= etcdctl(&etcd, cmd);
        snprintf(cmd, sizeof(cmd), "del %s/user/c1", c->prefix);
        c->rc |= etcdctl(&etcd, cmd);
        char ep[64];
        snprintf(ep, sizeof(ep), "127.0.0.1:%d", etcd.client_port);
        snprintf(cmd, sizeof(cmd),
                 "rev=$(ETCDCTL_API=3 etcdctl --endpoints=%s endpoint status -w json | "
                 "sed 's/.*\"revision\":\\([0-9]*\\).*/\\1/'); "
                 "ETCDCTL_API=3 etcdctl --endpoints=%s compact $rev >/dev/null",
                 ep, ep);
        c->rc |= system(cmd);
        break;
    }
    }
    c->done_ms = wall_ms();
    return 0;
}

static int ctl(int op, const char *prefix, int64_t *done_ms)
{
    struct ctl c = {.op = op, .prefix = prefix};
    int res;
    int rc = mica_offload(NULL, NULL, ctl_run, &c, &res);
    if (done_ms)
        *done_ms = c.done_ms;
    return rc ? rc : c.rc;
}

/* ---- helpers --------------------------------------------------------------------------- */

struct fx {
    mica_registry_t *reg;
    mica_resolver_t *r;
    mica_event_t ev;
    char prefix[32];
};

static void fx_new(struct fx *f, mica_runtime_t *rt, const char *prefix)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->prefix, sizeof(f->prefix), "%s", prefix);
    char url[128];
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d%s", etcd.client_port, prefix);
    mica_registry_opts_t o = {.ttl_s = 2, .call_timeout_ms = 1000, .relist_grace_ms = 4000};
    assert_int_equal(mica_registry_new(&f->reg, rt, url, &o), 0);
    assert_int_equal(mica_resolver_new(&f->r, rt, "etcd:///user", NULL), 0);
}

static void fx_free(struct fx *f)
{
    mica_resolver_free(f->r);
    mica_registry_free(f->reg);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The resolver's addresses, sorted, as "addr,addr" into buf (the list itself is by id). */
static const char *addrs(mica_resolver_t *r, char *buf, size_t size)
{
    mica_endpoints_t *l = mica_resolver_get(r);
    const char *v[64];
    size_t n = 0, k = 0;
    for (size_t i = 0; l && i < l->n && n < 64; i++)
        v[n++] = l->eps[i].addr;
    qsort(v, n, sizeof(v[0]), cmp_str);
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(buf + k, k < size ? size - k : 0, "%s%s", i ? "," : "", v[i]);
    mica_endpoints_unref(l);
    return buf;
}

/* Waits until the resolver's list reads `want`; returns 0 or -1 after limit_ms. */
static int wait_addrs(struct fx *f, const char *want, int64_t limit_ms)
{
    int64_t end = wall_ms() + limit_ms;
    char buf[512];
    for (;;) {
        mica_event_reset(&f->ev);
        if (strcmp(addrs(f->r, buf, sizeof(buf)), want) == 0)
            return 0;
        int64_t left = end - wall_ms();
        if (left <= 0) {
            fprintf(stderr, "wait_addrs: have [%s], want [%s]\n", buf, want);
            return -1;
        }
        mica_event_wait(&f->ev, NULL, mica_deadline_in(left < 50 ? left : 50));
    }
}

static uint64_t stat_registrations(mica_registry_t *reg)
{
    mica_registry_stats_t st;
    mica_registry_stats(reg, &st);
    return st.registrations;
}

/* Waits until the registry has written more than `n` records; returns when (wall ms) or -1. */
static int64_t wait_written(mica_registry_t *reg, uint64_t n, int64_t limit_ms)
{
    int64_t end = wall_ms() + limit_ms;
    while (stat_registrations(reg) <= n) {
        if (wall_ms() > end)
            return -1;
        mica_sleep_ms(10);
    }
    return wall_ms();
}

/* The lease a key is attached to (etcdctl's "Lease" field), or 0 (no key, no lease). */
static long long key_lease(const char *prefix, const char *key)
{
    char cmd[256], line[256];
    snprintf(cmd, sizeof(cmd),
             "ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:%d get %s/%s -w fields 2>/dev/null",
             etcd.client_port, prefix, key);
    FILE *p = popen(cmd, "r");
    long long lease = 0;
    while (p && fgets(line, sizeof(line), p))
        if (strncmp(line, "\"Lease\" : ", 10) == 0)
            lease = strtoll(line + 10, NULL, 10);
    if (p)
        pclose(p);
    return lease;
}

/* Counts log lines containing `want` (the sink runs on logging threads), echoing them. */
struct log_watch {
    const char *want;
    atomic_int seen;
};

static void log_sink(mica_log_level_t level, const char *line, size_t len, void *arg)
{
    struct log_watch *w = arg;
    if (strstr(line, w->want))
        atomic_fetch_add(&w->seen, 1);
    fprintf(stderr, "%.*s\n", (int)len, line);
}

/* The default metrics registry's text has `sample` (a whole line). Main thread only. */
static bool metrics_have(const char *sample)
{
    char *text;
    size_t len;
    if (mica_metrics_write(NULL, &text, &len) != 0)
        return false;
    bool ok = false;
    for (const char *p = text; (p = strstr(p, sample)); p++)
        if ((p == text || p[-1] == '\n') && p[strlen(sample)] == '\n')
            ok = true;
    if (!ok)
        fprintf(stderr, "metrics: no line \"%s\"\n", sample);
    mica_metrics_text_free(text);
    return ok;
}

static const mica_instance_t u1 = {.service = "user", .id = "u1", .addr = "127.0.0.1:7001",
                                   .zone = "a"};
static const mica_instance_t u2 = {.service = "user", .id = "u2", .addr = "127.0.0.1:7002",
                                   .weight = 2};

/* ---- tests ------------------------------------------------------------------------------- */

static void register_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(mica_resolver_watch(f->r, &f->ev), 0);
    EXPECT_EQ(mica_resolver_start(f->r), 0);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, slack_ms(5000), &ctx);
    EXPECT_EQ(mica_registry_register(f->reg, ctx, &u1), 0);
    EXPECT_EQ(mica_registry_register(f->reg, ctx, &u2), 0);
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001,127.0.0.1:7002", slack_ms(2000)), 0);
    mica_endpoints_t *l = mica_resolver_get(f->r);
    if (EXPECT(l && l->n == 2)) {
        EXPECT(l->eps[0].zone && strcmp(l->eps[0].zone, "a") == 0);
        EXPECT_EQ(l->eps[1].weight, 2);
    }
    mica_endpoints_unref(l);
    /* the key is the instance's own */
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "get %s/user/u1 --print-value-only | grep -q 7001", f->prefix);
    EXPECT_EQ(etcdctl(&etcd, cmd), 0);
    /* re-registering the same id replaces its key: no duplicate */
    mica_instance_t moved = u2;
    moved.addr = "127.0.0.1:7003";
    EXPECT_EQ(mica_registry_register(f->reg, ctx, &moved), 0);
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001,127.0.0.1:7003", slack_ms(2000)), 0);
    /* mica_registry_watch(): an event set at each change of the service */
    mica_event_t wev = MICA_EVENT_INIT;
    EXPECT_EQ(mica_registry_watch(f->reg, "user", &wev), 0);
    mica_event_reset(&wev);
    EXPECT_EQ(mica_registry_deregister(f->reg, ctx, "user", "u1"), 0);
    EXPECT_EQ(mica_event_wait(&wev, ctx, mica_deadline_in(slack_ms(2000))), 0);
    mica_registry_unwatch(f->reg, "user", &wev);
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7003", slack_ms(2000)), 0);
    mica_instances_t *in;
    if (EXPECT_EQ(mica_registry_resolve(f->reg, ctx, "user", &in), 0)) {
        EXPECT(in->n == 1 && strcmp(in->v[0].id, "u2") == 0 && !in->stale);
        mica_instances_free(in);
    }
    mica_ctx_free(ctx);
    mica_registry_stats_t st;
    mica_registry_stats(f->reg, &st);
    EXPECT_EQ(st.lease_grants, 1);
    EXPECT_EQ(st.lease_losses, 0);
    EXPECT_EQ(st.deregistrations, 1);
    mica_resolver_unwatch(f->r, &f->ev);
}

static void test_registered_instances_resolve_by_name(void **state)
{
    mica_runtime_t *rt = disc_runtime(2);
    struct fx f;
    fx_new(&f, rt, "/t1");
    int rc = disc_run(rt, register_body, &f);
    fx_free(&f);
    mica_runtime_free(rt);
    assert_int_equal(rc, 0);
    expect_no_failure();
    /* the shutdown deregistered what was left */
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "get %s/user/u2 --print-value-only | grep -q 7003", f.prefix);
    assert_int_not_equal(etcdctl(&etcd, cmd), 0);
}

static void restart_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(mica_resolver_watch(f->r, &f->ev), 0);
    EXPECT_EQ(mica_resolver_start(f->r), 0);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, slack_ms(5000), &ctx);
    EXPECT_EQ(mica_registry_register(f->reg, ctx, &u1), 0);
    EXPECT_EQ(mica_registry_register(f->reg, ctx, &u2), 0);
    mica_ctx_free(ctx);
    const char *both = "127.0.0.1:7001,127.0.0.1:7002";
    if (!EXPECT_EQ(wait_addrs(f, both, slack_ms(2000)), 0))
        return;

    for (int round = 0; round < 2; round++) {
        /* etcd goes away for longer than the lease's TTL */
        uint64_t written = stat_registrations(f->reg);
        long long old_lease = key_lease(f->prefix, "user/u2");
        EXPECT(old_lease != 0);
        EXPECT_EQ(ctl(STOP, NULL, NULL), 0);
        mica_sleep_ms(3000);
        /* static stability: the resolver still has both, and the registry says it is stale */
        char buf[256];
        EXPECT(strcmp(addrs(f->r, buf, sizeof(buf)), both) == 0);
        mica_instances_t *in = NULL;
        if (EXPECT_EQ(mica_registry_resolve(f->reg, NULL, "user", &in), 0))
            EXPECT(in->stale && in->n == 2);
        mica_instances_free(in);
        mica_registry_stats_t st;
        mica_registry_stats(f->reg, &st);
        EXPECT(!st.reachable && st.outages >= (uint64_t)round + 1);

        int64_t up_ms;
        EXPECT_EQ(ctl(round == 0 ? START : WIPE_START, NULL, &up_ms), 0);
        /* both instances written again, within 2 s of etcd answering */
        int64_t back = wait_written(f->reg, written + 1, slack_ms(5000));
        if (EXPECT(back > 0)) {
            fprintf(stderr, "restart %s: re-registered %lld ms after etcd answered\n",
                    round == 0 ? "(data kept)" : "(data wiped)", (long long)(back - up_ms));
            EXPECT(back - up_ms < slack_ms(2000));
        }
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "get %s/user/u2 --print-value-only | grep -q 7002", f->prefix);
        EXPECT_EQ(etcdctl(&etcd, cmd), 0);
        /* under a new lease: the old one expired by our clock (with data kept, a restarted
         * etcd even revives it for a TTL; using it would lose the keys at its next expiry) */
        long long new_lease = key_lease(f->prefix, "user/u2");
        EXPECT(new_lease != 0 && new_lease != old_lease);
        EXPECT_EQ(key_lease(f->prefix, "user/u1"), new_lease);
        /* the resolver never lost them */
        EXPECT(strcmp(addrs(f->r, buf, sizeof(buf)), both) == 0);
        mica_registry_stats(f->reg, &st);
        EXPECT(st.lease_losses >= (uint64_t)round + 1);
        EXPECT(st.lease_grants >= (uint64_t)round + 2);
        EXPECT(st.reregistrations >= 2 * ((uint64_t)round + 1));
        EXPECT(st.watch_restarts >= (uint64_t)round + 1);
        /* and the list is current again: a change shows */
        mica_instance_t u3 = {.service = "user", .id = "u3", .addr = "127.0.0.1:7009"};
        EXPECT_EQ(mica_registry_register(f->reg, NULL, &u3), 0);
        EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7009", slack_ms(2000)),
                  0);
        EXPECT_EQ(mica_registry_deregister(f->reg, NULL, "user", "u3"), 0);
        EXPECT_EQ(wait_addrs(f, both, slack_ms(2000)), 0);
    }
    mica_resolver_unwatch(f->r, &f->ev);
}

static void test_instances_come_back_by_themselves_after_etcd_restarts(void **state)
{
    mica_runtime_t *rt = disc_runtime(2);
    struct fx f;
    fx_new(&f, rt, "/t2");
    struct log_watch lw = {.want = "registry unreachable: clients keep the endpoints last seen"};
    mica_log_set_sink(log_sink, &lw);
    int rc = disc_run(rt, restart_body, &f);
    mica_log_set_sink(NULL, NULL);
    /* each outage said once that clients keep what they saw; the counters are scraped */
    EXPECT_EQ(atomic_load(&lw.seen), 2);
    char line[160];
    snprintf(line, sizeof(line), "mica_registry_reachable{registry=\"etcd://127.0.0.1:%d/t2\"} 1",
             etcd.client_port);
    EXPECT(metrics_have(line));
    fx_free(&f);
    mica_runtime_free(rt);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

static void compaction_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(mica_resolver_watch(f->r, &f->ev), 0);
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &u1), 0);
    /* The watch will start 1.5 s after its list: meanwhile the list changes
     * and the history is compacted, so the watch's revision is gone. */
    /* (the window is for etcdctl, which no sanitizer slows: stretched a little, not 20x) */
    atomic_store(&mica__etcd_watch_delay_ms, (int)(slack_ms(1500) < 4000 ? slack_ms(1500) : 4000));
    EXPECT_EQ(mica_resolver_start(f->r), 0);
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001", slack_ms(2000)), 0);
    EXPECT_EQ(ctl(COMPACT_CHURN, f->prefix, NULL), 0);
    atomic_store(&mica__etcd_watch_delay_ms, 0);
    /* The cancelled watch lists again: c2 is there, c1 (put then deleted) is not. */
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001,127.0.0.1:7102", slack_ms(4000)), 0);
    mica_registry_stats_t st;
    mica_registry_stats(f->reg, &st);
    EXPECT_EQ(st.compactions, 1);
    EXPECT(st.watch_restarts >= 1);
    /* and it goes on watching */
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &u2), 0);
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7102", slack_ms(2000)), 0);
    mica_resolver_unwatch(f->r, &f->ev);
}

static void test_a_watch_cancelled_by_compaction_loses_nothing(void **state)
{
    mica_runtime_t *rt = disc_runtime(2);
    struct fx f;
    fx_new(&f, rt, "/t3");
    int rc = disc_run(rt, compaction_body, &f);
    char line[160];
    snprintf(line, sizeof(line),
             "mica_registry_compactions_total{registry=\"etcd://127.0.0.1:%d/t3\"} 1",
             etcd.client_port);
    EXPECT(metrics_have(line));
    fx_free(&f);
    mica_runtime_free(rt);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

/* A second registry (another process, as far as etcd knows) that hangs. */
struct hang {
    struct fx f;
    mica_registry_t *other;
};

static void hang_body(void *arg)
{
    struct hang *h = arg;
    struct fx *f = &h->f;
    EXPECT_EQ(mica_resolver_watch(f->r, &f->ev), 0);
    EXPECT_EQ(mica_resolver_start(f->r), 0);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, slack_ms(5000), &ctx);
    int64_t t_reg = wall_ms();
    EXPECT_EQ(mica_registry_register(f->reg, ctx, &u1), 0);
    EXPECT_EQ(mica_registry_register(h->other, ctx, &u2), 0);
    mica_ctx_free(ctx);
    const char *both = "127.0.0.1:7001,127.0.0.1:7002";
    if (!EXPECT_EQ(wait_addrs(f, both, slack_ms(2000)), 0))
        return;
    /* the other process stops keeping its lease alive: its instance is gone within TTL + 1 s */
    int64_t t0 = wall_ms();
    atomic_store(&mica__etcd_paused, h->other);
    EXPECT_EQ(wait_addrs(f, "127.0.0.1:7001", slack_ms(3000)), 0);
    fprintf(stderr, "an instance without keep-alives left the resolver after %lld ms (TTL 2 s)\n",
            (long long)(wall_ms() - t0));
    /* meanwhile ours lives on one lease for longer than its TTL: kept alive on the stream */
    int64_t past_ttl = t_reg + 2500 - wall_ms();
    if (past_ttl > 0)
        mica_sleep_ms(past_ttl);
    mica_registry_stats_t st;
    mica_registry_stats(f->reg, &st);
    EXPECT(st.lease_grants == 1 && st.lease_losses == 0);
    EXPECT_EQ(etcdctl(&etcd, "get /t4/user/u1 --print-value-only | grep -q 7001"), 0);
    /* the hung process wakes: its lease expired, so it takes a new one and is back */
    uint64_t written = stat_registrations(h->other);
    atomic_store(&mica__etcd_paused, NULL);
    EXPECT(wait_written(h->other, written, slack_ms(2000)) > 0);
    EXPECT_EQ(wait_addrs(f, both, slack_ms(2000)), 0);
    mica_registry_stats(h->other, &st);
    EXPECT(st.lease_grants == 2 && st.lease_losses == 1 && st.reregistrations == 1);
    mica_resolver_unwatch(f->r, &f->ev);
}

static void test_an_instance_that_stops_keeping_its_lease_alive_disappears(void **state)
{
    mica_runtime_t *rt = disc_runtime(2);
    struct hang h;
    fx_new(&h.f, rt, "/t4");
    char url[128];
    /* the same prefix; another URL text, so that its metrics have their own label */
    snprintf(url, sizeof(url), "etcd://127.0.0.1:%d/t4/", etcd.client_port);
    mica_registry_opts_t o = {.ttl_s = 2, .call_timeout_ms = 1000};
    assert_int_equal(mica_registry_new(&h.other, rt, url, &o), 0);
    int rc = disc_run(rt, hang_body, &h);
    atomic_store(&mica__etcd_paused, NULL);
    char line[160];
    snprintf(line, sizeof(line),
             "mica_registry_lease_losses_total{registry=\"etcd://127.0.0.1:%d/t4/\"} 1",
             etcd.client_port);
    EXPECT(metrics_have(line));
    mica_registry_free(h.other);
    fx_free(&h.f);
    mica_runtime_free(rt);
    assert_int_equal(rc, 0);
    expect_no_failure();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registered_instances_resolve_by_name),
        cmocka_unit_test(test_a_watch_cancelled_by_compaction_loses_nothing),
        cmocka_unit_test(test_an_instance_that_stops_keeping_its_lease_alive_disappears),
        cmocka_unit_test(test_instances_come_back_by_themselves_after_etcd_restarts),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

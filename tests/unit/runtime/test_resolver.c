/* SPDX-License-Identifier: MIT */
/* Resolvers: targets, the scheme registry, publication across workers, static and DNS, round robin. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "mica/resolver.h"
#include "mica/sync.h"
#include "helpers.h"

/* helpers.h's EXPECT_EQ evaluates its arguments twice; calls with effects
 * (a gRPC call, an update) must run once, so this file evaluates once. */
static inline int expect_eq1(long long a, long long b, const char *file, int line, const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}
#undef EXPECT_EQ
#define EXPECT_EQ(a, b) expect_eq1((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

/* ---- targets ---------------------------------------------------------------------- */

static void expect_target(const char *target, const char *scheme, const char *authority,
                          const char *endpoint)
{
    char buf[128];
    mica_target_t t;
    assert_int_equal(mica_target_parse(target, &t, buf, sizeof(buf)), 0);
    assert_string_equal(t.scheme, scheme);
    assert_string_equal(t.authority, authority);
    assert_string_equal(t.endpoint, endpoint);
}

static void test_targets_split_into_scheme_authority_and_endpoint(void **state)
{
    expect_target("dns:///localhost:50051", "dns", "", "localhost:50051");
    expect_target("DNS://8.8.8.8/users.svc:80", "dns", "8.8.8.8", "users.svc:80");
    expect_target("static:///127.0.0.1:1,[::1]:2", "static", "", "127.0.0.1:1,[::1]:2");
    expect_target("etcd:///user", "etcd", "", "user");
    expect_target("127.0.0.1:50051", "static", "", "127.0.0.1:50051"); /* a literal */
    expect_target("[::1]:50051", "static", "", "[::1]:50051");
    expect_target("users.svc:50051", "dns", "", "users.svc:50051"); /* a name */
    char buf[64];
    mica_target_t t;
    assert_int_equal(mica_target_parse("", &t, buf, sizeof(buf)), MICA_EINVAL);
    assert_int_equal(mica_target_parse("://x/y", &t, buf, sizeof(buf)), MICA_EINVAL);
    assert_int_equal(mica_target_parse("dns://no-slash", &t, buf, sizeof(buf)), MICA_EINVAL);
    assert_int_equal(mica_target_parse("d ns:///a:1", &t, buf, sizeof(buf)), MICA_EINVAL);
    assert_int_equal(mica_target_parse("dns:///localhost:50051", &t, buf, 8), MICA_ELIMIT);
}

/* ---- the static resolver and publication ----------------------------------------- */

static mica_runtime_t *new_rt(int workers)
{
    mica_runtime_t *rt;
    mica_runtime_opts_t o = {.workers = workers, .no_signals = true};
    assert_int_equal(mica_runtime_new(&rt, &o), 0);
    return rt;
}

static void test_static_lists_publish_once_per_change_and_keep_the_last_good_one(void **state)
{
    mica_runtime_t *rt = new_rt(1);
    mica_resolver_t *r;
    assert_int_equal(mica_resolver_new(&r, rt, "static:///127.0.0.1:1,127.0.0.1:2,127.0.0.1:1", NULL),
                     0);
    assert_string_equal(mica_resolver_scheme(r), "static");
    mica_endpoints_t *l = mica_resolver_get(r);
    assert_non_null(l);
    assert_int_equal(l->n, 2); /* the duplicate is dropped */
    assert_string_equal(l->eps[0].addr, "127.0.0.1:1");
    assert_string_equal(l->eps[1].addr, "127.0.0.1:2");
    assert_int_equal(l->eps[0].weight, 1);
    uint64_t gen = mica_resolver_generation(r);
    assert_int_equal(l->generation, gen);

    mica_event_t ev = MICA_EVENT_INIT;
    assert_int_equal(mica_resolver_watch(r, &ev), 0);
    mica_endpoint_t same[] = {{"127.0.0.1:1", 1, NULL, NULL}, {"127.0.0.1:2", 0, NULL, NULL}};
    assert_int_equal(mica_resolver_update(r, same, 2), 0); /* equal: nothing published */
    assert_int_equal(mica_resolver_generation(r), gen);
    assert_false(mica_event_is_set(&ev));

    mica_endpoint_t next[] = {{"[::1]:3", 5, "v=2", "b"}};
    assert_int_equal(mica_resolver_update(r, next, 1), 0);
    assert_true(mica_event_is_set(&ev));
    assert_true(mica_resolver_generation(r) > gen);
    mica_endpoints_t *l2 = mica_resolver_get(r);
    assert_int_equal(l2->n, 1);
    assert_string_equal(l2->eps[0].addr, "[::1]:3");
    assert_int_equal(l2->eps[0].weight, 5);
    assert_string_equal(l2->eps[0].metadata, "v=2");
    assert_string_equal(l2->eps[0].zone, "b");
    assert_string_equal(l->eps[1].addr, "127.0.0.1:2"); /* the old list lives while referenced */
    mica_endpoints_unref(l);

    mica_endpoint_t bad[] = {{"localhost:3", 1, NULL, NULL}};
    assert_int_equal(mica_resolver_update(r, bad, 1), MICA_EINVAL);
    mica_resolver_report_error(r, MICA_ENOTFOUND); /* a list exists: it stays */
    mica_endpoints_t *l3 = mica_resolver_get(r);
    assert_ptr_equal(l3, l2);
    assert_int_equal(l3->error, 0);
    mica_endpoints_unref(l3);
    mica_endpoints_unref(l2);
    mica_endpoint_t moved[] = {{"[::1]:3", 5, "v=2", "c"}}; /* another zone is a change */
    uint64_t gen2 = mica_resolver_generation(r);
    assert_int_equal(mica_resolver_update(r, moved, 1), 0);
    assert_true(mica_resolver_generation(r) > gen2);
    mica_resolver_unwatch(r, &ev);
    mica_resolver_free(r);

    assert_int_equal(mica_resolver_new(&r, rt, "static:///localhost:1", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&r, rt, "nope:///x", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&r, rt, "dns:///localhost:", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&r, rt, "dns:///[::1]", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&r, rt, "dns:///_grpc._tcp.localhost", NULL), 0); /* SRV */
    mica_resolver_free(r);
    mica_runtime_free(rt);
}

/* ---- a registered scheme runs init, start, stop and destroy --------------------------- */

static struct {
    atomic_int init, start, stop, destroy, resolve_now;
    mica_event_t stopped;
} fake;

static int fake_init(mica_resolver_t *r, const mica_target_t *t, const mica_resolver_opts_t *o,
                     void **state)
{
    atomic_fetch_add(&fake.init, 1);
    *state = r;
    return strcmp(t->endpoint, "bad") == 0 ? MICA_EINVAL : 0;
}

static void fake_start(void *state)
{
    atomic_fetch_add(&fake.start, 1);
    mica_endpoint_t e = {"127.0.0.1:7", 2, "from fake", NULL};
    EXPECT_EQ(mica_resolver_update(state, &e, 1), 0);
    /* runs until stop, as a watch loop would */
    EXPECT_EQ(mica_event_wait(&fake.stopped, NULL, mica_deadline_in(5000)), 0);
}

static void fake_stop(void *state, int worker)
{
    atomic_fetch_add(&fake.stop, 1);
    mica_event_set(&fake.stopped);
}

static void fake_resolve_now(void *state)
{
    atomic_fetch_add(&fake.resolve_now, 1);
}

static void fake_destroy(void *state)
{
    atomic_fetch_add(&fake.destroy, 1);
}

static const mica_resolver_ops_t fake_ops = {fake_init, fake_start, fake_stop, fake_resolve_now,
                                             fake_destroy};

struct fake_case {
    mica_resolver_t *r;
};

static void fake_body(void *arg)
{
    struct fake_case *c = arg;
    mica_event_t ev = MICA_EVENT_INIT;
    EXPECT_EQ(mica_resolver_watch(c->r, &ev), 0);
    EXPECT_EQ(mica_resolver_start(c->r), 0);
    EXPECT_EQ(mica_resolver_start(c->r), 0); /* once */
    EXPECT_EQ(mica_event_wait(&ev, NULL, mica_deadline_in(5000)), 0);
    mica_endpoints_t *l = mica_resolver_get(c->r);
    if (EXPECT(l && l->n == 1)) {
        EXPECT(strcmp(l->eps[0].addr, "127.0.0.1:7") == 0);
        EXPECT(strcmp(l->eps[0].metadata, "from fake") == 0);
    }
    mica_endpoints_unref(l);
    mica_resolver_resolve_now(c->r);
    mica_resolver_unwatch(c->r, &ev);
}

static void test_a_registered_scheme_resolves_through_its_callbacks(void **state)
{
    assert_int_equal(mica_resolver_register("fake", &fake_ops), 0);
    assert_int_equal(mica_resolver_register("FAKE", &fake_ops), MICA_EEXIST);
    assert_int_equal(mica_resolver_register("dns", &fake_ops), MICA_EEXIST);
    assert_int_equal(mica_resolver_register("no good", &fake_ops), MICA_EINVAL);
    struct fake_case c;
    mica_runtime_t *rt = new_rt(2);
    assert_int_equal(mica_resolver_new(&c.r, rt, "fake:///bad", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&c.r, rt, "Fake:///svc", NULL), 0);
    assert_int_equal(atomic_load(&fake.init), 2);
    mica_runtime_free(rt);

    struct run_once ro = {.body = fake_body, .arg = &c};
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&ro.rt, &o), 0);
    mica_resolver_free(c.r); /* made for the first runtime: make another for this one */
    assert_int_equal(mica_resolver_new(&c.r, ro.rt, "fake:///svc", NULL), 0);
    mica_runtime_on_start(ro.rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(ro.rt), 0);
    expect_no_failure();
    mica_resolver_free(c.r);
    mica_runtime_free(ro.rt);
    assert_int_equal(atomic_load(&fake.start), 1);
    assert_int_equal(atomic_load(&fake.stop), 2); /* the hook runs on each worker */
    assert_int_equal(atomic_load(&fake.resolve_now), 1);
    assert_int_equal(atomic_load(&fake.destroy), 2); /* not "bad": a failed init cleans up itself */
}

/* ---- publication across workers (TSan: the generation orders the list) ------------- */

struct pub_case {
    mica_resolver_t *r;
    mica_wg_t *wg;
    atomic_bool done;
};

static void reader(void *arg)
{
    struct pub_case *c = arg;
    uint64_t seen = 0;
    long checks = 0;
    while (!atomic_load(&c->done) || checks == 0) {
        uint64_t gen = mica_resolver_generation(c->r);
        if (gen != seen) {
            mica_endpoints_t *l = mica_resolver_get(c->r);
            EXPECT(l && l->generation >= gen && l->n >= 1);
            /* every list names its own generation in its first endpoint's metadata */
            char want[32];
            snprintf(want, sizeof(want), "g%llu", (unsigned long long)l->generation);
            EXPECT(l->generation == 1 || strcmp(l->eps[0].metadata, want) == 0);
            seen = l->generation;
            mica_endpoints_unref(l);
            checks++;
        }
        mica_yield();
    }
    mica_wg_done(c->wg);
}

static void writer(void *arg)
{
    struct pub_case *c = arg;
    for (unsigned i = 2; i < 300; i++) {
        char port[32], md[32];
        snprintf(port, sizeof(port), "127.0.0.1:%u", i);
        snprintf(md, sizeof(md), "g%u", i);
        mica_endpoint_t e = {port, 1, md, NULL};
        EXPECT_EQ(mica_resolver_update(c->r, &e, 1), 0);
        if (i % 16 == 0)
            mica_yield();
    }
    atomic_store(&c->done, true);
    mica_wg_done(c->wg);
}

static void pub_body(void *arg)
{
    struct pub_case *c = arg;
    mica_wg_new(&c->wg);
    mica_wg_add(c->wg, 3);
    mica_go_on(0, reader, c);
    mica_go_on(1, reader, c);
    mica_go_on(1, writer, c);
    EXPECT_EQ(mica_wg_wait(c->wg, NULL), 0);
    mica_wg_free(c->wg);
}

static void test_lists_published_on_one_worker_are_read_whole_on_another(void **state)
{
    struct pub_case c = {0};
    struct run_once ro = {.body = pub_body, .arg = &c};
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&ro.rt, &o), 0);
    assert_int_equal(mica_resolver_new(&c.r, ro.rt, "static:///127.0.0.1:1", NULL), 0);
    mica_runtime_on_start(ro.rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(ro.rt), 0);
    expect_no_failure();
    assert_int_equal(mica_resolver_generation(c.r), 299);
    mica_resolver_free(c.r);
    mica_runtime_free(ro.rt);
}

/* ---- DNS: localhost through getaddrinfo on the offload pool ---------------------------- */

struct dns_case {
    mica_resolver_t *r;
};

static void dns_body(void *arg)
{
    struct dns_case *c = arg;
    mica_event_t ev = MICA_EVENT_INIT;
    EXPECT_EQ(mica_resolver_watch(c->r, &ev), 0);
    EXPECT_EQ(mica_resolver_start(c->r), 0);
    EXPECT_EQ(mica_event_wait(&ev, NULL, mica_deadline_in(5000)), 0);
    mica_endpoints_t *l = mica_resolver_get(c->r);
    bool v4 = false;
    for (size_t i = 0; l && i < l->n; i++)
        v4 |= strcmp(l->eps[i].addr, "127.0.0.1:4321") == 0;
    EXPECT(l && l->error == 0 && v4);
    uint64_t gen = mica_resolver_generation(c->r);
    /* Re-resolved every 50 ms: the same records publish nothing. */
    mica_event_reset(&ev);
    mica_sleep_ms(300);
    EXPECT_EQ(mica_resolver_generation(c->r), gen);
    EXPECT(!mica_event_is_set(&ev));
    mica_endpoints_unref(l);
    mica_resolver_unwatch(c->r, &ev);
}

static void test_dns_resolves_localhost_off_the_worker_and_republishes_only_changes(void **state)
{
    struct dns_case c;
    struct run_once ro = {.body = dns_body, .arg = &c};
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&ro.rt, &o), 0);
    mica_resolver_opts_t opts = {.refresh_interval_ms = 50};
    assert_int_equal(mica_resolver_new(&c.r, ro.rt, "localhost:4321", &opts), 0);
    assert_string_equal(mica_resolver_scheme(c.r), "dns");
    assert_null(mica_resolver_get(c.r)); /* nothing until started */
    mica_runtime_on_start(ro.rt, run_once_start, &ro);
    assert_int_equal(mica_runtime_run(ro.rt), 0); /* stop ends the re-resolution loop */
    expect_no_failure();
    mica_resolver_free(c.r);
    mica_runtime_free(ro.rt);
}

static void dns_first_list_body(void *arg)
{
    struct dns_case *c = arg;
    mica_event_t ev = MICA_EVENT_INIT;
    EXPECT_EQ(mica_resolver_watch(c->r, &ev), 0);
    EXPECT_EQ(mica_resolver_start(c->r), 0);
    EXPECT_EQ(mica_event_wait(&ev, NULL, mica_deadline_in(5000)), 0);
    mica_resolver_unwatch(c->r, &ev);
}

static void test_dns_resolver_ends_with_the_runtime_not_at_its_next_refresh(void **state)
{
    struct dns_case c;
    struct run_once ro = {.body = dns_first_list_body, .arg = &c};
    mica_runtime_opts_t o = {.workers = 1, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&ro.rt, &o), 0);
    assert_int_equal(mica_resolver_new(&c.r, ro.rt, "dns:///localhost:4321", NULL), 0); /* 30 s */
    mica_runtime_on_start(ro.rt, run_once_start, &ro);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(mica_runtime_run(ro.rt), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 3); /* not the 5 s drain deadline, nor 30 s */
    expect_no_failure();
    mica_resolver_free(c.r);
    mica_runtime_free(ro.rt);
}

/* ---- round robin ------------------------------------------------------------------------ */

static void test_round_robin_takes_turns_and_skips_endpoints_in_back_off(void **state)
{
    const mica_picker_ops_t *p = &mica_picker_round_robin;
    void *st;
    assert_int_equal(p->create(&st, NULL), 0);
    mica_endpoint_t e[3] = {{"127.0.0.1:1", 1, NULL, NULL}, {"127.0.0.1:2", 1, NULL, NULL},
                            {"127.0.0.1:3", 1, NULL, NULL}};
    mica_picker_endpoint_t pe[3] = {{.ep = &e[0]}, {.ep = &e[1]}, {.ep = &e[2]}};
    mica_picker_endpoint_t *v[3] = {&pe[0], &pe[1], &pe[2]};
    int seen[3] = {0};
    for (int i = 0; i < 9; i++)
        seen[p->pick(st, v, 3, NULL)]++;
    assert_int_equal(seen[0], 3);
    assert_int_equal(seen[1], 3);
    assert_int_equal(seen[2], 3);
    pe[1].state = MICA_ENDPOINT_FAILING;
    pe[1].failing_until_ms = INT64_MAX;
    for (int i = 0; i < 10; i++)
        assert_int_not_equal(p->pick(st, v, 3, NULL), 1);
    pe[0].state = pe[2].state = MICA_ENDPOINT_FAILING;
    pe[0].failing_until_ms = pe[2].failing_until_ms = INT64_MAX;
    int i = p->pick(st, v, 3, NULL); /* none usable: still one, the caller fails fast */
    assert_true(i >= 0 && i < 3);
    pe[2].failing_until_ms = 0; /* its back-off ran out: tried again */
    assert_int_equal(p->pick(st, v, 3, NULL), 2);
    assert_int_equal(p->pick(st, v, 0, NULL), -1);
    p->destroy(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_targets_split_into_scheme_authority_and_endpoint),
        cmocka_unit_test(test_static_lists_publish_once_per_change_and_keep_the_last_good_one),
        cmocka_unit_test(test_a_registered_scheme_resolves_through_its_callbacks),
        cmocka_unit_test(test_lists_published_on_one_worker_are_read_whole_on_another),
        cmocka_unit_test(test_dns_resolves_localhost_off_the_worker_and_republishes_only_changes),
        cmocka_unit_test(test_dns_resolver_ends_with_the_runtime_not_at_its_next_refresh),
        cmocka_unit_test(test_round_robin_takes_turns_and_skips_endpoints_in_back_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

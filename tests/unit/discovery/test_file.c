/* SPDX-License-Identifier: MIT */
/*
 * The static-file registry: "file:///...#service" targets resolve from a
 * JSON file, an edit (renamed over, as editors do) is seen in under a
 * second, a broken file keeps the lists last read, and registering edits
 * the file. Through the resolver API the clients use, and through
 * mica_registry_resolve()/watch().
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>

#include "disc_helpers.h"
#include "mica/registry.h"
#include "mica/resolver.h"
#include "mica/sync.h"

static char dir[128], path[192];

static const char *two = "{\"services\": {\"user\": ["
                         "{\"id\": \"u1\", \"addr\": \"127.0.0.1:5001\", \"zone\": \"a\"},"
                         "{\"id\": \"u2\", \"addr\": \"127.0.0.1:5002\", \"weight\": 3,"
                         " \"zone\": \"b\", \"metadata\": {\"v\": \"2\"}}],"
                         " \"order\": [{\"addr\": \"127.0.0.1:6001\"}]}}";

static const char *three = "{\"services\": {\"user\": ["
                           "{\"id\": \"u1\", \"addr\": \"127.0.0.1:5001\", \"zone\": \"a\"},"
                           "{\"id\": \"u2\", \"addr\": \"127.0.0.1:5002\", \"weight\": 3,"
                           " \"zone\": \"b\", \"metadata\": {\"v\": \"2\"}},"
                           "{\"id\": \"u3\", \"addr\": \"[::1]:5003\"}]}}";

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/mica-file-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/registry.json", dir);
    write_file(path, two);
    return 0;
}

static int teardown(void **state)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Waits until `r` publishes a list of `n` endpoints; returns how long it took (ms) or -1. */
static int64_t wait_list(mica_resolver_t *r, mica_event_t *ev, size_t n, int64_t limit_ms)
{
    int64_t t0 = wall_ms();
    for (;;) {
        mica_event_reset(ev);
        mica_endpoints_t *l = mica_resolver_get(r);
        size_t have = l ? l->n : 0;
        int err = l ? l->error : 0;
        mica_endpoints_unref(l);
        if (have == n && !err)
            return wall_ms() - t0;
        int64_t left = t0 + limit_ms - wall_ms();
        if (mica_event_wait(ev, NULL, mica_deadline_in(left > 0 ? left : 0)) != 0)
            return -1;
    }
}

struct fx {
    mica_registry_t *reg;
    mica_resolver_t *r;
    mica_event_t ev;
};

static void resolve_and_edit_body(void *arg)
{
    struct fx *f = arg;
    EXPECT_EQ(mica_resolver_watch(f->r, &f->ev), 0);
    EXPECT_EQ(mica_resolver_start(f->r), 0);
    if (!EXPECT(wait_list(f->r, &f->ev, 2, slack_ms(2000)) >= 0))
        return;
    mica_endpoints_t *l = mica_resolver_get(f->r);
    EXPECT(strcmp(l->eps[0].addr, "127.0.0.1:5001") == 0 && strcmp(l->eps[0].zone, "a") == 0);
    EXPECT(strcmp(l->eps[1].addr, "127.0.0.1:5002") == 0 && l->eps[1].weight == 3 &&
           strcmp(l->eps[1].zone, "b") == 0 && strcmp(l->eps[1].metadata, "{\"v\":\"2\"}") == 0);
    mica_endpoints_unref(l);

    /* An edit renamed over the file is seen in well under a second. */
    write_file(path, three);
    int64_t took = wait_list(f->r, &f->ev, 3, slack_ms(1000));
    EXPECT(took >= 0 && took < slack_ms(1000));

    /* A half-written file keeps the last list; the next good one is taken. */
    write_file(path, "{\"services\": {\"user\": [");
    mica_sleep_ms(300);
    l = mica_resolver_get(f->r);
    EXPECT_EQ(l->n, 3);
    mica_endpoints_unref(l);
    mica_registry_stats_t st;
    write_file(path, two);
    EXPECT(wait_list(f->r, &f->ev, 2, slack_ms(1000)) >= 0);

    /* A file written in place (no rename) is seen too. */
    int fd = open(path, O_WRONLY | O_TRUNC);
    if (EXPECT(fd >= 0)) {
        EXPECT(write(fd, three, strlen(three)) == (ssize_t)strlen(three));
        close(fd);
    }
    EXPECT(wait_list(f->r, &f->ev, 3, slack_ms(1000)) >= 0);

    /* Through the registry's own API. */
    mica_instances_t *in;
    if (EXPECT_EQ(mica_registry_resolve(f->reg, NULL, "user", &in), 0)) {
        EXPECT_EQ(in->n, 3);
        EXPECT(strcmp(in->v[2].id, "u3") == 0 && strcmp(in->v[2].addr, "[::1]:5003") == 0 &&
               strcmp(in->v[2].service, "user") == 0 && in->v[2].zone == NULL);
        EXPECT(!in->stale);
        mica_instances_free(in);
    }
    mica_registry_stats(f->reg, &st);
    EXPECT(st.updates >= 1);
}

static void test_file_targets_resolve_and_see_edits_within_a_second(void **state)
{
    mica_runtime_t *rt = disc_runtime(2);
    struct fx f = {0};
    char target[256];
    snprintf(target, sizeof(target), "file://%s#user", path);
    char url[256];
    snprintf(url, sizeof(url), "file://%s", path);
    assert_int_equal(mica_registry_new(&f.reg, rt, url, NULL), 0);
    assert_int_equal(mica_resolver_new(&f.r, rt, target, NULL), 0);
    assert_int_equal(disc_run(rt, resolve_and_edit_body, &f), 0);
    expect_no_failure();
    mica_resolver_free(f.r);
    mica_registry_free(f.reg);
    mica_runtime_free(rt);
}

static void register_body(void *arg)
{
    struct fx *f = arg;
    mica_event_t ev = MICA_EVENT_INIT;
    EXPECT_EQ(mica_registry_watch(f->reg, "order", &ev), 0);
    mica_instances_t *in;
    if (EXPECT_EQ(mica_registry_resolve(f->reg, NULL, "order", &in), 0)) {
        EXPECT_EQ(in->n, 1);
        mica_instances_free(in);
    }
    mica_event_reset(&ev);
    mica_instance_t me = {.service = "order", .id = "o2", .addr = "127.0.0.1:6002",
                          .zone = "z", .metadata = "{\"v\":1}"};
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &me), 0);
    EXPECT_EQ(mica_event_wait(&ev, NULL, mica_deadline_in(slack_ms(2000))), 0);
    if (EXPECT_EQ(mica_registry_resolve(f->reg, NULL, "order", &in), 0)) {
        EXPECT_EQ(in->n, 2);
        EXPECT(in->n == 2 && strcmp(in->v[1].id, "o2") == 0 && strcmp(in->v[1].zone, "z") == 0 &&
               strcmp(in->v[1].metadata, "{\"v\":1}") == 0);
        mica_instances_free(in);
    }
    /* the same id again replaces it */
    me.addr = "127.0.0.1:6003";
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &me), 0);
    EXPECT_EQ(mica_registry_deregister(f->reg, NULL, "order", "nope"), MICA_ENOTFOUND);
    mica_event_reset(&ev);
    EXPECT_EQ(mica_registry_deregister(f->reg, NULL, "order", "o2"), 0);
    EXPECT_EQ(mica_event_wait(&ev, NULL, mica_deadline_in(slack_ms(2000))), 0);
    if (EXPECT_EQ(mica_registry_resolve(f->reg, NULL, "order", &in), 0)) {
        EXPECT_EQ(in->n, 1);
        mica_instances_free(in);
    }
    mica_instance_t bad = {.service = "or/der", .addr = "127.0.0.1:1"};
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &bad), MICA_EINVAL);
    bad = (mica_instance_t){.service = "order", .addr = "localhost:1"};
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &bad), MICA_EINVAL);
    mica_registry_unwatch(f->reg, "order", &ev);
    mica_registry_stats_t st;
    mica_registry_stats(f->reg, &st);
    EXPECT_EQ(st.registrations, 2);
    EXPECT_EQ(st.deregistrations, 1);
}

static void test_register_and_deregister_edit_the_file(void **state)
{
    mica_runtime_t *rt = disc_runtime(1);
    struct fx f = {0};
    char url[256];
    snprintf(url, sizeof(url), "file://%s", path);
    assert_int_equal(mica_registry_new(&f.reg, rt, url, NULL), 0);
    assert_int_equal(disc_run(rt, register_body, &f), 0);
    expect_no_failure();
    mica_registry_free(f.reg);
    mica_runtime_free(rt);
}

static void shutdown_body(void *arg)
{
    struct fx *f = arg;
    mica_instance_t me = {.service = "order", .id = "o9", .addr = "127.0.0.1:6009"};
    EXPECT_EQ(mica_registry_register(f->reg, NULL, &me), 0);
}

static void test_shutdown_deregisters_then_waits_for_peers(void **state)
{
    mica_runtime_t *rt = disc_runtime(1);
    struct fx f = {0};
    char url[256];
    snprintf(url, sizeof(url), "file://%s", path);
    mica_registry_opts_t o = {.deregister_wait_ms = 300};
    assert_int_equal(mica_registry_new(&f.reg, rt, url, &o), 0);
    int64_t t0 = wall_ms();
    assert_int_equal(disc_run(rt, shutdown_body, &f), 0);
    expect_no_failure();
    assert_true(wall_ms() - t0 >= 300); /* the DEREGISTER phase waited */
    FILE *fp = fopen(path, "r");
    char buf[4096] = "";
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    assert_null(strstr(buf, "o9"));
    assert_non_null(strstr(buf, "6001")); /* the others stay */
    mica_registry_free(f.reg);
    mica_runtime_free(rt);
}

static void test_bad_urls_and_targets_are_refused(void **state)
{
    mica_runtime_t *rt = disc_runtime(1);
    mica_registry_t *reg;
    mica_resolver_t *r;
    assert_int_equal(mica_registry_new(&reg, rt, "file://relative.json", NULL), MICA_EINVAL);
    assert_int_equal(mica_registry_new(&reg, rt, "zk://x", NULL), MICA_EINVAL);
    assert_int_equal(mica_registry_new(&reg, rt, "etcd://", NULL), MICA_EINVAL);
    assert_int_equal(mica_registry_new(&reg, rt, "etcd://a.b:1,c.d:2", NULL), MICA_EINVAL);
    mica_registry_opts_t o = {.ttl_s = 1};
    assert_int_equal(mica_registry_new(&reg, rt, "etcd://127.0.0.1:1", &o), MICA_EINVAL);
    mica_registry_schemes_init();
    assert_int_equal(mica_resolver_new(&r, rt, "file:///tmp/x.json", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&r, rt, "file:///tmp/x.json#a/b", NULL), MICA_EINVAL);
    assert_int_equal(mica_resolver_new(&r, rt, "etcd:///user", NULL), MICA_EINVAL); /* no registry */
    mica_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_file_targets_resolve_and_see_edits_within_a_second,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_and_deregister_edit_the_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_deregisters_then_waits_for_peers, setup,
                                        teardown),
        cmocka_unit_test(test_bad_urls_and_targets_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

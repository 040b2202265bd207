/* SPDX-License-Identifier: MIT */
/* include/mica/metrics.h: registration rules, sharded updates summed at scrape, the text format. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mica/runtime.h"
#include "mica/metrics.h"
#include "mica/sync.h"

static char *text_of(mica_metrics_t *reg)
{
    char *t;
    size_t len;
    assert_int_equal(mica_metrics_write(reg, &t, &len), 0);
    assert_int_equal(strlen(t), len);
    return t;
}

static void test_names_labels_and_buckets_are_checked_at_registration(void **state)
{
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    mica_counter_t *c;
    mica_gauge_t *g;
    mica_histogram_t *h;
    mica_counter_vec_t *cv;
    mica_histogram_vec_t *hv;
    assert_int_equal(mica_counter_new(&c, reg, "jobs", "no _total"), MICA_EINVAL);
    assert_int_equal(mica_counter_new(&c, reg, "9jobs_total", "bad name"), MICA_EINVAL);
    assert_int_equal(mica_counter_new(&c, reg, "jobs-done_total", "bad name"), MICA_EINVAL);
    assert_int_equal(mica_gauge_new(&g, reg, "queue_total", "a gauge named as a counter"),
                     MICA_EINVAL);
    assert_int_equal(mica_counter_new(&c, reg, "jobs_total", "ok"), 0);
    assert_int_equal(mica_gauge_new(&g, reg, "jobs_total", "taken"), MICA_EINVAL);
    assert_int_equal(mica_counter_new(&c, reg, "jobs_total", "taken"), MICA_EEXIST);
    const double b[] = {1, 2, 2};
    assert_int_equal(mica_histogram_new(&h, reg, "lat_seconds", "", b, 3), MICA_EINVAL);
    const double inf[] = {1, INFINITY};
    assert_int_equal(mica_histogram_new(&h, reg, "lat_seconds", "", inf, 2), MICA_EINVAL);
    assert_int_equal(mica_histogram_vec_new(&hv, reg, "lat_seconds", "", b, 2,
                                            (const char *[]){"le"}, 1),
                     MICA_EINVAL);
    assert_int_equal(mica_counter_vec_new(&cv, reg, "x_total", "", (const char *[]){"a", "a"}, 2),
                     MICA_EINVAL);
    assert_int_equal(mica_counter_vec_new(&cv, reg, "x_total", "", (const char *[]){"__a"}, 1),
                     MICA_EINVAL);
    assert_int_equal(mica_counter_vec_new(&cv, reg, "x_total", "", (const char *[]){"a"}, 1), 0);
    mica_counter_t *s;
    assert_int_equal(mica_counter_vec_with(cv, (const char *[]){NULL}, &s), MICA_EINVAL);
    mica_metrics_free(reg);
}

static void test_counters_gauges_and_vectors_sum_and_format(void **state)
{
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    mica_counter_vec_t *v;
    assert_int_equal(mica_counter_vec_new(&v, reg, "req_total", "Requests.\nBy code \\ path.",
                                          (const char *[]){"code", "path"}, 2),
                     0);
    mica_counter_t *a, *a2, *b;
    assert_int_equal(mica_counter_vec_with(v, (const char *[]){"200", "/a"}, &a), 0);
    assert_int_equal(mica_counter_vec_with(v, (const char *[]){"200", "/a"}, &a2), 0);
    assert_ptr_equal(a, a2); /* one series per label set */
    assert_int_equal(mica_counter_vec_with(v, (const char *[]){"500", "q\"\\\n"}, &b), 0);
    mica_counter_add(a, 41);
    mica_counter_inc(a2);
    mica_counter_inc(b);
    assert_int_equal(mica_counter_value(a), 42);
    mica_gauge_t *g, *set;
    assert_int_equal(mica_gauge_new(&g, reg, "inflight", "In flight."), 0);
    assert_int_equal(mica_gauge_new(&set, reg, "temp_celsius", "Set."), 0);
    mica_gauge_inc(g);
    mica_gauge_inc(g);
    mica_gauge_dec(g);
    mica_gauge_add(g, 0.5);
    mica_gauge_set(set, -3.25);
    assert_true(mica_gauge_value(g) == 1.5);
    char *t = text_of(reg);
    assert_non_null(strstr(t, "# HELP req_total Requests.\\nBy code \\\\ path.\n"
                              "# TYPE req_total counter\n"
                              "req_total{code=\"200\",path=\"/a\"} 42\n"
                              "req_total{code=\"500\",path=\"q\\\"\\\\\\n\"} 1\n"));
    assert_non_null(strstr(t, "# TYPE inflight gauge\ninflight 1.5\n"));
    assert_non_null(strstr(t, "temp_celsius -3.25\n"));
    /* families sorted by name */
    assert_true(strstr(t, "inflight") < strstr(t, "req_total"));
    assert_true(strstr(t, "req_total") < strstr(t, "temp_celsius"));
    mica_metrics_text_free(t);
    mica_metrics_free(reg);
}

static void test_histogram_buckets_are_cumulative_and_inf_equals_count(void **state)
{
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    mica_histogram_t *h;
    const double b[] = {0.1, 0.5, 1};
    assert_int_equal(mica_histogram_new(&h, reg, "lat_seconds", "Latency.", b, 3), 0);
    const double obs[] = {0.05, 0.1, 0.2, 0.5, 0.7, 3, NAN};
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++)
        mica_histogram_observe(h, obs[i]);
    double sum;
    assert_int_equal(mica_histogram_count(h, &sum), 7);
    char *t = text_of(reg);
    assert_non_null(strstr(t, "# TYPE lat_seconds histogram\n"
                              "lat_seconds_bucket{le=\"0.1\"} 2\n"
                              "lat_seconds_bucket{le=\"0.5\"} 4\n"
                              "lat_seconds_bucket{le=\"1\"} 5\n"
                              "lat_seconds_bucket{le=\"+Inf\"} 7\n"
                              "lat_seconds_sum NaN\n"
                              "lat_seconds_count 7\n"));
    mica_metrics_text_free(t);
    /* many buckets: the binary search puts each value in its bucket */
    double many[40];
    for (int i = 0; i < 40; i++)
        many[i] = i + 1;
    mica_histogram_vec_t *hv;
    assert_int_equal(mica_histogram_vec_new(&hv, reg, "size_bytes", "Sizes.", many, 40,
                                            (const char *[]){"kind"}, 1),
                     0);
    mica_histogram_t *k;
    assert_int_equal(mica_histogram_vec_with(hv, (const char *[]){"x"}, &k), 0);
    for (int i = 0; i <= 41; i++)
        mica_histogram_observe(k, i); /* 0 and 1 in le=1, ..., 41 in +Inf */
    t = text_of(reg);
    assert_non_null(strstr(t, "size_bytes_bucket{kind=\"x\",le=\"1\"} 2\n"));
    assert_non_null(strstr(t, "size_bytes_bucket{kind=\"x\",le=\"17\"} 18\n"));
    assert_non_null(strstr(t, "size_bytes_bucket{kind=\"x\",le=\"40\"} 41\n"));
    assert_non_null(strstr(t, "size_bytes_bucket{kind=\"x\",le=\"+Inf\"} 42\n"));
    assert_non_null(strstr(t, "size_bytes_sum{kind=\"x\"} 861\n"));
    mica_metrics_text_free(t);
    mica_metrics_free(reg);
}

/* ---- collectors ---------------------------------------------------------------------- */

static void collect(mica_collect_t *out, void *arg)
{
    const char *l[] = {"pool"};
    mica_collect_sample(out, MICA_METRIC_COUNTER, "pool_gets_total", "Gets.", l,
                        (const char *[]){"b"}, 1, 7);
    mica_collect_sample(out, MICA_METRIC_GAUGE, "pool_idle", "Idle.", NULL, NULL, 0, 3);
    mica_collect_sample(out, MICA_METRIC_COUNTER, "pool_gets_total", "Gets.", l,
                        (const char *[]){"a"}, 1, 5); /* grouped with the first */
    mica_collect_sample(out, MICA_METRIC_COUNTER, "pool_gets_total", "Gets.", l,
                        (const char *[]){"a"}, 1, 6); /* duplicate: dropped */
    mica_collect_sample(out, MICA_METRIC_GAUGE, "pool_gets_total", "", NULL, NULL, 0, 1);
    mica_collect_sample(out, MICA_METRIC_COUNTER, "owned_total", "", NULL, NULL, 0, 1); /* registered */
    mica_collect_sample(out, MICA_METRIC_COUNTER, "pool_bad", "", NULL, NULL, 0, 1); /* no _total */
}

static void test_collectors_are_grouped_and_bad_samples_counted(void **state)
{
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    mica_counter_t *c;
    assert_int_equal(mica_counter_new(&c, reg, "owned_total", "Owned."), 0);
    assert_int_equal(mica_metrics_add_collector(reg, collect, NULL), 0);
    char *t = text_of(reg);
    assert_non_null(strstr(t, "# HELP pool_gets_total Gets.\n# TYPE pool_gets_total counter\n"
                              "pool_gets_total{pool=\"b\"} 7\npool_gets_total{pool=\"a\"} 5\n#"));
    assert_non_null(strstr(t, "# TYPE pool_idle gauge\npool_idle 3\n"));
    assert_non_null(strstr(t, "mica_metrics_collect_errors_total 4\n"));
    assert_null(strstr(t, "pool_bad"));
    mica_metrics_text_free(t);
    mica_metrics_remove_collector(reg, collect, NULL);
    t = text_of(reg);
    assert_null(strstr(t, "pool_idle"));
    mica_metrics_text_free(t);
    mica_metrics_free(reg);
}

static void test_a_vector_refuses_series_past_its_limit(void **state)
{
    mica_metrics_t *reg;
    assert_int_equal(mica_metrics_new(&reg), 0);
    mica_counter_vec_t *v;
    assert_int_equal(mica_counter_vec_new(&v, reg, "ids_total", "", (const char *[]){"id"}, 1), 0);
    char id[16];
    mica_counter_t *c;
    for (int i = 0; i < MICA_METRICS_MAX_SERIES; i++) {
        snprintf(id, sizeof(id), "%d", i);
        assert_int_equal(mica_counter_vec_with(v, (const char *[]){id}, &c), 0);
    }
    assert_int_equal(mica_counter_vec_with(v, (const char *[]){"more"}, &c), MICA_ELIMIT);
    assert_int_equal(mica_counter_vec_with(v, (const char *[]){"7"}, &c), 0); /* existing: fine */
    char *t = text_of(reg);
    assert_non_null(strstr(t, "mica_metrics_series_refused_total 1\n"));
    mica_metrics_text_free(t);
    mica_metrics_free(reg);
}

/* ---- updates from every worker, read by another thread -------------------------------- */

#define WORKERS 3
#define PER_WORKER 20000

static struct {
    mica_metrics_t *reg;
    mica_counter_t *c;
    mica_gauge_t *g;
    mica_histogram_t *h;
    atomic_int done;
    atomic_bool stop_reader;
    atomic_int scrapes;
    mica_runtime_t *rt;
} conc;

static void hammer(int worker, void *arg)
{
    for (int i = 0; i < PER_WORKER; i++) {
        mica_counter_inc(conc.c);
        mica_gauge_inc(conc.g);
        mica_histogram_observe(conc.h, (double)(i % 10) / 100);
        mica_gauge_dec(conc.g);
        if (i % 1000 == 0)
            mica_yield();
    }
    if (atomic_fetch_add(&conc.done, 1) + 1 == WORKERS)
        mica_runtime_stop(conc.rt);
}

/* Scrapes once and checks the histogram's invariants: 0, else what broke. */
static intptr_t scrape_and_check(void)
{
    char *t;
    size_t len;
    if (mica_metrics_write(conc.reg, &t, &len) != 0)
        return 1;
    unsigned long long inf = 0, prev = 0;
    for (const char *p = t; (p = strstr(p, "lat_seconds_bucket{le=\"")); p++) {
        unsigned long long v = strtoull(strstr(p, "} ") + 2, NULL, 10);
        if (v < prev) { /* not cumulative */
            mica_metrics_text_free(t);
            return 2;
        }
        prev = inf = v;
    }
    const char *cp = strstr(t, "lat_seconds_count ");
    unsigned long long count = cp ? strtoull(cp + 18, NULL, 10) : 0;
    mica_metrics_text_free(t);
    return inf == count ? 0 : 3; /* +Inf must equal _count */
}

/* Scrapes while the workers update. */
static void *reader(void *arg)
{
    while (!atomic_load(&conc.stop_reader)) {
        intptr_t rc = scrape_and_check();
        if (rc != 0)
            return (void *)rc;
        atomic_fetch_add(&conc.scrapes, 1);
    }
    return NULL;
}

static void test_updates_from_every_worker_add_up_while_another_thread_scrapes(void **state)
{
    assert_int_equal(mica_metrics_new(&conc.reg), 0);
    assert_int_equal(mica_counter_new(&conc.c, conc.reg, "ops_total", "Ops."), 0);
    assert_int_equal(mica_gauge_new(&conc.g, conc.reg, "busy", "Busy."), 0);
    const double b[] = {0.01, 0.05};
    assert_int_equal(mica_histogram_new(&conc.h, conc.reg, "lat_seconds", "Lat.", b, 2), 0);
    mica_runtime_opts_t o = {.workers = WORKERS, .no_signals = true, .drain_timeout_ms = 5000};
    assert_int_equal(mica_runtime_new(&conc.rt, &o), 0);
    assert_int_equal(mica_runtime_on_start(conc.rt, hammer, NULL), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader, NULL), 0);
    assert_int_equal(mica_runtime_run(conc.rt), 0);
    atomic_store(&conc.stop_reader, true);
    void *res;
    pthread_join(t, &res);
    assert_null(res);
    assert_int_equal(scrape_and_check(), 0); /* and once more with every update in */
    mica_runtime_free(conc.rt);
    assert_int_equal(mica_counter_value(conc.c), WORKERS * PER_WORKER);
    assert_true(mica_gauge_value(conc.g) == 0);
    double sum;
    assert_int_equal(mica_histogram_count(conc.h, &sum), WORKERS * PER_WORKER);
    assert_true(fabs(sum - WORKERS * (PER_WORKER / 10) * 0.45) < 1e-6);
    mica_metrics_free(conc.reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_labels_and_buckets_are_checked_at_registration),
        cmocka_unit_test(test_counters_gauges_and_vectors_sum_and_format),
        cmocka_unit_test(test_histogram_buckets_are_cumulative_and_inf_equals_count),
        cmocka_unit_test(test_collectors_are_grouped_and_bad_samples_counted),
        cmocka_unit_test(test_a_vector_refuses_series_past_its_limit),
        cmocka_unit_test(test_updates_from_every_worker_add_up_while_another_thread_scrapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

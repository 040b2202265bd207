/* SPDX-License-Identifier: MIT */
/*
 * Retry policies (gRFC A6 backoff with full jitter, the 5-attempt cap,
 * pushback, deadlines, per-try timeouts) and the retry budget (Envoy's
 * 20 % of active calls, at least 3), on plain values: no runtime.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "mica/resilience.h"

static void test_backoff_is_full_jitter_under_a_growing_cap(void **state)
{
    mica_retry_policy_t p = {
        .max_attempts = 5, .initial_backoff_ms = 100, .max_backoff_ms = 300, .multiplier = 2};
    int64_t max_seen[5] = {0}, min_seen[5] = {1000, 1000, 1000, 1000, 1000};
    for (int run = 0; run < 2000; run++) {
        mica_retry_t r;
        mica_retry_begin(&r, &p, MICA_NO_DEADLINE);
        for (int n = 1; n <= 4; n++) {
            int64_t d = -1;
            assert_int_equal(mica_retry_next(&r, 0, true, MICA_RETRY_NO_PUSHBACK, &d), 0);
            if (d > max_seen[n])
                max_seen[n] = d;
            if (d < min_seen[n])
                min_seen[n] = d;
        }
        int64_t d;
        assert_int_equal(mica_retry_next(&r, 0, true, MICA_RETRY_NO_PUSHBACK, &d), MICA_ELIMIT);
        assert_int_equal(mica_retry_attempts(&r), 5);
    }
    /* random(0, min(100 * 2^(n-1), 300)) */
    int64_t cap[5] = {0, 100, 200, 300, 300};
    for (int n = 1; n <= 4; n++) {
        assert_true(max_seen[n] <= cap[n]);
        assert_true(max_seen[n] >= cap[n] * 9 / 10); /* the whole range is used */
        assert_true(min_seen[n] <= cap[n] / 10);
    }
}

static void test_attempts_are_capped_at_five_and_default_to_three(void **state)
{
    mica_retry_policy_t p = {.max_attempts = 9};
    mica_retry_t r;
    mica_retry_begin(&r, &p, MICA_NO_DEADLINE);
    int64_t d;
    int n = 1;
    while (mica_retry_next(&r, 0, true, MICA_RETRY_NO_PUSHBACK, &d) == 0)
        n++;
    assert_int_equal(n, 5);
    mica_retry_begin(&r, NULL, MICA_NO_DEADLINE);
    n = 1;
    while (mica_retry_next(&r, 0, true, MICA_RETRY_NO_PUSHBACK, &d) == 0)
        n++;
    assert_int_equal(n, 3);
}

static void test_pushback_decides_the_delay_or_stops(void **state)
{
    mica_retry_t r;
    mica_retry_begin(&r, NULL, MICA_NO_DEADLINE);
    int64_t d;
    assert_int_equal(mica_retry_next(&r, 0, true, 750, &d), 0);
    assert_int_equal(d, 750);
    assert_int_equal(mica_retry_next(&r, 0, true, MICA_RETRY_PUSHBACK_STOP, &d), MICA_EPERM);
    mica_retry_begin(&r, NULL, MICA_NO_DEADLINE);
    assert_int_equal(mica_retry_next(&r, 0, false, MICA_RETRY_NO_PUSHBACK, &d), MICA_EPERM);
}

static void test_no_retry_would_end_past_the_deadline(void **state)
{
    mica_retry_policy_t p = {.initial_backoff_ms = 1000};
    mica_retry_t r;
    mica_retry_begin(&r, &p, 1500);
    int64_t d;
    assert_int_equal(mica_retry_next(&r, 1400, true, 200, &d), MICA_ETIMEDOUT);
    assert_int_equal(mica_retry_next(&r, 1000, true, 200, &d), 0);
}

static void test_each_attempt_gets_its_per_try_timeout_inside_the_deadline(void **state)
{
    mica_retry_policy_t p = {.per_try_timeout_ms = 300};
    mica_retry_t r;
    mica_retry_begin(&r, &p, 1000);
    assert_int_equal(mica_retry_attempt_deadline(&r, 0), 300);
    assert_int_equal(mica_retry_attempt_deadline(&r, 800), 1000);
    mica_retry_begin(&r, NULL, 1000);
    assert_int_equal(mica_retry_attempt_deadline(&r, 0), 1000);
}

static void test_budget_allows_three_then_a_fifth_of_active_calls(void **state)
{
    mica_budget_t *b;
    assert_int_equal(mica_budget_new(&b, NULL), 0);
    for (int i = 0; i < 10; i++)
        mica_budget_call_begin(b);
    for (int i = 0; i < 3; i++)
        assert_int_equal(mica_budget_retry_begin(b), 0); /* min_concurrency */
    assert_int_equal(mica_budget_retry_begin(b), MICA_ELIMIT);
    for (int i = 0; i < 90; i++)
        mica_budget_call_begin(b);
    int ok = 0;
    while (mica_budget_retry_begin(b) == 0)
        ok++;
    assert_int_equal(ok + 3, 20); /* 20 % of 100 */
    mica_budget_retry_end(b);
    assert_int_equal(mica_budget_retry_begin(b), 0);
    mica_budget_stats_t st;
    mica_budget_stats(b, &st);
    assert_int_equal(st.active_calls, 100);
    assert_int_equal(st.active_retries, 20);
    assert_int_equal(st.peak_retries, 20);
    assert_int_equal(st.retries, 21);
    assert_int_equal(st.exhausted, 2);
    for (int i = 0; i < 200; i++) { /* stray ends never wrap */
        mica_budget_retry_end(b);
        mica_budget_call_end(b);
    }
    mica_budget_stats(b, &st);
    assert_int_equal(st.active_calls, 0);
    assert_int_equal(st.active_retries, 0);
    mica_budget_free(b);
    mica_budget_opts_t o = {.ratio = 2};
    assert_int_equal(mica_budget_new(&b, &o), MICA_EINVAL);
}

static void test_http_outcomes_follow_rfc_9110_and_5xx(void **state)
{
    const char *yes[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < 6; i++)
        assert_true(mica_resilience_http_idempotent(yes[i]));
    assert_false(mica_resilience_http_idempotent("POST"));
    assert_false(mica_resilience_http_idempotent("PATCH"));
    assert_false(mica_resilience_http_idempotent("get")); /* methods are case-sensitive */
    assert_false(mica_resilience_http_idempotent(NULL));
    assert_true(mica_resilience_http_failure(500) && mica_resilience_http_failure(503));
    assert_false(mica_resilience_http_failure(404) || mica_resilience_http_failure(429));
    assert_true(mica_resilience_http_retryable(503) && mica_resilience_http_retryable(0));
    assert_false(mica_resilience_http_retryable(500));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_is_full_jitter_under_a_growing_cap),
        cmocka_unit_test(test_attempts_are_capped_at_five_and_default_to_three),
        cmocka_unit_test(test_pushback_decides_the_delay_or_stops),
        cmocka_unit_test(test_no_retry_would_end_past_the_deadline),
        cmocka_unit_test(test_each_attempt_gets_its_per_try_timeout_inside_the_deadline),
        cmocka_unit_test(test_budget_allows_three_then_a_fifth_of_active_calls),
        cmocka_unit_test(test_http_outcomes_follow_rfc_9110_and_5xx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

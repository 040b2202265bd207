/* SPDX-License-Identifier: MIT */
/* Router: literal vs parameter segments, backtracking, 404 vs 405, HEAD. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "http/internal.h"

static int h_a(mica_http_req_t *q, mica_http_resp_t *r, void *arg) { return 1; }
static int h_b(mica_http_req_t *q, mica_http_resp_t *r, void *arg) { return 2; }
static int h_c(mica_http_req_t *q, mica_http_resp_t *r, void *arg) { return 3; }
static int h_d(mica_http_req_t *q, mica_http_resp_t *r, void *arg) { return 4; }

static int setup(void **state)
{
    mica__router_t *r;
    assert_int_equal(mica__router_new(&r), 0);
    assert_int_equal(mica__router_add(r, "GET", "/", h_a, NULL, false, 0), 0);
    assert_int_equal(mica__router_add(r, "GET", "/users/{id}", h_b, NULL, false, 0), 0);
    assert_int_equal(mica__router_add(r, "DELETE", "/users/{id}", h_c, NULL, false, 0), 0);
    assert_int_equal(mica__router_add(r, "GET", "/users/me", h_c, NULL, false, 0), 0);
    assert_int_equal(mica__router_add(r, "GET", "/users/{id}/orders/{order}", h_d, NULL, false, 0), 0);
    assert_int_equal(mica__router_add(r, "POST", "/users/me/avatar", h_a, NULL, false, 0), 0);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    mica__router_free(*state);
    return 0;
}

static int match(mica__router_t *r, const char *method, const char *path, mica__route_match_t *m)
{
    return mica__router_match(r, method, strlen(method), path, strlen(path), m);
}

static void test_root_and_literal_routes_match(void **state)
{
    mica__route_match_t m;
    assert_int_equal(match(*state, "GET", "/", &m), 0);
    assert_ptr_equal(m.route->fn, h_a);
    assert_int_equal(match(*state, "GET", "/users/me", &m), 0);
    assert_ptr_equal(m.route->fn, h_c);
    assert_int_equal(m.nparams, 0);
}

static void test_parameters_capture_one_segment(void **state)
{
    mica__route_match_t m;
    assert_int_equal(match(*state, "GET", "/users/1001", &m), 0);
    assert_ptr_equal(m.route->fn, h_b);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.names[0], "id");
    assert_int_equal(m.value_lens[0], 4);
    assert_memory_equal(m.values[0], "1001", 4);
}

static void test_literal_dead_end_backtracks_to_parameter(void **state)
{
    mica__route_match_t m;
    /* "me" is a literal child, but only /users/{id}/orders/{order} goes deeper. */
    assert_int_equal(match(*state, "GET", "/users/me/orders/7", &m), 0);
    assert_ptr_equal(m.route->fn, h_d);
    assert_int_equal(m.nparams, 2);
    assert_memory_equal(m.values[0], "me", 2);
    assert_memory_equal(m.values[1], "7", 1);
}

static void test_unknown_paths_are_404(void **state)
{
    mica__route_match_t m;
    assert_int_equal(match(*state, "GET", "/nope", &m), -404);
    assert_int_equal(match(*state, "GET", "/users", &m), -404);
    assert_int_equal(match(*state, "GET", "/users/", &m), -404);
    assert_int_equal(match(*state, "GET", "/users/1/orders", &m), -404);
    assert_int_equal(match(*state, "GET", "", &m), -404);
}

static void test_wrong_method_is_405_with_allow(void **state)
{
    mica__route_match_t m;
    assert_int_equal(match(*state, "PUT", "/users/9", &m), -405);
    assert_string_equal(m.allow, "GET, HEAD, DELETE");
}

static void test_head_falls_back_to_get(void **state)
{
    mica__route_match_t m;
    assert_int_equal(match(*state, "HEAD", "/users/9", &m), 0);
    assert_ptr_equal(m.route->fn, h_b);
}

static void test_bad_patterns_and_duplicates_are_refused(void **state)
{
    mica__router_t *r = *state;
    assert_int_equal(mica__router_add(r, "GET", "/users/{id}", h_a, NULL, false, 0), MICA_EEXIST);
    assert_int_equal(mica__router_add(r, "GET", "/users/{name}/x", h_a, NULL, false, 0), MICA_EINVAL);
    assert_int_equal(mica__router_add(r, "GET", "no-slash", h_a, NULL, false, 0), MICA_EINVAL);
    assert_int_equal(mica__router_add(r, "GET", "/a b", h_a, NULL, false, 0), MICA_EINVAL);
    assert_int_equal(mica__router_add(r, "GE T", "/x", h_a, NULL, false, 0), MICA_EINVAL);
    assert_int_equal(mica__router_add(r, "GET", "/{}", h_a, NULL, false, 0), MICA_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_root_and_literal_routes_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parameters_capture_one_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_literal_dead_end_backtracks_to_parameter, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unknown_paths_are_404, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_method_is_405_with_allow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_falls_back_to_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_patterns_and_duplicates_are_refused, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

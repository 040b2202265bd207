/* SPDX-License-Identifier: MIT */
/*
 * Fault injection on HTTP client calls: for every N, the Nth allocation
 * from the start of a call fails -- in the client (worker tables, picker,
 * endpoints, the connection, its buffers, the response, a streamed body's
 * chunk buffer) or in the server answering it. The call must end with a
 * response or a clean error, never a hang, a crash or a leak (ASan checks
 * at exit), and the next call must succeed. Each step uses a client that
 * has never made a call, so its first-use allocations are swept too.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "client_fx.h"
#include "common/alloc.h"

#define SWEEP_MAX 300

struct fx {
    mica_runtime_t *rt;
    struct upstream u;
    mica_http_client_t *healthy;
    mica_http_client_t *cs[SWEEP_MAX + 1];
    long swept;
    int ok, failed;
};

static ssize_t body_src(void *buf, size_t len, void *arg)
{
    int *left = arg;
    if (*left == 0)
        return 0;
    (*left)--;
    memcpy(buf, "0123456789", 10);
    return 10;
}

/* A POST with a chunked body from a callback, its answer read whole. 1: echoed, 0: failed cleanly. */
static int call(mica_http_client_t *c, bool streamed)
{
    int left = 3;
    mica_http_request_t req = {.method = "POST", .path = "/echo", .body_fn = body_src,
                               .body_arg = &left, .body_len_hint = -1};
    mica_http_call_opts_t o = {.deadline_ms = mica_deadline_in(3000)};
    mica_http_response_t *r;
    int rc = streamed ? mica_http_client_open(c, NULL, &req, &o, &r, NULL)
                      : mica_http_client_do(c, NULL, &req, &o, &r, NULL);
    if (rc != 0)
        return rc == MICA_ETIMEDOUT ? -1 : 0; /* a timeout would be a hang */
    int ok = 0;
    if (streamed) {
        char buf[64];
        size_t have = 0;
        ssize_t n;
        while ((n = mica_http_response_read(r, buf + have, sizeof(buf) - have)) > 0)
            have += (size_t)n;
        ok = n == 0 && have == 30 && mica_http_response_status(r) == 200;
    } else {
        size_t len;
        const char *b = mica_http_response_body(r, &len);
        ok = mica_http_response_status(r) == 200 && len == 30 && memcmp(b, "0123456789", 10) == 0;
    }
    mica_http_response_free(r);
    return ok;
}

static void sweep(void *arg)
{
    struct fx *f = arg;
    if (!EXPECT(call(f->healthy, false) == 1))
        return;
    for (long n = 1; n <= SWEEP_MAX; n++) {
        mica__alloc_fail_nth(n);
        int r = call(f->cs[n], n % 2 == 0);
        long made = mica__alloc_count();
        mica__alloc_fail_nth(0);
        if (!EXPECT(r >= 0)) /* a clean end, not a hang */
            break;
        if (r == 1)
            f->ok++;
        else
            f->failed++;
        int next = call(f->healthy, false);
        if (!EXPECT(next == 1)) /* and everything goes on */
            break;
        f->swept = n;
        if (made < n)
            break;
    }
}

static void test_each_failed_allocation_of_a_call_ends_it_cleanly(void **state)
{
    static struct fx f;
    memset(&f, 0, sizeof(f));
    f.rt = new_runtime();
    upstream_start(&f.u, f.rt, false, NULL, NULL);
    assert_int_equal(mica_http_client_new(&f.healthy, f.rt, f.u.addr, NULL), 0);
    for (int i = 1; i <= SWEEP_MAX; i++)
        assert_int_equal(mica_http_client_new(&f.cs[i], f.rt, f.u.addr, NULL), 0);
    run_body(f.rt, sweep, &f);
    for (int i = 1; i <= SWEEP_MAX; i++)
        mica_http_client_free(f.cs[i]);
    mica_http_client_free(f.healthy);
    mica_http_server_free(f.u.srv);
    mica_runtime_free(f.rt);
    expect_no_failure();
    print_message("swept %ld allocations: %d calls answered, %d failed cleanly\n", f.swept, f.ok,
                  f.failed);
    assert_true(f.swept >= 10);
    assert_true(f.failed > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_failed_allocation_of_a_call_ends_it_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

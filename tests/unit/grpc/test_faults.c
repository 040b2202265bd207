/* SPDX-License-Identifier: MIT */
/*
 * Fault injection on a gRPC unary call (grpc.health.v1.Health/Check over
 * hand-built HTTP/2 frames): for every N, the Nth allocation fails; the
 * call must end with a status, a reset or a closed connection -- never a
 * hang, a crash or a leak -- and the next call must succeed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../http/wire.h"
#include "../runtime/helpers.h"
#include "common/alloc.h"
#include "mica/grpc.h"

#define SWEEP_MAX 400

struct fx {
    mica_runtime_t *rt;
    mica_http_server_t *srv;
    mica_grpc_server_t *gs;
    char addr[64];
    long swept;
    int ok, failed;
};

/* HealthCheckResponse{status: SERVING}, length-prefixed. */
static const char serving[] = {0, 0, 0, 0, 2, 0x08, 0x01};

/* One Check call on a new connection. Returns 1 (SERVING came back), 0 (it ended otherwise), < 0. */
static int check(struct fx *f)
{
    char buf[1024], *p = buf, block[512];
    memcpy(p, WIRE_PREFACE, 24);
    p += 24;
    wire_frame(&p, 4, 0, 0, NULL, 0);
    size_t n = wire_hpack(block, ":method", "POST");
    n += wire_hpack(block + n, ":scheme", "http");
    n += wire_hpack(block + n, ":path", "/grpc.health.v1.Health/Check");
    n += wire_hpack(block + n, ":authority", "t");
    n += wire_hpack(block + n, "content-type", "application/grpc");
    n += wire_hpack(block + n, "te", "trailers");
    n += wire_hpack(block + n, "grpc-timeout", "2S");
    wire_frame(&p, 1, 4, 1, block, n);
    wire_frame(&p, 0, 1, 1, "\0\0\0\0\0", 5); /* an empty HealthCheckRequest */
    int64_t deadline = mica_deadline_in(3000);
    int fd = mica_net_connect(f->addr, NULL, deadline);
    if (fd < 0)
        return fd;
    mica_net_write(fd, buf, (size_t)(p - buf), NULL, deadline);
    bool found = false;
    int ended = wire_h2_read(fd, 1, deadline, serving, sizeof(serving), &found);
    mica_net_close(fd);
    if (ended == MICA_ETIMEDOUT)
        return ended;
    return found;
}

static void client(int worker, void *arg)
{
    struct fx *f = arg;
    int first = check(f); /* (EXPECT_EQ evaluates its arguments twice) */
    if (EXPECT_EQ(first, 1)) {
        for (long n = 1; n <= SWEEP_MAX; n++) {
            mica__alloc_fail_nth(n);
            int r = check(f);
            mica_sleep_ms(2);
            long made = mica__alloc_count();
            mica__alloc_fail_nth(0);
            if (!EXPECT(r >= 0)) /* no hang */
                break;
            if (r == 1)
                f->ok++;
            else
                f->failed++;
            int next = check(f);
            if (!EXPECT_EQ(next, 1)) /* and the server goes on */
                break;
            f->swept = n;
            if (made < n)
                break;
        }
    }
    mica_runtime_stop(f->rt);
}

static void test_each_failed_allocation_of_a_unary_call_ends_it_cleanly(void **state)
{
    struct fx f = {0};
    mica_runtime_opts_t ro = {.workers = 1, .no_signals = true, .drain_timeout_ms = 3000};
    assert_int_equal(mica_runtime_new(&f.rt, &ro), 0);
    assert_int_equal(mica_http_server_new(&f.srv, NULL), 0);
    assert_int_equal(mica_grpc_server_new(&f.gs, f.srv, NULL), 0);
    assert_int_equal(mica_grpc_enable_health(f.gs), 0);
    assert_int_equal(mica_http_server_listen(f.srv, "127.0.0.1:0"), 0);
    assert_int_equal(mica_http_server_attach(f.srv, f.rt), 0);
    snprintf(f.addr, sizeof(f.addr), "127.0.0.1:%d", mica_http_server_port(f.srv, 0));
    mica_runtime_on_start(f.rt, client, &f);
    assert_int_equal(mica_runtime_run(f.rt), 0);
    mica_grpc_server_free(f.gs);
    mica_http_server_free(f.srv);
    mica_runtime_free(f.rt);
    expect_no_failure();
    print_message("swept %ld allocations: %d calls served, %d failed cleanly\n", f.swept, f.ok,
                  f.failed);
    assert_true(f.swept >= 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_failed_allocation_of_a_unary_call_ends_it_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

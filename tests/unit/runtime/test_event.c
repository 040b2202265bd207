/* SPDX-License-Identifier: MIT */
/* Events, waits bounded by a ctx on sockets, the capped buffer, the list and the error table. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/list.h"
#include "mica/net.h"
#include "mica/sync.h"
#include "helpers.h"

/* ---- events ---------------------------------------------------------------- */

struct ev_case {
    mica_event_t ev;
    mica_wg_t *wg;
    atomic_int woken;
};

static void ev_waiter(void *arg)
{
    struct ev_case *c = arg;
    if (EXPECT_EQ(mica_event_wait(&c->ev, NULL, mica_deadline_in(5000)), 0))
        atomic_fetch_add(&c->woken, 1);
    mica_wg_done(c->wg);
}

static void event_body(void *arg)
{
    struct ev_case c = {.ev = MICA_EVENT_INIT};
    mica_wg_new(&c.wg);
    mica_wg_add(c.wg, 20);
    for (int i = 0; i < 20; i++)
        mica_go_on(i % 2, ev_waiter, &c); /* waiters on both workers */
    mica_sleep_ms(20);
    EXPECT_EQ(atomic_load(&c.woken), 0);
    EXPECT(!mica_event_is_set(&c.ev));
    mica_event_set(&c.ev);
    EXPECT_EQ(mica_wg_wait(c.wg, NULL), 0);
    EXPECT_EQ(atomic_load(&c.woken), 20);
    /* Set: waits return at once; reset: they suspend again, until the deadline. */
    EXPECT_EQ(mica_event_wait(&c.ev, NULL, mica_deadline_in(0)), 0);
    mica_event_reset(&c.ev);
    int64_t t0 = mica_now_ms();
    EXPECT_EQ(mica_event_wait(&c.ev, NULL, mica_deadline_in(30)), MICA_ETIMEDOUT);
    EXPECT(mica_now_ms() - t0 >= 25);
    mica_ctx_t *ctx;
    mica_ctx_with_timeout(NULL, 10, &ctx);
    EXPECT_EQ(mica_event_wait(&c.ev, ctx, MICA_NO_DEADLINE), MICA_ETIMEDOUT);
    mica_ctx_free(ctx);
    mica_wg_free(c.wg);
}

static void test_event_wakes_every_waiter_on_every_worker(void **state)
{
    assert_int_equal(run_in_coroutine(2, event_body, NULL), 0);
    expect_no_failure();
}

struct cancel_case {
    mica_event_t ev;
    mica_ctx_t *ctx;
    int rc;
    int64_t waited_ms;
};

static void cancel_waiter(void *arg)
{
    struct cancel_case *c = arg;
    int64_t t0 = mica_now_ms();
    c->rc = mica_event_wait(&c->ev, c->ctx, MICA_NO_DEADLINE);
    c->waited_ms = mica_now_ms() - t0;
}

static void event_cancel_body(void *arg)
{
    struct cancel_case c = {.ev = MICA_EVENT_INIT, .rc = 1};
    mica_ctx_with_cancel(NULL, &c.ctx);
    mica_go(cancel_waiter, &c);
    mica_sleep_ms(10);
    mica_ctx_cancel(c.ctx);
    mica_sleep_ms(10);
    EXPECT_EQ(c.rc, MICA_ECANCELED);
    mica_event_set(&c.ev); /* the cancelled waiter left the event's queue */
    mica_ctx_free(c.ctx);
}

static void test_event_wait_ends_when_its_ctx_is_cancelled(void **state)
{
    assert_int_equal(run_in_coroutine(1, event_cancel_body, NULL), 0);
    expect_no_failure();
}

/* ---- a socket read ends when its ctx is cancelled ------------------------------- */

struct read_case {
    int fd;
    mica_ctx_t *ctx;
    int rc;
    int64_t cancelled_at, returned_at;
};

static void blocked_reader(void *arg)
{
    struct read_case *c = arg;
    char buf[16];
    c->rc = (int)mica_net_read(c->fd, buf, sizeof(buf), c->ctx, MICA_NO_DEADLINE);
    c->returned_at = mica_now_ms();
}

static void read_cancel_body(void *arg)
{
    int sv[2];
    if (!EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0))
        return;
    struct read_case c = {.fd = sv[0], .rc = 1};
    mica_ctx_with_cancel(NULL, &c.ctx);
    mica_go(blocked_reader, &c);
    mica_sleep_ms(20); /* the reader is parked: nothing will ever arrive */
    EXPECT_EQ(c.rc, 1);
    c.cancelled_at = mica_now_ms();
    mica_ctx_cancel(c.ctx);
    mica_sleep_ms(20);
    EXPECT_EQ(c.rc, MICA_ECANCELED);
    EXPECT(c.returned_at - c.cancelled_at <= 5);
    /* The same with the ctx's deadline, and a deadline argument. */
    mica_ctx_t *t;
    mica_ctx_with_timeout(NULL, 15, &t);
    char buf[4];
    EXPECT_EQ(mica_net_read(sv[0], buf, sizeof(buf), t, MICA_NO_DEADLINE), MICA_ETIMEDOUT);
    EXPECT_EQ(mica_net_read(sv[0], buf, sizeof(buf), NULL, mica_deadline_in(15)), MICA_ETIMEDOUT);
    mica_ctx_free(t);
    /* A ctx bounds only the wait: what needs none completes whatever the ctx. */
    EXPECT_EQ(mica_net_write(sv[1], "x", 1, NULL, MICA_NO_DEADLINE), 0);
    EXPECT_EQ(mica_net_read(sv[0], buf, sizeof(buf), c.ctx, MICA_NO_DEADLINE), 1);
    EXPECT_EQ(mica_net_read(sv[0], buf, sizeof(buf), c.ctx, MICA_NO_DEADLINE), MICA_ECANCELED);
    mica_ctx_free(c.ctx);
    mica_net_close(sv[0]);
    mica_net_close(sv[1]);
}

static void test_socket_read_returns_canceled_when_ctx_is_cancelled(void **state)
{
    assert_int_equal(run_in_coroutine(1, read_cancel_body, NULL), 0);
    expect_no_failure();
}

/* ---- capped buffer, list ----------------------------------------------------- */

static void test_buf_grows_to_its_cap_and_no_further(void **state)
{
    mica__buf_t b;
    mica__buf_init(&b, 1000);
    char chunk[300];
    memset(chunk, 'a', sizeof(chunk));
    for (int i = 0; i < 3; i++)
        assert_int_equal(mica__buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_int_equal(mica__buf_len(&b), 900);
    assert_int_equal(mica__buf_append(&b, chunk, 101), MICA_ELIMIT);
    assert_int_equal(mica__buf_len(&b), 900); /* nothing appended */
    assert_int_equal(mica__buf_append(&b, chunk, 100), 0);
    assert_true(b.cap <= 1000);
    mica__buf_consume(&b, 600); /* room at the front is reused, not grown */
    assert_int_equal(mica__buf_append(&b, "xyz", 3), 0);
    assert_int_equal(mica__buf_len(&b), 403);
    assert_memory_equal(mica__buf_data(&b) + 400, "xyz", 3);
    int err = 0;
    assert_null(mica__buf_reserve(&b, SIZE_MAX - 10, &err));
    assert_int_equal(err, MICA_ELIMIT);
    mica__buf_consume(&b, 403);
    assert_int_equal(mica__buf_len(&b), 0);
    mica__buf_free(&b);
}

struct item {
    int v;
    mica__list_t link;
};

static void test_list_links_and_unlinks_in_place(void **state)
{
    mica__list_t l;
    mica__list_init(&l);
    struct item it[4] = {{.v = 0}, {.v = 1}, {.v = 2}, {.v = 3}};
    for (int i = 0; i < 4; i++)
        mica__list_push_back(&l, &it[i].link);
    mica__list_remove(&it[1].link);
    mica__list_remove(&it[1].link); /* twice is harmless */
    assert_false(mica__list_linked(&it[1].link));
    int seen[4], n = 0;
    mica__list_foreach_safe(p, nx, &l) {
        struct item *x = mica__list_entry(p, struct item, link);
        seen[n++] = x->v;
        if (x->v == 2)
            mica__list_remove(p);
    }
    assert_int_equal(n, 3);
    assert_int_equal(seen[0], 0);
    assert_int_equal(seen[1], 2);
    assert_int_equal(seen[2], 3);
    assert_ptr_equal(mica__list_pop_front(&l), &it[0].link);
    assert_ptr_equal(mica__list_pop_front(&l), &it[3].link);
    assert_null(mica__list_pop_front(&l));
    assert_true(mica__list_empty(&l));
}

/* ---- the error table's edge columns --------------------------------------------- */

static void test_error_table_maps_to_http_and_grpc_and_back(void **state)
{
    assert_int_equal(mica_err_http_status(MICA_EUNAUTHENTICATED), 401);
    assert_int_equal(mica_err_http_status(MICA_EPERM), 403);
    assert_int_equal(mica_err_http_status(MICA_ENOTFOUND), 404);
    assert_int_equal(mica_err_http_status(MICA_ETIMEDOUT), 504);
    assert_int_equal(mica_err_http_status(-99999), 500);
    assert_int_equal(mica_err_grpc_code(MICA_EUNAUTHENTICATED), 16);
    assert_int_equal(mica_err_grpc_code(MICA_EPERM), 7);
    assert_int_equal(mica_err_grpc_code(MICA_ETIMEDOUT), 4);
    assert_int_equal(mica_err_grpc_code(-99999), 13);
    for (int code = 0; code <= 16; code++) /* every gRPC code survives the round trip */
        assert_int_equal(mica_err_grpc_code(mica_err_from_grpc(code)), code);
    assert_int_equal(mica_err_from_http(401), MICA_EUNAUTHENTICATED);
    assert_int_equal(mica_err_from_http(403), MICA_EPERM);
    assert_int_equal(mica_err_from_http(204), 0);
    assert_int_equal(mica_err_from_http(418), MICA_EINVAL);
    assert_int_equal(mica_err_from_http(599), MICA_EINTERNAL);
    for (int s = 400; s < 600; s++) { /* statuses that mean one code come back to themselves */
        int e = mica_err_from_http(s);
        if (s == 401 || s == 403 || s == 404 || s == 409 || s == 413 || s == 415 || s == 501 ||
            s == 504)
            assert_int_equal(mica_err_http_status(e), s);
    }
    assert_string_equal(mica_err_name(MICA_EUNAUTHENTICATED), "EUNAUTHENTICATED");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_wakes_every_waiter_on_every_worker),
        cmocka_unit_test(test_event_wait_ends_when_its_ctx_is_cancelled),
        cmocka_unit_test(test_socket_read_returns_canceled_when_ctx_is_cancelled),
        cmocka_unit_test(test_buf_grows_to_its_cap_and_no_further),
        cmocka_unit_test(test_list_links_and_unlinks_in_place),
        cmocka_unit_test(test_error_table_maps_to_http_and_grpc_and_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * The round-robin picker, mica's default (grpc-go's round_robin): each
 * worker walks the endpoint list in turn, starting at an offset of its own
 * so that workers (and processes) do not all begin with the first
 * endpoint. Endpoints in back-off are skipped while any other is usable;
 * when none is, it returns the next one anyway and the client fails the
 * call at once with that endpoint's last error.
 */
#include "common/alloc.h"
#include "mica/resolver.h"

typedef struct rr {
    size_t next;
} rr_t;

static int rr_create(void **state, const void *conf)
{
    rr_t *rr = mica__calloc(1, sizeof(*rr));
    if (!rr)
        return MICA_ENOMEM;
    int w = mica_worker_id();
    rr->next = w > 0 ? (size_t)w * 7919 : 0;
    *state = rr;
    return 0;
}

static int rr_pick(void *state, mica_picker_endpoint_t *const *eps, size_t n,
                   const mica_pick_info_t *info)
{
    rr_t *rr = state;
    if (n == 0)
        return -1;
    int64_t now = mica_now_ms();
    size_t start = rr->next % n;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (mica_picker_endpoint_usable(eps[i], now)) {
            rr->next = i + 1;
            return (int)i;
        }
    }
    rr->next = start + 1;
    return (int)start;
}

static void rr_destroy(void *state)
{
    mica__free(state);
}

const mica_picker_ops_t mica_picker_round_robin = {
    .name = "round_robin",
    .create = rr_create,
    .pick = rr_pick,
    .destroy = rr_destroy,
};

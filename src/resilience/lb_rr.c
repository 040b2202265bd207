/* SPDX-License-Identifier: MIT */
/*
 * Round robin (grpc-go's round_robin, as the runtime's default picker) with
 * the balancers' per-endpoint breakers: each worker walks the list from an
 * offset of its own, skipping endpoints backing off or refused by their
 * breaker. Weights are ignored (mica_balancer_weighted honours them).
 */
#include "resilience/internal.h"

static int rr_pick(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                   const mica_pick_info_t *info)
{
    int64_t now = mica_now_ms();
    size_t start = lb->next % n;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (mica__lb_try(lb, eps[i], now)) {
            lb->next = i + 1;
            return (int)i;
        }
    }
    lb->next = start + 1;
    return mica__lb_fallback(lb, eps, n);
}

static const mica__lb_algo_t rr_algo = {.pick = rr_pick};

static int mica__lb_create_rr(void **state, const void *conf)
{
    return mica__lb_create(state, conf, &rr_algo);
}

const mica_picker_ops_t mica_balancer_round_robin =
    MICA__LB_OPS(rr, "round_robin", MICA_PICKER_MEASURES_LATENCY);

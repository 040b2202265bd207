/* SPDX-License-Identifier: MIT */
/*
 * Uniformly random: a few random draws, then a scan from a random start
 * when those endpoints were backing off or refused. Weights are ignored.
 */
#include "resilience/internal.h"

static int random_pick(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                       const mica_pick_info_t *info)
{
    int64_t now = mica_now_ms();
    for (int k = 0; k < 4; k++) {
        uint32_t i = mica__rand_below(&lb->rng, (uint32_t)n);
        if (mica__lb_try(lb, eps[i], now))
            return (int)i;
    }
    return mica__lb_scan(lb, eps, n, now);
}

static const mica__lb_algo_t random_algo = {.pick = random_pick};

static int mica__lb_create_random(void **state, const void *conf)
{
    return mica__lb_create(state, conf, &random_algo);
}

const mica_picker_ops_t mica_balancer_random =
    MICA__LB_OPS(random, "random", MICA_PICKER_MEASURES_LATENCY);

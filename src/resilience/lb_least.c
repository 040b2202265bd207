/* SPDX-License-Identifier: MIT */
/*
 * Least outstanding requests: the endpoint with the fewest calls in flight
 * per unit of weight, (inflight + 1) / weight, compared by cross
 * multiplication. Ties go to the first in an order that rotates with each
 * pick, so equally loaded endpoints share the calls instead of the first
 * one taking them all. The count is this worker's (balancer.h says why).
 * A full scan: O(n) per pick, which measures at a few ns per endpoint.
 */
#include "resilience/internal.h"

static uint64_t weight(const mica_picker_endpoint_t *e)
{
    return e->ep && e->ep->weight ? e->ep->weight : 1;
}

static int least_pick(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                      const mica_pick_info_t *info)
{
    int64_t now = mica_now_ms();
    size_t start = lb->next++ % n;
    for (int round = 0; round < 3; round++) { /* the best one's breaker may refuse it */
        int best = -1;
        uint64_t best_load = 0, best_w = 1; /* (inflight + 1) and weight of the best */
        for (size_t k = 0, i = start; k < n; k++, i = i + 1 == n ? 0 : i + 1) {
            mica_picker_endpoint_t *e = eps[i];
            if (!mica_picker_endpoint_usable(e, now))
                continue;
            if (round > 0) { /* endpoints refused earlier in this pick */
                mica__lb_ep_t *g = mica__lb_ep(e);
                if (g && g->mark == lb->seq)
                    continue;
            }
            uint64_t load = (uint64_t)e->inflight + 1, w = weight(e);
            if (best < 0 || load * best_w < best_load * w) {
                best = (int)i;
                best_load = load;
                best_w = w;
            }
        }
        if (best < 0)
            return mica__lb_fallback(lb, eps, n);
        if (mica__lb_try(lb, eps[best], now))
            return best;
    }
    return mica__lb_scan(lb, eps, n, now);
}

static const mica__lb_algo_t least_algo = {.pick = least_pick};

static int mica__lb_create_least(void **state, const void *conf)
{
    return mica__lb_create(state, conf, &least_algo);
}

const mica_picker_ops_t mica_balancer_least_request =
    MICA__LB_OPS(least, "least_request", MICA_PICKER_MEASURES_LATENCY);

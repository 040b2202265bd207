/* SPDX-License-Identifier: MIT */
/*
 * Smooth weighted round robin, nginx's (ngx_http_upstream_round_robin.c's
 * idea, written anew): every pick adds each endpoint's weight to its
 * current weight, takes the endpoint with the largest current weight and
 * subtracts the total from it. Over sum(w) picks endpoint i is chosen
 * exactly w_i times, and evenly spread: weights 5,1,1 give a a b a c a a,
 * not a a a a a b c. Current weights live in the endpoint's picker_i64
 * (zeroed by the client for a new endpoint). Only usable endpoints take
 * part, so one backing off or refused by its breaker leaves its share to
 * the others in proportion.
 */
#include "resilience/internal.h"

static int64_t weight(const mica_picker_endpoint_t *e)
{
    return e->ep && e->ep->weight ? (int64_t)e->ep->weight : 1;
}

static int wrr_pick(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                    const mica_pick_info_t *info)
{
    int64_t now = mica_now_ms(), total = 0, best_cw = 0;
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        mica_picker_endpoint_t *e = eps[i];
        if (!mica_picker_endpoint_usable(e, now))
            continue;
        int64_t w = weight(e);
        e->picker_i64 += w;
        total += w;
        if (best < 0 || e->picker_i64 > best_cw) {
            best = (int)i;
            best_cw = e->picker_i64;
        }
    }
    /* The best one's breaker may refuse: then the next best, and so on. */
    while (best >= 0) {
        if (mica__lb_try(lb, eps[best], now)) {
            eps[best]->picker_i64 -= total;
            return best;
        }
        int refused = best;
        best = -1;
        for (size_t i = 0; i < n; i++) {
            mica__lb_ep_t *g = mica__lb_ep(eps[i]);
            if ((int)i == refused || !mica_picker_endpoint_usable(eps[i], now) ||
                (g && g->mark == lb->seq))
                continue;
            if (best < 0 || eps[i]->picker_i64 > eps[best]->picker_i64)
                best = (int)i;
        }
    }
    return mica__lb_fallback(lb, eps, n);
}

static const mica__lb_algo_t wrr_algo = {.pick = wrr_pick};

static int mica__lb_create_wrr(void **state, const void *conf)
{
    return mica__lb_create(state, conf, &wrr_algo);
}

const mica_picker_ops_t mica_balancer_weighted =
    MICA__LB_OPS(wrr, "weighted_round_robin", MICA_PICKER_MEASURES_LATENCY);

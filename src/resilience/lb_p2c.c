/* SPDX-License-Identifier: MIT */
/*
 * Power of two choices on latency x load (Mitzenmacher's two choices;
 * Finagle's P2C with a latency EWMA; go-zero's default p2c balancer): draw
 * two distinct endpoints at random and take the one with the lower
 *
 *     (latency EWMA + 1 us) x (calls in flight + 1)
 *
 * so a slow endpoint or one with a queue loses most comparisons, yet two
 * random draws (not the global minimum) keep many clients from herding onto
 * the same "best" endpoint. An endpoint never measured scores as the fastest,
 * so new ones get tried. The loser of a comparison is taken anyway when it
 * has not been picked for p2c_force_pick_ms (go-zero's forcePick): without
 * that, an endpoint that was slow once would never be sampled again and its
 * estimate never recover. The estimate is kept by done() (balancer.c).
 */
#include "resilience/internal.h"

static double load(const mica_picker_endpoint_t *e)
{
    const mica__lb_ep_t *g = mica__lb_ep((mica_picker_endpoint_t *)e);
    double lat = g ? g->ewma : (double)e->latency_ewma_us;
    return (lat + 1) * ((double)e->inflight + 1);
}

static int p2c_pick(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                    const mica_pick_info_t *info)
{
    int64_t now = mica_now_ms();
    if (n == 1)
        return mica__lb_try(lb, eps[0], now) ? 0 : mica__lb_fallback(lb, eps, n);
    uint32_t a = mica__rand_below(&lb->rng, (uint32_t)n);
    uint32_t b = mica__rand_below(&lb->rng, (uint32_t)n - 1);
    if (b >= a)
        b++;
    bool ua = mica_picker_endpoint_usable(eps[a], now), ub = mica_picker_endpoint_usable(eps[b], now);
    if (ua && ub) {
        if (load(eps[b]) < load(eps[a])) {
            uint32_t t = a;
            a = b;
            b = t;
        }
        mica__lb_ep_t *gb = mica__lb_ep(eps[b]);
        if (gb && now - gb->last_pick_ms > lb->o.p2c_force_pick_ms) {
            uint32_t t = a; /* the loser has waited long enough: give it a call */
            a = b;
            b = t;
        }
    } else if (ub) {
        uint32_t t = a;
        a = b;
        b = t;
    }
    if (mica__lb_try(lb, eps[a], now))
        return (int)a;
    if (mica__lb_try(lb, eps[b], now))
        return (int)b;
    return mica__lb_scan(lb, eps, n, now);
}

const mica__lb_algo_t mica__lb_p2c_algo = {.pick = p2c_pick};

static int mica__lb_create_p2c(void **state, const void *conf)
{
    return mica__lb_create(state, conf, &mica__lb_p2c_algo);
}

const mica_picker_ops_t mica_balancer_p2c = MICA__LB_OPS(p2c, "p2c", MICA_PICKER_MEASURES_LATENCY);

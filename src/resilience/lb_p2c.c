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
 * the same "best" endpoint. Two estimates within 1.5x of each other count as
 * equal and the shorter queue wins (the first drawn on a tie): closer than
 * that, latency is noise -- equal backends on a shared machine measure tens
 * of percent apart, and whichever looked faster would take most calls --
 * while a slower backend still loses through its queue (Little's law: at
 * the same rate it holds more calls). An estimate older than p2c_decay_ms
 * also counts as equal, which is what brings an avoided endpoint back: it
 * wins on its empty queue, and that call's latency replaces the stale
 * estimate (go-zero forces a pick after 1 s for the same reason; Finagle
 * decays idle estimates toward zero). The estimate is kept by done()
 * (balancer.c). An endpoint never measured counts as stale.
 */
#include "resilience/internal.h"

/* The endpoint's estimate in us, or -1 when there is none worth comparing. */
static double latency(mica__lb_t *lb, const mica_picker_endpoint_t *e, int64_t now_ms)
{
    const mica__lb_ep_t *g = mica__lb_ep((mica_picker_endpoint_t *)e);
    if (!g || g->ewma <= 0 || now_ms - g->ewma_at_ms > lb->o.p2c_decay_ms)
        return -1;
    return g->ewma;
}

/* Whether b should be preferred to a. */
static bool better(mica__lb_t *lb, const mica_picker_endpoint_t *a, const mica_picker_endpoint_t *b,
                   int64_t now_ms)
{
    double la = latency(lb, a, now_ms), lb_ = latency(lb, b, now_ms);
    if (la < 0 || lb_ < 0 || (la <= lb_ * 1.5 && lb_ <= la * 1.5))
        return b->inflight < a->inflight;
    return (lb_ + 1) * ((double)b->inflight + 1) < (la + 1) * ((double)a->inflight + 1);
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
    bool ua = mica_picker_endpoint_usable(eps[a], now),
         ub = mica_picker_endpoint_usable(eps[b], now);
    if ((ua && ub && better(lb, eps[a], eps[b], now)) || (!ua && ub)) {
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

/* SPDX-License-Identifier: MIT */
/*
 * Consistent hashing on a ring (Karger et al.; Ketama; Envoy's ring_hash):
 * each endpoint owns many points on a 64-bit ring, at hash("addr#i"), in
 * proportion to its weight; a call's key hashes to a point and goes to the
 * owner of the first endpoint point clockwise from it. Points depend only on
 * addresses, so removing one of N endpoints moves exactly the keys it owned
 * (about 1/N) and no other key changes hands; adding one takes about 1/(N+1).
 * An endpoint backing off or refused by its breaker is passed over: the walk
 * goes on clockwise to the next endpoint, so its keys spread over the others
 * and come back when it does.
 *
 * The ring is per worker, rebuilt when the list changes: ring_points (256)
 * points per unit of weight, a number that must not depend on the other
 * endpoints -- sizing the ring to the list (as Envoy's min_ring_size does)
 * would move points of endpoints that stay. 256 points give each endpoint
 * its share with a standard deviation of about 6 % (1/sqrt(256)); a pick is
 * a binary search over 8-byte points (2 MB per worker for 1,000 endpoints).
 * Maglev's table would make a pick O(1) but moves some keys between
 * endpoints that stay when one leaves.
 */
#include <stdio.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "resilience/internal.h"

typedef struct point {
    uint32_t hash; /* 32 bits: 8-byte points, and collisions only cost a point */
    uint32_t idx;
} point_t;

typedef struct ring {
    point_t *pts;
    size_t n;
} ring_t;

#define MAX_POINTS (1u << 20)

static int cmp(const void *x, const void *y)
{
    const point_t *a = x, *b = y;
    return a->hash < b->hash ? -1 : a->hash > b->hash ? 1 : a->idx < b->idx ? -1 : a->idx > b->idx;
}

static uint64_t weight(const mica_picker_endpoint_t *e)
{
    return e->ep && e->ep->weight ? e->ep->weight : 1;
}

static int ring_update(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n)
{
    ring_t *r = lb->algo_state;
    if (!r && !(r = lb->algo_state = mica__calloc(1, sizeof(*r))))
        return MICA_ENOMEM;
    mica__free(r->pts);
    r->pts = NULL;
    r->n = 0;
    if (!n)
        return 0;
    /* A fixed number of points per unit of weight, whatever the other
     * endpoints: what keeps every key of the endpoints that stay in place. */
    uint64_t per = lb->o.ring_points, wsum = 0;
    for (size_t i = 0; i < n; i++)
        wsum += weight(eps[i]);
    if (per * wsum > MAX_POINTS) /* past a million points: fewer each (less stable) */
        per = MAX_POINTS / wsum ? MAX_POINTS / wsum : 1;
    point_t *pts = mica__malloc((size_t)(per * wsum) * sizeof(*pts));
    if (!pts)
        return MICA_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *addr = eps[i]->ep ? eps[i]->ep->addr : "";
        for (uint64_t v = 0; v < per * weight(eps[i]); v++) {
            char buf[96];
            int len = snprintf(buf, sizeof(buf), "%s#%llu", addr, (unsigned long long)v);
            size_t l = len > 0 && (size_t)len < sizeof(buf) ? (size_t)len : sizeof(buf) - 1;
            pts[k++] = (point_t){(uint32_t)(mica__hash64(buf, l) >> 32), (uint32_t)i};
        }
    }
    qsort(pts, k, sizeof(*pts), cmp);
    r->pts = pts;
    r->n = k;
    return 0;
}

static int ring_pick(mica__lb_t *lb, mica_picker_endpoint_t *const *eps, size_t n,
                     const mica_pick_info_t *info)
{
    int64_t now = mica_now_ms();
    ring_t *r = lb->algo_state;
    size_t len;
    const char *key = mica__lb_hash_key(info, &len);
    if (!key || !r || !r->n)
        return mica__lb_scan(lb, eps, n, now);
    uint32_t h = (uint32_t)(mica__hash64(key, len) >> 32);
    size_t lo = 0, hi = r->n; /* the first point >= h */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->pts[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t k = 0; k < r->n; k++) {
        uint32_t i = r->pts[(lo + k) % r->n].idx;
        if (i < n && mica__lb_try(lb, eps[i], now))
            return (int)i;
    }
    return mica__lb_fallback(lb, eps, n);
}

static void ring_destroy(mica__lb_t *lb)
{
    ring_t *r = lb->algo_state;
    if (r)
        mica__free(r->pts);
    mica__free(r);
}

static const mica__lb_algo_t ring_algo = {
    .update = ring_update, .pick = ring_pick, .destroy = ring_destroy};

static int mica__lb_create_ring(void **state, const void *conf)
{
    return mica__lb_create(state, conf, &ring_algo);
}

const mica_picker_ops_t mica_balancer_ring_hash =
    MICA__LB_OPS(ring, "ring_hash", MICA_PICKER_MEASURES_LATENCY);

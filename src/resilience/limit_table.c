/* SPDX-License-Identifier: MIT */
/*
 * Rate limiters: a token bucket, GCRA and a sliding window, each keeping a
 * key's whole state in one 64-bit word, in one table shared by every worker.
 *
 * Why shared, and why one word. A per-worker share of the rate (rate/N on
 * each worker) needs no sharing, but the kernel spreads connections over
 * workers by a hash of their addresses: a client on one connection would
 * get 1/N of its rate, and any imbalance is an error far beyond 1 %. So a
 * key's budget is process-wide, and the question is how to share it without
 * a lock. Each algorithm's state is packed into one word and updated with
 * compare-and-swap: read, decide, CAS the next state, retry on a race. Two
 * workers only meet on the same key's cache line, never on a lock, and a
 * refusal writes nothing (a flood of refused requests reads a line that
 * stays shared).
 *
 * - GCRA (the ATM cell-rate algorithm, as Brandur Leach explains it for
 *   rate limiting): the state is the theoretical arrival time TAT. A
 *   request of n fits when max(TAT, now) + n*T - now <= tau, T = 1/rate,
 *   tau = burst*T; the time to wait is known exactly when it does not.
 * - Token bucket with lazy refill: (last refill time in ms, 36 bits;
 *   tokens in fixed point, 28 bits). Refill is computed from the time
 *   elapsed when a request comes, never by a timer (Envoy's old
 *   timer-refilled bucket lost tokens to timer rounding and admitted 600-700
 *   of 1000/s). Each admission drops under one fixed-point unit of refill
 *   (2^-frac of a token, frac = 28 - bits(burst): 2^-14 for burst 15000),
 *   so the rate is exact to that fraction; the ms clock telescopes.
 *   Admissions equal GCRA's for equal rate and burst: the two differ only
 *   in representation.
 * - Sliding window, the two-window approximation (Cloudflare's "sliding
 *   window counter"): (window index, 24 bits; previous window's count, 20;
 *   this window's, 20). The count over the last window is estimated as
 *   prev * (time left in this window / window) + cur. Exact for traffic
 *   spread evenly over the previous window (so a steady flood is admitted at
 *   exactly the limit); at worst, when the previous window's requests all
 *   came at its very end, up to twice the limit passes within one window's
 *   span. A sliding log would be exact but keeps a timestamp per request.
 *
 * The table. Keys are kept as 64-bit keyed hashes (nothing is allocated
 * after creation), in sets of 4 slots (each: tag, state, last use). A key
 * not in its set takes a slot by LRU among the 4, as a CPU cache or Redis's
 * sampled LRU does, with one refinement: a slot whose budget is whole again
 * goes first, because forgetting it loses nothing -- it is then identical
 * to a new key. So eviction is exact until more keys than slots are being
 * limited at once (then the least recently used loses its spent budget, and
 * the `evicted` counter says so). Use is stamped in ms, so a key refused a
 * million times a second writes its slot once a millisecond.
 *
 * Races are benign by construction: a slot handed to a new key is first
 * tagged busy, its state zeroed (a fresh budget), then tagged with the new
 * key; a request that raced with that may charge one request to the wrong
 * state or, very rarely, two workers may seat the same new key in two slots
 * (one is never found again and ages out).
 */
#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "resilience/limit_internal.h"

#define WAYS 4
#define TAG_BUSY UINT64_C(2) /* a slot changing hands; real tags are odd */
#define MAX_RULES 8
#define CLOCK_OFFSET_NS INT64_C(1000000000) /* the internal clock starts at 1 s: state 0 = new */

#define TB_TOK_BITS 28
#define TB_TOK_MASK ((UINT64_C(1) << TB_TOK_BITS) - 1)
#define TB_TIME_MASK ((UINT64_C(1) << 36) - 1)
#define SW_CNT_MASK ((UINT64_C(1) << 20) - 1)
#define SW_IDX_MASK ((UINT64_C(1) << 24) - 1)

typedef struct slot {
    _Atomic uint64_t tag;   /* 0: empty, TAG_BUSY, else the key's hash | 1 */
    _Atomic uint64_t state; /* 0: a new key's (a whole budget) */
    _Atomic uint64_t used;  /* when the key was last asked for, in ms (LRU) */
} slot_t;

typedef struct set {
    slot_t s[WAYS];
} set_t; /* 96 bytes: a lookup reads one or two cache lines */

typedef struct stripe {
    _Atomic uint64_t admitted, limited, evicted;
    _Atomic uint64_t by[MICA_LIMIT_BY_COUNT];
} __attribute__((aligned(64))) stripe_t;

struct mica_limiter {
    mica_limiter_opts_t o;
    set_t *sets;
    stripe_t *stripes;
    void *sets_mem, *stripes_mem; /* what was allocated, for the cache-line alignment */
    uint64_t mask;
    uint64_t seed;
    int64_t origin_ns; /* the real clock at creation */
    uint32_t max_n;    /* the most one take may ask for */
    /* GCRA */
    int64_t T_ns, tau_ns;
    /* token bucket */
    unsigned frac;
    uint64_t burst_fp;
    double fp_per_ms;
    uint64_t full_ms; /* an empty bucket is full again after this long */
    /* sliding window */
    int64_t win_ns;
    uint64_t win_limit;
    void *rules[MAX_RULES];
    int nrules;
};

/* ---- the algorithms: decide on one state word ----------------------------------------- */

/*
 * Each decides whether n fits the budget `st` at time `now` (internal clock,
 * ns): true with *next the state after taking it, or false with *wait the ns
 * until it would fit. *forget is when the state becomes a new key's.
 */

static bool gcra(const mica_limiter_t *l, uint64_t st, uint32_t n, int64_t now, uint64_t *next,
                 int64_t *wait)
{
    int64_t tat = (int64_t)st > now ? (int64_t)st : now;
    int64_t nt = tat + (int64_t)n * l->T_ns;
    if (nt - now > l->tau_ns) {
        *wait = nt - l->tau_ns - now;
        return false;
    }
    *next = (uint64_t)nt;
    return true;
}

/* The last refill time of a bucket state (36 bits, modular) as an absolute ms near now_ms. */
static uint64_t tb_last(uint64_t st, uint64_t now_ms)
{
    uint64_t stored = st >> TB_TOK_BITS;
    uint64_t behind = (now_ms - stored) & TB_TIME_MASK;
    if (behind < (TB_TIME_MASK >> 1))
        return now_ms - behind;
    return now_ms + ((stored - now_ms) & TB_TIME_MASK); /* ahead: another thread's later clock */
}

static uint64_t tb_tokens(const mica_limiter_t *l, uint64_t st, uint64_t now_ms, uint64_t *last)
{
    if (st == 0) {
        *last = now_ms;
        return l->burst_fp;
    }
    uint64_t tok = st & TB_TOK_MASK;
    uint64_t prev = tb_last(st, now_ms);
    /* A clock slightly behind another thread's must not move `last` back,
     * or the same milliseconds would be refilled twice. */
    uint64_t dt = prev < now_ms ? now_ms - prev : 0;
    *last = prev > now_ms ? prev : now_ms;
    if (dt >= l->full_ms)
        return l->burst_fp;
    tok += (uint64_t)((double)dt * l->fp_per_ms); /* the fraction dropped: < 1 unit */
    return tok < l->burst_fp ? tok : l->burst_fp;
}

static bool bucket(const mica_limiter_t *l, uint64_t st, uint32_t n, int64_t now, uint64_t *next,
                   int64_t *wait)
{
    uint64_t now_ms = (uint64_t)now / 1000000, last;
    uint64_t tok = tb_tokens(l, st, now_ms, &last);
    uint64_t need = (uint64_t)n << l->frac;
    if (tok < need) {
        /* Refill lands on ms ticks: the first tick with enough. */
        double ms = (double)mica__ceil((double)(need - tok) / l->fp_per_ms);
        *wait = (int64_t)ms * 1000000 - now % 1000000;
        if (*wait < 0)
            *wait = 0;
        return false;
    }
    *next = ((last & TB_TIME_MASK) << TB_TOK_BITS) | (tok - need);
    if (*next == 0) /* time wrapped to 0 with no token left: not a new key's state */
        *next = UINT64_C(1) << TB_TOK_BITS;
    return true;
}

static bool window(const mica_limiter_t *l, uint64_t st, uint32_t n, int64_t now, uint64_t *next,
                   int64_t *wait)
{
    int64_t w = l->win_ns;
    uint64_t cidx = (uint64_t)(now / w), idx = cidx & SW_IDX_MASK;
    int64_t pos = now - (int64_t)cidx * w;
    uint64_t prev = 0, cur = 0;
    if (st) {
        uint64_t sidx = st >> 40, d = (idx - sidx) & SW_IDX_MASK;
        if (d == 0 || d >= (SW_IDX_MASK >> 1)) { /* this window (or one a thread ahead began) */
            prev = (st >> 20) & SW_CNT_MASK;
            cur = st & SW_CNT_MASK;
            if (d) {
                idx = sidx;
                pos = 0; /* the most weight on prev: the cautious reading */
            }
        } else if (d == 1) {
            prev = st & SW_CNT_MASK;
        }
    }
    double lim = (double)l->win_limit, fw = (double)w;
    double est = (double)prev * (fw - (double)pos) / fw + (double)cur;
    if (est + n > lim) {
        /* When will prev's weight (or, next window, cur's) have shrunk enough? */
        double t;
        if (cur + n <= l->win_limit && prev > 0)
            t = fw * (1.0 - (lim - n - (double)cur) / (double)prev) - (double)pos;
        else
            t = (fw - (double)pos) + (cur ? fw * (1.0 - (lim - n) / (double)cur) : 0);
        *wait = t > 0 ? mica__ceil(t) : 1;
        return false;
    }
    *next = (idx << 40) | (prev << 20) | (cur + n);
    return true;
}

static bool decide(const mica_limiter_t *l, uint64_t st, uint32_t n, int64_t now, uint64_t *next,
                   int64_t *wait)
{
    switch (l->o.algo) {
    case MICA_LIMIT_GCRA:
        return gcra(l, st, n, now, next, wait);
    case MICA_LIMIT_TOKEN_BUCKET:
        return bucket(l, st, n, now, next, wait);
    default:
        return window(l, st, n, now, next, wait);
    }
}

/* When state `st` will be a new key's again (internal clock). */
static int64_t forget_at(const mica_limiter_t *l, uint64_t st, int64_t now)
{
    if (st == 0)
        return INT64_MIN;
    switch (l->o.algo) {
    case MICA_LIMIT_GCRA:
        return (int64_t)st;
    case MICA_LIMIT_TOKEN_BUCKET: {
        uint64_t now_ms = (uint64_t)now / 1000000;
        uint64_t lack = l->burst_fp - (st & TB_TOK_MASK);
        double ms = (double)mica__ceil((double)lack / l->fp_per_ms);
        return (int64_t)(tb_last(st, now_ms) * 1000000) + (int64_t)ms * 1000000;
    }
    default: {
        uint64_t cidx = (uint64_t)(now / l->win_ns);
        uint64_t d = ((cidx & SW_IDX_MASK) - (st >> 40)) & SW_IDX_MASK;
        if (d >= (SW_IDX_MASK >> 1))
            d = 0;
        return (int64_t)(cidx - d + 2) * l->win_ns; /* both windows it counts have passed */
    }
    }
}

/* ---- the table ------------------------------------------------------------------------- */

/* splitmix64's finalizer (Steele, Lea, Flood; Vigna): a strong 64-bit mix. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* A keyed hash: the seed is random per limiter, so nobody can aim keys at one set. */
static uint64_t key_hash(uint64_t seed, const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = mix64(seed ^ (uint64_t)len);
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w);
    }
    uint64_t w = 0;
    memcpy(&w, p, len);
    return mix64(h ^ w ^ UINT64_C(0x9e3779b97f4a7c15));
}

static slot_t *find(set_t *set, uint64_t tag)
{
    for (int i = 0; i < WAYS; i++)
        if (atomic_load_explicit(&set->s[i].tag, memory_order_acquire) == tag)
            return &set->s[i];
    return NULL;
}

/*
 * Seats `tag` in its set: an empty slot, else the least recently used of the
 * slots whose budget is whole (forgetting them loses nothing), else the
 * least recently used of all (a lossy eviction, counted). NULL: raced, retry.
 */
static slot_t *claim(mica_limiter_t *l, set_t *set, uint64_t tag, int64_t now)
{
    slot_t *victim = NULL;
    uint64_t vtag = 0, vused = UINT64_MAX;
    bool vwhole = false;
    for (int i = 0; i < WAYS; i++) {
        slot_t *s = &set->s[i];
        uint64_t t = atomic_load_explicit(&s->tag, memory_order_acquire);
        if (t == 0) {
            victim = s;
            vtag = 0;
            vwhole = true;
            break;
        }
        if (t == TAG_BUSY)
            continue;
        bool whole = forget_at(l, atomic_load_explicit(&s->state, memory_order_relaxed), now) <= now;
        uint64_t used = atomic_load_explicit(&s->used, memory_order_relaxed);
        if ((whole && !vwhole) || (whole == vwhole && used < vused)) {
            victim = s;
            vtag = t;
            vused = used;
            vwhole = whole;
        }
    }
    if (!victim || !atomic_compare_exchange_strong(&victim->tag, &vtag, TAG_BUSY))
        return NULL;
    if (!vwhole)
        mica__add(&l->stripes[mica__stripe()].evicted, 1);
    atomic_store_explicit(&victim->state, 0, memory_order_relaxed);
    atomic_store_explicit(&victim->tag, tag, memory_order_release);
    return victim;
}

/* Marks a slot used now: one store per key per ms at most (refusals of a hot key included). */
static void touch(slot_t *s, int64_t now)
{
    uint64_t ms = (uint64_t)now / 1000000;
    if (atomic_load_explicit(&s->used, memory_order_relaxed) != ms)
        atomic_store_explicit(&s->used, ms, memory_order_relaxed);
}

static int take_hashed(mica_limiter_t *l, uint64_t h, uint32_t n, int64_t now, int64_t *retry_us)
{
    if (n == 0 || n > l->max_n)
        return MICA_EINVAL;
    set_t *set = &l->sets[h & l->mask];
    uint64_t tag = h | 1;
    stripe_t *stripe = &l->stripes[mica__stripe()];
    for (;;) {
        slot_t *s = find(set, tag);
        if (!s && !(s = claim(l, set, tag, now)))
            continue;
        touch(s, now);
        uint64_t old = atomic_load_explicit(&s->state, memory_order_acquire);
        for (;;) {
            uint64_t next;
            int64_t wait;
            if (!decide(l, old, n, now, &next, &wait)) {
                mica__add(&stripe->limited, 1);
                if (retry_us)
                    *retry_us = (wait + 999) / 1000;
                return MICA_EOVERLOAD;
            }
            if (atomic_compare_exchange_weak_explicit(&s->state, &old, next, memory_order_acq_rel,
                                                      memory_order_acquire)) {
                mica__add(&stripe->admitted, 1);
                return 0;
            }
            if (atomic_load_explicit(&s->tag, memory_order_acquire) != tag)
                break; /* the slot changed hands meanwhile: find the key again */
        }
    }
}

static int64_t real_now(const mica_limiter_t *l)
{
    return mica__mono_ns() - l->origin_ns + CLOCK_OFFSET_NS;
}

int mica_limiter_take(mica_limiter_t *l, const void *key, size_t len, uint32_t n,
                      int64_t *retry_after_us)
{
    return take_hashed(l, key_hash(l->seed, key, len), n, real_now(l), retry_after_us);
}

int mica_limiter_take_at(mica_limiter_t *l, const void *key, size_t len, uint32_t n,
                         int64_t now_ns, int64_t *retry_after_us)
{
    if (now_ns < 0)
        return MICA_EINVAL;
    return take_hashed(l, key_hash(l->seed, key, len), n, now_ns + CLOCK_OFFSET_NS,
                       retry_after_us);
}

int mica__limiter_take_class(mica_limiter_t *l, int by, const void *key, size_t len, uint32_t n,
                             int64_t *retry_after_us)
{
    uint64_t seed = l->seed ^ mix64((uint64_t)by + 1);
    return take_hashed(l, key_hash(seed, key, len), n, real_now(l), retry_after_us);
}

void mica__limiter_count_rule(mica_limiter_t *l, int by)
{
    mica__add(&l->stripes[mica__stripe()].by[by], 1);
}

void *mica__limiter_rule_slot(mica_limiter_t *l, size_t size, int *err)
{
    if (l->nrules == MAX_RULES) {
        *err = MICA_ELIMIT;
        return NULL;
    }
    void *r = mica__calloc(1, size);
    if (!r) {
        *err = MICA_ENOMEM;
        return NULL;
    }
    l->rules[l->nrules++] = r;
    return r;
}

/* ---- creation ------------------------------------------------------------------------- */

static unsigned bits_of(uint64_t x)
{
    unsigned b = 0;
    while (x) {
        b++;
        x >>= 1;
    }
    return b;
}

int mica_limiter_new(mica_limiter_t **out, const mica_limiter_opts_t *opts)
{
    if (!out || !opts)
        return MICA_EINVAL;
    mica_limiter_opts_t o = *opts;
    if (!(o.rate >= 0.01 && o.rate <= 1e9) || o.burst < 0 || o.window_ms < 0 ||
        (unsigned)o.algo > MICA_LIMIT_SLIDING_WINDOW)
        return MICA_EINVAL;
    if (o.burst == 0)
        o.burst = o.rate < 1 ? 1 : o.rate;
    if (o.burst < 1 || o.burst > (double)(1 << 20))
        return MICA_EINVAL;
    if (!o.window_ms)
        o.window_ms = 1000;
    if (!o.max_keys)
        o.max_keys = 65536;
    if (o.max_keys > ((size_t)1 << 30))
        return MICA_EINVAL;

    mica_limiter_t *l = mica__calloc(1, sizeof(*l));
    if (!l)
        return MICA_ENOMEM;
    l->o = o;
    double T = 1e9 / o.rate;
    l->T_ns = mica__round(T) > 0 ? mica__round(T) : 1;
    l->tau_ns = mica__round(o.burst * (double)l->T_ns);
    l->frac = TB_TOK_BITS - bits_of((uint64_t)mica__ceil(o.burst));
    l->burst_fp = (uint64_t)(o.burst * (double)(UINT64_C(1) << l->frac));
    l->fp_per_ms = o.rate * (double)(UINT64_C(1) << l->frac) / 1000.0;
    l->full_ms = (uint64_t)mica__ceil((double)l->burst_fp / l->fp_per_ms) + 1;
    l->win_ns = (int64_t)o.window_ms * 1000000;
    l->win_limit = (uint64_t)mica__round(o.rate * o.window_ms / 1000.0);
    l->max_n = (uint32_t)o.burst; /* floor */
    if (o.algo == MICA_LIMIT_SLIDING_WINDOW) {
        if (l->win_limit < 1 || l->win_limit > SW_CNT_MASK) {
            mica__free(l);
            return MICA_EINVAL;
        }
        l->max_n = (uint32_t)l->win_limit;
    }

    size_t nsets = 1;
    while (nsets * WAYS < o.max_keys)
        nsets <<= 1;
    l->mask = nsets - 1;
    l->sets = mica__calloc_lines(nsets * sizeof(set_t), &l->sets_mem);
    l->stripes = mica__calloc_lines(MICA__STRIPES * sizeof(stripe_t), &l->stripes_mem);
    if (!l->sets || !l->stripes) {
        mica_limiter_free(l);
        return MICA_ENOMEM;
    }
    if (getrandom(&l->seed, sizeof(l->seed), GRND_NONBLOCK) != sizeof(l->seed))
        l->seed = mix64((uint64_t)mica__mono_ns() ^ (uint64_t)(uintptr_t)l);
    l->origin_ns = mica__mono_ns();
    *out = l;
    return 0;
}

void mica_limiter_free(mica_limiter_t *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->nrules; i++)
        mica__free(l->rules[i]);
    mica__free(l->sets_mem);
    mica__free(l->stripes_mem);
    mica__free(l);
}

void mica_limiter_stats(const mica_limiter_t *l, mica_limiter_stats_t *st)
{
    *st = (mica_limiter_stats_t){0};
    for (int i = 0; i < MICA__STRIPES; i++) {
        const stripe_t *s = &l->stripes[i];
        st->admitted += mica__get(&s->admitted);
        st->limited += mica__get(&s->limited);
        st->evicted += mica__get(&s->evicted);
        for (int b = 0; b < MICA_LIMIT_BY_COUNT; b++)
            st->limited_by[b] += mica__get(&s->by[b]);
    }
}

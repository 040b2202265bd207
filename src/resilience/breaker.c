/* SPDX-License-Identifier: MIT */
/*
 * Circuit breakers: two state machines behind one API (allow before a call,
 * record after it), owned by one worker and driven by the caller's clock,
 * so tests can step time by hand.
 *
 * The SRE adaptive throttle (Google SRE book, "Handling Overload"; go-zero's
 * default breaker). Over a rolling window it counts requests (calls that
 * ended plus calls it refused) and accepts (calls that succeeded) and refuses
 * each new call with probability
 *
 *     p = max(0, (requests - min_calls - K * accepts) / (requests + 1))
 *
 * so a backend that answers a fraction a of calls receives about K * a of
 * the offered load, and one that answers nothing a trickle. The formula
 * alone recovers slowly: after an outage the window is full of refusals,
 * calls pass with probability about 1 - p, and each window only multiplies
 * that by K -- from 1/10,000 to 1 takes log(10^4)/log(1.5) ~ 23 windows,
 * minutes (go-zero #4101: open ~15 min after a 1-minute database blip). So
 * here, while p > 0:
 *
 *   - one call passes every probe_interval_ms whatever p says (go-zero's
 *     forced pass), so a recovered backend is noticed within that interval;
 *   - the first success (of a call that passed while dropping) starts a
 *     recovery ramp: p is scaled by 1 - elapsed / recovery_ms, and when the
 *     ramp completes the window is cleared (the outage is forgotten), so
 *     traffic is back in full recovery_ms later instead of after many windows;
 *   - the ramp gives up (back to plain p) when more than 1 - 1/K of the
 *     calls that started during it failed (at least 20 of them): what the
 *     throttle would not accept in the first place (a third, with K = 1.5).
 *     A ramp starts at most once per probe_interval_ms, which bounds the log
 *     lines a flapping backend causes.
 *
 * Bound: a backend that recovers at T (and then fails well under 1 - 1/K of
 * its calls) gets full traffic back by T + 2 * probe_interval_ms +
 * recovery_ms + the duration of the calls already in flight at T (6 s plus
 * that with the defaults): one interval to be probed, one for a ramp that
 * gave up just before T to be allowed again, then the ramp. A probe that
 * fails (a backend failing a fraction f of calls: with probability f) adds
 * an interval: the bound counts from the first success after T.
 *
 * The classic breaker (resilience4j, Sentinel): CLOSED counts calls,
 * failures and slow calls over the rolling window and opens when at least
 * min_calls ended and the failure or slow-call ratio reaches its threshold;
 * OPEN refuses everything for open_ms; HALF_OPEN lets half_open_calls probes
 * through and closes when they all succeed, or opens again at the first
 * failed or slow one. A probe that never reports (its call hung, its record
 * was lost) would leave the breaker half-open and refusing forever (Sentinel
 * #1638); here the half-open state expires: probe_timeout_ms after the last
 * probe went out without a verdict, the next allow() reopens it, and it
 * probes again after open_ms. Outcomes of calls that started before the
 * half-open period began are ignored by it (they say nothing about now).
 *
 * Both can also open at once after consecutive_failures failures in a row
 * (Envoy's outlier detection counts consecutive 5xx the same way): a window
 * full of past successes makes either ratio slow to notice a backend that
 * died -- the SRE throttle only drops once failures pass (K - 1) x the
 * window's successes, 3.3 s into an outage with a 10 s window. The SRE
 * throttle then refuses everything but its probes until one succeeds; the
 * classic breaker goes OPEN as usual. The balancers use 5 by default.
 *
 * State and counters are atomics written by the owner only, for readers on
 * other threads (metrics); every state change is logged.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "resilience/internal.h"

/* Calls a recovery ramp sees before it may judge the backend still failing.
 * A backend failing 10 % passes a third failing after 20 calls about once in
 * 400 ramps (seen in tests); after 50, about once in a million. */
#define RAMP_MIN_CALLS 50

struct mica_breaker {
    mica_breaker_opts_t o;
    char *name;
    /* SRE: a = requests, b = accepts; classic: a = calls, b = failures, c = slow */
    mica__window_t win;
    uint64_t rng;
    uint32_t consecutive; /* failures in a row */
    /* SRE */
    int64_t last_pass_ms;
    bool ramping;
    int64_t ramp_start_ms, ramp_stop_ms;
    uint32_t ramp_calls, ramp_failures;
    /* classic */
    int64_t open_until_ms, half_since_ms, last_probe_ms;
    uint32_t probes_out, probes_ok;

    _Atomic int state;
    _Atomic uint32_t drop_ppm;
    mica__ctr_t calls, failures, slow, rejections, opens;
};

const char *mica_breaker_state_name(mica_breaker_state_t s)
{
    return s == MICA_BREAKER_CLOSED ? "closed" : s == MICA_BREAKER_OPEN ? "open" : "half-open";
}

void mica__breaker_defaults(mica_breaker_opts_t *o)
{
    if (o->window_ms <= 0)
        o->window_ms = 10000;
    if (o->buckets <= 0)
        o->buckets = 40;
    if (!o->min_calls)
        o->min_calls = o->kind == MICA_BREAKER_CLASSIC ? 20 : 5;
    if (o->k <= 0)
        o->k = 1.5;
    if (o->probe_interval_ms <= 0)
        o->probe_interval_ms = 500;
    if (o->recovery_ms <= 0)
        o->recovery_ms = 5000;
    if (o->failure_ratio <= 0)
        o->failure_ratio = 0.5;
    if (o->slow_ratio <= 0)
        o->slow_ratio = 0.5;
    if (o->slow_call_ms <= 0)
        o->slow_call_ms = 800;
    if (o->open_ms <= 0)
        o->open_ms = 5000;
    if (!o->half_open_calls)
        o->half_open_calls = 5;
    if (o->probe_timeout_ms <= 0)
        o->probe_timeout_ms = 2 * o->slow_call_ms;
}

int mica__breaker_check(const mica_breaker_opts_t *o)
{
    if (o->kind != MICA_BREAKER_SRE && o->kind != MICA_BREAKER_CLASSIC)
        return MICA_EINVAL;
    if (o->buckets > 3600 || o->k < 1 || o->failure_ratio > 1 || isnan(o->k) ||
        isnan(o->failure_ratio) || isnan(o->slow_ratio))
        return MICA_EINVAL;
    return 0;
}

int mica_breaker_new(mica_breaker_t **out, const char *name, const mica_breaker_opts_t *opts)
{
    mica_breaker_opts_t o = opts ? *opts : (mica_breaker_opts_t){0};
    mica__breaker_defaults(&o);
    if (mica__breaker_check(&o) != 0)
        return MICA_EINVAL;
    mica_breaker_t *b = mica__calloc(1, sizeof(*b));
    if (!b)
        return MICA_ENOMEM;
    b->o = o;
    b->name = mica__strdup(name ? name : "");
    if (!b->name || mica__window_init(&b->win, o.window_ms, o.buckets) != 0) {
        mica__free(b->name);
        mica__free(b);
        return MICA_ENOMEM;
    }
    b->rng = mica__rand_seed(b);
    b->last_pass_ms = INT64_MIN / 2;
    b->ramp_stop_ms = INT64_MIN / 2;
    *out = b;
    return 0;
}

void mica_breaker_free(mica_breaker_t *b)
{
    if (!b)
        return;
    mica__window_destroy(&b->win);
    mica__free(b->name);
    mica__free(b);
}

mica_breaker_state_t mica_breaker_state(const mica_breaker_t *b)
{
    return (mica_breaker_state_t)atomic_load_explicit(&b->state, memory_order_relaxed);
}

static mica_breaker_state_t state_of(const mica_breaker_t *b)
{
    return (mica_breaker_state_t)atomic_load_explicit(&b->state, memory_order_relaxed);
}

/* Every change of state goes through here: one log line each. */
static void set_state(mica_breaker_t *b, mica_breaker_state_t to, const char *reason)
{
    mica_breaker_state_t from = state_of(b);
    if (from == to)
        return;
    atomic_store_explicit(&b->state, (int)to, memory_order_relaxed);
    if (to == MICA_BREAKER_OPEN)
        mica__ctr_add(&b->opens, 1);
    if (b->o.kind == MICA_BREAKER_CLASSIC)
        atomic_store_explicit(&b->drop_ppm, to == MICA_BREAKER_OPEN ? 1000000u : 0u,
                              memory_order_relaxed);
    char calls[24], bad[24], worker[12];
    snprintf(calls, sizeof(calls), "%llu", (unsigned long long)b->win.a);
    snprintf(bad, sizeof(bad), "%llu",
             (unsigned long long)(b->o.kind == MICA_BREAKER_SRE ? b->win.a - b->win.b : b->win.b));
    snprintf(worker, sizeof(worker), "%d", mica_worker_id());
    if (to == MICA_BREAKER_OPEN)
        mica__log_warn("breaker: state change", "breaker", b->name, "from",
                       mica_breaker_state_name(from), "to", mica_breaker_state_name(to), "reason",
                       reason, "window_calls", calls, "window_failures", bad, "worker", worker);
    else
        mica__log_info("breaker: state change", "breaker", b->name, "from",
                       mica_breaker_state_name(from), "to", mica_breaker_state_name(to), "reason",
                       reason, "window_calls", calls, "window_failures", bad, "worker", worker);
}

/* ---- the SRE throttle ------------------------------------------------------------- */

/* The formula's drop probability over the window. */
static double sre_p(const mica_breaker_t *b)
{
    double r = (double)b->win.a, acc = (double)b->win.b;
    double p = (r - (double)b->o.min_calls - b->o.k * acc) / (r + 1);
    return p > 0 ? p : 0;
}

/* p as applied: scaled down while a recovery ramp runs. */
static double sre_p_now(const mica_breaker_t *b, int64_t now_ms)
{
    double p = sre_p(b);
    if (p > 0 && b->ramping) {
        double left = 1 - (double)(now_ms - b->ramp_start_ms) / (double)b->o.recovery_ms;
        p *= left > 0 ? left : 0;
    }
    return p;
}

static void ramp_stop(mica_breaker_t *b, int64_t now_ms)
{
    b->ramping = false;
    b->ramp_stop_ms = now_ms;
}

/* Moves the window to now; ends a ramp that ran its course; settles the state
 * at bucket boundaries (so a throttle near its threshold changes state at
 * most a few times a second). */
static void sre_tick(mica_breaker_t *b, int64_t now_ms)
{
    bool boundary = mica__window_advance(&b->win, now_ms);
    if (b->ramping && now_ms - b->ramp_start_ms >= b->o.recovery_ms) {
        ramp_stop(b, now_ms);
        mica__window_clear(&b->win); /* the outage is over: forget it */
        set_state(b, MICA_BREAKER_CLOSED, "recovered");
        boundary = true;
    }
    if (!boundary)
        return;
    double p = sre_p(b);
    if (b->ramping && p <= 0) {
        ramp_stop(b, now_ms);
        set_state(b, MICA_BREAKER_CLOSED, "recovered");
    } else if (!b->ramping) {
        if (p <= 0)
            set_state(b, MICA_BREAKER_CLOSED, "drop ratio 0");
        else if (state_of(b) == MICA_BREAKER_CLOSED)
            set_state(b, MICA_BREAKER_OPEN, "too few successes");
    }
    atomic_store_explicit(&b->drop_ppm, (uint32_t)(sre_p_now(b, now_ms) * 1e6),
                          memory_order_relaxed);
}

/* Failures in a row past the threshold: only probes until a success. */
static bool tripped(const mica_breaker_t *b)
{
    return b->o.consecutive_failures && b->consecutive >= b->o.consecutive_failures;
}

static int sre_allow(mica_breaker_t *b, int64_t now_ms)
{
    sre_tick(b, now_ms);
    double p = tripped(b) ? 1 : sre_p_now(b, now_ms);
    if (p <= 0 || now_ms - b->last_pass_ms >= b->o.probe_interval_ms ||
        (p < 1 && mica__rand01(&b->rng) >= p)) {
        b->last_pass_ms = now_ms;
        return 0;
    }
    mica__window_add(&b->win, 1, 0, 0); /* a refusal is a request the backend did not accept */
    mica__ctr_add(&b->rejections, 1);
    if (state_of(b) == MICA_BREAKER_CLOSED)
        set_state(b, MICA_BREAKER_OPEN, "too few successes");
    return MICA_EOVERLOAD;
}

static void sre_record(mica_breaker_t *b, int64_t now_ms, int64_t started_ms, bool failure)
{
    sre_tick(b, now_ms);
    mica__window_add(&b->win, 1, failure ? 0 : 1, 0);
    if (tripped(b) && b->consecutive == b->o.consecutive_failures) {
        if (b->ramping)
            ramp_stop(b, now_ms);
        set_state(b, MICA_BREAKER_OPEN, "consecutive failures");
    }
    if (b->ramping) {
        if (started_ms < b->ramp_start_ms)
            return; /* began before the ramp: says nothing about the backend now */
        b->ramp_calls++;
        if (failure)
            b->ramp_failures++;
        /* failures / calls > 1 - 1/K: what the throttle itself would not accept */
        if (b->ramp_calls >= b->o.min_calls && b->ramp_calls >= RAMP_MIN_CALLS &&
            b->o.k * b->ramp_failures > (b->o.k - 1) * b->ramp_calls) {
            ramp_stop(b, now_ms);
            set_state(b, MICA_BREAKER_OPEN, "still failing while recovering");
        }
    } else if (!failure && sre_p(b) > 0 && now_ms - b->ramp_stop_ms >= b->o.probe_interval_ms) {
        b->ramping = true;
        b->ramp_start_ms = now_ms;
        b->ramp_calls = 1;
        b->ramp_failures = 0;
        set_state(b, MICA_BREAKER_HALF_OPEN, "a call succeeded");
    }
}

/* ---- the classic breaker ----------------------------------------------------------- */

static void to_open(mica_breaker_t *b, int64_t now_ms, const char *reason)
{
    b->open_until_ms = now_ms + b->o.open_ms;
    b->probes_out = b->probes_ok = 0;
    set_state(b, MICA_BREAKER_OPEN, reason);
}

static int classic_allow(mica_breaker_t *b, int64_t now_ms)
{
    switch (state_of(b)) {
    case MICA_BREAKER_CLOSED:
        return 0;
    case MICA_BREAKER_OPEN:
        if (now_ms < b->open_until_ms)
            break;
        b->half_since_ms = now_ms;
        b->probes_out = b->probes_ok = 0;
        set_state(b, MICA_BREAKER_HALF_OPEN, "open interval over");
        __attribute__((fallthrough)); /* this call may be the first probe */
    case MICA_BREAKER_HALF_OPEN:
        if (b->probes_out > 0 && now_ms - b->last_probe_ms >= b->o.probe_timeout_ms) {
            to_open(b, now_ms, "probe timed out");
            break;
        }
        if (b->probes_out + b->probes_ok < b->o.half_open_calls) {
            b->probes_out++;
            b->last_probe_ms = now_ms;
            return 0;
        }
        break;
    }
    mica__ctr_add(&b->rejections, 1);
    return MICA_EOVERLOAD;
}

static void classic_record(mica_breaker_t *b, int64_t now_ms, int64_t started_ms, bool failure,
                           bool slow)
{
    switch (state_of(b)) {
    case MICA_BREAKER_CLOSED: {
        mica__window_advance(&b->win, now_ms);
        mica__window_add(&b->win, 1, failure, slow);
        if (tripped(b)) {
            to_open(b, now_ms, "consecutive failures");
            return;
        }
        uint64_t n = b->win.a;
        if (n < b->o.min_calls)
            return;
        if ((double)b->win.b >= b->o.failure_ratio * (double)n)
            to_open(b, now_ms, "failure ratio");
        else if ((double)b->win.c >= b->o.slow_ratio * (double)n)
            to_open(b, now_ms, "slow-call ratio");
        return;
    }
    case MICA_BREAKER_OPEN:
        return; /* calls from before it opened */
    case MICA_BREAKER_HALF_OPEN:
        if (started_ms < b->half_since_ms)
            return; /* not a probe */
        if (b->probes_out)
            b->probes_out--;
        if (failure || slow) {
            to_open(b, now_ms, failure ? "probe failed" : "probe slow");
        } else if (++b->probes_ok >= b->o.half_open_calls) {
            mica__window_advance(&b->win, now_ms);
            mica__window_clear(&b->win);
            set_state(b, MICA_BREAKER_CLOSED, "probes succeeded");
        }
        return;
    }
}

/* ---- the API ------------------------------------------------------------------------- */

int mica_breaker_allow(mica_breaker_t *b, int64_t now_ms)
{
    return b->o.kind == MICA_BREAKER_SRE ? sre_allow(b, now_ms) : classic_allow(b, now_ms);
}

void mica_breaker_record(mica_breaker_t *b, int64_t now_ms, int64_t started_ms, bool failure)
{
    bool slow = now_ms - started_ms >= b->o.slow_call_ms;
    b->consecutive = failure ? b->consecutive + 1 : 0;
    mica__ctr_add(&b->calls, 1);
    if (failure)
        mica__ctr_add(&b->failures, 1);
    if (slow && b->o.kind == MICA_BREAKER_CLASSIC)
        mica__ctr_add(&b->slow, 1);
    if (b->o.kind == MICA_BREAKER_SRE)
        sre_record(b, now_ms, started_ms, failure);
    else
        classic_record(b, now_ms, started_ms, failure, slow);
}

void mica_breaker_stats(const mica_breaker_t *b, mica_breaker_stats_t *out)
{
    *out = (mica_breaker_stats_t){0};
    mica__breaker_stats_add(out, b);
}

static int severity(mica_breaker_state_t s)
{
    return s == MICA_BREAKER_OPEN ? 2 : s == MICA_BREAKER_HALF_OPEN ? 1 : 0;
}

void mica__breaker_stats_add(mica_breaker_stats_t *sum, const mica_breaker_t *b)
{
    mica_breaker_state_t s = mica_breaker_state(b);
    if (severity(s) > severity(sum->state))
        sum->state = s;
    uint32_t d = atomic_load_explicit(&b->drop_ppm, memory_order_relaxed);
    if (d > sum->drop_ppm)
        sum->drop_ppm = d;
    sum->calls += mica__ctr_get(&b->calls);
    sum->failures += mica__ctr_get(&b->failures);
    sum->slow += mica__ctr_get(&b->slow);
    sum->rejections += mica__ctr_get(&b->rejections);
    sum->opens += mica__ctr_get(&b->opens);
}

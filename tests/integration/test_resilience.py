#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Balancers, breakers, retries, budgets and hedging against real processes.

Three fault-injecting backends (tests/integration/fault_server.c, mica; and
tests/interop/go/fault, grpc-go) on loopback ports; mica's gRPC client under
load (tests/integration/resilience_client.c) with the balancer and policies
a case chooses. The test switches a backend's behaviour at run time through
its control port (errors, latency, a slow tail, hangs, connection resets) or
kills it with SIGKILL and restarts it on the same port, on a schedule in the
client's own clock (the client prints its counters every 100 ms, and each
action fires when a line past its time arrives). What is checked is what
crossed the wire: who served each call (backends answer with their name)
and the backends' own counts.

Timing bounds have margins for a loaded 2-core machine; under sanitizers
(MICA_SANITIZE) only the cases that do not measure time run.
"""
import json, os, signal, socket, subprocess, sys, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BUILD = os.environ.get("MICA_BUILD_DIR", os.path.join(ROOT, "build"))
SANITIZED = bool(os.environ.get("MICA_SANITIZE"))
results = {"passed": 0, "failed": 0}

# The SRE throttle's recovery bound with the defaults (src/resilience/breaker.c):
# 2 x probe_interval (0.5 s) + recovery ramp (5 s).
SRE_BOUND_MS = 6000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Backend:
    """A fault server (mica or grpc-go) named b<i>, restartable on the same ports."""

    def __init__(self, i, go=None):
        self.name, self.go = f"b{i}", go
        self.port, self.cport = free_port(), free_port()
        self.start()

    def start(self):
        if self.go:
            cmd = [self.go, "-name", self.name, "-addr", f"127.0.0.1:{self.port}",
                   "-control", f"127.0.0.1:{self.cport}"]
            want = "listening on"
        else:
            cmd = [os.path.join(BUILD, "tests/fault_server"), "-name", self.name,
                   "-listen", f"127.0.0.1:{self.port}", "-control", f"127.0.0.1:{self.cport}"]
            want = "ports"
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline()
        assert line.startswith(want), f"{self.name} did not start: {line!r}"

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def control(self, path, method="POST"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.cport}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def fault(self, **kw):
        self.control("/fault?" + "&".join(f"{k}={v}" for k, v in kw.items()))

    def calls(self):
        return json.loads(self.control("/stats", "GET"))["calls"]

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Run:
    """One client run: its interval lines, its final line, what the schedule did."""

    def __init__(self, lines, marks):
        self.lines = [l for l in lines if "final" not in l]
        self.final = lines[-1]
        self.marks = marks  # action name -> client time (ms) it fired

    def deltas(self, key, i):
        """(t, increase of key[i] over the interval ending at t) for each interval."""
        out, prev = [], 0
        for l in self.lines:
            v = l[key][i] if i is not None else l[key]
            out.append((l["t"], v - prev))
            prev = v
        return out

    def share(self, i, t_from, t_to):
        """backend i's share of the OK calls between client times t_from and t_to."""
        a = [l for l in self.lines if t_from <= l["t"] <= t_to]
        if len(a) < 2:
            return 0.0
        total = sum(a[-1]["by"]) - sum(a[0]["by"])
        return (a[-1]["by"][i] - a[0]["by"][i]) / total if total else 0.0


def client(backends, schedule=(), **opts):
    """Runs resilience_client against `backends`; schedule: [(t_ms, name, fn)]."""
    weights = opts.pop("weights", {})
    eps = ",".join(b.addr + (f"={weights[i]}" if i in weights else "")
                   for i, b in enumerate(backends))
    args = [os.path.join(BUILD, "tests/resilience_client"), "-endpoints", eps]
    for k, v in opts.items():
        args += ["-" + k.replace("_", "-"), str(v)]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines, marks, todo = [], {}, sorted(schedule, key=lambda s: s[0])
    for raw in p.stdout:
        d = json.loads(raw)
        lines.append(d)
        while todo and d["t"] >= todo[0][0]:
            t, name, fn = todo.pop(0)
            fn()
            marks[name] = d["t"]
    assert p.wait(timeout=60) == 0, "client failed"
    assert lines and lines[-1].get("final"), "no final line"
    return Run(lines, marks)


def case(fn):
    fn.is_case = True
    return fn


def within(x, want, rel):
    return abs(x - want) <= want * rel


# ---- balancers ------------------------------------------------------------------

@case
def test_each_balancer_spreads_load_as_it_promises(bs):
    for lb, weights, expect, rel in (
            ("rr", {}, (1 / 3, 1 / 3, 1 / 3), 0.05),
            ("wrr", {0: 1, 1: 2, 2: 3}, (1 / 6, 2 / 6, 3 / 6), 0.05),
            ("least", {}, (1 / 3, 1 / 3, 1 / 3), 0.20),  # follows real queues: under load, unequal
            ("random", {}, (1 / 3, 1 / 3, 1 / 3), 0.10),
            ("p2c", {}, None, None)):
        before = [b.calls() for b in bs]
        r = client(bs, lb=lb, weights=weights, rate=1500, duration=3000, conc=16)
        served = [b.calls() - x for b, x in zip(bs, before)]
        total = sum(served)
        assert r.final["fail"] == 0, (lb, r.final)
        assert total == r.final["ok"], (lb, served, r.final["ok"])
        shares = [s / total for s in served]
        print(f"  {lb}: shares {[round(s, 3) for s in shares]} of {total} calls")
        if lb == "p2c":
            # p2c promises the faster backend, not an even spread: with other tests
            # loading the machine one backend can really be slower for seconds (we saw
            # 48/2/50 %). Each must still be sampled; the next case checks the promise.
            assert min(shares) >= 0.005, (lb, shares)
            continue
        for s, e in zip(shares, expect):
            assert within(s, e, rel), (lb, shares, expect)


@case
def test_p2c_moves_load_away_from_a_slow_backend(bs):
    bs[1].fault(delay_ms=20)
    try:
        rr = client(bs, lb="rr", rate=600, duration=2000, conc=32)
        p2c = client(bs, lb="p2c", rate=600, duration=2000, conc=32)
    finally:
        bs[1].fault()
    s_rr, s_p2c = rr.share(1, 0, 10 ** 9), p2c.share(1, 0, 10 ** 9)
    print(f"  slow backend's share: round robin {s_rr:.3f}, p2c {s_p2c:.3f}; p99 "
          f"{rr.final['p99_us'] // 1000} ms and {p2c.final['p99_us'] // 1000} ms")
    assert s_rr > 0.30
    assert s_p2c < 0.10  # (the p99s are printed only: a loaded machine's stalls show in both)


@case
def test_a_hash_key_stays_on_its_backend_and_only_a_removed_backends_keys_move(bs):
    keys = 1000  # sent in turn: each key several times before and after the removal
    r = client(bs, lb="ring", keys=keys, rate=2000, duration=4000, conc=16,
               drop_at="2000:0")
    assert r.final["fail"] == 0, r.final
    before = [k[0] for k in r.final["keys"]]
    after = [k[1] for k in r.final["keys"]]
    assert all(k[2] == 0 for k in r.final["keys"]), "a key changed backend with the set unchanged"
    assert all(k[3] == 0 for k in r.final["keys"]), "a key changed backend after the removal"
    moved = [i for i in range(keys) if before[i] != after[i]]
    assert all(before[i] == 0 for i in moved), "a key of a backend that stayed moved"
    assert all(after[i] != 0 for i in range(keys)), "a key still went to the removed backend"
    on0 = before.count(0)
    print(f"  {len(moved)} of {keys} keys moved (backend 0 had {on0})")
    # exactly the removed backend's keys move: its share of the ring, 1/N give or
    # take the ring's imbalance (256 points per endpoint: about 6 %, at random ports)
    assert len(moved) == on0 and len(moved) <= 1.3 * keys / 3


# ---- breakers -----------------------------------------------------------------

def recovery_ms(run, i, healed_at, fair):
    """Client ms from healed_at until backend i's share of each 100 ms interval
    stays at >= 90 % of `fair` for a whole second."""
    iv = [(l["t"], l["by"]) for l in run.lines]
    for k in range(1, len(iv)):
        t = iv[k][0]
        if t <= healed_at:
            continue
        ok = True
        for j in range(k, min(k + 10, len(iv))):
            got = [a - b for a, b in zip(iv[j][1], iv[j - 1][1])]
            if sum(got) == 0 or got[i] / sum(got) < 0.9 * fair:
                ok = False
                break
        if ok and k + 10 <= len(iv):
            return iv[k - 1][0] - healed_at
    return None


@case
def test_a_failing_backend_is_taken_out_and_back_within_the_bound(bs):
    b = bs[1]
    r = client(bs, lb="rr", ep_breaker="sre", rate=900, duration=13000, conc=16, idempotent=1,
               schedule=[(1000, "fail", lambda: b.fault(error=1)),
                         (5000, "heal", lambda: b.fault())])
    fail_at, healed = r.marks["fail"], r.marks["heal"]
    during = r.share(1, fail_at + 500, healed)
    back = recovery_ms(r, 1, healed, 1 / 3)
    print(f"  while failing: share {during:.3f}, {r.final['fail']} of {r.final['calls']} calls "
          f"failed; full traffic {back} ms after recovery (bound {SRE_BOUND_MS})")
    assert during < 0.02
    assert r.final["fail"] <= 0.005 * r.final["calls"]
    assert back is not None and back <= SRE_BOUND_MS + 1500


@case
def test_a_dead_method_fails_fast_or_falls_back_and_comes_back(bs):
    one = bs[:1]
    for fallback in (0, 1):
        r = client(one, rate=500, duration=12000, conc=8, retry=1, fallback=fallback,
                   schedule=[(1000, "fail", lambda: one[0].fault(error=1)),
                             (4000, "heal", lambda: one[0].fault())])
        f = r.final
        healed = r.marks["heal"]
        if fallback:
            assert f["fail"] == 0 and f["fallback"] > 1000, f
        else:
            assert f["fail"] > 1000 and f["fast_fail"] >= 0.95 * f["fail"], f
        # full traffic: every call of a second answered by the backend itself
        back = None
        for k in range(1, len(r.lines) - 10):
            if r.lines[k]["t"] <= healed:
                continue
            win = r.lines[k + 10]["by"][0] - r.lines[k]["by"][0]
            calls = r.lines[k + 10]["ok"] + r.lines[k + 10]["fail"] - r.lines[k]["ok"] - r.lines[k]["fail"]
            if calls and win >= 0.99 * calls:
                back = r.lines[k]["t"] - healed
                break
        print(f"  fallback={fallback}: {f['fail']} failed ({f['fast_fail']} fast), "
              f"{f['fallback']} fallbacks; full traffic {back} ms after recovery")
        assert back is not None and back <= SRE_BOUND_MS + 1500


@case
def test_the_classic_breaker_comes_back_after_its_open_interval(bs):
    one = bs[:1]
    r = client(one, rate=500, duration=6000, conc=8, retry=1, breaker="classic", open_ms=1000,
               schedule=[(1000, "fail", lambda: one[0].fault(error=1)),
                         (2500, "heal", lambda: one[0].fault())])
    states = [(l["t"], l["m_state"]) for l in r.lines]
    healed = r.marks["heal"]
    opened = [t for t, s in states if s == "open"]
    closed_after = [t for t, s in states if t > healed and s == "closed"]
    print(f"  open from {opened[0] if opened else None} ms, closed {closed_after[0] - healed if closed_after else None} ms after recovery")
    assert opened and closed_after
    assert closed_after[0] - healed <= 1000 + 1500


# ---- retries ------------------------------------------------------------------

@case
def test_a_backend_killed_under_load_fails_no_idempotent_call(bs):
    b = bs[2]
    for budget in (0, 1):
        for x in bs:
            x.fault(delay_ms=10)  # about 3 calls in flight on each when it dies
        r = client(bs, lb="rr", rate=900, duration=6500, conc=32, idempotent=1, budget=budget,
                   schedule=[(1000, "kill", b.kill),
                             (2500, "restart", lambda: (b.start(), b.fault(delay_ms=10)))])
        f = r.final
        down = r.share(2, r.marks["kill"] + 200, r.marks["restart"])
        # The client's connect back-off (1 s, then 1.6 s, each +-20 %) retries the dead
        # backend at about 1.0, 2.0-2.2 and 3.6-4.1 s: it is back by 4.1 s plus a
        # loaded machine's delay, and judged from restart + 2.5 s on.
        back = r.share(2, r.marks["restart"] + 2500, 10 ** 9)
        print(f"  budget {budget}: {f['calls']} calls, {f['fail']} failed, {f['retries']} retries "
              f"(peak {f['peak_retries']} in flight, {f['budget_exhausted']} refused); "
              f"its share while down {down:.2f}, once back {back:.2f}")
        if budget:
            # the calls in flight on the killed backend fail at once: retries in flight
            # stay within max(3, 20 % of the calls in flight), the rest fail
            assert f["peak_retries"] <= max(3, 0.2 * 32), f
            assert f["fail"] <= f["budget_exhausted"], f
        else:
            assert f["fail"] == 0, f
        assert f["retries"] > 0  # calls were in flight when it died
        assert down == 0
        assert back > 0.2  # back after the back-off
    for x in bs:
        x.fault()


@case
def test_connection_resets_under_load_fail_no_idempotent_call(bs):
    b = bs[0]
    b.fault(delay_ms=20)  # calls in flight at every reset
    resets = []
    sched = [(500 + 200 * k, f"reset{k}", lambda: resets.append(int(b.control("/reset"))))
             for k in range(10)]
    # A reset fails every call in flight on it at once (6 or more): a budget of 3
    # concurrent retries would refuse some, so retries are not budgeted here
    # (the budget has a case of its own; docs/guide/resilience.md on sizing it).
    r = client(bs, lb="rr", rate=900, duration=3000, conc=32, idempotent=1, budget=0,
               schedule=sched)
    b.fault()
    print(f"  {sum(resets)} connections reset; {r.final['calls']} calls, {r.final['fail']} "
          f"failed, {r.final['retries']} retries")
    assert sum(resets) >= 5 and r.final["retries"] > 0
    assert r.final["fail"] == 0, r.final


@case
def test_a_hanging_backend_is_retried_around_within_each_calls_deadline(bs):
    b = bs[1]
    r = client(bs, lb="rr", ep_breaker="sre", rate=300, duration=3000, conc=16, idempotent=1,
               per_try=100, deadline=1000, budget=0,
               schedule=[(500, "hang", lambda: b.fault(hang=1))])
    b.fault()
    print(f"  {r.final['calls']} calls, {r.final['fail']} failed, {r.final['retries']} retries, "
          f"max {r.final['max_us'] // 1000} ms")
    assert r.final["fail"] == 0, r.final
    assert r.final["max_us"] < 1000 * 1000


@case
def test_the_retry_budget_keeps_retries_from_multiplying_an_outage(bs):
    for b in bs:
        b.fault(error=1)
    try:
        out = {}
        for budget in (1, 0):
            before = sum(b.calls() for b in bs)
            r = client(bs, lb="rr", rate=1000, duration=2000, conc=32, retry=5, budget=budget,
                       breaker="none", idempotent=1)
            attempts = sum(b.calls() for b in bs) - before
            out[budget] = (attempts / r.final["calls"], r.final)
    finally:
        for b in bs:
            b.fault()
    ratio, f = out[1]
    print(f"  attempts per call: budget {ratio:.2f} (peak {f['peak_retries']} retries in flight, "
          f"{f['budget_exhausted']} refused), no budget {out[0][0]:.2f}")
    assert ratio <= 1.5
    assert out[0][0] >= 4.5
    assert f["peak_retries"] <= max(3, 0.2 * 32)


@case
def test_hedging_cuts_the_p99_of_a_slow_tail(bs):
    for b in bs:
        b.fault(tail=0.05, tail_ms=200)
    try:
        plain = client(bs, lb="rr", rate=400, duration=4000, conc=32)
        hedged = client(bs, lb="rr", rate=400, duration=4000, conc=32, hedge_delay=20)
    finally:
        for b in bs:
            b.fault()
    p, h = plain.final["p99_us"] // 1000, hedged.final["p99_us"] // 1000
    print(f"  p99: {p} ms plain, {h} ms hedged ({hedged.final['hedges']} hedges, "
          f"{hedged.final['hedge_wins']} won)")
    assert p >= 150
    assert h < 100
    assert hedged.final["fail"] == 0


def go_fault_server():
    out = os.path.join(BUILD, "interop")
    subprocess.run(["bash", os.path.join(ROOT, "tests/interop/go/build.sh"), out], check=True,
                   timeout=600, stdout=subprocess.DEVNULL)
    return os.path.join(out, "fault-server")


@case
def test_against_grpc_go_backends_breakers_kills_and_resets(bs_unused):
    go = go_fault_server()
    bs = [Backend(i, go=go) for i in range(3)]
    try:
        r = client(bs, lb="rr", ep_breaker="sre", rate=900, duration=13000, conc=16,
                   idempotent=1,
                   schedule=[(1000, "fail", lambda: bs[1].fault(error=1)),
                             (3000, "heal", lambda: bs[1].fault()),
                             (10500, "reset", lambda: bs[0].control("/reset")),
                             (11000, "kill", bs[2].kill)])
        during = r.share(1, r.marks["fail"] + 500, r.marks["heal"])
        cut = Run([l for l in r.lines if l["t"] <= r.marks["reset"]] + [r.final], r.marks)
        back = recovery_ms(cut, 1, r.marks["heal"], 1 / 3)
        print(f"  grpc-go: failing backend's share {during:.3f}; {r.final['fail']} of "
              f"{r.final['calls']} calls failed; traffic back {back} ms after recovery")
        assert during < 0.02
        assert r.final["fail"] <= 0.005 * r.final["calls"]
        assert back is not None and back <= SRE_BOUND_MS + 1500
        assert r.share(2, r.marks["kill"] + 200, 10 ** 9) == 0
    finally:
        for b in bs:
            b.stop()


# Cases whose bounds are times a sanitizer build cannot keep (it runs ~10x slower):
# they run in the release build only. The kill -9 case is one: under ASan the
# restarted backend listens well before it serves, and calls sent in between
# ran out their 1 s deadline (32 of 5,871 once in CI; none in release runs).
TIMED = {"test_p2c_moves_load_away_from_a_slow_backend",
         "test_a_backend_killed_under_load_fails_no_idempotent_call",
         "test_a_failing_backend_is_taken_out_and_back_within_the_bound",
         "test_a_dead_method_fails_fast_or_falls_back_and_comes_back",
         "test_the_classic_breaker_comes_back_after_its_open_interval",
         "test_a_hanging_backend_is_retried_around_within_each_calls_deadline",
         "test_hedging_cuts_the_p99_of_a_slow_tail",
         "test_against_grpc_go_backends_breakers_kills_and_resets",
         "test_each_balancer_spreads_load_as_it_promises"}


def main():
    only = sys.argv[1:]
    cases = [f for n, f in globals().items() if getattr(f, "is_case", False)
             and (not only or n in only) and not (SANITIZED and n in TIMED)]
    for fn in cases:
        bs = [Backend(i) for i in range(3)]
        t0 = time.time()
        try:
            fn(bs)
            print(f"PASS {fn.__name__} ({time.time() - t0:.1f} s)")
            results["passed"] += 1
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            print(f"FAIL {fn.__name__}: {e!r}")
            results["failed"] += 1
        finally:
            for b in bs:
                b.stop()
        sys.stdout.flush()
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()

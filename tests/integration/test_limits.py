#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The resilience layer on the wire, against <build>/bench/resilience_server:

- rate limiters at 1000/s and 15000/s per client IP (token bucket, GCRA,
  sliding window) flooded by wrk: the admitted rate over 5 s, measured by
  the server's own counters and clock, within 1 %; 429 with Retry-After;
- adaptive shedding under a flood (h2load, open loop, 3x the capacity just
  measured): 503s, the log lines when shedding starts and stops, goodput
  kept; the heavy figures are bench/load/shed.sh's;
- deadlines across three processes A -> B -> C (HTTP X-Request-Timeout at
  A, grpc-timeout after), and requests already out of time refused
  (HTTP/1.1, and gRPC over h2c with nghttp)."""
import http.client, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, run_tests  # noqa: E402

BIN = os.path.join(BUILD, "bench/resilience_server")


class Server:
    def __init__(self, *args, workers=2, cpu=None, **env):
        self.err = tempfile.TemporaryFile(mode="w+")
        self.out = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, MICA_WORKERS=str(workers), **env)
        cmd = ([shutil.which("taskset"), "-c", str(cpu)] if cpu is not None else []) + [BIN, *args]
        self.p = subprocess.Popen(cmd, env=e, stdout=self.out, stderr=self.err)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            self.out.seek(0)
            line = self.out.readline()
            if line.endswith("\n"):
                self.ports = json.loads(line)
                return
            assert self.p.poll() is None, "server exited: " + self.log()
            time.sleep(0.02)
        raise AssertionError("server did not start")

    def url(self, which, path):
        return f"http://127.0.0.1:{self.ports[which]}{path}"

    def log(self):
        self.err.seek(0)
        return self.err.read()

    def stats(self):
        with urllib.request.urlopen(self.url("admin", "/stats"), timeout=5 * SLOW) as r:
            return json.load(r)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=30 * SLOW) == 0, self.log()


def get(url, headers=None):
    """(status, headers, body) of a GET; HTTP errors are answers too."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10 * SLOW) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


# ---- rate limiters ------------------------------------------------------------------------

def measure_rates(algo):
    """Admitted per second at both limits over >= 5 s of server time, after 1.5 s of flood.
    The rate is admitted / elapsed between two of the server's snapshots of its counters
    and clock taken at a refusal (when the budget was spent: snapshots at other moments
    would count whatever budget a stall of this busy machine left unspent); three
    snapshots at each end give six spans of 5 s or more, and the median is the answer."""
    srv = Server(f"--algo={algo}")
    try:
        loads = [subprocess.Popen(["wrk", "-t1", f"-c{c}", f"-d{int(10 * min(SLOW, 2))}s",
                                   srv.url(k, "/r")], stdout=subprocess.PIPE, text=True)
                 for k, c in (("l1000", 8), ("l15000", 16))]
        time.sleep(1.5)
        first = []
        for _ in range(3):
            first.append(srv.stats())
            time.sleep(0.5)
        time.sleep(max(0.0, 5 - (srv.stats()["now_us"] - first[-1]["now_us"]) / 1e6))
        last = []
        for _ in range(3):
            last.append(srv.stats())
            time.sleep(0.5)
        for w in loads:
            w.wait(timeout=60 * SLOW)
        out = {}
        for k, rate in (("l1000", 1000), ("l15000", 15000)):
            spans = []
            for a in first:
                for b in last:
                    ra, rb = a[k]["at_refusal"], b[k]["at_refusal"]
                    if rb["us"] - ra["us"] >= 5e6:
                        spans.append(((rb["admitted"] - ra["admitted"]) * 1e6 / (rb["us"] - ra["us"]),
                                      (b[k]["limited"] - a[k]["limited"]) * 1e6 /
                                      (b["now_us"] - a["now_us"])))
            spans.sort()
            if len(spans) < 3:  # refusals stopped: the flood did not keep up
                assert SLOW > 1, (k, [x[k] for x in first], [x[k] for x in last])
                return None
            out[k] = (*spans[len(spans) // 2], rate)
        return out
    finally:
        srv.stop()


def test_limiters_hold_the_rate_within_one_percent_at_1000_and_15000_per_second():
    for algo in ("bucket", "gcra", "window"):
        for attempt in (1, 2):
            rates = measure_rates(algo)
            if rates is None:
                print(f"  {algo}: sanitizer build, not flooded for 5 s: accuracy not checked")
                break
            errs = []
            for k, (got, limited, rate) in rates.items():
                err = (got - rate) / rate
                print(f"  {algo:6} {rate:5}/s: {got:9.1f} admitted/s ({err * 100:+.3f} %), "
                      f"{limited:8.0f} limited/s")
                if limited < 0.03 * rate:  # not flooded: the limiter was not the bottleneck
                    assert SLOW > 1, f"{algo} at {rate}/s: wrk did not flood it ({limited}/s refused)"
                    print("  (sanitizer build: not flooded, accuracy not checked)")
                    continue
                errs.append(abs(err))
            # A window's unspent budget is lost if the server stalls at its very end
            # (a sliding window carries nothing over): one retry for the window.
            if all(e < 0.01 for e in errs):
                break
            assert algo == "window" and attempt == 1, f"{algo}: {rates}"


def test_a_client_over_its_rate_gets_429_with_retry_after():
    srv = Server("--algo=gcra")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.ports["l1000"], timeout=10 * SLOW)
        for i in range(3000):  # the burst is 1000: a keep-alive loop spends it within a second
            conn.request("GET", "/r")
            r = conn.getresponse()
            body = r.read()
            if r.status == 429:
                break
        assert r.status == 429 and i >= 999, (i, r.status)
        assert r.getheader("Retry-After") == "1"
        assert b"rate limit exceeded (per ip)" in body
        conn.close()
        assert srv.stats()["l1000"]["limited"] >= 1
    finally:
        srv.stop()


# ---- shedding -----------------------------------------------------------------------------

def h2load(url, *args, log=None):
    cmd = ["h2load", *args, url] + (["--log-file", log] if log else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120 * SLOW)
    m = re.search(r"status codes: (\d+) 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx", r.stdout)
    assert m, r.stdout + r.stderr
    return int(m.group(1)), int(m.group(2))


def cpu_seconds(pid):
    """utime + stime of a process so far, in seconds (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_shedding_refuses_a_flood_keeps_goodput_and_logs_start_and_stop():
    """Goodput is compared with the capacity per server CPU-second, which does not move
    with the share of the CPUs the server gets while other tests run beside it."""
    srv = Server(workers=1)
    try:
        url = srv.url("main", "/work?us=1000")
        c0 = cpu_seconds(srv.p.pid)
        ok, _ = h2load(url, "-c", "8", "-m", "1", "-D", "3")  # closed loop: the capacity
        capacity, cap_cpu = ok / 3, ok / (cpu_seconds(srv.p.pid) - c0)
        rps = max(1, int(capacity * 3 / 20))
        with tempfile.NamedTemporaryFile() as lf:
            load = subprocess.Popen(["h2load", "-c", "20", "-m", "100", "--rps", str(rps), "-D", "6",
                                     "--log-file", lf.name, url], stdout=subprocess.PIPE, text=True)
            time.sleep(2)  # the warm-up: shedding starts within a second of saturation
            t0, c0 = time.time(), cpu_seconds(srv.p.pid)
            out = load.communicate(timeout=120 * SLOW)[0]
            t1, c1 = time.time(), cpu_seconds(srv.p.pid)
            rows = [tuple(int(x) for x in line.split(b"\t")[:3]) for line in lf if line.strip()]
        m = re.search(r"status codes: (\d+) 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx", out)
        assert m, out
        shed = int(m.group(2))
        done = [r for r in rows if r[1] == 200 and t0 * 1e6 <= r[0] + r[2] < t1 * 1e6]
        goodput, per_cpu = len(done) / (t1 - t0), len(done) / max(c1 - c0, 0.01)
        lat = sorted(r[2] for r in done)
        p99 = lat[len(lat) * 99 // 100] / 1000 if lat else -1
        st = srv.stats()["shed"]
        print(f"  capacity {capacity:.0f}/s ({cap_cpu:.0f} per CPU-s); 3x flood: goodput "
              f"{goodput:.0f}/s ({per_cpu:.0f} per CPU-s: {100 * per_cpu / cap_cpu:.0f} %), "
              f"p99 {p99:.0f} ms, {shed} shed; {st}")
        assert shed > 0 and st["shed"] >= shed and st["episodes"] >= 1
        # bench/load/shed.sh measures it closely (~100 %); here: not collapsed. A sanitizer
        # build makes refusals costly beside the 1 ms of work: there only the counts.
        assert SLOW > 1 or per_cpu >= 0.8 * cap_cpu
        assert "load shedding started" in srv.log()
        time.sleep(1.5)  # the cool-off passes: the next request notices the end
        assert get(srv.url("main", "/work?us=10"))[0] == 200
        deadline = time.time() + 5 * SLOW
        while "load shedding stopped" not in srv.log() and time.time() < deadline:
            time.sleep(0.1)
            get(srv.url("main", "/work?us=10"))
        assert "load shedding stopped" in srv.log(), srv.log()
        assert not srv.stats()["shed"]["shedding"]
    finally:
        srv.stop()


def test_shedding_can_be_turned_off():
    srv = Server(workers=1, MICA_SHED="off")
    try:
        ok, shed = h2load(srv.url("main", "/work?us=1000"), "-c", "10", "-m", "20", "-n", "2000")
        assert shed == 0 and ok == 2000
        assert srv.stats()["shed"]["admitted"] == 0  # no gate at all
    finally:
        srv.stop()


# ---- deadlines ----------------------------------------------------------------------------

GRPC_FRAME = b"\x00\x00\x00\x00\x07\x0a\x05hello"  # Hop{message:"hello"}


def grpc_call(port, *headers):
    """Chain/Relay over h2c with nghttp (HEADERS and DATA sent at once); its -v output,
    where each received field is a line "recv (stream_id=N) name: value"."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(GRPC_FRAME)
        f.flush()
        r = subprocess.run(["nghttp", "-v", "-d", f.name, "-H", "content-type: application/grpc",
                            "-H", "te: trailers", *sum((["-H", h] for h in headers), []),
                            f"http://127.0.0.1:{port}/mica.bench.Chain/Relay"],
                           capture_output=True, text=True, timeout=30 * SLOW)
    return r.stdout


def test_deadline_shrinks_across_three_processes_and_expired_requests_are_refused():
    hop = 100
    c = Server(workers=1)
    b = Server(f"--next=127.0.0.1:{c.ports['main']}", f"--hop-ms={hop}", workers=1)
    a = Server(f"--next=127.0.0.1:{b.ports['main']}", f"--hop-ms={hop}", workers=1)
    try:
        # HTTP at A (X-Request-Timeout) -> gRPC A to B -> B waits 100 ms -> C reports its budget.
        status, _, body = get(a.url("main", "/chain"), {"X-Request-Timeout": "2000"})
        assert status == 200 and body.startswith("left="), (status, body)
        left = int(body[5:])
        print(f"  X-Request-Timeout 2000 at A: C was left {left} ms (B took {hop} ms)")
        assert 2000 - 1000 * SLOW < left <= 2000 - hop + 1
        # gRPC straight at B: grpc-timeout 1500m -> C sees less than 1400.
        out = grpc_call(b.ports["main"], "grpc-timeout: 1500m")
        assert re.search(r"grpc-status: 0\n", out), out
        assert "left=" in out
        # A budget too small for the chain: B's call to C runs out, A answers 504.
        status, _, body = get(a.url("main", "/chain"), {"X-Request-Timeout": "60"})
        assert status == 504, (status, body)
        # Already out of time: refused before any handler, in each protocol's terms.
        before = c.stats()["deadline"]
        assert get(c.url("main", "/work?us=10"), {"X-Request-Timeout": "0"})[0] == 504
        assert get(c.url("main", "/work?us=10"), {"X-Request-Timeout": "later"})[0] == 400
        out = grpc_call(c.ports["main"], "grpc-timeout: 0m")
        assert re.search(r"grpc-status: 4\n", out), out
        assert "deadline exceeded" in out
        # Refused at the head with 3 MB still to come over HTTP/2: answered, and the
        # client is let finish (the rest is dropped; past 1 MiB the stream is reset).
        with tempfile.NamedTemporaryFile() as big:
            big.write(b"x" * 3_000_000)
            big.flush()
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                                "%{http_code}", "-H", "X-Request-Timeout: 0", "--data-binary",
                                "@" + big.name, c.url("main", "/work?us=10")],
                               capture_output=True, text=True, timeout=30 * SLOW)
        assert r.stdout == "504", (r.stdout, r.stderr)
        after = c.stats()["deadline"]
        assert after["expired"] - before["expired"] == 3
        assert after["malformed"] - before["malformed"] == 1
    finally:
        for s in (a, b, c):
            s.stop()


if __name__ == "__main__":
    for tool in ("wrk", "h2load", "nghttp"):
        assert shutil.which(tool), f"{tool} not found (scripts/deps.sh test)"
    run_tests(dict(globals()))

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Observability as an operator meets it, through examples/user and
examples/hello on loopback: a real Prometheus (Debian's `prometheus`, its
own temp dir and config) scrapes the admin listener after a known number
of requests and its query API returns the exact counts per route and
status; `promtool check metrics` finds nothing; the histograms keep their
invariants; /readyz answers 503 from SIGTERM on while the service still
serves; a log output nobody reads costs no request and the dropped lines
are counted; SIGHUP reopens the access log; a CPU profile taken under
load is read by `go tool pprof`, and a second one meanwhile gets 409."""
import json, os, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.parse, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, run_tests  # noqa: E402

USER = os.path.join(BUILD, "examples/user")
HELLO = os.path.join(BUILD, "examples/hello")
GRPC_GETUSER = b"\x00\x00\x00\x00\x06\x0a\x04"  # + 4 ASCII digits: UserRequest{user_id}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(url, timeout=5):
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout * SLOW) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Service:
    """A mica example with its admin listener on a free port; env overrides."""

    def __init__(self, binary, stdout=subprocess.DEVNULL, **env):
        self.port, self.admin = free_port(), free_port()
        self.grpc_port = free_port()
        e = {k: v for k, v in os.environ.items() if not k.startswith("MICA_") or k == "MICA_SANITIZE"}
        listen = f"127.0.0.1:{self.port}"
        if binary == USER:
            listen += f",127.0.0.1:{self.grpc_port}"
        e.update({"MICA_LISTEN": listen, "MICA_WORKERS": "2",
                  "MICA_ADMIN_LISTEN": f"127.0.0.1:{self.admin}"}, **env)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen([binary], env=e, stdout=stdout, stderr=self.log)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise AssertionError("exited: " + self.stderr())
            try:
                if get(f"http://127.0.0.1:{self.admin}/readyz", 1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("never ready: " + self.stderr())

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def metrics(self):
        status, body = get(f"http://127.0.0.1:{self.admin}/metrics")
        assert status == 200, status
        return body.decode()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=20 * SLOW)


def pipelined(port, path, n, depth=16):
    """n keep-alive GETs of path, `depth` at a time on one connection; returns the statuses."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    statuses, buf = [], b""
    sent = 0
    while len(statuses) < n:
        k = min(depth, n - sent)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode() * k)
        sent += k
        while len(statuses) < sent:
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                assert d, "connection closed"
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            statuses.append(int(head.split(b" ")[1]))
            clen = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            while len(buf) < clen:
                buf += s.recv(65536)
            buf = buf[clen:]
    s.close()
    return statuses


def grpc_get_user(port, user_id):
    """GetUser over h2c with curl; returns the grpc-status."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(GRPC_GETUSER + user_id.encode())
        f.flush()
        r = subprocess.run(["curl", "-s", "-m", str(5 * SLOW), "--http2-prior-knowledge", "-o",
                            "/dev/null", "-D", "-", "-H", "content-type: application/grpc",
                            "-H", "te: trailers", "--data-binary", "@" + f.name,
                            f"http://127.0.0.1:{port}/user.UserService/GetUser"],
                           capture_output=True, text=True, timeout=10 * SLOW)
    m = re.search(r"grpc-status: (\d+)", r.stdout)
    assert m, r
    return int(m.group(1))


# ---- the exposition ----------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


def parse(text):
    """{(name, labels-without-le): {...}} checking that no series appears twice."""
    seen, series = set(), []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        key = (name, labels)
        assert key not in seen, f"duplicate series {key}"
        seen.add(key)
        series.append((name, labels, value))
    return series


def check_histograms(text):
    """Buckets cumulative and in increasing le, +Inf present and equal to _count."""
    hist = {}
    for name, labels, value in parse(text):
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]*)"', labels).group(1)
            rest = re.sub(r',?le="[^"]*"', "", labels).replace("{,", "{")
            hist.setdefault((name[:-7], rest), []).append((le, value))
    counts = {(n[:-6], l): v for n, l, v in parse(text) if n.endswith("_count")}
    assert hist, "no histograms"
    for key, buckets in hist.items():
        les = [float("inf") if le == "+Inf" else float(le) for le, _ in buckets]
        assert les == sorted(les) and len(set(les)) == len(les), (key, les)
        assert les[-1] == float("inf"), key
        vals = [v for _, v in buckets]
        assert vals == sorted(vals), (key, vals)
        assert counts[key] == vals[-1], (key, counts[key], vals[-1])


def value(text, name, **labels):
    for n, l, v in parse(text):
        if n == name and all(f'{k}="{val}"' in l for k, val in labels.items()):
            return v
    return None


def test_metrics_pass_promtool_and_keep_histogram_invariants():
    svc = Service(USER)
    try:
        assert pipelined(svc.port, "/users/1001", 5) == [200] * 5
        assert pipelined(svc.port, "/nope", 2) == [404] * 2
        assert grpc_get_user(svc.grpc_port, "1001") == 0
        assert grpc_get_user(svc.grpc_port, "9999") == 5
        text = svc.metrics()
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r
        check_histograms(text)
        h = "http_server_request_duration_seconds_count"
        assert value(text, h, http_route="/users/{id}", http_response_status_code="200",
                     http_request_method="GET") == 5, text
        assert value(text, h, http_route="unmatched", http_response_status_code="404") == 2
        assert value(text, "grpc_server_handled_total", grpc_method="GetUser",
                     grpc_service="user.UserService", grpc_type="unary", grpc_code="OK") == 1
        assert value(text, "grpc_server_handled_total", grpc_method="GetUser",
                     grpc_code="NOT_FOUND") == 1
        assert "/users/1001" not in text  # never the raw path
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds", "process_start_time_seconds", "mica_runtime_coroutines",
                     "mica_runtime_runnable_coroutines", "mica_offload_queued_jobs",
                     "mica_http_server_open_connections", "http_server_active_requests",
                     "mica_runtime_loop_lag_seconds", "mica_log_dropped_lines_total"):
            assert re.search(rf"^{name}[{{ ]", text, re.M), name
        status, body = get(f"http://127.0.0.1:{svc.admin}/debug/runtime")
        doc = json.loads(body)
        assert status == 200 and doc["workers"] == 2 and len(doc["per_worker"]) == 2, doc
        assert get(f"http://127.0.0.1:{svc.admin}/healthz")[0] == 200
        # every line of the service log is one JSON object naming the service
        lines = [json.loads(line) for line in svc.stderr().splitlines()]
        assert any(x.get("service") == "user" and x["msg"] == "ready" for x in lines), lines
    finally:
        assert svc.stop() == 0


def h2_frame(ftype, flags, stream, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") +
            payload)


def hpack(name, value):  # literal without indexing, new name
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def test_h2_stream_whose_handler_returned_before_end_stream_is_served_once():
    """Regression: a streaming route (here gRPC's unknown-method fallback)
    that had answered before the client's END_STREAM arrived was served a
    second time when it did: two responses on one stream, two completions
    counted. The request's HEADERS go first, its DATA only once the answer
    is in."""
    svc = Service(USER)
    try:
        s = socket.create_connection(("127.0.0.1", svc.grpc_port), timeout=5 * SLOW)
        block = (hpack(b":method", b"POST") + hpack(b":scheme", b"http") +
                 hpack(b":path", b"/user.UserService/Nope") + hpack(b":authority", b"t") +
                 hpack(b"content-type", b"application/grpc") + hpack(b"te", b"trailers"))
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) +
                  h2_frame(1, 4, 1, block))  # HEADERS, END_HEADERS, no END_STREAM
        buf, answered = b"", False
        while not answered:
            d = s.recv(65536)
            assert d, "connection closed"
            buf += d
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                if ftype == 1 and stream == 1:
                    assert flags & 1, "the answer must end the stream"
                    answered = True
                buf = buf[9 + n:]
        s.sendall(h2_frame(0, 1, 1, GRPC_GETUSER + b"1001"))  # DATA, END_STREAM
        time.sleep(0.3)
        s.close()
        served = value(svc.metrics(), "grpc_server_handled_total", grpc_method="unknown",
                       grpc_code="UNIMPLEMENTED")
        assert served == 1, f"served {served} times"
    finally:
        assert svc.stop() == 0


def test_prometheus_scrapes_exact_counts_per_route_and_status():
    prom = shutil.which("prometheus")
    assert prom, "prometheus not installed (scripts/deps.sh test)"
    svc = Service(USER)
    tmp = tempfile.mkdtemp(prefix="mica-prom-")
    pp = None
    try:
        assert pipelined(svc.port, "/users/1001", 7) == [200] * 7
        assert pipelined(svc.port, "/users/1002", 4) == [200] * 4
        assert pipelined(svc.port, "/users/9999", 3) == [404] * 3
        assert pipelined(svc.port, "/nope", 2) == [404] * 2
        assert grpc_get_user(svc.grpc_port, "1003") == 0
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: user\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{svc.admin}']\n")
        port = free_port()
        pp = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"))

        def query(q):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                status, body = get(url, 2)
            except OSError:
                return None
            res = json.loads(body)["data"]["result"] if status == 200 else []
            return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in res}

        want = {
            'sum by (http_route, http_response_status_code) '
            '(http_server_request_duration_seconds_count{job="user"})': {
                ("/users/{id}", "200"): 11, ("/users/{id}", "404"): 3, ("unmatched", "404"): 2},
        }
        deadline = time.time() + 30 * SLOW
        got = None
        while time.time() < deadline:
            got = query(list(want)[0])
            if got:
                got = {(json.loads(k)["http_route"], json.loads(k)["http_response_status_code"]): v
                       for k, v in got.items()}
                if got == list(want.values())[0]:
                    break
            time.sleep(0.5)
        assert got == list(want.values())[0], got
        g = query('grpc_server_handled_total{grpc_method="GetUser",grpc_code="OK"}')
        assert list(g.values()) == [1.0], g
        up = query('up{job="user"}')
        assert list(up.values()) == [1.0], up
    finally:
        if pp:
            pp.terminate()
            pp.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)
        assert svc.stop() == 0


def test_readyz_says_503_from_sigterm_while_the_service_still_serves():
    svc = Service(USER, MICA_UNREADY_DELAY_MS="3000")
    assert get(f"http://127.0.0.1:{svc.admin}/readyz")[0] == 200
    t0 = time.time()
    svc.p.send_signal(signal.SIGTERM)
    status = None
    while time.time() - t0 < 3 * SLOW:
        status, body = get(f"http://127.0.0.1:{svc.admin}/readyz")
        if status == 503:
            break
        time.sleep(0.02)
    assert status == 503 and b"stopping" in body, (status, body)
    # not ready, yet the listeners still take new connections and answer
    assert pipelined(svc.port, "/health", 2) == [200, 200]
    assert svc.p.wait(timeout=20 * SLOW) == 0
    assert time.time() - t0 >= 2.5  # the unready delay held the drain back
    assert '"msg":"not ready","reason":"stopping"' in svc.stderr()


def test_a_log_output_nobody_reads_drops_lines_not_requests():
    r, w = os.pipe()  # stdout: a pipe nobody reads
    try:
        svc = Service(HELLO, stdout=w, MICA_ACCESS_LOG="-")
        t0 = time.time()
        assert pipelined(svc.port, "/health", 12000) == [200] * 12000
        took = time.time() - t0
        deadline = time.time() + 10 * SLOW
        dropped = 0
        while time.time() < deadline and not dropped:
            dropped = value(svc.metrics(), "mica_log_dropped_lines_total") or 0
            time.sleep(0.1)
        assert dropped > 0, "no dropped lines counted"
        assert took < 20 * SLOW, took
        assert svc.stop() == 0  # the writer gives up on the pipe: shutdown does not hang
    finally:
        os.close(r)
        os.close(w)


def test_sighup_reopens_the_access_log():
    d = tempfile.mkdtemp(prefix="mica-log-")
    path = os.path.join(d, "access.log")
    svc = Service(HELLO, MICA_ACCESS_LOG=path)
    try:
        pipelined(svc.port, "/health", 3)
        deadline = time.time() + 5 * SLOW
        while time.time() < deadline and len(open(path).read().splitlines()) < 3:
            time.sleep(0.05)
        os.rename(path, path + ".1")  # logrotate
        svc.p.send_signal(signal.SIGHUP)
        while time.time() < deadline and not os.path.exists(path):
            time.sleep(0.05)
        pipelined(svc.port, "/data", 2)
        while time.time() < deadline and len(open(path).read().splitlines()) < 2:
            time.sleep(0.05)
        old = [json.loads(x) for x in open(path + ".1").read().splitlines()]
        new = [json.loads(x) for x in open(path).read().splitlines()]
        assert [x["path"] for x in old] == ["/health"] * 3, old
        assert [x["path"] for x in new] == ["/data"] * 2, new
        x = new[0]
        assert x["msg"] == "request" and x["route"] == "/data" and x["status"] == 200, x
        assert x["service"] == "hello" and x["level"] == "info" and x["ts"].endswith("Z"), x
    finally:
        assert svc.stop() == 0
        shutil.rmtree(d, ignore_errors=True)


def test_cpu_profile_under_load_is_read_by_go_tool_pprof_and_a_second_gets_409():
    if os.environ.get("MICA_SANITIZE"):
        return  # SIGPROF sampling under the sanitizers' runtimes: not what is being tested
    svc = Service(USER)
    try:
        stop = threading.Event()

        def load():
            while not stop.is_set():
                pipelined(svc.port, "/users/1001", 64)
        t = threading.Thread(target=load)
        t.start()
        result = {}

        def first():
            result["first"] = get(f"http://127.0.0.1:{svc.admin}/debug/pprof/profile?seconds=2", 30)
        p = threading.Thread(target=first)
        p.start()
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline and '"cpu profile started"' not in svc.stderr():
            time.sleep(0.02)
        second = get(f"http://127.0.0.1:{svc.admin}/debug/pprof/profile?seconds=1")
        p.join()
        assert second[0] == 409, second[0]
        status, body = result["first"]
        assert status == 200 and body[:16] == b"\0" * 8 + b"\3" + b"\0" * 7, (status, body[:16])
        assert get(f"http://127.0.0.1:{svc.admin}/debug/pprof/profile?seconds=0")[0] == 400
        # As an operator would: pprof fetches a profile and asks the service's
        # /debug/pprof/symbol for the names of the addresses in it.
        tmp = tempfile.mkdtemp(prefix="mica-pprof-")
        r = subprocess.run(["go", "tool", "pprof", "-seconds", "2", "-symbolize=remote", "-top",
                            f"http://127.0.0.1:{svc.admin}/debug/pprof/profile"],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PPROF_TMPDIR=tmp, HOME=tmp))
        stop.set()
        t.join()
        shutil.rmtree(tmp, ignore_errors=True)
        assert r.returncode == 0, r.stderr
        assert "Type: cpu" in r.stdout, r.stdout
        # mica's own functions, by name: the connection coroutine and the middleware
        assert "mica__http_conn_main" in r.stdout and "in_flight" in r.stdout, r.stdout
    finally:
        assert svc.stop() == 0


if __name__ == "__main__":
    run_tests(dict(globals()))

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Tracing across real peers on loopback. An OpenTelemetry JS client
(tests/interop/otel/client.js) calls a traced mica service
(tests/integration/trace_service.c) over HTTP, which calls a grpc-js server
(tests/interop/otel/server.js) that answers with the traceparent it got:
one trace id throughout, each hop the child of the one before, and the
spans mica exported arrive at a test OTLP receiver -- a Python HTTP server
that decodes them with `protoc --decode` and mica's own .proto -- with
their attributes. Then the exporter against a receiver that answers 503
first (spans delivered once) and one that hangs (requests unaffected, drops
counted), and examples/user exporting when MICA_OTLP_ENDPOINT is set."""
import codecs, http.server, json, os, re, socket, subprocess, sys, tempfile, threading, time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, run_tests, wait_listening  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
OTEL = os.path.join(ROOT, "tests/interop/otel")
PROTO_DIR = os.path.join(ROOT, "src/observe")


# ---- the OTLP receiver --------------------------------------------------------------

def parse_text(text):
    """protoc's text format -> nested dicts of lists ({"field": [values or dicts]})."""
    root, stack = {}, []
    cur = root
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line == "}":
            cur = stack.pop()
        elif line.endswith("{"):
            child = {}
            cur.setdefault(line[:-1].strip(), []).append(child)
            stack.append(cur)
            cur = child
        else:
            k, v = line.split(":", 1)
            v = v.strip()
            if v.startswith('"'):
                v = codecs.escape_decode(v[1:-1].encode("latin-1"))[0]
            cur.setdefault(k.strip(), []).append(v)
    return root


def decode(body):
    r = subprocess.run(["protoc", "--proto_path=" + PROTO_DIR,
                        "--decode=mica.otlp.ExportTraceServiceRequest", "otlp_trace.proto"],
                       input=body, capture_output=True, timeout=30, check=True)
    return parse_text(r.stdout.decode())


def anyvalue(v):
    for k, conv in (("string_value", lambda b: b.decode()), ("int_value", int),
                    ("bool_value", lambda s: s == "true"), ("double_value", float)):
        if k in v:
            return conv(v[k][0])
    return None


def attrs(kvs):
    return {kv["key"][0].decode(): anyvalue(kv["value"][0]) for kv in kvs}


def spans_of(req):
    out = []
    for rs in req.get("resource_spans", []):
        resource = attrs(rs["resource"][0].get("attributes", []))
        for ss in rs.get("scope_spans", []):
            for s in ss.get("spans", []):
                out.append({
                    "name": s.get("name", [b""])[0].decode(),
                    "trace_id": s["trace_id"][0].hex(),
                    "span_id": s["span_id"][0].hex(),
                    "parent": s.get("parent_span_id", [b""])[0].hex(),
                    "trace_state": s.get("trace_state", [b""])[0].decode(),
                    "kind": s.get("kind", ["SPAN_KIND_UNSPECIFIED"])[0],
                    "attrs": attrs(s.get("attributes", [])),
                    "status": s.get("status", [{}])[0].get("code", ["STATUS_CODE_UNSET"])[0],
                    "start": int(s["start_time_unix_nano"][0]),
                    "end": int(s["end_time_unix_nano"][0]),
                    "resource": resource,
                })
    return out


class Receiver:
    """POST /v1/traces on a free port. mode: "ok", "503" (the first post 503 with
    Retry-After: 1, then 200) or "hang" (hold every post until release())."""

    def __init__(self, mode="ok"):
        self.mode, self.posts, self.spans, self.lock = mode, 0, [], threading.Lock()
        self.gate = threading.Event()
        recv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with recv.lock:
                    recv.posts += 1
                    first = recv.posts == 1
                if recv.mode == "hang":
                    recv.gate.wait(60)
                if recv.mode == "503" and first:
                    self.send_response(503)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                got = spans_of(decode(body)) if self.path == "/v1/traces" else []
                with recv.lock:
                    recv.spans += got
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def release(self):
        self.gate.set()

    def wait_spans(self, n, timeout=15):
        end = time.time() + timeout * SLOW
        while time.time() < end:
            with self.lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"{len(self.spans)} spans received, want {n}: {self.spans}")

    def close(self):
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- peers ----------------------------------------------------------------------------

def otel_peers():
    subprocess.run(["sh", os.path.join(OTEL, "setup.sh")], check=True, timeout=600)


class Proc:
    """A process whose stdout and stderr go to a temporary file."""

    def __init__(self, argv, env=None):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(argv, env=dict(os.environ, **(env or {})), stdout=self.log,
                                  stderr=subprocess.STDOUT)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.p.terminate()
        try:
            return self.p.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("did not exit on SIGTERM: " + self.output()[-2000:])


def grpc_js_server():
    s = Proc(["node", os.path.join(OTEL, "server.js"), "-addr", "127.0.0.1:0"])
    end = time.time() + 20 * SLOW
    while time.time() < end:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", s.output())
        if m:
            s.port = int(m.group(1))
            return s
        assert s.p.poll() is None, "grpc-js server exited: " + s.output()
        time.sleep(0.05)
    s.stop()
    raise AssertionError("grpc-js server did not start: " + s.output())


def mica_service(env, binary="tests/trace_service"):
    s = Proc([os.path.join(BUILD, binary)],
             env={"MICA_LISTEN": "127.0.0.1:0", "MICA_WORKERS": "2", **env})
    s.port, _ = wait_listening(s.p, s.output, False)
    return s


def get(port, path, headers=None, timeout=10):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
        return r.status, r.read().decode()


def js_client(port, state=None):
    argv = ["node", os.path.join(OTEL, "client.js"), f"http://127.0.0.1:{port}/relay"]
    r = subprocess.run(argv + ([state] if state else []), capture_output=True, timeout=60 * SLOW)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


# ---- tests --------------------------------------------------------------------------------

def test_one_trace_from_an_otel_js_client_through_mica_to_grpc_js():
    otel_peers()
    rx, peer = Receiver(), grpc_js_server()
    svc = None
    try:
        svc = mica_service({"MICA_OTLP_ENDPOINT": rx.endpoint(), "MICA_SERVICE_NAME": "relay",
                            "MICA_TRACE_SCHEDULE_DELAY": "100ms",
                            "TRACE_ECHO_TARGET": f"127.0.0.1:{peer.port}"})
        out = js_client(svc.port, state="congo=t61rcWkgMzE")
        assert out["status"] == 200, out
        assert out["exported"] == 1, out  # the JS SDK recorded its span: it was sampled
        tid, js_span = out["trace_id"], out["span_id"]
        assert out["traceparent"] == f"00-{tid}-{js_span}-01", out
        # What grpc-js received from mica, then the ids of mica's server span.
        seen, server_ids = out["body"].split("|")
        tp, _, ts = seen.partition(";")
        assert ts == "congo=t61rcWkgMzE", seen  # tracestate carried through
        version, tp_trace, tp_parent, flags = tp.split("-")
        assert (version, tp_trace, flags) == ("00", tid, "01"), tp
        assert server_ids.split("-")[0] == tid, server_ids
        server_span = server_ids.split("-")[1]

        spans = rx.wait_spans(2)
        by_kind = {s["kind"]: s for s in spans}
        srv, cli = by_kind["SPAN_KIND_SERVER"], by_kind["SPAN_KIND_CLIENT"]
        for s in (srv, cli):
            assert s["trace_id"] == tid, s
            assert s["resource"]["service.name"] == "relay", s
            assert s["trace_state"] == "congo=t61rcWkgMzE", s
            assert 0 < s["end"] - s["start"] < 10 * 10**9, s
        # JS client span -> mica server span -> mica client span -> grpc-js
        assert srv["parent"] == js_span, (srv, js_span)
        assert srv["span_id"] == server_span
        assert cli["parent"] == srv["span_id"], (cli, srv)
        assert tp_parent == cli["span_id"], (tp, cli)
        assert cli["start"] >= srv["start"] and cli["end"] <= srv["end"], (cli, srv)
        assert srv["name"] == "GET /relay", srv
        a = srv["attrs"]
        assert a["http.request.method"] == "GET" and a["http.route"] == "/relay", a
        assert a["url.path"] == "/relay" and a["http.response.status_code"] == 200, a
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == svc.port, a
        assert cli["name"] == "mica.interop.Echo/Unary", cli
        a = cli["attrs"]
        assert a["rpc.system"] == "grpc" and a["rpc.service"] == "mica.interop.Echo", a
        assert a["rpc.method"] == "Unary" and a["rpc.grpc.status_code"] == 0, a
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == peer.port, a
        assert srv["status"] == cli["status"] == "STATUS_CODE_UNSET"
        assert svc.stop() == 0, svc.output()[-2000:]
        svc = None
    finally:
        if svc:
            svc.stop()
        peer.stop()
        rx.close()


def test_a_503_is_retried_after_retry_after_and_spans_arrive_once():
    rx = Receiver("503")
    svc = None
    try:
        svc = mica_service({"MICA_OTLP_ENDPOINT": rx.endpoint() + "/v1/traces",
                            "MICA_WORKERS": "1", "MICA_TRACE_SCHEDULE_DELAY": "100ms"})
        for _ in range(5):
            assert get(svc.port, "/health")[0] == 200
        spans = rx.wait_spans(5)
        time.sleep(0.5 * SLOW)  # nothing more arrives
        assert len(rx.spans) == 5 and len({s["span_id"] for s in spans}) == 5, rx.spans
        st = json.loads(get(svc.port, "/stats")[1])
        assert st["exported"] >= 5 and st["failures"] >= 1 and st["dropped"] == 0, st
        assert rx.posts >= 2
        assert svc.stop() == 0, svc.output()[-2000:]
        svc = None
    finally:
        if svc:
            svc.stop()
        rx.close()


def test_a_hanging_receiver_leaves_requests_alone_and_counts_drops():
    rx = Receiver("hang")
    svc = None
    try:
        svc = mica_service({"MICA_OTLP_ENDPOINT": rx.endpoint(), "MICA_WORKERS": "1",
                            "MICA_TRACE_SCHEDULE_DELAY": "20ms", "MICA_TRACE_MAX_QUEUE": "16",
                            "MICA_TRACE_MAX_BATCH": "8"})
        s = socket.create_connection(("127.0.0.1", svc.port), timeout=5 * SLOW)
        slowest = 0.0
        for _ in range(200):
            t0 = time.time()
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            buf = b""
            while not buf.endswith(b'{"status":"ok"}'):
                chunk = s.recv(4096)
                assert chunk, "connection closed"
                buf += chunk
            slowest = max(slowest, time.time() - t0)
        s.close()
        assert slowest < 1.0 * SLOW, slowest
        st = json.loads(get(svc.port, "/stats")[1])
        assert st["started"] >= 200 and st["exported"] == 0, st
        assert st["dropped"] >= 200 - 16 - 8, st
        assert rx.posts == 1, rx.posts  # the one export, still waiting
        rx.release()
        assert svc.stop() == 0, svc.output()[-2000:]
        svc = None
    finally:
        if svc:
            svc.stop()
        rx.close()


def test_examples_user_traces_rest_and_grpc_when_an_endpoint_is_set():
    rx = Receiver()
    svc = None
    try:
        svc = mica_service({"MICA_OTLP_ENDPOINT": rx.endpoint(),
                            "MICA_TRACE_SCHEDULE_DELAY": "100ms"}, binary="examples/user")
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        assert get(svc.port, "/users/1001", {"traceparent": parent})[0] == 200
        with tempfile.NamedTemporaryFile(suffix=".bin") as body:
            body.write(bytes([0, 0, 0, 0, 6, 0x0A, 4]) + b"1001")
            body.flush()
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
                                "-H", "content-type: application/grpc", "-H", "te: trailers",
                                "-H", "traceparent: " + parent, "--data-binary", "@" + body.name,
                                f"http://127.0.0.1:{svc.port}/user.UserService/GetUser"],
                               capture_output=True, timeout=30 * SLOW)
            assert r.returncode == 0, r.stderr
        spans = rx.wait_spans(2)
        names = {s["name"]: s for s in spans}
        rest, rpc = names["GET /users/{id}"], names["user.UserService/GetUser"]
        for s in (rest, rpc):
            assert s["trace_id"] == "0af7651916cd43dd8448eb211c80319c", s
            assert s["parent"] == "b7ad6b7169203331", s
            assert s["resource"]["service.name"] == "user", s
            assert s["kind"] == "SPAN_KIND_SERVER", s
        assert rest["attrs"]["http.response.status_code"] == 200, rest
        a = rpc["attrs"]
        assert a["rpc.system"] == "grpc" and a["rpc.service"] == "user.UserService", a
        assert a["rpc.method"] == "GetUser" and a["rpc.grpc.status_code"] == 0, a
        assert a["network.protocol.version"] == "2", a
        assert svc.stop() == 0, svc.output()[-2000:]
        svc = None
    finally:
        if svc:
            svc.stop()
        rx.close()


if __name__ == "__main__":
    run_tests(globals())

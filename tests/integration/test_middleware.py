#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""examples/middleware on the wire: the request-id middleware (HTTP/1.1,
HTTP/2, gRPC, errors), a middleware's short-circuit (401), the completion
observer's JSON lines (route pattern, status, grpc-status, duration) for
every request including the server's own 404 and 400, and the gRPC
interceptor (UNAUTHENTICATED without a token, a wrapped handler's trailer),
and the gRPC client interceptor (token and request id on outgoing calls)."""
import json, os, re, socket, struct, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, run_tests  # noqa: E402

TOKEN = "authorization: Bearer secret"


class Server:
    def __init__(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, MICA_LISTEN=f"127.0.0.1:{self.port}", MICA_WORKERS="2")
        self.p = subprocess.Popen([os.path.join(BUILD, "examples/middleware")], env=env,
                                  stdout=self.out, stderr=self.err)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            self.err.seek(0)
            if '"msg":"listening"' in self.err.read():
                return
            assert self.p.poll() is None, "server exited"
            time.sleep(0.02)
        raise AssertionError("server did not start")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self):
        """The access log: one JSON object per line."""
        self.out.seek(0)
        return [json.loads(line) for line in self.out.read().splitlines() if line.strip()]

    def wait_log(self, n):
        deadline = time.time() + 5 * SLOW
        while time.time() < deadline:
            lines = self.log()
            if len(lines) >= n:
                return lines
            time.sleep(0.01)
        raise AssertionError(f"expected {n} log lines: {self.log()}")

    def stop(self):
        self.p.terminate()
        assert self.p.wait(timeout=20 * SLOW) == 0


def with_server(fn):
    srv = Server()
    try:
        fn(srv)
        srv.stop()
    except BaseException:
        srv.p.kill()
        srv.err.seek(0)
        print(srv.err.read()[-2000:])
        raise


def curl(*args):
    r = subprocess.run(["curl", "-sS", "-D", "-", *args], capture_output=True, timeout=20 * SLOW)
    head, _, body = r.stdout.decode("latin-1").partition("\r\n\r\n")
    status = int(head.split(" ")[1]) if head else 0
    fields = {}
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return status, fields, body


def test_request_ids_are_made_or_kept_and_every_request_is_logged():
    def body(srv):
        st, f, b = curl(srv.url("/users/7"))
        rid = f.get("x-request-id", "")
        assert st == 200 and re.fullmatch(r"[0-9a-f]{10,}", rid), (st, f)
        assert json.loads(b) == {"id": "7", "request_id": rid}, b
        st, f, b = curl("--http2-prior-knowledge", "-H", "X-Request-Id: abc-123", srv.url("/users/8"))
        assert st == 200 and f.get("x-request-id") == "abc-123", (st, f)
        assert json.loads(b)["request_id"] == "abc-123", b
        st, f, _ = curl("-H", "X-Request-Id: bad id!", srv.url("/nope"))  # not kept: made anew
        assert st == 404 and f.get("x-request-id") not in (None, "bad id!"), (st, f)
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5 * SLOW)
        s.sendall(b"GET /users/9 HTTP/1.1\r\n\r\n")  # no Host: the parser's 400
        assert s.recv(100).startswith(b"HTTP/1.1 400 "), "no 400"
        s.close()
        log = srv.wait_log(4)
        a, b2, c, d = log[:4]
        assert (a["method"], a["route"], a["path"], a["status"], a["http"]) == \
            ("GET", "/users/{id}", "/users/7", 200, 11), a
        assert a["request_id"] == rid and a["duration_us"] >= 0 and a["grpc_status"] is None, a
        assert a["bytes_in"] > 20 and a["bytes_out"] > 50, a
        assert (b2["route"], b2["status"], b2["http"], b2["request_id"]) == \
            ("/users/{id}", 200, 20, "abc-123"), b2
        assert (c["route"], c["status"], c["path"]) == (None, 404, "/nope"), c
        assert (d["status"], d["method"], d["route"]) == (400, "", None), d
    with_server(body)


def test_a_middleware_short_circuits_with_401():
    def body(srv):
        for proto in ("--http1.1", "--http2-prior-knowledge"):
            st, f, b = curl(proto, srv.url("/admin/stats"))
            assert st == 401 and "x-request-id" in f, (proto, st, f)
            assert json.loads(b) == {"error": "unauthenticated"}, b
            st, f, b = curl(proto, "-H", TOKEN.replace("authorization", "Authorization"),
                            srv.url("/admin/stats"))
            assert st == 200 and "requests" in json.loads(b), (proto, st, b)
        log = srv.wait_log(4)
        assert [(e["route"], e["status"]) for e in log[:4]] == \
            [("/admin/stats", 401), ("/admin/stats", 200)] * 2, log
    with_server(body)


def grpc_call(srv, name, headers=()):
    msg = b"\x0a" + bytes([len(name)]) + name.encode()
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"\x00" + struct.pack(">I", len(msg)) + msg)
        f.flush()
        cmd = ["nghttp", "-v", "-d", f.name, "-H", "content-type: application/grpc",
               "-H", "te: trailers"]
        for h in headers:
            cmd += ["-H", h]
        r = subprocess.run(cmd + [srv.url("/hello.Greeter/SayHello")], capture_output=True,
                           timeout=20 * SLOW)
    out = r.stdout.decode("latin-1")
    return dict(re.findall(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:status): (.*)", out)), out


def test_grpc_calls_pass_the_middleware_and_the_interceptor():
    def body(srv):
        f, out = grpc_call(srv, "Ann")
        assert f.get("grpc-status") == "16" and "x-request-id" in f, f  # the interceptor rejects
        f, out = grpc_call(srv, "Ann", [TOKEN, "x-request-id: call-1"])
        assert f.get("grpc-status") == "0" and "Hello, Ann" in out, (f, out[-1500:])
        assert f.get("x-request-id") == "call-1" and re.fullmatch(r"\d+", f.get("x-handler-us", "")), f
        # A non-gRPC content-type on a method's path: 415, and logged.
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                            "%{http_code}", "-H", "content-type: application/json", "-d", "{}",
                            srv.url("/hello.Greeter/SayHello")], capture_output=True, text=True)
        assert r.stdout == "415", r.stdout
        log = srv.wait_log(3)
        assert [(e["route"], e["status"], e["grpc_status"]) for e in log[:3]] == [
            ("/hello.Greeter/SayHello", 200, 16), ("/hello.Greeter/SayHello", 200, 0),
            ("/hello.Greeter/SayHello", 415, None)], log
        assert log[1]["request_id"] == "call-1" and log[1]["http"] == 20, log[1]
    with_server(body)


def test_a_grpc_client_interceptor_carries_the_token_and_request_id():
    def body(srv):
        # GET /greet/{name} calls SayHello through mica's gRPC client; only the
        # client interceptor puts the token (the server interceptor demands it)
        # and the HTTP request's id on that call.
        st, f, b = curl("-H", "X-Request-Id: outer-42", srv.url("/greet/Bo"))
        assert st == 200 and json.loads(b) == {"message": "Hello, Bo"}, (st, b)
        log = srv.wait_log(2)
        calls = [e for e in log if e["route"] == "/hello.Greeter/SayHello"]
        outer = [e for e in log if e["route"] == "/greet/{name}"]
        assert len(calls) == 1 and len(outer) == 1, log
        assert (calls[0]["status"], calls[0]["grpc_status"], calls[0]["http"]) == (200, 0, 20), calls
        assert calls[0]["request_id"] == "outer-42" and outer[0]["request_id"] == "outer-42", log
    with_server(body)


if __name__ == "__main__":
    run_tests(globals())

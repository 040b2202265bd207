#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gRPC on mica, from the outside.

- examples/user (the seed's UserService) and tests/interop/echo_server.c
  run on loopback ports;
- nghttp (nghttp2-client) sends hand-built gRPC frames: good calls, and the
  bad ones no real client sends (unknown methods, undecodable or truncated
  messages, compressed flags, oversized messages, bad grpc-timeout), each
  answered with its grpc-status while the server keeps serving;
- h2load puts many concurrent calls on one connection;
- raw frames reset calls mid-flight;
- the interop matrix: the grpc-go and @grpc/grpc-js clients of
  tests/interop drive every call kind, deadline, cancellation, metadata,
  status and size case against mica's Echo server;
- mica's client balancing, counted by the servers: a DNS name with an IPv4
  and an IPv6 address (a private /etc/hosts in a mount namespace), a static
  list replaced at run time, an endpoint that refuses connections.
"""
import gzip, os, re, signal, socket, struct, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BUILD = os.environ.get("MICA_BUILD_DIR", os.path.join(ROOT, "build"))
SLOW = 10 if os.environ.get("MICA_SANITIZE") else 1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
results = {"passed": 0, "failed": 0}

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import make_cert, wait_listening  # noqa: E402

CERT, KEY = make_cert(tempfile.mkdtemp(prefix="mica-tls-"))
TLS_ENV = {"MICA_TLS_LISTEN": "127.0.0.1:0", "MICA_TLS_CERT": CERT, "MICA_TLS_KEY": KEY}


class Server:
    def __init__(self, binary, **env):
        self.log = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, **{"MICA_LISTEN": "127.0.0.1:0", "MICA_WORKERS": "2", **env})
        self.p = subprocess.Popen([os.path.join(BUILD, binary)], env=e, stderr=self.log,
                                  stdout=subprocess.DEVNULL)
        self.port, self.tls_port = wait_listening(self.p, self.stderr,
                                                  bool(e.get("MICA_TLS_LISTEN")))

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=20 * SLOW)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


# ---- protobuf and gRPC framing by hand ----------------------------------------

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_string(field, s):
    s = s.encode() if isinstance(s, str) else s
    return varint(field << 3 | 2) + varint(len(s)) + s


def pb_int(field, v):
    return varint(field << 3) + varint(v)


def grpc_frame(msg, compressed=0, length=None):
    return bytes([compressed]) + struct.pack(">I", len(msg) if length is None else length) + msg


def call(srv, path, body, headers=(), timeout=20):
    """One call with nghttp: returns (response headers and trailers, body bytes)."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(body)
        f.flush()
        cmd = ["nghttp", "-v", "-d", f.name, "-H", "content-type: application/grpc",
               "-H", "te: trailers"]
        for h in headers:
            cmd += ["-H", h]
        r = subprocess.run(cmd + [srv.url(path)], capture_output=True, timeout=timeout * SLOW)
    out = r.stdout.decode("latin-1")
    fields = dict(re.findall(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:status): (.*)", out))
    return fields, r.stdout


def get_user(srv, user_id, **kw):
    return call(srv, "/user.UserService/GetUser", grpc_frame(pb_string(1, user_id)), **kw)


def still_serves(srv):
    f, out = get_user(srv, "1001")
    assert f.get("grpc-status") == "0" and b"Alice" in out, f


def test(binary, **env):
    def wrap(fn):
        srv = Server(binary, **env)
        try:
            fn(srv)
            code = srv.stop()
            assert code == 0, f"server exit code {code}"
            print(f"PASS {fn.__name__}")
            results["passed"] += 1
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            srv.p.kill()
            print(f"FAIL {fn.__name__}: {e!r}\n{srv.stderr()[-2000:]}")
            results["failed"] += 1
        return fn
    return wrap


# ---- the seed's UserService ---------------------------------------------------

@test("examples/user")
def test_get_user_answers_ok_not_found_and_invalid_argument(srv):
    f, out = get_user(srv, "1001")
    assert f.get(":status") == "200" and f.get("grpc-status") == "0", f
    assert f.get("content-type") == "application/grpc", f
    # UserResponse{name: "Alice", age: 30}, length-prefixed
    assert grpc_frame(pb_string(1, "Alice") + pb_int(2, 30)) in out, out
    f, _ = get_user(srv, "9999")
    assert f.get("grpc-status") == "5" and "9999" in f.get("grpc-message", ""), f
    f, _ = get_user(srv, "")
    assert f.get("grpc-status") == "3", f


@test("examples/user")
def test_rest_and_grpc_share_the_port(srv):
    r = subprocess.run(["curl", "-sS", srv.url("/users/1002")], capture_output=True, text=True)
    assert r.stdout == '{"id":"1002","name":"Bob","age":25}', r.stdout
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                        "%{http_code}", srv.url("/users/nobody")], capture_output=True, text=True)
    assert r.stdout == "404", r.stdout
    still_serves(srv)


@test("examples/user")
def test_unknown_service_and_method_are_unimplemented(srv):
    f, _ = call(srv, "/user.UserService/DeleteUser", grpc_frame(b""))
    assert f.get("grpc-status") == "12", f
    f, _ = call(srv, "/no.Such/Thing", grpc_frame(b""))
    assert f.get("grpc-status") == "12", f
    still_serves(srv)


@test("examples/user")
def test_two_request_messages_on_a_unary_call_are_internal_as_in_grpc_go(srv):
    # grpc-go: "cardinality violation: received multiple request messages for
    # non-client-streaming RPC", codes.Internal; the handler never runs.
    f, out = call(srv, "/user.UserService/GetUser", grpc_frame(pb_string(1, "1001")) * 2)
    assert f.get("grpc-status") == "13" and b"Alice" not in out, f
    assert "more than one request message" in f.get("grpc-message", ""), f
    f, _ = call(srv, "/grpc.health.v1.Health/Watch", grpc_frame(b"") * 2)  # server-streaming too
    assert f.get("grpc-status") == "13", f
    still_serves(srv)


@test("examples/user")
def test_a_non_grpc_content_type_on_a_method_path_is_415(srv):
    for proto in ("--http2-prior-knowledge", "--http1.1"):
        r = subprocess.run(["curl", "-sS", proto, "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", "content-type: application/json", "-d", '{"user_id":"1001"}',
                            srv.url("/user.UserService/GetUser")], capture_output=True, text=True)
        assert r.stdout == "415", (proto, r.stdout, r.stderr)
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                        "%{http_code}", srv.url("/user.UserService/GetUser")],
                       capture_output=True, text=True)
    assert r.stdout == "405", r.stdout  # a method path answers POST only
    still_serves(srv)


@test("examples/user")
def test_bad_messages_get_their_status_and_the_server_keeps_serving(srv):
    cases = [
        (grpc_frame(b"\x0a\xff\xff\xff\xff\x0f"), "13"),         # protobuf: length past the end
        (grpc_frame(b"\x0a\x04ab"), "13"),                      # protobuf: truncated string
        (grpc_frame(pb_string(1, "1001"), length=100), "13"),   # frame: shorter than its prefix
        (b"\x00\x00\x00", "13"),                                # frame: prefix cut short
        (grpc_frame(pb_string(1, "1001"), compressed=1), "13"),  # compressed, no grpc-encoding
        (grpc_frame(pb_string(1, "1001"), compressed=7), "13"),  # flag byte out of range
        (b"", "12"),                                            # no request message at all
    ]
    for body, want in cases:
        f, _ = call(srv, "/user.UserService/GetUser", body)
        assert f.get("grpc-status") == want, (body, f)
    still_serves(srv)


@test("examples/user", MICA_GRPC_MAX_MESSAGE_BYTES="1000")
def test_gzip_requests_are_inflated_within_the_limit(srv):
    gz = ["grpc-encoding: gzip"]
    msg = pb_string(1, "1001")
    f, out = call(srv, "/user.UserService/GetUser", grpc_frame(gzip.compress(msg), 1), headers=gz)
    assert f.get("grpc-status") == "0" and b"Alice" in out, f
    assert "gzip" in f.get("grpc-accept-encoding", ""), f
    # An uncompressed message in a gzip call is fine too (the flag decides).
    f, out = call(srv, "/user.UserService/GetUser", grpc_frame(msg), headers=gz)
    assert f.get("grpc-status") == "0" and b"Alice" in out, f
    # A 60-byte frame that inflates past the 1000-byte limit: refused, not inflated.
    bomb = gzip.compress(pb_string(1, "x" * 100000))
    assert len(bomb) < 1000
    f, _ = call(srv, "/user.UserService/GetUser", grpc_frame(bomb, 1), headers=gz)
    assert f.get("grpc-status") == "8", f
    for bad in (b"not gzip at all", gzip.compress(msg)[:-6], gzip.compress(msg) + b"junk"):
        f, _ = call(srv, "/user.UserService/GetUser", grpc_frame(bad, 1), headers=gz)
        assert f.get("grpc-status") == "13", (bad, f)
    f, _ = call(srv, "/user.UserService/GetUser", grpc_frame(msg), headers=["grpc-encoding: br"])
    assert f.get("grpc-status") == "12" and "gzip" in f.get("grpc-accept-encoding", ""), f
    still_serves(srv)


@test("examples/user", MICA_GRPC_MAX_MESSAGE_BYTES="1000")
def test_messages_over_the_limit_are_resource_exhausted(srv):
    f, _ = get_user(srv, "x" * 2000)
    assert f.get("grpc-status") == "8", f
    f, _ = get_user(srv, "x" * 900)
    assert f.get("grpc-status") == "5", f  # under the limit: looked up, not found
    still_serves(srv)


@test("examples/user")
def test_grpc_timeout_is_parsed_and_malformed_ones_rejected(srv):
    f, _ = get_user(srv, "1001", headers=["grpc-timeout: 5S"])
    assert f.get("grpc-status") == "0", f
    f, _ = get_user(srv, "1001", headers=["grpc-timeout: 100000000S"])  # 9 digits: too long
    assert f.get("grpc-status") == "13", f
    f, _ = get_user(srv, "1001", headers=["grpc-timeout: 5x"])
    assert f.get("grpc-status") == "13", f


@test("examples/user")
def test_health_service_reports_serving(srv):
    f, out = call(srv, "/grpc.health.v1.Health/Check", grpc_frame(b""))
    assert f.get("grpc-status") == "0" and grpc_frame(pb_int(1, 1)) in out, (f, out)
    f, out = call(srv, "/grpc.health.v1.Health/Check", grpc_frame(pb_string(1, "user.UserService")))
    assert f.get("grpc-status") == "0" and grpc_frame(pb_int(1, 1)) in out, (f, out)
    f, _ = call(srv, "/grpc.health.v1.Health/Check", grpc_frame(pb_string(1, "nope.Nope")))
    assert f.get("grpc-status") == "5", f


@test("examples/user")
def test_h2load_many_calls_on_few_connections_all_ok(srv):
    with tempfile.NamedTemporaryFile() as body:
        body.write(grpc_frame(pb_string(1, "1001")))
        body.flush()
        r = subprocess.run(["h2load", "-n", "20000", "-c", "4", "-m", "100", "-d", body.name,
                            "-H", "content-type: application/grpc", "-H", "te: trailers",
                            srv.url("/user.UserService/GetUser")],
                           capture_output=True, text=True, timeout=60 * SLOW)
    assert "20000 succeeded, 0 failed" in r.stdout, r.stdout
    still_serves(srv)


def hpack_literal(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


@test("tests/interop_echo_server")
def test_calls_reset_mid_flight_leave_the_server_serving(srv):
    """Streams that start a call and reset it (before, during and after
    their messages), and connections dropped mid-message."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(PREFACE + frame(4, 0, 0))
    block = (hpack_literal(b":method", b"POST") + hpack_literal(b":scheme", b"http") +
             hpack_literal(b":path", b"/mica.interop.Echo/Bidi") +
             hpack_literal(b":authority", b"t") + hpack_literal(b"content-type", b"application/grpc"))
    for i in range(50):
        sid = 2 * i + 1
        s.sendall(frame(1, 4, sid, block))                        # HEADERS, END_HEADERS
        if i % 3:
            s.sendall(frame(0, 0, sid, grpc_frame(pb_string(1, "hi"))[:3 + i % 5]))
        s.sendall(frame(3, 0, sid, struct.pack(">I", 8)))         # RST_STREAM CANCEL
    s.close()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 4, 1, block) +
              frame(0, 0, 1, grpc_frame(pb_string(1, "x" * 100))[:50]))
    s.close()
    f, out = call(srv, "/mica.interop.Echo/Unary", grpc_frame(pb_string(1, "still here")))
    assert f.get("grpc-status") == "0" and b"still here" in out, f


# ---- interop with grpc-go and grpc-js -------------------------------------------

def interop(srv, cmd, tls=False):
    """Runs a matrix client against srv: cleartext h2c, or TLS (ALPN h2) with -ca."""
    where = ["-addr", f"127.0.0.1:{srv.port}"]
    if tls:
        where = ["-addr", f"127.0.0.1:{srv.tls_port}", "-ca", CERT]
    r = subprocess.run(cmd + where, capture_output=True, text=True, timeout=120 * SLOW)
    out = r.stdout + r.stderr
    fails = [l for l in out.splitlines() if l.startswith("FAIL")]
    assert r.returncode == 0 and not fails and "PASS" in out, out[-3000:]


def go_peers():
    out = os.path.join(BUILD, "interop")
    subprocess.run(["bash", os.path.join(ROOT, "tests/interop/go/build.sh"), out], check=True,
                   timeout=600)
    return out


def js_peers():
    subprocess.run(["bash", os.path.join(ROOT, "tests/interop/js/setup.sh")], check=True,
                   timeout=600)
    return os.path.join(ROOT, "tests/interop/js")


@test("tests/interop_echo_server")
def test_mica_client_matrix_against_mica(srv):
    interop(srv, [os.path.join(BUILD, "tests/interop_echo_client")])


@test("tests/interop_echo_server", **TLS_ENV)
def test_mica_client_matrix_against_mica_over_tls(srv):
    interop(srv, [os.path.join(BUILD, "tests/interop_echo_client")], tls=True)


NAME_ONLY_DIR = tempfile.mkdtemp(prefix="mica-tls-")
NAME_CERT, NAME_KEY = os.path.join(NAME_ONLY_DIR, "cert.pem"), os.path.join(NAME_ONLY_DIR, "key.pem")
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", NAME_KEY, "-out", NAME_CERT, "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=30)


@test("tests/interop_echo_server", MICA_TLS_LISTEN="127.0.0.1:0", MICA_TLS_CERT=NAME_CERT,
      MICA_TLS_KEY=NAME_KEY)
def test_mica_client_over_tls_verifies_a_dns_targets_host_name(srv):
    """A certificate for DNS:localhost only: dns:///localhost:P verifies (and sends SNI)
    "localhost"; the literal 127.0.0.1:P is checked against its IP and refused."""
    client = os.path.join(BUILD, "tests/interop_echo_client")
    r = subprocess.run([client, "-addr", f"dns:///localhost:{srv.tls_port}", "-ca", NAME_CERT,
                        "-cases", "unary,unary_metadata,server_stream"],
                       capture_output=True, text=True, timeout=60 * SLOW)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and out.count("PASS") == 3, out[-2000:]
    r = subprocess.run([client, "-addr", f"127.0.0.1:{srv.tls_port}", "-ca", NAME_CERT,
                        "-cases", "unary"], capture_output=True, text=True, timeout=60 * SLOW)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "TLS handshake failed" in out and "UNAVAILABLE" in out, out[-2000:]


@test("tests/interop_echo_server", **TLS_ENV)
def test_mica_client_refuses_an_untrusted_or_cleartext_server(srv):
    other_ca, _ = make_cert(tempfile.mkdtemp(prefix="mica-tls-"))
    client = os.path.join(BUILD, "tests/interop_echo_client")
    for port, ca, why in ((srv.tls_port, other_ca, "self-signed"), (srv.port, CERT, "protocol error")):
        r = subprocess.run([client, "-addr", f"127.0.0.1:{port}", "-ca", ca, "-cases", "unary"],
                           capture_output=True, text=True, timeout=60 * SLOW)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "TLS handshake failed" in out and why in out, out[-2000:]
        assert "UNAVAILABLE" in out, out[-2000:]


class Peer:
    """A peer's Echo server (grpc-go or grpc-js) on a free loopback port."""

    def __init__(self, cmd):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = self.tls_port = s.getsockname()[1]
        s.close()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(cmd + ["-addr", f"127.0.0.1:{self.port}"], stdout=self.log,
                                  stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            self.log.seek(0)
            if "listening on" in self.log.read():
                return
            assert self.p.poll() is None, "peer server exited"
            time.sleep(0.05)
        raise AssertionError("peer server did not start")

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=10)


def mica_client_against(cmd, tls=False):
    peer = Peer(cmd + (["-cert", CERT, "-key", KEY] if tls else []))
    try:
        interop(peer, [os.path.join(BUILD, "tests/interop_echo_client")], tls=tls)
    finally:
        peer.stop()


if os.path.exists(os.path.join(ROOT, "tests/interop/go/build.sh")):
    @test("examples/user")
    def test_mica_client_matrix_against_grpc_go(srv):
        mica_client_against([os.path.join(go_peers(), "echo-server")])

    @test("examples/user")
    def test_mica_client_matrix_against_grpc_go_over_tls(srv):
        mica_client_against([os.path.join(go_peers(), "echo-server")], tls=True)

    @test("tests/interop_echo_server")
    def test_grpc_go_client_matrix_against_mica(srv):
        interop(srv, [os.path.join(go_peers(), "echo-client")])

    @test("tests/interop_echo_server", **TLS_ENV)
    def test_grpc_go_client_matrix_against_mica_over_tls(srv):
        interop(srv, [os.path.join(go_peers(), "echo-client")], tls=True)

if os.path.exists(os.path.join(ROOT, "tests/interop/js/setup.sh")):
    @test("tests/interop_echo_server")
    def test_grpc_js_client_matrix_against_mica(srv):
        interop(srv, ["node", os.path.join(js_peers(), "client.js")])

    @test("tests/interop_echo_server", **TLS_ENV)
    def test_grpc_js_client_matrix_against_mica_over_tls(srv):
        interop(srv, ["node", os.path.join(js_peers(), "client.js")], tls=True)

    @test("examples/user")
    def test_mica_client_matrix_against_grpc_js(srv):
        mica_client_against(["node", os.path.join(js_peers(), "server.js")])

    @test("examples/user")
    def test_mica_client_matrix_against_grpc_js_over_tls(srv):
        mica_client_against(["node", os.path.join(js_peers(), "server.js")], tls=True)


# ---- mutual TLS -------------------------------------------------------------------

CLIENT_CERT, CLIENT_KEY = make_cert(tempfile.mkdtemp(prefix="mica-tls-"), cn="orders")


@test("tests/interop_echo_server", MICA_TLS_CLIENT_CA=CLIENT_CERT, **TLS_ENV)
def test_mtls_requires_a_client_certificate_and_names_it(srv):
    def curl(*args):
        return subprocess.run(["curl", "-sS", "--max-time", str(10 * SLOW), "--cacert", CERT, *args,
                               f"https://localhost:{srv.tls_port}/whoami"],
                              capture_output=True, text=True, timeout=20 * SLOW)
    for proto in ("--http2", "--http1.1"):  # REST over h2 (ALPN) and HTTP/1.1
        r = curl(proto, "--cert", CLIENT_CERT, "--key", CLIENT_KEY)
        assert r.returncode == 0 and r.stdout == "CN=orders", (proto, r.stdout, r.stderr)
        r = curl(proto)  # no client certificate: the handshake fails
        assert r.returncode != 0, (proto, r.stdout)
    r = curl("--cert", CERT, "--key", KEY)  # a certificate the server does not trust
    assert r.returncode != 0, r.stdout
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{srv.port}/whoami"], capture_output=True,
                         text=True, timeout=20 * SLOW).stdout
    assert out == "none", out  # the cleartext listener beside it
    with tempfile.NamedTemporaryFile() as f:  # gRPC: the handler sees the peer too
        f.write(grpc_frame(pb_string(1, "hi")))
        f.flush()
        r = subprocess.run(["nghttp", "-v", "-d", f.name, "-H", "content-type: application/grpc",
                            "-H", "te: trailers", "--cert", CLIENT_CERT, "--key", CLIENT_KEY,
                            f"https://127.0.0.1:{srv.tls_port}/mica.interop.Echo/Unary"],
                           capture_output=True, timeout=20 * SLOW)
    assert b"x-tls-peer: CN=orders" in r.stdout and b"grpc-status: 0" in r.stdout, r.stdout[-2000:]
    client = os.path.join(BUILD, "tests/interop_echo_client")
    interop(srv, [client, "-cert", CLIENT_CERT, "-key", CLIENT_KEY], tls=True)  # mica's client
    r = subprocess.run([client, "-addr", f"127.0.0.1:{srv.tls_port}", "-ca", CERT, "-cases", "unary"],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert r.returncode != 0 and "UNAVAILABLE" in r.stdout + r.stderr, r.stdout + r.stderr


# ---- the client's resolvers and picker, counted from the servers' side ---------------

class EchoAt:
    """tests/interop_echo_server on one address ("127.0.0.1:P" or "[::1]:P"), 1 worker."""

    def __init__(self, addr):
        self.addr = addr
        self.log = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, MICA_LISTEN=addr, MICA_WORKERS="1")
        self.p = subprocess.Popen([os.path.join(BUILD, "tests/interop_echo_server")], env=e,
                                  stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.time() + 10 * SLOW
        while f'"msg":"listening","addr":"{addr}"' not in self.stderr():
            assert self.p.poll() is None and time.time() < deadline, self.stderr()
            time.sleep(0.02)

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def served(self):
        """Unary calls served, from the server's GET /stats."""
        host, port = self.addr.rsplit(":", 1)
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5 * SLOW) as c:
            c.sendall(b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := c.recv(4096):
                out += chunk
        return int(re.search(rb"unary (\d+)", out).group(1))

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=20 * SLOW) == 0, self.stderr()


def port_free_on_both():
    """A port free on 127.0.0.1 and on ::1 (taken from the IPv6 side, then checked)."""
    for _ in range(50):
        s6 = socket.socket(socket.AF_INET6)
        s6.bind(("::1", 0))
        port = s6.getsockname()[1]
        s4 = socket.socket()
        try:
            s4.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s4.close()
            s6.close()
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


def echo_client(*args, hosts=None):
    """Runs the mica echo client; with `hosts` (file content), in a private
    mount namespace whose /etc/hosts is that content (needs root)."""
    cmd = [os.path.join(BUILD, "tests/interop_echo_client"), *args]
    if hosts is not None:
        f = tempfile.NamedTemporaryFile("w", prefix="mica-hosts-", delete=False)
        f.write(hosts)
        f.close()
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/hosts && exec "$@"', f.name, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120 * SLOW)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "FAIL" not in out and "PASS" in out, out[-3000:]
    return out


def balancing_test(fn):
    """A test that starts its own servers (the @test servers are not used)."""
    try:
        fn()
        print(f"PASS {fn.__name__}")
        results["passed"] += 1
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {fn.__name__}: {e!r}")
        results["failed"] += 1
    return fn


def can_unshare():
    return os.geteuid() == 0 and subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True).returncode == 0


@balancing_test
def test_mica_client_spreads_dns_calls_over_every_address_of_localhost():
    """dns:///localhost:P with localhost = 127.0.0.1 and ::1: both servers get calls."""
    if not can_unshare():
        print("SKIP test_mica_client_spreads_dns_calls_over_every_address_of_localhost: "
              "needs root for unshare --mount")
        return
    port = port_free_on_both()
    v4, v6 = EchoAt(f"127.0.0.1:{port}"), EchoAt(f"[::1]:{port}")
    try:
        echo_client("-addr", f"dns:///localhost:{port}", "-cases", "spread", "-n", "100",
                    hosts="127.0.0.1 localhost\n::1 localhost\n")
        a, b = v4.served(), v6.served()
        assert a + b == 100 and a >= 40 and b >= 40, (a, b)  # round robin: 50 each
    finally:
        v4.stop()
        v6.stop()


@balancing_test
def test_mica_client_static_list_update_moves_traffic():
    a, b = EchoAt(f"127.0.0.1:{port_free_on_both()}"), EchoAt(f"127.0.0.1:{port_free_on_both()}")
    try:
        echo_client("-addr", f"static:///{a.addr}", "-cases", "update", "-update", b.addr,
                    "-n", "40")
        assert (a.served(), b.served()) == (40, 40), (a.served(), b.served())
    finally:
        a.stop()
        b.stop()


@balancing_test
def test_mica_client_skips_an_endpoint_that_refuses_connections():
    a = EchoAt(f"127.0.0.1:{port_free_on_both()}")
    dead = f"127.0.0.1:{port_free_on_both()}"
    try:
        out = echo_client("-addr", f"static:///{dead},{a.addr}", "-cases", "spread", "-n", "50")
        assert a.served() == 50, a.served()
        assert "cannot connect" in out and dead in out, out[-2000:]  # logged, not failed
        echo_client("-addr", f"static:///{dead}", "-cases", "unavailable")
    finally:
        a.stop()


if __name__ == "__main__":
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Servers and a client under valgrind's memcheck, serving real traffic and
shutting down: no leak, no invalid access (run by scripts/valgrind.sh).

1. examples/user: HTTP/1.1 (keep-alive, pipelined, a bad request), h2c REST,
   gRPC GetUser (OK, NOT_FOUND, malformed), health, a connection dropped
   mid-call, REST and gRPC over TLS (both ALPNs, a failed handshake, an
   idle TLS connection left open); then SIGTERM must drain and exit 0.
2. tests/interop_echo_server and tests/interop_echo_client, both under
   valgrind: the client's streaming, metadata, error and cancel cases, over
   h2c and over mutual TLS.

Usage: MICA_BUILD_DIR=build python3 tests/integration/valgrind_server.py
"""
import os, signal, socket, subprocess, sys, tempfile, time

BUILD = os.environ.get("MICA_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
VG = ["valgrind", "-q", "--fair-sched=yes", "--error-exitcode=99", "--leak-check=full",
      "--errors-for-leak-kinds=definite,indirect",
      "--suppressions=" + os.path.join(os.path.dirname(__file__), "../../scripts/valgrind.supp")]


sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import make_cert, wait_listening  # noqa: E402

CERT, KEY = make_cert(tempfile.mkdtemp(prefix="mica-tls-"))
CLIENT_CERT, CLIENT_KEY = make_cert(tempfile.mkdtemp(prefix="mica-tls-"), cn="orders")


def start(binary, **extra):
    log = tempfile.NamedTemporaryFile(mode="w+", delete=False)
    env = dict(os.environ, MICA_LISTEN="127.0.0.1:0", MICA_WORKERS="2",
               MICA_ADMIN_LISTEN="127.0.0.1:0",
               MICA_TLS_LISTEN="127.0.0.1:0", MICA_TLS_CERT=CERT, MICA_TLS_KEY=KEY, **extra)
    p = subprocess.Popen(VG + [os.path.join(BUILD, binary)], env=env, stderr=log,
                         stdout=subprocess.DEVNULL)
    port, start.tls_port = wait_listening(p, lambda: open(log.name).read(), True, timeout=60)
    return p, port, log.name


def stop(p, log, name):
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    if rc != 0:
        sys.exit(f"valgrind_server: {name} exit {rc}:\n{open(log).read()[-5000:]}")
    print(f"valgrind_server: {name} clean")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=120, **kw)


def grpc(port, path, body, scheme="http"):
    with tempfile.NamedTemporaryFile() as f:
        f.write(body)
        f.flush()
        return run(["nghttp", "-v", "-d", f.name, "-H", "content-type: application/grpc",
                    "-H", "te: trailers", f"{scheme}://127.0.0.1:{port}{path}"]).stdout


def user_server():
    p, port, log = start("examples/user")
    base = f"http://127.0.0.1:{port}"
    out = run(["curl", "-sS", f"{base}/users/1001", f"{base}/health", f"{base}/users/9"]).stdout
    assert b"Alice" in out, out
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /data HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n"
              b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    time.sleep(2)
    s.close()
    assert b"Bob" in run(["curl", "-sS", "--http2-prior-knowledge", f"{base}/users/1002"]).stdout
    ok = b"\x00\x00\x00\x00\x06\x0a\x041001"
    assert b"grpc-status: 0" in grpc(port, "/user.UserService/GetUser", ok)
    assert b"grpc-status: 5" in grpc(port, "/user.UserService/GetUser", ok.replace(b"1001", b"9999"))
    assert b"grpc-status: 13" in grpc(port, "/user.UserService/GetUser", b"\x00\x00\x00\x00\x09\x0a")
    assert b"grpc-status: 0" in grpc(port, "/grpc.health.v1.Health/Check", b"\x00\x00\x00\x00\x00")
    s = socket.create_connection(("127.0.0.1", port), timeout=30)  # h2 dropped mid-message
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    s.close()
    tls = f"https://localhost:{start.tls_port}"
    for proto in ("--http1.1", "--http2"):
        out = run(["curl", "-sS", "--cacert", CERT, proto, f"{tls}/users/1001", f"{tls}/data"]).stdout
        assert b"Alice" in out and b"processed" in out, out
    assert b"grpc-status: 0" in grpc(start.tls_port, "/user.UserService/GetUser", ok, "https")
    s = socket.create_connection(("127.0.0.1", start.tls_port), timeout=30)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # cleartext on the TLS port: handshake fails
    time.sleep(1)
    s.close()
    idle = socket.create_connection(("127.0.0.1", start.tls_port), timeout=30)
    idle.sendall(b"\x16\x03\x01")  # a handshake left hanging at shutdown
    stop(p, log, "examples/user")
    idle.close()


def echo_pair():
    p, port, log = start("tests/interop_echo_server", MICA_TLS_CLIENT_CA=CLIENT_CERT)
    cases = ("unary,unary_metadata,unary_error,unary_cancel,server_stream,server_stream_error,"
             "client_stream,bidi,bidi_error,unimplemented,many_streams")
    for where in (["-addr", f"127.0.0.1:{port}"],
                  ["-addr", f"127.0.0.1:{start.tls_port}", "-ca", CERT,  # and over mTLS
                   "-cert", CLIENT_CERT, "-key", CLIENT_KEY]):
        r = run(VG + [os.path.join(BUILD, "tests/interop_echo_client"), *where, "-cases", cases])
        out = (r.stdout + r.stderr).decode(errors="replace")
        if r.returncode != 0:
            sys.exit(f"valgrind_server: echo_client {where} exit {r.returncode}:\n{out[-5000:]}")
    print("valgrind_server: interop_echo_client clean (h2c and mTLS)")
    stop(p, log, "tests/interop_echo_server")


def stream_server():
    """Streaming routes: bodies in and parts out over HTTP/1.1, h2c and TLS, a reset."""
    p, port, log = start("tests/stream_server")
    base = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"s" * 200000)
        f.flush()
        for proto in ("--http1.1", "--http2-prior-knowledge"):
            out = run(["curl", "-sS", proto, "-H", "Transfer-Encoding: chunked", "--data-binary",
                       "@" + f.name, f"{base}/stream/echo"]).stdout
            assert out == b"s" * 200000, (proto, len(out))
        out = run(["curl", "-sS", "--cacert", CERT, "--data-binary", "@" + f.name,
                   f"https://localhost:{start.tls_port}/stream/count"]).stdout
        assert out == b'{"bytes":200000}', out
    assert run(["curl", "-sS", f"{base}/parts"]).stdout == b"ab"
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /stream/hold HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab")
    time.sleep(0.5)
    s.close()  # the held handler is cancelled
    stop(p, log, "tests/stream_server")


if __name__ == "__main__":
    user_server()
    echo_pair()
    stream_server()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TLS listeners of examples/hello (MICA_TLS_LISTEN, MICA_TLS_CERT,
MICA_TLS_KEY), from the outside: Python's ssl module (OpenSSL) for raw
HTTP/1.1 over TLS, curl and h2load for HTTP/2 chosen by ALPN. A fresh
self-signed certificate is made with the openssl CLI for each run."""
import os, socket, ssl, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import (SLOW, BUILD, Conn, Server, at_eof, make_cert,  # noqa: E402
                          read_response, run_tests, serves)

CERT, KEY = make_cert(tempfile.mkdtemp(prefix="mica-tls-"))
HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


def tls_server(**env):
    return Server(MICA_TLS_LISTEN="127.0.0.1:0", MICA_TLS_CERT=CERT, MICA_TLS_KEY=KEY, **env)


def tls_serves(srv):
    s = srv.connect_tls(CERT)
    try:
        s.sendall(HEALTH)
        r = read_response(s)
        assert r and r[0] == 200 and r[2] == b'{"status":"ok"}', r
    finally:
        s.close()
    return True


def curl(srv, *args):
    r = subprocess.run(["curl", "-sS", "--max-time", str(10 * SLOW), "--cacert", CERT,
                        "-w", " %{http_version}", *args,
                        f"https://localhost:{srv.tls_port}/data"],
                       capture_output=True, text=True, timeout=20 * SLOW)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_http1_over_tls_keeps_alive_and_pipelines():
    srv = tls_server()
    try:
        s = srv.connect_tls(CERT)
        assert s.selected_alpn_protocol() == "http/1.1"
        for _ in range(3):  # idle pauses park the connection between requests
            s.sendall(HEALTH)
            st, h, body = read_response(s)
            assert st == 200 and body == b'{"status":"ok"}' and h.get("connection") != "close"
            time.sleep(0.05)
        s.sendall(HEALTH + b"GET /data HTTP/1.1\r\nHost: t\r\n\r\n" + HEALTH)
        bodies = [read_response(s)[2] for _ in range(3)]
        assert bodies[0] == bodies[2] == b'{"status":"ok"}' and b"processed quickly" in bodies[1]
        s.close()
        assert serves(srv)  # the cleartext listener beside it
    finally:
        assert srv.stop() == 0


def test_large_body_crosses_many_records():
    srv = tls_server()
    try:
        s = srv.connect_tls(CERT)
        body = b"x" * 300000  # ~19 TLS records, sent in uneven pieces
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 70001):
            s.sendall(body[i:i + 70001])
            time.sleep(0.01)
        assert read_response(s)[0] == 200
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        s.close()
    finally:
        assert srv.stop() == 0


def test_records_that_arrive_together_are_all_read():
    """Three requests, each its own TLS record, in one TCP send: OpenSSL
    reads them in one go and hands out one record per read, so the server
    must not wait for the socket while OpenSSL still holds the others."""
    srv = tls_server()
    try:
        ctx = ssl.create_default_context(cafile=CERT)
        ctx.set_alpn_protocols(["http/1.1"])
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
        sock = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5 * SLOW)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                inc.write(sock.recv(65536))
        sock.sendall(out.read())
        for _ in range(3):
            tls.write(HEALTH)  # one record each
        sock.sendall(out.read())
        got = b""
        while got.count(b'{"status":"ok"}') < 3:
            data = sock.recv(65536)
            assert data, got
            inc.write(data)
            try:
                while True:
                    got += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
        sock.close()
    finally:
        assert srv.stop() == 0


def test_sessions_resume_by_ticket_on_any_worker():
    srv = tls_server(MICA_WORKERS="2")
    try:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = ssl.create_default_context(cafile=CERT)
            ctx.maximum_version = version
            session = None
            for i in range(6):  # SO_REUSEPORT spreads these over both workers
                raw = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5 * SLOW)
                s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
                s.sendall(HEALTH)
                assert read_response(Conn(s))[0] == 200
                assert s.session_reused == (i > 0), (version, i)
                session = s.session
                s.close()
    finally:
        assert srv.stop() == 0


def test_bad_requests_over_tls_get_400_and_the_server_keeps_serving():
    srv = tls_server()
    try:
        for raw in (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
                    b"GET / HTTP/1.1\r\n\r\n"):
            s = srv.connect_tls(CERT)
            s.sendall(raw)
            st, h, _ = read_response(s)
            assert st == 400 and h.get("connection") == "close", (raw, st)
            assert at_eof(s)
            s.close()
        assert tls_serves(srv)
    finally:
        assert srv.stop() == 0


def test_alpn_picks_h2_for_http2_clients_and_http1_otherwise():
    srv = tls_server()
    try:
        out = curl(srv, "--http2")
        assert out.endswith(" 2") and "processed quickly" in out, out
        out = curl(srv, "--http1.1")
        assert out.endswith(" 1.1") and "processed quickly" in out, out
        s = srv.connect_tls(CERT, alpn=("h2", "http/1.1"))
        assert s.selected_alpn_protocol() == "h2"
        s.close()
        s = srv.connect_tls(CERT, alpn=("spdy/3", "foo"))  # nothing we speak: no ALPN, HTTP/1.1
        assert s.selected_alpn_protocol() is None
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        s.close()
        r = subprocess.run(["h2load", "-n", "4000", "-c", "8", "-m", "10",
                            f"https://127.0.0.1:{srv.tls_port}/health"],
                           capture_output=True, text=True, timeout=60 * SLOW)
        assert "4000 succeeded" in r.stdout and "4000 2xx" in r.stdout, r.stdout[-1500:]
    finally:
        assert srv.stop() == 0


def test_cleartext_or_silent_clients_on_the_tls_port_are_closed():
    srv = tls_server(MICA_HTTP_HEADER_TIMEOUT_MS="300")
    try:
        s = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
        s.sendall(HEALTH)  # HTTP where a ClientHello belongs
        assert at_eof(s)
        s.close()
        t0 = time.time()
        s = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
        s.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never finishes
        assert at_eof(s, 5) and time.time() - t0 >= 0.25
        s.close()
        ctx = ssl.create_default_context()  # a client that does not trust the certificate
        raw = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
        try:
            ctx.wrap_socket(raw, server_hostname="localhost")
            raise AssertionError("handshake with an untrusted certificate succeeded")
        except ssl.SSLCertVerificationError:
            pass
        raw.close()
        assert tls_serves(srv) and serves(srv)
    finally:
        assert srv.stop() == 0


def test_idle_tls_connections_do_not_delay_shutdown():
    srv = tls_server()
    conns = []
    for _ in range(20):
        s = srv.connect_tls(CERT)
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        conns.append(s)
    hanging = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=5)
    hanging.sendall(b"\x16\x03\x01")  # mid-handshake: the drain closes it too
    time.sleep(0.2)
    conns.append(hanging)
    t0 = time.time()
    assert srv.stop() == 0 and time.time() - t0 < 3 * SLOW
    for s in conns:
        assert at_eof(s)
        s.close()


def test_bad_tls_settings_stop_the_server_at_start():
    other_cert, other_key = make_cert(tempfile.mkdtemp(prefix="mica-tls-"))
    cases = [({"MICA_TLS_LISTEN": "127.0.0.1:0"}, "needs MICA_TLS_CERT"),
             ({"MICA_TLS_LISTEN": "127.0.0.1:0", "MICA_TLS_CERT": CERT,
               "MICA_TLS_KEY": "/nonexistent/key.pem"}, "cannot load TLS private key"),
             ({"MICA_TLS_LISTEN": "127.0.0.1:0", "MICA_TLS_CERT": "/nonexistent/cert.pem",
               "MICA_TLS_KEY": KEY}, "cannot load TLS certificate chain"),
             ({"MICA_TLS_LISTEN": "127.0.0.1:0", "MICA_TLS_CERT": CERT,
               "MICA_TLS_KEY": other_key}, "key values mismatch")]
    for env, want in cases:
        r = subprocess.run([os.path.join(BUILD, "examples/hello")],
                           env=dict(os.environ, MICA_LISTEN="127.0.0.1:0", **env),
                           capture_output=True, text=True, timeout=10 * SLOW)
        assert r.returncode != 0 and want in r.stderr, (env, r.returncode, r.stderr)


if __name__ == "__main__":
    run_tests(globals())

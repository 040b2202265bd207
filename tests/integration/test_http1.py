#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""HTTP/1.1 against examples/hello over real sockets: keep-alive, pipelining,
every refused input with its status (and the server still serving after it),
limits, timeouts, overload refusal and graceful shutdown under load."""
import os, signal, socket, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import SLOW, Server, at_eof, exchange, read_response, run_tests, serves  # noqa: E402

HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


def with_server(fn, **env):
    srv = Server(**env)
    try:
        fn(srv)
        assert srv.stop() == 0, "exit code"
    finally:
        srv.kill()


# ---- the basics -------------------------------------------------------------

def test_endpoints_answer_with_the_seeds_json_and_headers():
    def body(srv):
        st, h, b = exchange(srv, b"GET /data HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (st, b) == (200, b'{"message":"success","data":"processed quickly"}'), b
        assert h["content-type"].startswith("application/json") and h["content-length"] == str(len(b))
        assert h["date"].endswith(" GMT") and len(h["date"]) == 29, h["date"]
        st, h, b = exchange(srv, b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert st == 405 and h["allow"] == "GET, HEAD", (st, h)
        st, h, b = exchange(srv, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        assert st == 404 and b == b'{"error":"not found"}'
        s = srv.connect()
        s.sendall(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n" + HEALTH)
        st, h, b = read_response(s, head_only=True)
        assert st == 200 and h["content-length"] == "15" and b == b""
        assert read_response(s)[0] == 200
        out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{srv.port}/health"],
                             capture_output=True, text=True, timeout=10).stdout
        assert out == '{"status":"ok"}', out
    with_server(body)


def test_keep_alive_serves_many_requests_on_one_connection_and_http10_closes():
    def body(srv):
        s = srv.connect()
        for _ in range(200):
            s.sendall(HEALTH)
            assert read_response(s)[0] == 200
        s.close()
        s = srv.connect()
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        st, h, _ = read_response(s)
        assert st == 200 and at_eof(s)
        s = srv.connect()
        s.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        st, h, _ = read_response(s)
        assert h.get("connection") == "keep-alive" and not at_eof(s, 0.3)
    with_server(body)


def test_pipelined_requests_are_answered_in_order():
    def body(srv):
        reqs = [b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /data HTTP/1.1\r\nHost: t\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
                b"POST /data HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]
        s = srv.connect()
        s.sendall(b"".join(reqs * 25))  # 100 requests in one send
        got = [read_response(s)[0] for _ in range(100)]
        assert got == [200, 200, 404, 405] * 25, got
    with_server(body)


def test_a_request_sent_one_byte_at_a_time_is_served():
    def body(srv):
        s = srv.connect()
        for b in b"GET /data HTTP/1.1\r\nHost: t\r\n\r\n":
            s.sendall(bytes([b]))
            time.sleep(0.001)
        assert read_response(s)[0] == 200
    with_server(body)


# ---- refused input ----------------------------------------------------------

BAD = [
    ("conflicting Content-Length", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("repeated Content-Length", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", 400),
    ("Content-Length with Transfer-Encoding", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding gzip", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("Transfer-Encoding gzip, chunked", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("obs-fold", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("space before colon", b"GET /health HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    ("control character in a value", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400),
    ("control character in the target", b"GET /he\x7flth HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("NUL byte", b"GET /health HTTP/1.1\r\nHost: t\x00\r\n\r\n", 400),
    ("bare LF", b"GET /health HTTP/1.1\nHost: t\n\n", 400),
    ("missing Host on 1.1", b"GET /health HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("HTTP/2.0 request line", b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    ("bad chunk size", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk without CRLF", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", 400),
    ("chunk size overflow", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
    ("head too large", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 17000 + b"\r\n\r\n", 431),
    ("too many headers", b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"X-A: a\r\n" * 70 + b"\r\n", 431),
    ("target too long", b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    ("body too large by Content-Length", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413),
    ("unknown expectation", b"POST /health HTTP/1.1\r\nHost: t\r\nExpect: magic\r\nContent-Length: 1\r\n\r\na", 417),
]


def test_every_bad_input_gets_its_status_a_close_and_the_server_keeps_serving():
    def body(srv):
        wrong = []
        for name, raw, want in BAD:
            s = srv.connect()
            try:
                s.sendall(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = read_response(s)
            if not r or r[0] != want or not at_eof(s):
                wrong.append((name, r and r[0], want))
            s.close()
            serves(srv)
        assert not wrong, wrong
    with_server(body)


def test_an_8000_octet_request_target_is_served():
    """RFC 9110 §4.1: recipients SHOULD support request-lines of at least 8000 octets."""
    def body(srv):
        target = b"/health?q=" + b"a" * (8000 - len(b"/health?q="))
        assert len(target) == 8000
        r = exchange(srv, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r and r[0] == 200 and r[2] == b'{"status":"ok"}', r
    with_server(body)


def test_chunked_body_over_the_limit_is_413():
    def body(srv):
        s = srv.connect()
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        try:
            for _ in range(20):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_response(s)[0] == 413
        serves(srv)
    with_server(body, MICA_HTTP_MAX_BODY_BYTES="32768")


def test_expect_100_continue_gets_an_interim_response_then_the_final_one():
    def body(srv):
        s = srv.connect()
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert read_response(s)[0] == 100
        s.sendall(b"hello")
        assert read_response(s)[0] == 405
        st, _, _ = exchange(srv, b"POST /health HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n")
        assert st == 413  # refused before the body is sent
    with_server(body)


# ---- timeouts ---------------------------------------------------------------

def test_partial_head_gets_408_and_silent_connections_are_closed():
    def body(srv):
        s = srv.connect()
        s.sendall(b"GET /health HTTP/1.1\r\nHo")
        t0 = time.time()
        st = read_response(s)[0]
        assert st == 408 and 0.2 < time.time() - t0 < 3 * SLOW, (st, time.time() - t0)
        s = srv.connect()
        t0 = time.time()
        assert at_eof(s, 5) and time.time() - t0 >= 0.2
        serves(srv)
    with_server(body, MICA_HTTP_HEADER_TIMEOUT_MS="300")


def test_slowloris_trickling_a_head_is_cut_off_at_the_header_timeout():
    def body(srv):
        s = srv.connect()
        t0 = time.time()
        closed = False
        for b in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.time() - t0 > 3 * SLOW:
                break
        r = read_response(s) if not closed else None
        assert closed or (r and r[0] == 408), r
        assert time.time() - t0 < 3 * SLOW
    with_server(body, MICA_HTTP_HEADER_TIMEOUT_MS="500")


def test_idle_keep_alive_connections_close_after_the_idle_timeout_not_before():
    def body(srv):
        s = srv.connect()
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        t0 = time.time()
        assert at_eof(s, 3)
        assert time.time() - t0 >= 0.4, time.time() - t0  # not before the timeout
    with_server(body, MICA_HTTP_IDLE_TIMEOUT_MS="500")


def test_body_timeout_gets_408():
    def body(srv):
        s = srv.connect()
        s.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        assert read_response(s)[0] == 408
    with_server(body, MICA_HTTP_BODY_TIMEOUT_MS="300")


# ---- overload ---------------------------------------------------------------

def test_over_the_connection_limit_new_connections_are_refused_and_old_ones_served():
    def body(srv):
        old = [srv.connect() for _ in range(5)]
        for s in old:
            s.sendall(HEALTH)
            assert read_response(s)[0] == 200
        extra = srv.connect()
        assert at_eof(extra, 2), "the connection over the limit was not closed"
        for s in old:
            s.sendall(HEALTH)
            assert read_response(s)[0] == 200
        assert srv.logged('"msg":"connection refused"'), srv.stderr()[-2000:]
        assert srv.logged('"reason":"connection limit"'), srv.stderr()[-2000:]
    with_server(body, MICA_WORKERS="1", MICA_HTTP_MAX_CONNS="5")


def test_out_of_descriptors_new_connections_are_refused_then_served_again():
    def body(srv):
        held = []
        for _ in range(80):  # well past the 48 descriptors the process may have
            s = srv.connect()
            held.append(s)
        assert srv.logged('"reason":"out of file descriptors"'), srv.stderr()[-2000:]
        served = 0
        for s in held:  # the ones that were accepted are still served
            try:
                s.sendall(HEALTH)
                r = read_response(s)
                served += bool(r) and r[0] == 200
            except OSError:
                pass  # refused: closed by the server
        assert served >= 10, served
        for s in held:
            s.sock.close()
        time.sleep(0.3)
        for _ in range(20):  # descriptors are back: new connections work again
            st, _, _ = exchange(srv, HEALTH)
            assert st == 200
    with_server(body, nofile=48, MICA_WORKERS="1", MICA_DRAIN_TIMEOUT_MS="3000")


# ---- graceful shutdown ----------------------------------------------------------

def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0():
    srv = Server(MICA_DRAIN_TIMEOUT_MS="5000")
    stop = threading.Event()
    counts = {"ok": 0, "bad": [], "closed_clean": 0}
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                s = srv.connect()
            except OSError:
                return  # no longer listening: refused, not lost
            try:
                while not stop.is_set():
                    s.sendall(HEALTH)
                    r = read_response(s)
                    if r is None:  # closed between requests: a client retries
                        with lock:
                            counts["closed_clean"] += 1
                        break
                    with lock:
                        if r[0] == 200 and r[2] == b'{"status":"ok"}':
                            counts["ok"] += 1
                        else:
                            counts["bad"].append(r)
                    if r[1].get("connection") == "close":
                        break
            except (ConnectionResetError, BrokenPipeError):
                with lock:
                    counts["closed_clean"] += 1
            except AssertionError as e:  # truncated response
                with lock:
                    counts["bad"].append(str(e))
            finally:
                s.close()

    try:
        # one request in flight across the signal: its head is half sent
        slow = srv.connect()
        slow.sendall(b"GET /data HTTP/1.1\r\nHost: t\r\n")
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        t0 = time.time()
        srv.p.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        slow.sendall(b"\r\n")
        st, h, b = read_response(slow)
        assert st == 200 and b.endswith(b'"processed quickly"}') and h.get("connection") == "close"
        code = srv.p.wait(timeout=15 * SLOW)
        stop.set()
        for t in threads:
            t.join(10)
        assert code == 0, code
        assert time.time() - t0 < 6 * SLOW
        assert not counts["bad"], counts["bad"][:3]
        assert counts["ok"] > 100, counts
    finally:
        stop.set()
        srv.kill()


def test_sigint_drains_like_sigterm_and_a_second_signal_still_exits():
    srv = Server()
    try:
        idle = srv.connect()
        idle.sendall(HEALTH)
        assert read_response(idle)[0] == 200
        srv.p.send_signal(signal.SIGINT)
        assert at_eof(idle, 5)  # idle keep-alive connections are closed at once
        assert srv.p.wait(timeout=10 * SLOW) == 0
    finally:
        srv.kill()
    srv = Server(MICA_DRAIN_TIMEOUT_MS="60000")
    try:
        partial = srv.connect()
        partial.sendall(b"GET /health HTTP/1.1\r\n")  # keeps the drain waiting
        time.sleep(0.3)  # let the server read it: the request is then in flight
        srv.p.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert srv.p.poll() is None
        srv.p.send_signal(signal.SIGTERM)  # the second one cancels what is left
        code = srv.p.wait(timeout=10 * SLOW)
        assert code in (0, 1), code
    finally:
        srv.kill()


if __name__ == "__main__":
    run_tests(dict(globals()))

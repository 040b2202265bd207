#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Streaming routes on the wire (tests/integration/stream_server.c): a body
read as it arrives and a response written in parts, over HTTP/1.1 (raw
sockets, curl) and HTTP/2 (curl, nghttp, raw frames); and a handler blocked
in a read that returns MICA_ECANCELED within milliseconds of its client
going away (disconnect, stream reset)."""
import json, os, re, socket, struct, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, run_tests, wait_listening  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Server:
    def __init__(self, **env):
        self.log = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, **{"MICA_LISTEN": "127.0.0.1:0", "MICA_WORKERS": "2", **env})
        self.p = subprocess.Popen([os.path.join(BUILD, "tests/stream_server")], env=e,
                                  stderr=self.log, stdout=subprocess.DEVNULL)
        self.port, _ = wait_listening(self.p, self.stderr, False)

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=5 * SLOW)

    def stop(self):
        self.p.terminate()
        code = self.p.wait(timeout=20 * SLOW)
        assert code == 0, f"exit code {code}: {self.stderr()[-2000:]}"


def with_server(fn, **env):
    srv = Server(**env)
    try:
        fn(srv)
        srv.stop()
    except BaseException:
        srv.p.kill()
        print(srv.stderr()[-2000:])
        raise


class Reader:
    """Buffered reads off a socket: a line, n bytes, a head, chunked parts."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError(f"EOF; have {self.buf!r}")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self):
        status = int(self.line().split(b" ")[1])
        fields = {}
        while True:
            line = self.line()
            if not line:
                return status, fields
            k, v = line.split(b":", 1)
            fields[k.strip().lower().decode()] = v.strip().decode()

    def chunk(self):
        """One chunk's data, or (b"", trailer fields) for the last chunk."""
        size = int(self.line(), 16)
        if size:
            data = self.take(size)
            assert self.line() == b""
            return data
        trailers = {}
        while True:
            line = self.line()
            if not line:
                return b"", trailers
            k, v = line.split(b":", 1)
            trailers[k.strip().lower().decode()] = v.strip().decode()


def test_http1_body_streams_in_and_out_before_the_request_ends():
    def body(srv):
        s = srv.connect()
        r = Reader(s)
        s.sendall(b"POST /stream/echo HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        status, fields = r.head()  # the handler answered before the body ended
        assert status == 200 and fields.get("transfer-encoding") == "chunked", (status, fields)
        assert r.chunk() == b"hello"
        s.sendall(b"6\r\n world\r\n")
        assert r.chunk() == b" world"
        s.sendall(b"0\r\n\r\n")
        assert r.chunk() == (b"", {"x-body-bytes": "11"})
        # The connection goes on: a Content-Length body, no TE: trailers -> none sent.
        s.sendall(b"POST /stream/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert r.head()[0] == 200
        assert r.chunk() == b"abc"
        assert r.chunk() == (b"", {})
        s.close()
    with_server(body)


def test_http1_parts_are_chunks_and_http10_is_close_delimited():
    def body(srv):
        s = srv.connect()
        r = Reader(s)
        s.sendall(b"GET /parts HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n")
        assert r.head()[0] == 200
        t0 = time.time()
        assert r.chunk() == b"a"
        assert r.chunk() == b"b" and time.time() - t0 >= 0.04  # "a" went out alone, at once
        assert r.chunk() == (b"", {"x-done": "yes"})
        s.close()
        s = srv.connect()
        s.sendall(b"GET /parts HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        head, rest = data.split(b"\r\n\r\n", 1)
        assert b"connection: close" in head.lower() and b"chunked" not in head.lower(), head
        assert rest == b"ab", rest
        r = subprocess.run(["curl", "-sS", srv.url("/parts")], capture_output=True, timeout=10 * SLOW)
        assert r.stdout == b"ab", r
    with_server(body)


def nghttp(srv, path, data=None):
    cmd = ["nghttp", "-v"]
    if data is not None:
        f = tempfile.NamedTemporaryFile()
        f.write(data)
        f.flush()
        cmd += ["-d", f.name]
    r = subprocess.run(cmd + [srv.url(path)], capture_output=True, timeout=30 * SLOW)
    return r.stdout.decode("latin-1")


def test_h2_streams_a_body_larger_than_the_buffer_and_sends_trailers():
    def body(srv):
        data = os.urandom(300 * 1024)  # 300 KiB through a 64 KiB buffer
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary",
                                "@" + f.name, srv.url("/stream/echo")],
                               capture_output=True, timeout=30 * SLOW)
        assert r.returncode == 0 and r.stdout == data, (r.returncode, len(r.stdout), r.stderr)
        out = nghttp(srv, "/stream/echo", b"x" * 1000)
        assert re.search(r"recv \(stream_id=\d+\) x-body-bytes: 1000", out), out[-2000:]
        out = nghttp(srv, "/parts")
        assert re.search(r"recv \(stream_id=\d+\) x-done: yes", out), out[-2000:]
    with_server(body)


def test_a_streaming_route_takes_bodies_past_max_body_bytes():
    def body(srv):
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"z" * (3 << 20))
            f.flush()
            for proto in ("--http1.1", "--http2-prior-knowledge"):
                r = subprocess.run(["curl", "-sS", proto, "--data-binary", "@" + f.name,
                                    srv.url("/stream/count")],
                                   capture_output=True, text=True, timeout=30 * SLOW)
                assert r.stdout == '{"bytes":%d}' % (3 << 20), (proto, r.stdout, r.stderr)
    with_server(body, MICA_HTTP_MAX_BODY_BYTES="65536")


def test_strings_taken_before_the_body_stay_valid_while_it_grows_the_buffer():
    # The handler keeps method, path and a header from before it waits for a
    # 60 kB body; on HTTP/1.1 that body grows (moves) the connection's input
    # buffer. Under ASan a stale pointer is a use-after-free; otherwise garbage.
    def body(srv):
        probe = "p" * 200
        payload = b"q" * 60000
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10 * SLOW)
        s.sendall(b"POST /stream/late?x=1 HTTP/1.1\r\nHost: t\r\nX-Probe: " + probe.encode() +
                  b"\r\nContent-Length: 60000\r\n\r\n")
        for i in range(0, len(payload), 4096):  # in pieces, so the body arrives after the head
            s.sendall(payload[i:i + 4096])
            time.sleep(0.002)
        data = b""
        while b"}" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        got = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert got == {"method": "POST", "path": "/stream/late", "probe": probe, "bytes": 60000}, got
    with_server(body)


def cancelled_within(srv, what, t0, limit_ms=25):
    """The server logged `what: ECANCELED at <ms>` within limit_ms of t0."""
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline:
        m = re.search(what + r": (\w+) at (\d+)", srv.stderr())
        if m:
            assert m.group(1) == "ECANCELED", m.group(0)
            took = int(m.group(2)) - t0 * 1000
            assert took < limit_ms * SLOW, f"{what}: cancelled {took:.0f} ms after the client left"
            return took
        time.sleep(0.005)
    raise AssertionError(f"{what}: no log line: {srv.stderr()[-1000:]}")


def hpack(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def h2_request(method, path, end_stream):
    block = (hpack(b":method", method) + hpack(b":scheme", b"http") + hpack(b":path", path) +
             hpack(b":authority", b"t"))
    return PREFACE + frame(4, 0, 0) + frame(1, 4 | (1 if end_stream else 0), 1, block)


def test_blocked_body_read_ends_at_once_when_the_client_disconnects():
    def body(srv):
        s = srv.connect()
        s.sendall(b"POST /stream/hold HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nsome")
        time.sleep(0.2)
        t0 = time.time()
        s.close()
        cancelled_within(srv, "hold", t0)
    with_server(body)


def test_blocked_body_read_ends_at_once_when_the_stream_is_reset():
    def body(srv):
        s = srv.connect()
        s.sendall(h2_request(b"POST", b"/stream/hold", False) + frame(0, 0, 1, b"some"))
        time.sleep(0.2)
        t0 = time.time()
        s.sendall(frame(3, 0, 1, struct.pack(">I", 8)))  # RST_STREAM CANCEL
        cancelled_within(srv, "hold", t0)
        s.close()
    with_server(body)


def test_a_handler_reading_another_socket_with_the_request_ctx_is_cancelled():
    def body(srv):
        s = srv.connect()
        s.sendall(b"GET /socket/hold HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        t0 = time.time()
        s.close()
        cancelled_within(srv, "socket", t0)
    with_server(body)

    def h2(srv):
        s = srv.connect()
        s.sendall(h2_request(b"GET", b"/socket/hold", True))
        time.sleep(0.2)
        t0 = time.time()
        s.sendall(frame(3, 0, 1, struct.pack(">I", 8)))
        cancelled_within(srv, "socket", t0)
        s.close()
    with_server(h2)


if __name__ == "__main__":
    run_tests(globals())

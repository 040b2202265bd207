# SPDX-License-Identifier: MIT
"""mica's HTTP/1.1 client on the wire against peers nobody here wrote,
through examples/proxy (the client's main user): nginx (Debian's) as a
keep-alive upstream, Python's http.server for bodies both ways, chunked
responses with trailers and hop-by-hop fields, and raw sockets for hostile
upstreams (CL+TE, bad chunk sizes, obs-fold, stalls, closes between
requests). What crosses the wire is checked on both sides."""
import os, shutil, socket, subprocess, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, read_response, run_tests, wait_listening  # noqa: E402


class Proxy:
    """examples/proxy in front of `upstream`, on 127.0.0.1:0."""

    def __init__(self, upstream, **env):
        self.log = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, MICA_LISTEN="127.0.0.1:0", MICA_WORKERS="1",
                 MICA_PROXY_UPSTREAM=upstream, **env)
        self.p = subprocess.Popen([os.path.join(BUILD, "examples/proxy")], env=e,
                                  stderr=self.log, stdout=subprocess.DEVNULL)
        self.port, _ = wait_listening(self.p, self.stderr, False)

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def conn(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10 * SLOW)
        return Sock(s)

    def get(self, path, headers=""):
        c = self.conn()
        try:
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
            return read_big(c)
        finally:
            c.close()

    def stop(self):
        self.p.terminate()
        assert self.p.wait(timeout=20 * SLOW) == 0, self.stderr()


class Sock:
    def __init__(self, s):
        self.sock, self.pending = s, b""

    def recv(self, n):
        if self.pending:
            d, self.pending = self.pending[:n], self.pending[n:]
            return d
        return self.sock.recv(n)

    def __getattr__(self, name):
        return getattr(self.sock, name)


# ---- Python's http.server as an upstream ------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []  # (path, headers dict) of each request

    def log_message(self, *a):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def reply(self, status, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        Handler.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Sum")
            self.send_header("Connection", "X-Private")
            self.send_header("X-Private", "must not leave the proxy")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Sum: 19\r\n\r\n")
        else:
            self.reply(200, b"python " + self.path.encode())

    def do_POST(self):
        data = self.body()
        Handler.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.reply(200, data)


def python_upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


# ---- raw sockets: hostile upstreams --------------------------------------------------

def raw_upstream(answers, keep=False, stall=0.0):
    """Answers the n-th request of each connection with answers[n] (bytes),
    then closes (unless keep); stall: seconds to wait before closing."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    stats = {"requests": 0, "conns": 0}

    def serve(c):
        with c:
            buf = b""
            for a in answers:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf.split(b"\r\n\r\n", 1)[1]
                stats["requests"] += 1
                if a is None:
                    return  # close without answering
                c.sendall(a)
            if stall:
                time.sleep(stall)
            elif keep:
                c.settimeout(5)
                try:
                    c.recv(1)
                except OSError:
                    pass

    def loop():
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            stats["conns"] += 1
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return ls, f"127.0.0.1:{ls.getsockname()[1]}", stats


# ---- nginx as a keep-alive upstream -----------------------------------------------

def nginx_upstream(d):
    """nginx (1 worker) serving /health from config and a 1 MiB file at /big.bin,
    logging each request's connection serial number."""
    with open(os.path.join(d, "big.bin"), "wb") as f:
        f.write(bytes(range(256)) * 4096)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    user = "user root root;" if os.getuid() == 0 else ""
    v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    temps = "".join(f"{m}_temp_path {d}/{m};\n" for m in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
                    if m == "client_body" or f"--without-http_{m}_module" not in v)
    conf = f"""{user}
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format c '$connection $request_uri';
    access_log {d}/access.log c;
    keepalive_requests 100000;
    {temps}
    server {{
        listen 127.0.0.1:{port};
        root {d};
        location = /health {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
    }}
}}
"""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    p = subprocess.Popen(["nginx", "-p", d + "/", "-e", d + "/error.log", "-c", d + "/nginx.conf"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise AssertionError("nginx did not start")


def test_nginx_upstream_connections_are_kept_alive_and_big_bodies_stream():
    if not shutil.which("nginx"):
        print("SKIP: nginx not installed (scripts/deps.sh test)")
        return
    d = tempfile.mkdtemp()
    ng, port = nginx_upstream(d)
    px = Proxy(f"http://127.0.0.1:{port}")
    try:
        c = px.conn()
        for i in range(200):
            c.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            st, h, body = read_response(c)
            assert st == 200 and body == b'{"status":"ok"}', (st, body)
        c.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        st, h, body = read_big(c)
        assert st == 200 and body == bytes(range(256)) * 4096, (st, len(body))
        c.close()
        time.sleep(0.2)
        with open(os.path.join(d, "access.log")) as f:
            conns = {line.split()[0] for line in f if line.strip()}
        assert len(conns) == 1, f"nginx saw {len(conns)} connections for 201 requests"
    finally:
        px.stop()
        ng.terminate()
        ng.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def read_big(c):
    """A response that may be chunked (the proxy streams bodies over 16 KiB)."""
    def more():
        d = c.recv(65536)
        if not d:
            raise AssertionError("connection closed mid-response")
        return d
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += more()
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    h = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    status = int(lines[0].split()[1])
    if h.get("transfer-encoding") != "chunked":
        n = int(h["content-length"])
        while len(rest) < n:
            rest += more()
        return status, h, rest[:n]
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += more()
        line, rest = rest.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        while len(rest) < size + 2:
            rest += more()
        if size == 0:
            return status, h, body
        body, rest = body + rest[:size], rest[size + 2:]


def test_hop_by_hop_fields_dropped_and_x_forwarded_for_added():
    srv, url = python_upstream()
    px = Proxy(url)
    try:
        Handler.seen.clear()
        st, h, body = px.get("/fields?x=1", "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
                             "Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 9.9.9.9\r\n"
                             "X-Kept: yes\r\n")
        assert st == 200 and body == b"python /fields?x=1", (st, body)
        path, seen = Handler.seen[-1]
        for gone in ("x-secret", "keep-alive", "te", "proxy-connection"):
            assert gone not in seen, (gone, seen)
        assert seen.get("x-kept") == "yes" and seen.get("host") == "t", seen
        assert seen.get("x-forwarded-for") == "9.9.9.9, 127.0.0.1", seen
        # The upstream's chunked response, with an extension, a trailer and a
        # field its Connection names: body through, private field not.
        st, h, body = px.get("/chunked")
        assert st == 200 and body == b"hello chunked world", (st, body)
        assert "x-private" not in h and "trailer" not in h, h
    finally:
        px.stop()
        srv.shutdown()


def test_request_bodies_by_length_and_chunked_reach_python():
    srv, url = python_upstream()
    px = Proxy(url)
    try:
        c = px.conn()
        c.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        st, h, body = read_response(c)
        assert st == 200 and body == b"hello world", (st, body)
        big = os.urandom(100000)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 7000]), big[i:i + 7000])
                          for i in range(0, len(big), 7000))
        c.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        st, h, body = read_big(c)
        assert st == 200 and body == big, (st, len(body))
        assert Handler.seen[-1][1].get("transfer-encoding") == "chunked"
        c.close()
    finally:
        px.stop()
        srv.shutdown()


HOSTILE = [
    ("CL and TE", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502),
    ("two Content-Lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 502),
    ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n", 502),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\t2\r\nContent-Length: 0\r\n\r\n", 502),
    ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n", 502),
]


def test_hostile_upstreams_get_502_and_stalls_504():
    for name, answer, want in HOSTILE:
        ls, addr, _ = raw_upstream([answer])
        px = Proxy(addr)
        try:
            r = px.get("/x")
            assert r and r[0] == want, (name, r)
        finally:
            px.stop()
            ls.close()
    # A server that stalls mid-body, then one that stalls before the head.
    for answer in (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"HTTP/1.1 200 OK\r\n"):
        ls, addr, _ = raw_upstream([answer], stall=3)
        px = Proxy(addr, MICA_HTTP_CLIENT_RESPONSE_TIMEOUT_MS="300", MICA_HTTP_CLIENT_BODY_TIMEOUT_MS="300")
        try:
            t0 = time.time()
            r = px.get("/x")
            assert r and r[0] == 504 and time.time() - t0 < 2 * SLOW, r
        finally:
            px.stop()
            ls.close()


def test_upstream_closing_between_requests_is_survived_and_dead_upstream_is_502():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    # Answers one request per connection and closes without saying so.
    ls, addr, stats = raw_upstream([ok, None])
    px = Proxy(addr)
    try:
        c = px.conn()
        for i in range(10):
            c.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            st, h, body = read_response(c)
            assert st == 200 and body == b"ok", (i, st, body)
            time.sleep(0.02 if i % 2 else 0)  # sometimes the close is seen first, sometimes not
        c.close()
        assert stats["conns"] >= 10, stats
    finally:
        px.stop()
        ls.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    px = Proxy(f"127.0.0.1:{dead}")
    try:
        r = px.get("/x")
        assert r and r[0] == 502, r
    finally:
        px.stop()


if __name__ == "__main__":
    run_tests(globals())

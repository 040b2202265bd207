# SPDX-License-Identifier: MIT
"""Shared helpers for the integration tests: start examples/hello on an
ephemeral loopback port, talk raw HTTP over sockets, run test functions and
print the closing `N passed, N failed` line."""
import os, re, resource, signal, socket, ssl, subprocess, sys, tempfile, time

BUILD = os.environ.get("MICA_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
SLOW = 10 if os.environ.get("MICA_SANITIZE") else 1


def wait_listening(proc, read_log, want_tls, timeout=10):
    """Waits for a server's "listening" log lines. Returns (cleartext port,
    TLS port or None); fails if proc exits or timeout * SLOW passes first."""
    port = tls_port = None
    deadline = time.time() + timeout * SLOW
    while (port is None or (want_tls and tls_port is None)) and time.time() < deadline:
        log = read_log()
        m = re.search(r'"msg":"listening","addr":"127\.0\.0\.1:(\d+)",[^}]*"tls":"no"', log)
        t = re.search(r'"msg":"listening","addr":"127\.0\.0\.1:(\d+)",[^}]*"tls":"yes"', log)
        port = int(m.group(1)) if m else None
        tls_port = int(t.group(1)) if t else None
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert port and (tls_port or not want_tls), "server did not start: " + read_log()
    return port, tls_port


class Server:
    """examples/hello on 127.0.0.1:0; env overrides the defaults."""

    def __init__(self, nofile=None, **env):
        self.log = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, **{"MICA_LISTEN": "127.0.0.1:0", "MICA_WORKERS": "2", **env})
        pre = None
        if nofile:
            def pre():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.p = subprocess.Popen([os.path.join(BUILD, "examples/hello")], env=e,
                                  stderr=self.log, stdout=subprocess.DEVNULL, preexec_fn=pre)
        self.port, self.tls_port = wait_listening(self.p, self.stderr, bool(e.get("MICA_TLS_LISTEN")))

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def logged(self, text, timeout=2):
        """True once `text` is in the server's log; log lines are written by
        a writer thread, so one may reach the file a moment after the event."""
        deadline = time.time() + timeout * SLOW
        while text not in self.stderr():
            if time.time() > deadline:
                return False
            time.sleep(0.01)
        return True

    def connect(self):
        return Conn(socket.create_connection(("127.0.0.1", self.port), timeout=5 * SLOW))

    def connect_tls(self, cafile, alpn=("http/1.1",)):
        """A TLS connection to the TLS listener, offering `alpn`, trusting cafile."""
        ctx = ssl.create_default_context(cafile=cafile)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=5 * SLOW)
        return Conn(ctx.wrap_socket(raw, server_hostname="localhost"))

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return self.p.wait(timeout=timeout * SLOW)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Conn:
    """A client socket that keeps bytes read past one response (pipelining)."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""

    def recv(self, n):
        if self.pending:
            data, self.pending = self.pending[:n], self.pending[n:]
            return data
        return self.sock.recv(n)

    def __getattr__(self, name):  # sendall, close, settimeout, setblocking
        return getattr(self.sock, name)


def make_cert(directory, cn="localhost"):
    """A self-signed P-256 certificate with subject CN=cn for localhost and
    127.0.0.1 (openssl CLI). Returns (cert.pem, key.pem) paths in directory;
    the cert is its own CA."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={cn}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def read_response(sock, head_only=False):
    """Reads one HTTP/1.1 response (Content-Length framed). Returns
    (status, headers dict with lower-case names, body) or None at a clean EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                raise AssertionError(f"truncated head: {buf!r}")
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = 0 if head_only or status in (100, 204, 304) else int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"truncated body: got {len(rest)} of {n}")
        rest += chunk
    sock.pending = rest[n:]
    return status, headers, rest[:n]


def exchange(srv, raw):
    """Sends raw bytes on a new connection, returns the first response."""
    s = srv.connect()
    try:
        s.sendall(raw)
        return read_response(s)
    finally:
        s.close()


def at_eof(sock, timeout=2.0):
    """True if the peer closed the connection (EOF or reset) within timeout."""
    sock.settimeout(timeout * SLOW)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def serves(srv):
    r = exchange(srv, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert r and r[0] == 200 and r[2] == b'{"status":"ok"}', r
    return True


def run_tests(namespace):
    passed = failed = 0
    for name, fn in list(namespace.items()):
        if not name.startswith("test_") or not callable(fn):
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"PASS {name} ({time.time() - t0:.1f}s)")
        except Exception as e:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"FAIL {name}: {e!r}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)

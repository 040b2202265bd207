#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""HTTP/2 (h2c, prior knowledge) on the HTTP/1.1 port of examples/hello.

Real peers: curl, nghttp and h2load (nghttp2-client). Raw frames from this
script for what no well-behaved client sends: a bad preface, invalid frames,
the rapid-reset attack (CVE-2023-44487), SETTINGS and header floods. After
each attack a fresh client must still be served."""
import json, os, re, signal, socket, struct, subprocess, sys, tempfile, time

BUILD = os.environ.get("MICA_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
SLOW = 10 if os.environ.get("MICA_SANITIZE") else 1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
results = {"passed": 0, "failed": 0}


class Server:
    def __init__(self, **env):
        self.log = tempfile.TemporaryFile(mode="w+")
        e = dict(os.environ, **{"MICA_LISTEN": "127.0.0.1:0", "MICA_WORKERS": "2", **env})
        self.p = subprocess.Popen([os.path.join(BUILD, "examples/hello")], env=e,
                                  stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.time() + 10 * SLOW
        self.port = None
        while self.port is None and time.time() < deadline:
            self.log.seek(0)
            m = re.search(r'"msg":"listening","addr":"127\.0\.0\.1:(\d+)"', self.log.read())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.02)
        assert self.port, "server did not start"

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=20 * SLOW)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


def run(cmd, timeout=20):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * SLOW)
    return r.returncode, r.stdout + r.stderr


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name, value):
    # literal header field without indexing, new name (RFC 7541 §6.2.2), short strings
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request_block(path=b"/health"):
    return (hpack_literal(b":method", b"GET") + hpack_literal(b":scheme", b"http") +
            hpack_literal(b":path", path) + hpack_literal(b":authority", b"t"))


def read_frames(sock, until_type, timeout):
    """Reads frames until one of type `until_type` arrives or the peer closes."""
    sock.settimeout(timeout)
    buf, frames = b"", []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]))
            buf = buf[9 + n:]
            if frames[-1][0] == until_type:
                return frames
    return frames


def goaway_code(frames):
    for t, _, _, payload in frames:
        if t == 7:
            return int.from_bytes(payload[4:8], "big")
    return None


def still_serves(srv):
    rc, out = run(["curl", "-sS", "--http2-prior-knowledge", srv.url("/health")])
    assert rc == 0 and out == '{"status":"ok"}', (rc, out)


def test(fn):
    srv = Server()
    try:
        fn(srv)
        code = srv.stop()
        assert code == 0, f"server exit code {code}"
        print(f"PASS {fn.__name__}")
        results["passed"] += 1
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        srv.p.kill()
        srv.log.seek(0)
        print(f"FAIL {fn.__name__}: {e!r}\n{srv.log.read()[-2000:]}")
        results["failed"] += 1


# ---- real peers ------------------------------------------------------------

def test_curl_gets_the_endpoints_over_h2c(srv):
    rc, out = run(["curl", "-sS", "--http2-prior-knowledge", "-i", srv.url("/data")])
    assert rc == 0 and out.startswith("HTTP/2 200"), out
    assert out.endswith('{"message":"success","data":"processed quickly"}'), out
    rc, out = run(["curl", "-sS", "--http2-prior-knowledge", "-i", "-X", "POST", srv.url("/health")])
    assert out.startswith("HTTP/2 405") and "allow: GET, HEAD" in out, out
    rc, out = run(["curl", "-sS", "--http2-prior-knowledge", "-i", srv.url("/nope")])
    assert out.startswith("HTTP/2 404") and '{"error":"not found"}' in out, out
    rc, out = run(["curl", "-sS", "--http2-prior-knowledge", "-I", srv.url("/health")])
    assert out.startswith("HTTP/2 200") and "content-length: 15" in out, out
    rc, out = run(["curl", "-sS", "-i", srv.url("/health")])  # HTTP/1.1 on the same port
    assert out.startswith("HTTP/1.1 200"), out


def test_nghttp_multiplexes_streams_on_one_connection(srv):
    urls = [srv.url(f"/health?i={i}") for i in range(10)] + [srv.url(f"/data?i={i}") for i in range(10)]
    rc, out = run(["nghttp", "-nv"] + urls)
    assert rc == 0, out
    assert out.count(":status: 200") == 20, out[-1500:]
    assert len(set(re.findall(r"send HEADERS frame <.*stream_id=(\d+)>", out))) == 20


def test_h2load_many_concurrent_streams_all_succeed(srv):
    rc, out = run(["h2load", "-n", "4000", "-c", "4", "-m", "200", srv.url("/health")], timeout=60)
    assert rc == 0 and "4000 succeeded" in out and "4000 2xx" in out, out


def test_uploads_respect_flow_control_and_the_body_limit(srv):
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"x" * 300000)  # beyond the 64 KiB initial connection window
        f.flush()
        rc, out = run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                       "--data-binary", "@" + f.name, srv.url("/health")])
        assert out == "405", out
        f.write(b"x" * (1 << 20))
        f.flush()
        rc, out = run(["curl", "-sS", "--http2-prior-knowledge", "-w", " %{http_code}",
                       "--data-binary", "@" + f.name, srv.url("/health")])
        assert out == '{"error":"request body too large"} 413', out


# ---- robustness ------------------------------------------------------------

def test_a_bad_preface_is_refused_as_http1(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    s.settimeout(5 * SLOW)
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 505"), data
    still_serves(srv)


def test_an_invalid_frame_gets_goaway_protocol_error(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(PREFACE + frame(4, 0, 0) + frame(0, 1, 0, b"data on stream zero"))
    code = goaway_code(read_frames(s, 7, 5 * SLOW))
    assert code == 1, code  # PROTOCOL_ERROR
    still_serves(srv)


def test_rapid_reset_gets_goaway_enhance_your_calm(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    block = request_block()
    burst = [PREFACE, frame(4, 0, 0)]
    for i in range(600):
        sid = 2 * i + 1
        burst.append(frame(1, 0x5, sid, block))                 # HEADERS, END_STREAM|END_HEADERS
        burst.append(frame(3, 0, sid, struct.pack(">I", 8)))  # RST_STREAM CANCEL
    try:
        s.sendall(b"".join(burst))
    except (BrokenPipeError, ConnectionResetError):
        pass
    code = goaway_code(read_frames(s, 7, 10 * SLOW))
    assert code == 0xB, code  # ENHANCE_YOUR_CALM
    still_serves(srv)


def test_settings_flood_does_not_hurt_other_clients(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    flood = PREFACE + frame(4, 0, 0) * 20000 + frame(6, 0, 0, b"12345678") * 20000
    try:
        s.sendall(flood)  # never reads the ACKs
    except (BrokenPipeError, ConnectionResetError):
        pass
    still_serves(srv)
    s.close()


def test_header_flood_is_refused_and_the_server_keeps_serving(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    big = request_block() + hpack_literal(b"x-pad", b"y" * 100) * 400  # ~40 KiB of fields
    chunks = [big[i:i + 1000] for i in range(0, len(big), 1000)]
    out = [PREFACE, frame(4, 0, 0), frame(1, 0x1, 1, chunks[0])]  # HEADERS, END_STREAM
    out += [frame(9, 0, 1, c) for c in chunks[1:-1]] + [frame(9, 0x4, 1, chunks[-1])]
    try:
        s.sendall(b"".join(out))
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = read_frames(s, 3, 5 * SLOW)  # RST_STREAM for stream 1, or GOAWAY
    statuses = [f for f in frames if f[0] == 1 and f[2] == 1]
    assert not statuses, "an oversized header list reached the handler"
    assert any(f[0] in (3, 7) for f in frames), frames
    still_serves(srv)


def test_sigterm_sends_goaway_to_an_idle_h2_connection(srv):
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(PREFACE + frame(4, 0, 0))
    read_frames(s, 4, 2 * SLOW)  # the server's SETTINGS
    time.sleep(0.1)
    srv.p.send_signal(signal.SIGTERM)
    code = goaway_code(read_frames(s, 7, 10 * SLOW))
    assert code == 0, code  # NO_ERROR
    assert srv.p.wait(timeout=20 * SLOW) == 0


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn) and name != "test":
            test(fn)
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)

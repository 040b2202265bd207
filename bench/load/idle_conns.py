#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Memory per idle keep-alive connection: start examples/hello with one
worker, open N connections that each complete one request and then stay
idle, and report the server's RSS growth per connection. With --tls the
connections are TLS (a throw-away certificate made with openssl).
Usage: bench/load/idle_conns.py <build-dir> [connections, default 10000] [--tls]"""
import os, re, resource, selectors, signal, socket, ssl, subprocess, sys, tempfile, time

args = [a for a in sys.argv[1:] if a != "--tls"]
tls = "--tls" in sys.argv
build, n = args[0], int(args[1]) if len(args) > 1 else 10000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = min(hard, n + 1024)
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
env = dict(os.environ, MICA_WORKERS="1", MICA_LISTEN="127.0.0.1:0")
if tls:
    d = tempfile.mkdtemp(prefix="mica-idle-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    env.update(MICA_LISTEN="127.0.0.1:0", MICA_TLS_LISTEN="127.0.0.1:0", MICA_TLS_CERT=cert,
               MICA_TLS_KEY=key)
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
srv = subprocess.Popen([os.path.join(build, "examples/hello")], env=env,
                       stderr=subprocess.PIPE, text=True)
try:
    port = None
    deadline = time.time() + 10
    want = '"tls":"yes"' if tls else '"tls":"no"'
    while port is None and time.time() < deadline:
        line = srv.stderr.readline()
        m = re.search(r'"addr":"127\.0\.0\.1:(\d+)"', line)
        port = int(m.group(1)) if m and want in line else None
    if port is None:
        sys.exit("idle_conns: server did not start")

    def rss_kib():
        with open(f"/proc/{srv.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

    def connect():
        s = socket.create_connection(("127.0.0.1", port))
        return ctx.wrap_socket(s, server_hostname="localhost") if tls else s

    warm = connect()
    warm.sendall(req)
    warm.recv(4096)
    time.sleep(0.2)
    before = rss_kib()
    conns, sel = [], selectors.DefaultSelector()
    for i in range(n):
        s = connect()
        s.sendall(req)
        conns.append(s)
        if len(conns) % 500 == 0:  # collect replies so buffers do not pile up
            for c in conns[-500:]:
                c.recv(4096)
    for c in conns[len(conns) // 500 * 500:]:
        c.recv(4096)
    time.sleep(0.5)
    after = rss_kib()
    per = (after - before) * 1024 / n
    print(f"idle keep-alive connections: {n}, server RSS {before} KiB -> {after} KiB, "
          f"{per:.0f} bytes per connection")
    for c in conns:
        c.close()
finally:
    srv.send_signal(signal.SIGTERM)
    srv.wait(timeout=20)

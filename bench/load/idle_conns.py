#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Memory per idle keep-alive connection: start examples/hello with one
worker, open N connections that each complete one request and then stay
idle, and report the server's RSS growth per connection.
Usage: bench/load/idle_conns.py <build-dir> [connections, default 10000]"""
import os, re, resource, selectors, signal, socket, subprocess, sys, time

build, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = min(hard, n + 1024)
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
env = dict(os.environ, MICA_WORKERS="1", MICA_LISTEN="127.0.0.1:0")
srv = subprocess.Popen([os.path.join(build, "examples/hello")], env=env,
                       stderr=subprocess.PIPE, text=True)
try:
    port = None
    deadline = time.time() + 10
    while port is None and time.time() < deadline:
        m = re.search(r'"addr":"127\.0\.0\.1:(\d+)"', srv.stderr.readline())
        port = int(m.group(1)) if m else None
    if port is None:
        sys.exit("idle_conns: server did not start")

    def rss_kib():
        with open(f"/proc/{srv.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    warm = socket.create_connection(("127.0.0.1", port))
    warm.sendall(req)
    warm.recv(4096)
    time.sleep(0.2)
    before = rss_kib()
    conns, sel = [], selectors.DefaultSelector()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
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

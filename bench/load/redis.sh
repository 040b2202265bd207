#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, Redis part: GET and SET of one key (redis-benchmark's
# "key:__rand_int__", 3-byte value) from mica's client -- 256 coroutines on
# one worker, auto-pipelined (bench/micro/bench_redis.c) -- against
# redis-benchmark (Debian's redis-tools, C, on hiredis) unpipelined and with
# -P 16. redis-server (no persistence) runs alone on CPU 0, every client on
# CPU 1 (taskset). Each row is the median of <runs> runs; besides ops/s the
# table gives the client's CPU-seconds per million commands (user+sys, from
# getrusage) and the server's, from /proc/<pid>/stat.
#
# Usage: bench/load/redis.sh <build-dir> [duration_s, default 5] [runs, default 3]
# Knobs: BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1, BENCH_REDIS_OPS="get set".
# Results (markdown) go to stdout and <build-dir>/bench/redis.md.
set -euo pipefail

[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 <build-dir> [duration_s] [runs]" >&2; exit 2; }
build=$(cd "$1" && pwd)
secs=${2:-5}
runs=${3:-3}
for tool in redis-server redis-benchmark taskset python3; do
    command -v "$tool" >/dev/null || { echo "redis.sh: $tool not found; run: scripts/deps.sh bench" >&2; exit 1; }
done
cmake --build "$build" --target bench_redis >/dev/null
mkdir -p "$build/bench"
BUILD="$build" SECS="$secs" RUNS="$runs" SRV_CPU="${BENCH_SERVER_CPU:-0}" LOAD_CPU="${BENCH_LOAD_CPU:-1}" \
    OPS="${BENCH_REDIS_OPS:-get set}" python3 - <<'PY' | tee "$build/bench/redis.md"
import os, re, resource, shutil, socket, statistics, subprocess, tempfile, time

build, secs, runs = os.environ["BUILD"], int(os.environ["SECS"]), int(os.environ["RUNS"])
srv_cpu, load_cpu, ops = os.environ["SRV_CPU"], os.environ["LOAD_CPU"], os.environ["OPS"].split()
tck = os.sysconf("SC_CLK_TCK")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def server_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck

tmp = tempfile.mkdtemp(prefix="mica-redis-bench.")
port = free_port()
with open(f"{tmp}/redis.conf", "w") as f:
    f.write(f'port {port}\nbind 127.0.0.1\ndir {tmp}\nsave ""\nappendonly no\nlogfile {tmp}/log\n')
srv = subprocess.Popen(["taskset", "-c", srv_cpu, "redis-server", f"{tmp}/redis.conf"])
try:
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError:
            time.sleep(0.01)

    def child_cpu():
        u = resource.getrusage(resource.RUSAGE_CHILDREN); return u.ru_utime + u.ru_stime

    def redis_benchmark(op, conns, pipe):
        # Enough commands for about `secs` seconds at the rates this machine reaches.
        n = (150000 if pipe == 1 else 1500000) * secs // 5
        c0, s0 = child_cpu(), server_cpu(srv.pid)
        out = subprocess.run(["taskset", "-c", load_cpu, "redis-benchmark", "-h", "127.0.0.1",
                              "-p", str(port), "-c", str(conns), "-P", str(pipe), "-n", str(n),
                              "-t", op, "--csv"], capture_output=True, text=True, check=True).stdout
        c1, s1 = child_cpu(), server_cpu(srv.pid)
        rate = float(re.search(r'^"%s","([0-9.]+)"' % op.upper(), out, re.M).group(1))
        return rate, (c1 - c0) * 1e6 / n, (s1 - s0) * 1e6 / n

    def mica(op, coros, conns):
        s0 = server_cpu(srv.pid)
        t0 = time.time()
        out = subprocess.run(["taskset", "-c", load_cpu, f"{build}/bench/bench_redis",
                              f"redis://127.0.0.1:{port}", op, str(coros), str(conns), str(secs)],
                             capture_output=True, text=True, check=True).stdout
        s1 = server_cpu(srv.pid)
        kv = dict(x.split("=") for x in out.split())
        n = int(kv["ops"])
        assert int(kv["errors"]) == 0, out
        # The server also served the warm-up second: charge it by time.
        total = time.time() - t0
        return float(kv["rate"]), float(kv["cpu_s"]) * 1e6 / n, (s1 - s0) * (float(kv["secs"]) / total) * 1e6 / n

    rows = [("redis-benchmark -c 256 (unpipelined)", lambda op: redis_benchmark(op, 256, 1)),
            ("redis-benchmark -c 256 -P 16", lambda op: redis_benchmark(op, 256, 16)),
            ("redis-benchmark -c 16 -P 16 (256 in flight)", lambda op: redis_benchmark(op, 16, 16)),
            ("mica, 256 coroutines, 1 connection", lambda op: mica(op, 256, 1)),
            ("mica, 256 coroutines, 16 connections", lambda op: mica(op, 256, 16))]
    print(f"## Redis {' and '.join(o.upper() for o in ops)} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC), "
          f"redis-server on CPU {srv_cpu}, clients on CPU {load_cpu}, median of {runs}\n")
    print("| client | op | ops/s | client CPU-s per 1M ops | server CPU-s per 1M ops |")
    print("|---|---|---|---|---|")
    for op in ops:
        results = {name: [] for name, _ in rows}
        for _ in range(runs):           # interleaved, so drift hits every row alike
            for name, fn in rows:
                results[name].append(fn(op))
        for name, _ in rows:
            med = lambda i: statistics.median(r[i] for r in results[name])
            print(f"| {name} | {op.upper()} | {med(0):,.0f} | {med(1):.2f} | {med(2):.2f} |", flush=True)
    print(f"\nCommands: `taskset -c {load_cpu} redis-benchmark -h 127.0.0.1 -p PORT -c C [-P 16] -n N -t get|set --csv`;"
          f" `taskset -c {load_cpu} {build}/bench/bench_redis redis://127.0.0.1:PORT get|set 256 CONNS {secs}`.")
finally:
    srv.terminate(); srv.wait()
    shutil.rmtree(tmp, ignore_errors=True)
PY

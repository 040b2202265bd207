#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`: every benchmark in one run, so ratios compare like with like.
#   1. coroutine micro-benchmark (bench_coro), pinned to CPU 0
#   2. channels/select/spawn/offload vs Go (bench/micro/chan.sh)
#   3. HTTP /health: Gin, nginx and mica under wrk (bench/load/http.sh)
#   4. HTTPS /health: nginx and mica over TLS under wrk (bench/load/http.sh, BENCH_TLS=1)
#   4a. observability on vs off on examples/hello (bench/load/observe.sh)
#   5. HTTP/2 /health: h2o, nginx and mica under h2load (bench/load/h2.sh)
#   6. gRPC GetUser: grpc-go and mica under h2load (bench/load/grpc.sh), then over TLS at 50x10
#   7. Redis GET/SET: mica's auto-pipelined client vs redis-benchmark (bench/load/redis.sh)
#   8. PostgreSQL point SELECT: pgbench -S -M prepared vs mica's pool; pipelined batches (bench/load/pg.sh)
#   9. SQLite inserts: group commit vs one transaction per insert (bench/load/sqlite.sh)
#  10. Tracing's cost on /health: untraced, ratio 0, ratio 1 with export (bench/load/trace.sh)
#  11. Reverse proxy hop: mica's examples/proxy vs haproxy, nginx, Go (bench/load/proxy.sh)
#  12. balancer picks and breaker checks (bench_balancer), pinned to CPU 0; the gRPC
#      client with the resilience policies on and off (bench/load/resilience.sh) when
#      the build has the tests' binaries
#  12a. resolve + pick of mica_picker_failover with health and zones vs round robin
#      (bench_discovery), pinned to CPU 0, 3 runs
#  13. rate limiters (bench_limit) and adaptive shedding at 3x capacity (bench/load/shed.sh)
# Results are printed and collected in <build>/bench/results.md.
# Usage: bench/run.sh <build-dir> [http seconds, default 10] [runs, default 3]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
out="$build/bench/results.md"
mkdir -p "$build/bench"
{
    echo "# mica benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
    echo
} >"$out"

echo "== coroutines (taskset -c 0 $build/bench/bench_coro), 3 runs"
{
    echo '## Coroutines'
    echo
    echo '```'
    for _ in 1 2 3; do taskset -c 0 "$build/bench/bench_coro"; done
    echo '```'
    echo
} | tee -a "$out"

if [ -x "$root/bench/micro/chan.sh" ]; then
    echo "== channels vs Go"
    "$root/bench/micro/chan.sh" "$build" | tee -a "$out"
fi
if [ -x "$root/bench/load/http.sh" ]; then
    echo "== HTTP /health vs Gin and nginx"
    "$root/bench/load/http.sh" "$build" "$secs" "$runs" | tee -a "$out"
    echo "== HTTPS /health vs nginx"
    BENCH_TLS=1 BENCH_CONNS=256 "$root/bench/load/http.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/observe.sh" ]; then
    echo "== Observability overhead: examples/hello with metrics and logs on vs off"
    "$root/bench/load/observe.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/h2.sh" ]; then
    echo "== HTTP/2 (h2c) /health vs h2o and nginx"
    "$root/bench/load/h2.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/grpc.sh" ]; then
    echo "== gRPC GetUser vs grpc-go"
    "$root/bench/load/grpc.sh" "$build" "$secs" "$runs" | tee -a "$out"
    echo "== gRPC GetUser over TLS vs grpc-go"
    BENCH_TLS=1 BENCH_GRPC_LOADS=50x10 "$root/bench/load/grpc.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/redis.sh" ]; then
    echo "== Redis GET/SET: mica's client vs redis-benchmark"
    "$root/bench/load/redis.sh" "$build" 5 "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/pg.sh" ]; then
    echo "== PostgreSQL point SELECT vs pgbench, pipelined batches"
    "$root/bench/load/pg.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/sqlite.sh" ]; then
    echo "== SQLite inserts: group commit vs one transaction each"
    "$root/bench/load/sqlite.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/trace.sh" ]; then
    echo "== Tracing overhead on /health (untraced, ratio 0, ratio 1 exporting)"
    "$root/bench/load/trace.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$root/bench/load/proxy.sh" ]; then
    echo "== Reverse proxy: mica vs haproxy, nginx proxy_pass and Go's ReverseProxy"
    "$root/bench/load/proxy.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
echo "== balancers and breakers (taskset -c 0 $build/bench/bench_balancer)"
{
    echo '## Balancers and breakers'
    echo
    echo '```'
    taskset -c 0 "$build/bench/bench_balancer"
    echo '```'
    echo
} | tee -a "$out"
echo "== discovery: resolve + pick with health and zones (taskset -c 0 $build/bench/bench_discovery), 3 runs"
{
    echo '## Discovery: resolve + pick with health on (bench_discovery)'
    echo
    echo '```'
    for _ in 1 2 3; do taskset -c 0 "$build/bench/bench_discovery" 2>/dev/null; done
    echo '```'
    echo
} | tee -a "$out"
if [ -x "$build/tests/resilience_client" ]; then
    echo "== gRPC client with the resilience policies on and off"
    "$root/bench/load/resilience.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
if [ -x "$build/bench/bench_limit" ]; then
    echo "== rate limiters, ns per decision (taskset -c 0,1 $build/bench/bench_limit)"
    {
        echo '## Rate limiters'
        echo
        echo '```'
        taskset -c 0,1 "$build/bench/bench_limit"
        echo '```'
        echo
    } | tee -a "$out"
fi
if [ -x "$root/bench/load/shed.sh" ]; then
    echo "== adaptive load shedding at 3x capacity"
    "$root/bench/load/shed.sh" "$build" "$secs" "$runs" | tee -a "$out"
fi
echo "bench: results in $out"

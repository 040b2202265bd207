#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The gRPC client's calls per client CPU-second with the resilience layer's
# default policies on (p2c with per-endpoint SRE breakers, the interceptor:
# per-method SRE breaker, 3 attempts on UNAVAILABLE, the 20 % retry budget)
# and off (the runtime's round robin, no interceptor): the mica client
# (tests/integration/resilience_client, 1 worker, CPU 1) calling Echo/Unary
# flat out with 64 calls in flight on one mica server (tests/fault_server,
# 1 worker, CPU 0). Needs a build with -DMICA_TESTS=ON (what `make test` makes).
# Usage: bench/load/resilience.sh <build-dir> [seconds, default 10] [runs, default 3]
set -euo pipefail
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
server="$build/tests/fault_server"
client="$build/tests/resilience_client"
[ -x "$server" ] && [ -x "$client" ] ||
    { echo "resilience.sh: $server or $client missing (configure with -DMICA_TESTS=ON)" >&2; exit 1; }
out=$(mktemp)
taskset -c 0 "$server" -name b0 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
port=$(awk '{print $2}' "$out")
run() { # label, client options...
    local label=$1
    shift
    taskset -c 1 "$client" -endpoints "127.0.0.1:$port" -conc 64 -rate 0 -duration $((secs * 1000)) \
        -interval 1000 "$@" 2>/dev/null | tail -1 | python3 -c "
import json, sys
d = json.loads(sys.stdin.read())
print(f\"| $label | {d['calls'] / ($secs):,.0f} | {d['calls'] / d['cpu_s']:,.0f} | {d['p50_us']} | {d['p99_us']} | {d['fail']} |\")"
}
echo "| client | calls/s | calls per client CPU-s | p50 us | p99 us | failed |"
echo "|---|---|---|---|---|---|"
for _ in $(seq "$runs"); do
    run "policies off (round robin, no interceptor)" -lb default -policies 0
    run "default policies on (p2c + breakers + retries + budget)" -lb p2c -ep-breaker sre -policies 1
done

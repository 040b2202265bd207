#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, gRPC part: unary user.UserService/GetUser under h2load against
# a grpc-go UserService (bench/peers/grpcgo, GOMAXPROCS=1) and mica's
# examples/user (MICA_WORKERS=1), one after the other in one run.
#
# Each server runs alone on CPU 0, h2load on CPU 1 with one thread. The
# request body is the gRPC frame of UserRequest{user_id: "1001"}, sent with
# content-type application/grpc and te: trailers. Before each run one call
# through nghttp must come back with grpc-status 0 and Alice's record, and
# after it the DATA bytes h2load counted must be exactly one UserResponse
# frame per succeeded call: an error status (trailers-only, no DATA) would
# break the count. Throughput and server CPU come from a run without
# h2load's per-request log; latency percentiles from a second, half-length
# run with it.
#
# BENCH_TLS=1: the same over TLS (ALPN h2, a throw-away P-256 certificate;
# grpc-go with credentials.NewServerTLSFromFile, mica with MICA_TLS_LISTEN);
# results then go to <build-dir>/bench/grpc-tls.md.
#
# Usage: bench/load/grpc.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Knobs: BENCH_GRPC_LOADS="50x10 10x10 50x100" (connections x streams per connection),
# BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1, BENCH_WARMUP_S=2, BENCH_TLS=0.
# Results (markdown) go to stdout and <build-dir>/bench/grpc.md.
set -euo pipefail

[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 <build-dir> [duration_s] [runs]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
warmup=${BENCH_WARMUP_S:-2}
lat_secs=$(( secs / 2 > 1 ? secs / 2 : 1 )) # the latency run (with h2load's log)
srv_cpu=${BENCH_SERVER_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
read -r -a loads <<<"${BENCH_GRPC_LOADS:-50x10 10x10 50x100}"
tls=${BENCH_TLS:-0}
scheme=http
out_md=grpc.md
if [ "$tls" = 1 ]; then
    scheme=https
    out_md=grpc-tls.md
fi
log() { echo "grpc.sh: $*" >&2; }

for tool in h2load nghttp taskset; do
    command -v "$tool" >/dev/null || { log "$tool not found; run: scripts/deps.sh bench"; exit 1; }
done
cmake --build "$build" --target example_user >/dev/null
bash "$root/tests/interop/go/build.sh" "$build/interop"

mkdir -p "$build/bench"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-grpc-bench.XXXXXX")
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# UserRequest{user_id: "1001"} in a gRPC frame; the answer is
# UserResponse{name: "Alice", age: 30}: a 14-byte frame.
printf '\x00\x00\x00\x00\x06\x0a\x041001' >"$tmp/req.bin"
resp_frame_bytes=14
if [ "$tls" = 1 ]; then # h2load and nghttp do not verify it; the servers only present it
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj /CN=localhost >/dev/null 2>&1 ||
        { log "openssl could not make a certificate"; exit 1; }
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() { # name port
    case "$1" in
    grpc-go)
        local tls_args=()
        [ "$tls" != 1 ] || tls_args=(-cert "$tmp/cert.pem" -key "$tmp/key.pem")
        GOMAXPROCS=1 taskset -c "$srv_cpu" "$build/interop/grpcgo-user" -addr "127.0.0.1:$2" \
            "${tls_args[@]}" >"$tmp/$1.log" 2>&1 &
        ;;
    mica)
        if [ "$tls" = 1 ]; then # the cleartext listener (required) sits unused on a spare port
            MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:0 MICA_TLS_LISTEN="127.0.0.1:$2" \
                MICA_TLS_CERT="$tmp/cert.pem" MICA_TLS_KEY="$tmp/key.pem" \
                taskset -c "$srv_cpu" "$build/examples/user" >"$tmp/$1.log" 2>&1 &
        else
            MICA_WORKERS=1 MICA_LISTEN="127.0.0.1:$2" taskset -c "$srv_cpu" "$build/examples/user" \
                >"$tmp/$1.log" 2>&1 &
        fi
        ;;
    esac
    pid=$!
    for _ in $(seq 100); do
        if out=$(nghttp -v -d "$tmp/req.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
            "$scheme://127.0.0.1:$2/user.UserService/GetUser" 2>/dev/null | tr -d '\000') &&
            grep -aq 'grpc-status: 0' <<<"$out" && grep -aq 'Alice' <<<"$out"; then
            return 0
        fi
        sleep 0.1
    done
    log "$1 did not answer GetUser with grpc-status 0"; cat "$tmp/$1.log" >&2; exit 1
}

# CPU time (clock ticks, all threads) the server has used so far.
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }

stop() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
}

load() { # port conns streams seconds logfile
    taskset -c "$load_cpu" h2load -t 1 -c "$2" -m "$3" -D "$4" \
        -d "$tmp/req.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        ${5:+--log-file="$5"} "$scheme://127.0.0.1:$1/user.UserService/GetUser"
}

results="$tmp/results"
: >"$results"
for l in "${loads[@]}"; do
    c=${l%x*}
    m=${l#*x}
    for r in $(seq "$runs"); do
        for name in grpc-go mica; do # interleaved, so drift hits both alike
            port=$(free_port)
            start "$name" "$port"
            load "$port" "$c" "$m" "$warmup" >/dev/null
            log "$name c=$c m=$m run $r/$runs"
            # Throughput and CPU without h2load's per-request log (writing it
            # costs the single load thread enough to cap a fast server), then
            # the same load with the log, for the latency percentiles.
            t0=$(ticks "$pid")
            load "$port" "$c" "$m" "$secs" >"$tmp/out"
            t1=$(ticks "$pid")
            rm -f "$tmp/lat" # h2load appends to an existing log
            load "$port" "$c" "$m" "$lat_secs" "$tmp/lat" >"$tmp/out-lat"
            stop
            python3 - "$tmp/out" "$tmp/lat" "$name" "$c" "$m" "$resp_frame_bytes" \
                "$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}')" \
                >>"$results" <<'EOF'
import re, sys
out, lat, name, c, m, frame = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
cpu_s = float(sys.argv[7])
if re.search(r" [1-9]\d* failed", open(out + "-lat").read()):
    print(f"BAD {name} c={c} m={m}: failures in the latency run", file=sys.stderr)
    sys.exit(1)
text = open(out).read()
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
ok = int(re.search(r"(\d+) succeeded", text).group(1))
failed = int(re.search(r"(\d+) failed", text).group(1))
dm = re.search(r"traffic: .*\((\d+)\) data", text)
data = int(dm.group(1)) if dm else None
# h2load's log: start time, status, latency in microseconds per request
us = sorted(int(l.split()[2]) for l in open(lat) if len(l.split()) >= 3)
pct = lambda p: us[min(len(us) - 1, int(len(us) * p))] / 1000 if us else float("nan")
if failed or (data is not None and data != ok * frame):
    print(f"BAD {name} c={c} m={m}: failed={failed} data={data} ok={ok}", file=sys.stderr)
    sys.exit(1)
print(f"{name} {c} {m} {rps:.0f} {pct(0.5):.2f} {pct(0.99):.2f} {ok} {ok / cpu_s if cpu_s else 0:.0f}")
EOF
        done
    done
done

python3 - "$results" "$runs" "$tls" <<'EOF' | tee "$build/bench/$out_md"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
runs = sys.argv[2]
over = " over TLS (ALPN h2, self-signed P-256 certificate)" if sys.argv[3] == "1" else ""
print(f"gRPC unary GetUser{over}, h2load -t1 on CPU 1, server alone on CPU 0; median of {runs} runs; "
      "every call checked: grpc-status 0 before the run, one UserResponse frame per call after; "
      "calls/s from runs without h2load's per-request log, p50/p99 from half-length runs with it.")
print()
print("Per CPU-second: calls divided by the CPU time (utime + stime) the server used during the run.")
print()
print("| load (conns x streams) | server | calls/s | p50 ms | p99 ms | vs grpc-go | calls per CPU-second | vs grpc-go |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
loads = dict.fromkeys((r[1], r[2]) for r in rows)
for c, m in loads:
    med = {}
    for name in ("grpc-go", "mica"):
        sel = [r for r in rows if r[0] == name and r[1] == c and r[2] == m]
        if sel:
            med[name] = [statistics.median(float(r[i]) for r in sel) for i in (3, 4, 5, 7)]
    for name, (rps, p50, p99, per_cpu) in med.items():
        ratio = f"{rps / med['grpc-go'][0]:.2f}x" if "grpc-go" in med else "-"
        ratio_cpu = f"{per_cpu / med['grpc-go'][3]:.2f}x" if "grpc-go" in med else "-"
        print(f"| {c} x {m} | {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio} | {per_cpu:,.0f} | {ratio_cpu} |")
EOF

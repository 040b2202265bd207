#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, HTTP/2 part: h2c GET /health under h2load against h2o (a
# static file), nginx (return 200 from config) and mica's examples/hello,
# one after the other in one run, interleaved run by run so drift hits all
# alike. Each server runs alone on CPU 0 with one worker/thread, h2load on
# CPU 1 with one thread. Besides req/s the table gives the server's CPU per
# request (user and system microseconds, from /proc/<pid>/stat of the server
# and its children) and requests per server CPU-second, the fair per-core
# figure when the load generator is the bottleneck.
#
# Usage: bench/load/h2.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Knobs: BENCH_H2_SERVERS="h2o nginx mica", BENCH_H2_LOADS="50x10" (connections
# x streams per connection), BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1, BENCH_WARMUP_S=2.
# Results (markdown) go to stdout and <build-dir>/bench/h2.md.
set -euo pipefail

[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 <build-dir> [duration_s] [runs]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
warmup=${BENCH_WARMUP_S:-2}
srv_cpu=${BENCH_SERVER_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
read -r -a servers <<<"${BENCH_H2_SERVERS:-h2o nginx mica}"
read -r -a loads <<<"${BENCH_H2_LOADS:-50x10}"
log() { echo "h2.sh: $*" >&2; }

for tool in h2load curl taskset python3; do
    command -v "$tool" >/dev/null || { log "$tool not found; run: scripts/deps.sh bench"; exit 1; }
done
cmake --build "$build" --target example_hello >/dev/null

mkdir -p "$build/bench"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-h2-bench.XXXXXX")
pid=""
stop() {
    [ -n "$pid" ] || return 0
    local kids
    kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086 # a list of pids
    [ -z "$kids" ] || kill -KILL $kids 2>/dev/null || true
    pid=""
}
cleanup() {
    stop
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() { # name port
    local dir="$tmp/$1-$2" user_line=""
    mkdir -p "$dir/www"
    printf '{"status":"ok"}' >"$dir/www/health"
    case "$1" in
    h2o)
        command -v h2o >/dev/null || { log "h2o not found; run: scripts/deps.sh bench"; exit 1; }
        sed -e "s|@PORT@|$2|g" -e "s|@DIR@|$dir|g" "$root/bench/peers/h2o.conf.in" >"$dir/h2o.conf"
        # As root h2o switches to `nobody`, who cannot write the temp dir.
        [ "$(id -u)" -ne 0 ] || echo "user: root" >>"$dir/h2o.conf"
        taskset -c "$srv_cpu" h2o -c "$dir/h2o.conf" >"$dir/log" 2>&1 &
        ;;
    nginx)
        command -v nginx >/dev/null || { log "nginx not found; run: scripts/deps.sh bench"; exit 1; }
        [ "$(id -u)" -ne 0 ] || user_line="user $(id -un) $(id -gn);"
        sed -e "s|@PORT@|$2|g" -e "s|@DIR@|$dir|g" -e "s|@USER@|$user_line|" \
            "$root/bench/peers/nginx-h2c.conf.in" >"$dir/nginx.conf"
        taskset -c "$srv_cpu" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/log" 2>&1 &
        ;;
    mica)
        MICA_WORKERS=1 MICA_LISTEN="127.0.0.1:$2" taskset -c "$srv_cpu" "$build/examples/hello" \
            >"$dir/log" 2>&1 &
        ;;
    esac
    pid=$!
    local i body
    for ((i = 0; i < 100; i++)); do
        body=$(curl -fsS --http2-prior-knowledge --max-time 1 "http://127.0.0.1:$2/health" 2>/dev/null) || body=""
        [[ "$body" == *'"status"'*'"ok"'* ]] && return 0
        sleep 0.1
    done
    log "$1 did not answer h2c GET /health on port $2"
    cat "$dir/log" "$dir/error.log" 2>/dev/null >&2 || true
    exit 1
}

# User and system CPU ticks of the server and its children (nginx's worker).
ticks() {
    local p total_u=0 total_s=0 u s
    for p in "$pid" $(pgrep -P "$pid" 2>/dev/null); do
        read -r u s < <(awk '{sub(/.*\) /, ""); print $12, $13}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
        total_u=$((total_u + u))
        total_s=$((total_s + s))
    done
    echo "$total_u $total_s"
}

results="$tmp/results"
: >"$results"
for l in "${loads[@]}"; do
    c=${l%x*}
    m=${l#*x}
    for r in $(seq "$runs"); do
        for name in "${servers[@]}"; do
            port=$(free_port)
            start "$name" "$port"
            taskset -c "$load_cpu" h2load -t 1 -c "$c" -m "$m" -D "$warmup" "http://127.0.0.1:$port/health" >/dev/null
            log "$name c=$c m=$m run $r/$runs"
            read -r u0 s0 < <(ticks)
            taskset -c "$load_cpu" h2load -t 1 -c "$c" -m "$m" -D "$secs" "http://127.0.0.1:$port/health" >"$tmp/out"
            read -r u1 s1 < <(ticks)
            stop
            python3 - "$tmp/out" "$name" "$c" "$m" "$((u1 - u0))" "$((s1 - s0))" "$(getconf CLK_TCK)" \
                >>"$results" <<'PY'
import re, sys
out, name, c, m, du, ds, hz = sys.argv[1:8]
text = open(out).read()
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
ok = int(re.search(r"(\d+) succeeded", text).group(1))
failed = int(re.search(r"(\d+) failed", text).group(1))
errored = int(re.search(r"(\d+) errored", text).group(1))
st2xx = int(re.search(r"status codes: (\d+) 2xx", text).group(1))
# A response that lands as the run's clock stops may count as 2xx, not succeeded.
if failed or errored or st2xx < ok:
    print(f"BAD {name} c={c} m={m}: failed={failed} 2xx={st2xx} ok={ok}", file=sys.stderr)
    sys.exit(1)
user_s, sys_s = int(du) / int(hz), int(ds) / int(hz)
cpu = user_s + sys_s
print(f"{name} {c} {m} {rps:.0f} {ok} {user_s * 1e6 / ok:.2f} {sys_s * 1e6 / ok:.2f} {ok / cpu if cpu else 0:.0f}")
PY
        done
    done
done

python3 - "$results" "$runs" "$secs" <<'PY' | tee "$build/bench/h2.md"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"h2c GET /health, h2load -t 1 on its own CPU, one server worker on another; "
      f"median of {sys.argv[2]} runs of {sys.argv[3]} s each (bench/load/h2.sh)\n")
print("| load | server | req/s | user µs/req | sys µs/req | req per server CPU-s | per CPU-s vs h2o |")
print("|---|---|---:|---:|---:|---:|---:|")
loads = sorted({(int(r[1]), int(r[2])) for r in rows})
for c, m in loads:
    med = {}
    for name in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == name and int(r[1]) == c and int(r[2]) == m]
        if sel:
            med[name] = [statistics.median(float(r[i]) for r in sel) for i in (3, 5, 6, 7)]
    for name, (rps, u, s, per_cpu) in med.items():
        ratio = f"{per_cpu / med['h2o'][3]:.2f}x" if "h2o" in med and med["h2o"][3] else "-"
        print(f"| {c} x {m} | {name} | {rps:,.0f} | {u:.2f} | {s:.2f} | {per_cpu:,.0f} | {ratio} |")
PY

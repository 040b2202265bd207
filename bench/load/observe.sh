#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, observability part: what metrics and logs cost. The same
# examples/hello binary serves GET /health twice -- observability off
# (MICA_OBSERVE=false: no middleware, no observer, logs straight to stderr)
# and on (the default: request metrics, the async log writer at info, the
# admin listener; no access log) -- each on CPU 0 with one worker, wrk -t1
# on CPU 1. The wrk runs alternate between the two servers (off, on, off,
# on, ...), <runs> each, and the table quotes medians of req/s and of
# requests per server CPU-second (utime + stime from /proc over the run).
# The goal (DESIGN.md): on keeps >= 95 % of off's requests per CPU-second.
#
# On a shared machine wall-clock figures wander, so the script also counts
# instructions per request under callgrind (deterministic): each server
# serves N and then 2N requests on one keep-alive connection, one at a time
# as wrk sends them (BENCH_CALLGRIND_DEPTH to pipeline), and the difference
# of the two totals over N cancels start-up and shutdown. Instructions in
# the kernel (the read and write of each request) are not counted.
#
# Usage: bench/load/observe.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Knobs: BENCH_CONNS=50, BENCH_WARMUP_S=2, BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1,
# BENCH_CALLGRIND=1 (0: skip), BENCH_CALLGRIND_N=20000, BENCH_CALLGRIND_DEPTH=1.
# Results (markdown) go to stdout and <build-dir>/bench/observe.md.
set -euo pipefail

usage() {
    echo "usage: $0 <build-dir> [duration_s, default 10] [runs, default 3]" >&2
    exit 2
}
if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage; fi
[ -d "$1" ] || { echo "observe.sh: no build dir '$1'" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
conns=${BENCH_CONNS:-50}
warmup=${BENCH_WARMUP_S:-2}
srv_cpu=${BENCH_SERVER_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
cg=${BENCH_CALLGRIND:-1}
cg_n=${BENCH_CALLGRIND_N:-20000}
cg_depth=${BENCH_CALLGRIND_DEPTH:-1}
bin="$build/examples/hello"
out_md="$build/bench/observe.md"
mkdir -p "$build/bench"
log() { echo "observe.sh: $*" >&2; }
for tool in wrk taskset curl python3; do
    command -v "$tool" >/dev/null || { log "$tool not found; run: scripts/deps.sh bench"; exit 1; }
done
[ -x "$bin" ] || { log "no $bin (build it first)"; exit 1; }
if [ "$(nproc)" -lt 2 ]; then srv_cpu=0 load_cpu=0; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-observe-bench.XXXXXX")
declare -A pid=() port=()
cleanup() {
    for m in "${!pid[@]}"; do
        kill -TERM "${pid[$m]}" 2>/dev/null || true
        wait "${pid[$m]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# env for mode $1 (off|on)
mode_env() {
    if [ "$1" = off ]; then
        echo "MICA_OBSERVE=false"
    else
        echo "MICA_OBSERVE=true MICA_LOG_LEVEL=info MICA_ADMIN_LISTEN=127.0.0.1:$(free_port)"
    fi
}

start() { # mode
    local m=$1 p
    p=$(free_port)
    port[$m]=$p
    # shellcheck disable=SC2046 # word-splitting the VAR=value list is intended
    env MICA_WORKERS=1 MICA_LISTEN="127.0.0.1:$p" $(mode_env "$m") \
        taskset -c "$srv_cpu" "$bin" >"$tmp/$m.out" 2>"$tmp/$m.err" &
    pid[$m]=$!
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$p/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "hello ($m) did not start:"
    cat "$tmp/$m.err" >&2
    exit 1
}

ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

started=$(date -u +%Y-%m-%dT%H:%MZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start off
start on
for m in off on; do
    taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${warmup}s" "http://127.0.0.1:${port[$m]}/health" >/dev/null
done
declare -A rps=() core=()
for ((i = 1; i <= runs; i++)); do
    for m in off on; do
        t0=$(ticks "${pid[$m]}")
        r=$(taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:${port[$m]}/health" |
            awk '/^Requests\/sec:/ {print $2}')
        t1=$(ticks "${pid[$m]}")
        c=$(awk -v r="$r" -v d="$secs" -v t="$((t1 - t0))" -v hz="$hz" 'BEGIN { printf "%.0f", t ? r * d * hz / t : 0 }')
        rps[$m]+="$r "
        core[$m]+="$c "
        log "run $i $m: $r req/s, $c req per CPU-second (load $(cut -d' ' -f1 /proc/loadavg))"
    done
done
scrape=$(curl -s "http://127.0.0.1:$(sed -n 's/.*"msg":"listening","addr":"127.0.0.1:\([0-9]*\)".*/\1/p' "$tmp/on.err" | tail -1)/metrics" |
    grep -c '^http_server_request_duration_seconds_count' || true)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
for m in off on; do
    kill -TERM "${pid[$m]}"
    wait "${pid[$m]}" || true
    unset "pid[$m]"
done

# shellcheck disable=SC2086 # lists of numbers
{
    mr_off=$(median ${rps[off]}) mr_on=$(median ${rps[on]})
    mc_off=$(median ${core[off]}) mc_on=$(median ${core[on]})
    echo "## Observability overhead: GET /health, examples/hello, one server core"
    echo
    echo "$started, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $load_start at start, $load_end at the end."
    echo "Server on CPU $srv_cpu (MICA_WORKERS=1), \`wrk -t1 -c$conns\` on CPU $load_cpu; ${secs} s per run, $runs runs each, alternating; medians."
    echo
    echo "| observability | req/s | req per CPU-second | runs (req/s) |"
    echo "|---|---:|---:|---|"
    echo "| off (MICA_OBSERVE=false) | $mr_off | $mc_off | ${rps[off]}|"
    echo "| on (metrics, logs at info, admin listener) | $mr_on | $mc_on | ${rps[on]}|"
    echo
    awk -v a="$mc_on" -v b="$mc_off" -v x="$mr_on" -v y="$mr_off" 'BEGIN {
        printf "on/off: %.1f %% of the requests per CPU-second, %.1f %% of the req/s (goal: >= 95 %%).\n", 100 * a / b, 100 * x / y }'
    echo "The \"on\" server exported $scrape series of http_server_request_duration_seconds after the runs."
} >"$out_md"

if [ "$cg" = 1 ] && command -v valgrind >/dev/null; then
    # Instructions per request: N, then 2N requests; (I(2N) - I(N)) / N.
    serve_n() { # mode n -> total instructions
        local m=$1 n=$2 p f
        p=$(free_port)
        f="$tmp/cg.$m.$n"
        # shellcheck disable=SC2046
        env MICA_WORKERS=1 MICA_LISTEN="127.0.0.1:$p" $(mode_env "$m") \
            valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" >/dev/null 2>"$tmp/cg.err" &
        local vp=$!
        python3 - "$p" "$n" "$cg_depth" <<'EOF'
import socket, sys, time
port, n, depth = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + 60
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
req = b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n"
done = 0
buf = b""
while done < n:
    k = min(depth, n - done)
    s.sendall(req * k)
    got = 0
    while got < k:
        buf += s.recv(65536)
        c = buf.count(b"HTTP/1.1 200")
        if c:
            got += c
            buf = buf[buf.rfind(b"HTTP/1.1 200") + 12:]
    done += k
s.close()
EOF
        kill -TERM "$vp"
        wait "$vp" || true
        awk '/^(summary|totals):/ {print $2; exit}' "$f"
    }
    declare -A ipr=()
    for m in off on; do
        a=$(serve_n "$m" "$cg_n")
        b=$(serve_n "$m" $((2 * cg_n)))
        ipr[$m]=$(awk -v a="$a" -v b="$b" -v n="$cg_n" 'BEGIN { printf "%.0f", (b - a) / n }')
        log "callgrind $m: ${ipr[$m]} instructions per request"
    done
    {
        echo
        echo "User-space instructions per request under callgrind (deterministic; N = $cg_n and 2N requests,"
        echo "$cg_depth at a time on one keep-alive connection, (I(2N) - I(N)) / N; the kernel's share of"
        echo "each request is not counted): off ${ipr[off]}, on ${ipr[on]} -- on costs"
        awk -v a="${ipr[on]}" -v b="${ipr[off]}" 'BEGIN { printf "%.1f %% more instructions per request.\n", 100 * (a - b) / b }'
    } >>"$out_md"
fi
{
    echo
    echo "Command: \`bench/load/observe.sh $1 $secs $runs\` (servers: \`MICA_WORKERS=1 MICA_LISTEN=... [MICA_OBSERVE=false] taskset -c $srv_cpu $bin\`; \`taskset -c $load_cpu wrk -t1 -c$conns -d${secs}s http://127.0.0.1:PORT/health\`)."
} >>"$out_md"
cat "$out_md"

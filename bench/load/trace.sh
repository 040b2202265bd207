#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, tracing part: what tracing costs GET /health on one server
# core (docs/benchmarks.md, "Tracing overhead"). examples/user runs three
# ways, alternating in one run:
#   bare    no tracing (MICA_OTLP_ENDPOINT unset)
#   ratio0  tracing on, MICA_TRACE_SAMPLE=0: ids made and propagated, nothing recorded
#   ratio1  tracing on, MICA_TRACE_SAMPLE=1: every request a span, exported in
#           batches to a local OTLP receiver (a Python sink on the load CPU)
# Server on CPU 0 (MICA_WORKERS=1), wrk -t1 on CPU 1; each run a fresh
# server and a warm-up. Figures: requests per server CPU-second (utime +
# stime from /proc over the run) and req/s, medians of the runs, the
# ratio of each median to bare's, and the median of the paired ratios
# (each run over the bare run just before it: steadier on a busy machine). Then callgrind's instructions per request, which
# a shared, noisy machine does not move: the server under callgrind serves
# N1 then N2 requests (h2load --h1), and (Ir(N2) - Ir(N1)) / (N2 - N1)
# cancels start-up and shutdown.
#
# Usage: bench/load/trace.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Knobs: BENCH_CONNS=50, BENCH_CALLGRIND=1 (0: skip), BENCH_CG_N="2000 10000".
# Output (markdown) to stdout and <build-dir>/bench/trace.md.
set -euo pipefail
[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 <build-dir> [duration_s] [runs]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
conns=${BENCH_CONNS:-50}
cg=${BENCH_CALLGRIND:-1}
read -r -a cg_n <<<"${BENCH_CG_N:-2000 10000}"
srv_cpu=0
load_cpu=1
[ "$(nproc)" -ge 2 ] || load_cpu=0
mkdir -p "$build/bench"
bin="$build/examples/user"
[ -x "$bin" ] || { echo "trace.sh: no $bin (build it first)" >&2; exit 1; }
for tool in wrk taskset curl python3; do
    command -v "$tool" >/dev/null || { echo "trace.sh: $tool not found (scripts/deps.sh bench)" >&2; exit 1; }
done
log() { echo "trace.sh: $*" >&2; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-trace-bench.XXXXXX")
srv_pid="" rx_pid=""
cleanup() {
    [ -z "$srv_pid" ] || kill -TERM "$srv_pid" 2>/dev/null || true
    [ -z "$rx_pid" ] || kill -TERM "$rx_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The OTLP sink: answers every POST 200 after reading its body, counts spans' bytes.
cat >"$tmp/sink.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
rx_port=$(free_port)
taskset -c "$load_cpu" python3 "$tmp/sink.py" "$rx_port" &
rx_pid=$!

env_of() { # the variables of configuration $1
    case "$1" in
    bare) echo "" ;;
    ratio0) echo "MICA_OTLP_ENDPOINT=http://127.0.0.1:$rx_port MICA_TRACE_SAMPLE=0" ;;
    ratio1) echo "MICA_OTLP_ENDPOINT=http://127.0.0.1:$rx_port MICA_TRACE_SAMPLE=1" ;;
    esac
}

start() { # config, port [, wrapper...]
    local cfg=$1 port=$2
    shift 2
    # shellcheck disable=SC2046 # the variables are words
    env MICA_WORKERS=1 MICA_LISTEN="127.0.0.1:$port" MICA_LOG_LEVEL=warn $(env_of "$cfg") \
        "$@" "$bin" >"$tmp/srv.log" 2>&1 &
    srv_pid=$!
    local end=$((SECONDS + 60))
    until curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/health"; do
        [ "$SECONDS" -lt "$end" ] && kill -0 "$srv_pid" 2>/dev/null || { log "server did not start"; cat "$tmp/srv.log" >&2; exit 1; }
        sleep 0.1
    done
}

stop() {
    kill -TERM "$srv_pid" 2>/dev/null || true
    wait "$srv_pid" 2>/dev/null || true
    srv_pid=""
}

ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

configs=(bare ratio0 ratio1)
declare -A core=() rps=() all=()
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
for ((i = 1; i <= runs; i++)); do
    for cfg in "${configs[@]}"; do
        port=$(free_port)
        start "$cfg" "$port" taskset -c "$srv_cpu"
        taskset -c "$load_cpu" wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/health" >/dev/null
        t0=$(ticks "$srv_pid")
        out=$(taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port/health")
        t1=$(ticks "$srv_pid")
        stop
        r=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        c=$(awk -v r="$r" -v d="$secs" -v t="$((t1 - t0))" -v hz="$hz" \
            'BEGIN { printf "%.0f", t ? r * d * hz / t : 0 }')
        core[$cfg]+="$c " rps[$cfg]+="$r "
        log "run $i $cfg: $r req/s, $c req per server CPU-second"
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A cg_ir=()
if [ "$cg" = 1 ] && command -v valgrind >/dev/null && command -v h2load >/dev/null; then
    for cfg in "${configs[@]}"; do
        irs=()
        for n in "${cg_n[@]}"; do
            port=$(free_port)
            start "$cfg" "$port" valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" \
                --dump-instr=no
            h2load --h1 -n "$n" -c 10 "http://127.0.0.1:$port/health" >"$tmp/h2load.log" 2>&1 ||
                { log "h2load failed"; cat "$tmp/h2load.log" >&2; exit 1; }
            stop
            irs+=("$(awk '/^summary:/ {print $2}' "$tmp/cg.out")")
        done
        cg_ir[$cfg]=$(awk -v a="${irs[0]}" -v b="${irs[1]}" -v n1="${cg_n[0]}" -v n2="${cg_n[1]}" \
            'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')
        log "callgrind $cfg: ${cg_ir[$cfg]} instructions per request"
    done
fi

{
    echo "## Tracing overhead: GET /health, one server core"
    echo
    echo "$started, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
    echo "load average $load_start at start, $load_end at the end; $runs runs of ${secs} s each, alternating; medians."
    echo
    echo "| configuration | req per server CPU-second | vs bare | paired | req/s | vs bare | callgrind Ir/request |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    # shellcheck disable=SC2086 # lists of numbers
    bc=$(median ${core[bare]}) br=$(median ${rps[bare]})
    for cfg in "${configs[@]}"; do
        # shellcheck disable=SC2086
        c=$(median ${core[$cfg]}) r=$(median ${rps[$cfg]})
        # paired: each run's figure over the bare run just before it, then the median
        read -r -a mine <<<"${core[$cfg]}"
        read -r -a base <<<"${core[bare]}"
        pairs=()
        for ((k = 0; k < ${#mine[@]}; k++)); do
            pairs+=("$(awk -v a="${mine[$k]}" -v b="${base[$k]}" 'BEGIN {printf "%.4f", a / b}')")
        done
        printf '| %s | %.0f | %s | %s | %.0f | %s | %s |\n' "$cfg" "$c" \
            "$(awk -v a="$c" -v b="$bc" 'BEGIN {printf "%.1f %%", 100 * a / b}')" \
            "$(awk -v m="$(median "${pairs[@]}")" 'BEGIN {printf "%.1f %%", 100 * m}')" "$r" \
            "$(awk -v a="$r" -v b="$br" 'BEGIN {printf "%.1f %%", 100 * a / b}')" "${cg_ir[$cfg]:--}"
    done
    echo
    echo "Each run (req per server CPU-second):"
    for cfg in "${configs[@]}"; do echo "- $cfg: ${core[$cfg]% }"; done
    echo
    echo '```'
    echo "python3 sink.py PORT_RX &   # on CPU $load_cpu: reads each POST, answers 200"
    for cfg in "${configs[@]}"; do
        echo "MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:PORT $(env_of "$cfg" | sed "s/$rx_port/PORT_RX/g") taskset -c $srv_cpu $bin"
    done
    echo "taskset -c $load_cpu wrk -t1 -c$conns -d${secs}s http://127.0.0.1:PORT/health   # after a 2 s warm-up"
    [ -z "${cg_ir[bare]:-}" ] || echo "valgrind --tool=callgrind <server>; h2load --h1 -n {${cg_n[*]}} -c 10 http://127.0.0.1:PORT/health"
    echo '```'
} | tee "$build/bench/trace.md"

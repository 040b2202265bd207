#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, overload part: adaptive load shedding (include/mica/limit.h)
# on a server whose handler costs a fixed CPU time, at 1x and 3x its capacity.
#
# Server: <build>/bench/resilience_server, one worker, on CPU 0; its
# GET /work?us=N spins N µs of the worker's CPU (default 1000). h2load (one
# thread, HTTP/2) runs on CPU 1. Each run:
#   1. capacity: shedding off (MICA_SHED=off), closed loop (h2load -c 8 -m 1),
#      the 200s per second and per server CPU-second;
#   2. 3x without shedding: open loop (h2load -c 20 -m 100 --rps), 3x the
#      capacity just measured: the backlog grows, so does latency;
#   3. 3x with shedding (the default): the same load on a fresh server.
# Goodput is the 200s completed per second after a warm-up (2 s); latency the
# 200s', at the client (h2load --log-file: includes time in socket buffers
# and h2load's own scheduling) and in the server (from the head's arrival to
# the response, by a completion observer). h2load's open loop stalls when
# all its streams are busy (2000), which caps the unshed backlog: its p99 is
# a floor. On a shared machine quote the per-CPU-second column: it does not
# move with the CPU share the server got (BENCHMARKING.md). The last column
# is that share ("got": time on a CPU / wall time, from schedstat) beside
# the server's demand ("wanted": plus time runnable but waiting for a CPU):
# a demand near 1 means the worker never ran out of admitted work.
#
# Usage: bench/load/shed.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Results (markdown) on stdout and in <build-dir>/bench/shed.md.
# Knobs: BENCH_WORK_US=1000, BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1, BENCH_WARMUP_S=2.
set -euo pipefail

usage() {
    echo "usage: $0 <build-dir> [duration_s, default 10] [runs, default 3]" >&2
    exit 2
}
if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage; fi
[ -d "$1" ] || { echo "shed.sh: no build dir '$1'" >&2; exit 2; }
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
work_us=${BENCH_WORK_US:-1000}
warmup=${BENCH_WARMUP_S:-2}
srv_cpu=${BENCH_SERVER_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
for n in "$secs" "$runs" "$work_us" "$warmup" "$srv_cpu" "$load_cpu"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "shed.sh: '$n' is not a number" >&2; usage; }
done
[ "$secs" -gt "$warmup" ] || { echo "shed.sh: duration must exceed the warm-up" >&2; exit 2; }

log() { echo "shed.sh: $*" >&2; }
for tool in h2load taskset python3 curl; do
    command -v "$tool" >/dev/null || { log "$tool not found; run: scripts/deps.sh bench"; exit 1; }
done
bin="$build/bench/resilience_server"
[ -x "$bin" ] || { log "no $bin: build first"; exit 1; }
if [ "$(nproc)" -lt 2 ]; then
    log "warning: $(nproc) CPU; server and h2load share it"
    srv_cpu=0
    load_cpu=0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-shed-bench.XXXXXX")
pid=""
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap 'stop; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# start <MICA_SHED value>: a fresh server; sets pid and port.
start() {
    : >"$tmp/ports"
    MICA_WORKERS=1 MICA_SHED=$1 taskset -c "$srv_cpu" "$bin" >"$tmp/ports" 2>"$tmp/log" &
    pid=$!
    local i
    for ((i = 0; i < 100; i++)); do
        if grep -q '"main"' "$tmp/ports"; then
            read -r port admin < <(python3 -c 'import json,sys; d = json.load(open(sys.argv[1]))
print(d["main"], d["admin"])' "$tmp/ports")
            return 0
        fi
        sleep 0.05
    done
    log "server did not start"; cat "$tmp/log" >&2; exit 1
}

ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$pid/stat"; }

# ns on a CPU and ns runnable but waiting, summed over the server's threads.
sched() { cat /proc/"$pid"/task/*/schedstat | awk '{r += $1; w += $2} END {printf "%.0f %.0f\n", r, w}'; }

url() { echo "http://127.0.0.1:$port/work?us=$work_us"; }

# measure <label> <h2load args...>: one load, measured from the end of the warm-up to
# h2load's end (CPU ticks, schedstat and the wall clock sampled at both); appends
# "label run rps cpu_s ok shed p50 p99 server_p50 server_p99 share demand".
measure() {
    local label=$1
    shift
    rm -f "$tmp/h2.log" "$tmp/at0"
    (sleep "$warmup"; echo "$(date +%s%N) $(ticks) $(sched)" >"$tmp/at0"
     curl -s "http://127.0.0.1:$admin/stats?reset=1" >/dev/null) &
    local marker=$!
    taskset -c "$load_cpu" h2load -t 1 "$@" -D "$secs" --log-file "$tmp/h2.log" "$(url)" >"$tmp/out"
    local at1
    at1="$(date +%s%N) $(ticks) $(sched)"
    wait "$marker"
    curl -s "http://127.0.0.1:$admin/stats" >"$tmp/stats"
    python3 - "$tmp/h2.log" "$label" "$run" "$(cat "$tmp/at0")" "$at1" "$(getconf CLK_TCK)" \
        "$tmp/stats" >>"$tmp/results" <<'PY'
import json, sys
path, label, run, at0, at1, hz, stats = sys.argv[1:8]
(w0, t0, r0, q0), (w1, t1, r1, q1) = ([int(x) for x in a.split()] for a in (at0, at1))
work = json.load(open(stats))["work"]
rows = [tuple(int(x) for x in l.split("\t")[:3]) for l in open(path) if l.strip()]
lo, hi = w0 // 1000, w1 // 1000  # µs since the epoch, as h2load logs
ok = sorted(r[2] for r in rows if r[1] == 200 and lo <= r[0] + r[2] < hi)
shed = sum(1 for r in rows if r[1] == 503 and lo <= r[0] + r[2] < hi)
span, wall = (hi - lo) / 1e6, w1 - w0
cpu = (t1 - t0) / int(hz)
share, demand = (r1 - r0) / wall, (r1 - r0 + q1 - q0) / wall
pct = lambda q: ok[min(len(ok) - 1, len(ok) * q // 100)] / 1000 if ok else -1
print(label, run, f"{len(ok) / span:.1f}", f"{cpu:.3f}", len(ok), shed, f"{pct(50):.1f}",
      f"{pct(99):.1f}", work["p50_ms"], work["p99_ms"], f"{share:.2f}", f"{demand:.2f}")
PY
}

: >"$tmp/results"
for run in $(seq "$runs"); do
    log "run $run/$runs: capacity, then 3x without and with shedding"
    start off
    taskset -c "$load_cpu" h2load -t 1 -c 8 -m 1 -D 1 "$(url)" >/dev/null # warm-up
    measure 1x -c 8 -m 1
    cap=$(awk -v r="$run" '$1 == "1x" && $2 == r { print $3 }' "$tmp/results")
    rps=$(python3 -c "print(max(1, round(3 * $cap / 20)))")
    measure 3x-unshed -c 20 -m 100 --rps "$rps"
    stop
    start on
    measure 3x-shed -c 20 -m 100 --rps "$rps"
    grep -o '"msg":"load shedding[^"]*"' "$tmp/log" | sort | uniq -c | sed 's/^/  /' >&2 || true
    stop
done

python3 - "$tmp/results" "$runs" "$secs" "$work_us" "$warmup" <<'PY' | tee "$build/bench/shed.md"
import statistics, sys
path, runs, secs, work, warm = sys.argv[1:6]
rows = [l.split() for l in open(path)]
med = lambda label, i: statistics.median(float(r[i]) for r in rows if r[0] == label)
print(f"Adaptive shedding: GET /work?us={work} (a fixed {work} µs of CPU per request), one "
      f"server worker on its own CPU, h2load -t 1 on another; median of {runs} runs of "
      f"{secs} s, measured after {warm} s (bench/load/shed.sh)\n")
print("| load | goodput req/s | vs capacity | 200s per server CPU-s (vs capacity) | "
      "p50 / p99 ms at the client | p50 / p99 ms in the server | shed | server CPU got / wanted |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
cap = med("1x", 2)
cap_cpu = statistics.median(float(r[4]) / float(r[3]) for r in rows if r[0] == "1x")
for label, name in (("1x", "1x, closed loop (capacity)"), ("3x-unshed", "3x, shedding off"),
                    ("3x-shed", "3x, shedding on")):
    sel = [r for r in rows if r[0] == label]
    rps = med(label, 2)
    per_cpu = statistics.median(float(r[4]) / float(r[3]) for r in sel)
    shed = statistics.median(int(r[5]) / (int(r[4]) + int(r[5])) for r in sel)
    print(f"| {name} | {rps:,.0f} | {rps / cap:.0%} | {per_cpu:,.0f} ({per_cpu / cap_cpu:.0%}) | "
          f"{med(label, 6):.0f} / {med(label, 7):.0f} | {med(label, 8):.1f} / {med(label, 9):.1f} | "
          f"{shed:.0%} | {med(label, 10):.2f} / {med(label, 11):.2f} |")
print("\nruns (goodput req/s, p99 ms): " + "; ".join(
    f"{r[0]} {float(r[2]):.0f} {float(r[7]):.0f}" for r in rows))
PY

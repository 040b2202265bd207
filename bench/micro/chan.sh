#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Channel figures, mica vs Go: builds the Go peer (bench/peers/gochan) into
# <build-dir>/bench/, runs bench_chan (1-worker figures pinned to CPU 0,
# cross-worker figures on 2 unpinned workers) and the Go peer with
# GOMAXPROCS=1 (pinned to CPU 0) and GOMAXPROCS=2, 3 runs each, and prints
# the medians as a markdown table (BENCH_RUNS=5 for 5 runs), also written to <build-dir>/bench/chan.md.
#
# Usage: bench/micro/chan.sh <build-dir> [scale]
#   scale multiplies every loop count (default 1: about 25 s in all)
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 <build-dir> [scale]" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
scale=${2:-1}
src=$(cd "$(dirname "$0")/../.." && pwd)
runs=${BENCH_RUNS:-3}
limit=60 # seconds per process, so a hang cannot stall the script

mkdir -p "$build/bench"
cmake --build "$build" --target bench_chan >/dev/null
GO111MODULE=off GOPATH=${GOPATH:-/tmp/gopath} \
    go build -o "$build/bench/gochan-peer" "$src/bench/peers/gochan/main.go"

pin=(taskset -c 0)
command -v taskset >/dev/null || pin=()

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for i in $(seq "$runs"); do
    echo "run $i/$runs" >&2
    timeout "$limit" "${pin[@]}" "$build/bench/bench_chan" local "$scale" >>"$tmp/mica"
    timeout "$limit" "$build/bench/bench_chan" cross "$scale" >>"$tmp/mica"
    GOMAXPROCS=1 timeout "$limit" "${pin[@]}" "$build/bench/gochan-peer" "$scale" >>"$tmp/go1"
    GOMAXPROCS=2 timeout "$limit" "$build/bench/gochan-peer" "$scale" >>"$tmp/go2"
done

python3 - "$tmp" "$(nproc)" "$(go version | cut -d' ' -f3)" "$runs" >"$build/bench/chan.md" <<'EOF'
import re, statistics, sys

tmp, ncpu, gover, nruns = sys.argv[1:5]

def medians(path):
    vals, order = {}, []
    try:
        lines = open(f"{tmp}/{path}").read().splitlines()
    except FileNotFoundError:
        return {}, []
    for line in lines:
        m = re.fullmatch(r"(\w+): ([0-9.]+) ns", line.strip())
        if not m:
            continue
        if m[1] not in vals:
            vals[m[1]] = []
            order.append(m[1])
        vals[m[1]].append(float(m[2]))
    return {k: statistics.median(v) for k, v in vals.items()}, order

mica, order = medians("mica")
go1, o1 = medians("go1")
go2, o2 = medians("go2")
order += [k for k in o1 + o2 if k not in order]

def fmt(v):
    return "–" if v is None else f"{v:.1f}"

print(f"Channel micro-benchmarks, ns per operation, median of {nruns} runs "
      f"({ncpu} CPUs, {gover}; mica 1-worker figures and Go GOMAXPROCS=1 pinned to CPU 0).")
print()
print("| figure | mica (median ns) | Go GOMAXPROCS=1 | Go GOMAXPROCS=2 | ratio Go1/mica |")
print("|---|---:|---:|---:|---:|")
for k in dict.fromkeys(order):
    m, g1, g2 = mica.get(k), go1.get(k), go2.get(k)
    ratio = f"{g1 / m:.2f}" if m and g1 else "–"
    print(f"| {k} | {fmt(m)} | {fmt(g1)} | {fmt(g2)} | {ratio} |")
EOF
cat "$build/bench/chan.md"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Before/after comparison of the runtime micro-benchmarks: runs bench_chan
# (1-worker figures) and bench_coro of two builds alternately, pinned to
# CPU 0, and prints the median and the minimum of each figure for both.
# Alternating runs share whatever else the machine is doing; on a busy
# machine trust the minima and repeat.
#
# Usage: bench/micro/ab.sh <before-bench-dir> <after-bench-dir> [runs] [scale]
#   e.g. git worktree add /tmp/base <commit>, build it, then
#        bench/micro/ab.sh /tmp/base/build/bench build/bench 9 0.3
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 <before-bench-dir> <after-bench-dir> [runs] [scale]" >&2
    exit 2
fi
before=$1 after=$2 runs=${3:-7} scale=${4:-0.3}
pin=(taskset -c 0)
command -v taskset >/dev/null || pin=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
coro_lines() { # "coroutine switch:   14.8 ns" -> "coroutine_switch: 14.8 ns"
    sed -E 's/^([^:]*): *([0-9.]+) ns$/\1: \2 ns/; s/ /_/g; s/:_/: /; s/_ns$/ ns/'
}
for i in $(seq "$runs"); do
    for side in before after; do
        dir=${!side}
        "${pin[@]}" "$dir/bench_chan" local "$scale" >>"$tmp/$side"
        "${pin[@]}" "$dir/bench_coro" 4000000 | coro_lines >>"$tmp/$side"
    done
done
python3 - "$tmp" "$runs" <<'PY'
import re, statistics, sys
tmp, runs = sys.argv[1], sys.argv[2]
def load(side):
    d = {}
    for line in open(f"{tmp}/{side}"):
        m = re.match(r"([\w+()\-]+): ([\d.]+) ns", line.strip())
        if m:
            d.setdefault(m[1], []).append(float(m[2]))
    return d
b, a = load("before"), load("after")
print(f"{runs} alternating runs, ns: median (min)")
print(f"| figure | before | after |\n|---|---:|---:|")
for k in b:
    if k in a:
        print(f"| {k} | {statistics.median(b[k]):.1f} ({min(b[k]):.1f}) "
              f"| {statistics.median(a[k]):.1f} ({min(a[k]):.1f}) |")
PY

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, SQLite part: orders inserted per second through mica's
# writer thread (WAL, synchronous=NORMAL), one statement per call from
# `clients` coroutines on one worker: with group commit (many callers' inserts
# in one transaction, each woken after its COMMIT) vs one transaction per
# insert (max_group 1). Runs alternate; medians are quoted.
#
# Usage: bench/load/sqlite.sh <build-dir> [seconds, default 10] [runs, default 3]
# Knobs: BENCH_CLIENTS="1 16 64", BENCH_CPUS=0,1 (taskset list for the process).
# Results (markdown) go to stdout and <build-dir>/bench/sqlite.md.
set -euo pipefail
[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 <build-dir> [seconds] [runs]" >&2; exit 2; }
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
cpus=${BENCH_CPUS:-0,1}
read -r -a client_counts <<<"${BENCH_CLIENTS:-1 16 64}"
cmake --build "$build" --target bench_sqlite >/dev/null
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-sqlite-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
{
    echo "## SQLite inserts (WAL, synchronous=NORMAL; CPUs $cpus; ${secs}s x $runs)"
    echo
    echo '```'
    echo "taskset -c $cpus $build/bench/bench_sqlite single|group /tmp/.../orders.db CLIENTS $secs"
    echo '```'
    echo
    echo "| clients | one transaction per insert (inserts/s = commits/s) | group commit (inserts/s) | rows per commit | group / single |"
    echo "|---|---|---|---|---|"
} | tee "$build/bench/sqlite.md"
for c in "${client_counts[@]}"; do
    : >"$tmp/single" && : >"$tmp/group"
    for _ in $(seq "$runs"); do
        rm -f "$tmp"/orders.db*
        taskset -c "$cpus" "$build/bench/bench_sqlite" single "$tmp/orders.db" "$c" "$secs" 2>/dev/null >>"$tmp/single"
        rm -f "$tmp"/orders.db*
        taskset -c "$cpus" "$build/bench/bench_sqlite" group "$tmp/orders.db" "$c" "$secs" 2>/dev/null >>"$tmp/group"
    done
    s=$(field 'inserts\/s' <"$tmp/single" | median)
    g=$(field 'inserts\/s' <"$tmp/group" | median)
    rpc=$(field 'rows\/commit' <"$tmp/group" | median)
    echo "| $c | $s | $g | $rpc | $(awk -v a="$g" -v b="$s" 'BEGIN{printf "%.1fx", a/b}') |" | tee -a "$build/bench/sqlite.md"
done

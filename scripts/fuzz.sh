#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs every libFuzzer target in <fuzz-build> for a bounded time, seeded from
# tests/fuzz/corpus/<parser>/ with tests/fuzz/<parser>.dict when present.
# Usage: scripts/fuzz.sh <fuzz-build-dir> [seconds per target, default 60]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$1
secs=${2:-60}
shopt -s nullglob
targets=("$build"/tests/fuzz/fuzz_*)
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no targets built in $build" >&2
    exit 1
fi
for t in "${targets[@]}"; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    parser=${name#fuzz_}
    work="$build/fuzz-work/$parser"
    mkdir -p "$work/corpus" "$work/artifacts"
    dict=()
    for d in "$root/tests/fuzz/$parser.dict" "$root/tests/fuzz/${parser%%_*}.dict"; do
        if [ -f "$d" ]; then dict=("-dict=$d"); break; fi
    done
    echo "fuzz: $name for ${secs}s"
    "$t" "${dict[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
        "$work/corpus" "$root/tests/fuzz/corpus/$parser" 2>"$work/log" ||
        { tail -50 "$work/log"; echo "fuzz: $name FAILED (artifacts in $work/artifacts)" >&2; exit 1; }
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$work/log" | sed "s/^/fuzz: $name /"
done
echo "fuzz: ok"

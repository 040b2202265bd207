#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# memcheck over every unit test binary and the concurrency examples, then one server run that serves
# requests and drains (tests/integration/valgrind_server.py): no leak, no
# invalid access. Usage: scripts/valgrind.sh <build-dir>
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$1
# --fair-sched=yes: valgrind runs one thread at a time, and its default lock
# lets a thread that spins (a test's stats reader) take it back before the
# workers: one test ran 6 minutes instead of 9 s.
vg=(valgrind -q --fair-sched=yes --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --suppressions="$root/scripts/valgrind.supp")
shopt -s nullglob
for t in "$build"/tests/unit_*; do
    [ -x "$t" ] || continue
    echo "valgrind: $(basename "$t")"
    "${vg[@]}" "$t" >"$build/valgrind-$(basename "$t").log" 2>&1 ||
        { tail -60 "$build/valgrind-$(basename "$t").log"; echo "valgrind: $(basename "$t") FAILED" >&2; exit 1; }
done
for e in producer_consumer fan_out_fan_in worker_pool select; do
    t="$build/examples/$e"
    [ -x "$t" ] || continue
    echo "valgrind: examples/$e"
    "${vg[@]}" "$t" >"$build/valgrind-example-$e.log" 2>&1 ||
        { tail -60 "$build/valgrind-example-$e.log"; echo "valgrind: examples/$e FAILED" >&2; exit 1; }
done
if [ -f "$root/tests/integration/valgrind_server.py" ]; then
    MICA_BUILD_DIR="$build" python3 "$root/tests/integration/valgrind_server.py"
fi
echo "valgrind: ok"

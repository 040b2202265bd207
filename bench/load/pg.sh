#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, PostgreSQL part. A throwaway PostgreSQL 15 cluster on CPU 0
# (postgres and every backend inherit the affinity), the load on CPU 1:
#   1. point SELECT by primary key: pgbench -S -M prepared vs mica's pool
#      (bench_pg select) at the same client count, one thread/worker each;
#   2. a 10-statement batch: one pipelined mica_db_batch() vs 10 round trips.
# Runs alternate (pgbench, mica, pgbench, ...) and the median of each is
# quoted, with the server's CPU per statement (utime+stime of every postgres
# process over the run, from /proc) beside the rate.
#
# Usage: bench/load/pg.sh <build-dir> [seconds, default 10] [runs, default 3]
# Knobs: BENCH_CLIENTS="8 32", BENCH_PG_SCALE=10, BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1.
# Results (markdown) go to stdout and <build-dir>/bench/pg.md.
set -euo pipefail
[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 <build-dir> [seconds] [runs]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
scale=${BENCH_PG_SCALE:-10}
srv_cpu=${BENCH_SERVER_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
read -r -a client_counts <<<"${BENCH_CLIENTS:-8 32}"
pgbin=/usr/lib/postgresql/15/bin
log() { echo "pg.sh: $*" >&2; }
[ -x "$pgbin/pgbench" ] || { log "no $pgbin/pgbench; run: scripts/deps.sh bench"; exit 1; }
cmake --build "$build" --target bench_pg >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-pg-bench.XXXXXX")
chmod 711 "$tmp" # postgres runs as nobody when we are root
cleanup() { "$root/tests/unit/store/pg_server.sh" stop "$tmp/pg" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT
port=$(taskset -c "$srv_cpu" "$root/tests/unit/store/pg_server.sh" start "$tmp/pg")
url="postgres://postgres@127.0.0.1:$port/postgres"
log "postgres on 127.0.0.1:$port (CPU $srv_cpu); pgbench -i -s $scale"
taskset -c "$load_cpu" "$pgbin/pgbench" -q -i -s "$scale" -h 127.0.0.1 -p "$port" -U postgres postgres >"$tmp/init.log" 2>&1

# CPU ticks of the cluster: the postmaster's own and its reaped children's
# (utime, stime, cutime, cstime: backends that have exited are counted
# there) plus its live children's. Backends exit when their client does,
# so a run's figure is taken half a second after the client is gone.
pg_ticks() {
    local pm t p
    pm=$(head -1 "$tmp/pg/data/postmaster.pid")
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
    for p in $(pgrep -P "$pm" || true); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# run <command...>: prints "<rate> <server µs CPU per statement> <client µs CPU per statement>"
run() {
    local t0 t1 out rate cpu
    t0=$(pg_ticks)
    out=$(TIMEFORMAT='%U %S'; { time "${@}" 2>"$tmp/err.log"; } 2>"$tmp/time") ||
        { cat "$tmp/err.log" >&2; return 1; }
    sleep 0.5
    t1=$(pg_ticks)
    cpu=$(awk '{print $1 + $2}' "$tmp/time")
    case "$1" in
    taskset) rate=$(echo "$out" | awk -F'= ' '/^tps/ {print int($2); exit}') ;;
    esac
    [[ "$out" == *"statements/s="* ]] && rate=$(echo "$out" | sed -n 's/.*statements\/s=\([0-9]*\).*/\1/p')
    echo "$rate $(awk -v d=$((t1 - t0)) -v hz="$hz" -v r="$rate" -v s="$secs" -v c="$cpu" \
        'BEGIN { printf "%.1f %.1f", (r > 0 ? d / hz * 1e6 / (r * s) : 0), (r > 0 ? c * 1e6 / (r * s) : 0) }')"
}

{
    echo "## PostgreSQL (server on CPU $srv_cpu, load on CPU $load_cpu, ${secs}s x $runs, pgbench scale $scale)"
    echo
    echo '```'
    echo "taskset -c $load_cpu pgbench -S -M prepared -n -c C -j 1 -T $secs -h 127.0.0.1 -p PORT -U postgres postgres"
    echo "taskset -c $load_cpu $build/bench/bench_pg select|batch|seq $url C $secs $scale"
    echo '```'
    echo
    echo "| load | clients | pgbench -S -M prepared: stmt/s (server, client CPU µs/stmt) | mica pool: stmt/s (server, client CPU µs/stmt) | mica / pgbench |"
    echo "|---|---|---|---|---|"
} | tee "$build/bench/pg.md"
for c in "${client_counts[@]}"; do
    : >"$tmp/pgb" && : >"$tmp/mica"
    for _ in $(seq "$runs"); do
        run taskset -c "$load_cpu" "$pgbin/pgbench" -S -M prepared -n -c "$c" -j 1 -T "$secs" \
            -h 127.0.0.1 -p "$port" -U postgres postgres >>"$tmp/pgb"
        run taskset -c "$load_cpu" "$build/bench/bench_pg" select "$url" "$c" "$secs" "$scale" >>"$tmp/mica"
    done
    p=$(cut -d' ' -f1 "$tmp/pgb" | median); pc=$(cut -d' ' -f2 "$tmp/pgb" | median)
    pl=$(cut -d' ' -f3 "$tmp/pgb" | median)
    m=$(cut -d' ' -f1 "$tmp/mica" | median); mc=$(cut -d' ' -f2 "$tmp/mica" | median)
    ml=$(cut -d' ' -f3 "$tmp/mica" | median)
    echo "| point SELECT | $c | $p ($pc, $pl µs) | $m ($mc, $ml µs) | $(awk -v a="$m" -v b="$p" 'BEGIN{printf "%.2fx", a/b}') |" | tee -a "$build/bench/pg.md"
done
{
    echo
    echo "| 10-statement batch | clients | 10 round trips (stmt/s) | pipeline mode (stmt/s) | pipeline / round trips |"
    echo "|---|---|---|---|---|"
} | tee -a "$build/bench/pg.md"
for c in 1 "${client_counts[0]}"; do
    : >"$tmp/seq" && : >"$tmp/pipe"
    for _ in $(seq "$runs"); do
        run taskset -c "$load_cpu" "$build/bench/bench_pg" seq "$url" "$c" "$secs" "$scale" >>"$tmp/seq"
        run taskset -c "$load_cpu" "$build/bench/bench_pg" batch "$url" "$c" "$secs" "$scale" >>"$tmp/pipe"
    done
    s=$(cut -d' ' -f1 "$tmp/seq" | median); b=$(cut -d' ' -f1 "$tmp/pipe" | median)
    echo "| SELECT by key x10 | $c | $s | $b | $(awk -v a="$b" -v b="$s" 'BEGIN{printf "%.2fx", a/b}') |" | tee -a "$build/bench/pg.md"
done

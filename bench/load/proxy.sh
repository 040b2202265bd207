#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, proxy part: one reverse-proxy hop in front of one upstream,
# mica's examples/proxy against haproxy, nginx proxy_pass (upstream
# keep-alive) and Go's httputil.ReverseProxy (bench/peers/goproxy).
#
# Placement, the same for every proxy: the proxy alone on CPU 0 (one worker
# / nbthread 1 / one nginx worker / GOMAXPROCS=1); the upstream (one mica
# worker serving /health, examples/hello) and `wrk -t1` share CPU 1. CPU 1
# is then usually the limit, so req/s says little about the proxies; the
# fair figure is requests per proxy CPU-second (utime + stime of the proxy's
# processes over the run, from /proc), which is what one proxy core would
# carry if the rest kept up. "direct" rows are wrk straight to the upstream,
# for the latency a hop adds (p99 through the proxy minus p99 direct, at the
# same connection count; c=10 is the moderate load).
#
# Every run starts a fresh proxy on a free loopback port, warms it up, then
# measures; proxies alternate run by run. Medians of <runs> runs.
#
# Usage: bench/load/proxy.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Knobs: BENCH_PROXIES="mica haproxy nginx go", BENCH_CONNS="10 50 256",
# BENCH_WARMUP_S=2, BENCH_PROXY_CPU=0, BENCH_LOAD_CPU=1.
# Results (markdown) on stdout and in <build-dir>/bench/proxy.md.
set -euo pipefail

usage() {
    echo "usage: $0 <build-dir> [duration_s, default 10] [runs, default 3]" >&2
    exit 2
}
if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage; fi
[ -d "$1" ] || { echo "proxy.sh: no build dir '$1'" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
warmup=${BENCH_WARMUP_S:-2}
read -r -a proxies <<<"${BENCH_PROXIES:-mica haproxy nginx go}"
read -r -a conns <<<"${BENCH_CONNS:-10 50 256}"
pcpu=${BENCH_PROXY_CPU:-0}
lcpu=${BENCH_LOAD_CPU:-1}
for n in "$secs" "$runs" "$warmup" "${conns[@]}" "$pcpu" "$lcpu"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "proxy.sh: '$n' is not a number" >&2; usage; }
done

log() { echo "proxy.sh: $*" >&2; }
for tool in wrk taskset curl python3; do
    command -v "$tool" >/dev/null || { log "$tool not found; run: scripts/deps.sh bench"; exit 1; }
done

hello="$build/examples/hello"
mica_proxy="$build/examples/proxy"
go_bin="$build/bench/goproxy-peer"
out_md="$build/bench/proxy.md"
mkdir -p "$build/bench"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-proxy-bench.XXXXXX")
up_pid="" px_pid=""

alive() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st:0:1}" != Z ]
}

# Stops process $1 and its children: SIGTERM, 5 s, then SIGKILL.
stop_pid() {
    local pid=$1 kids i
    [ -n "$pid" ] || return 0
    kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    # shellcheck disable=SC2086
    alive "$pid" && kill -KILL "$pid" $kids 2>/dev/null
    wait "$pid" 2>/dev/null || true
    for i in $kids; do alive "$i" && kill -KILL "$i" 2>/dev/null; done
    return 0
}

bg_pid=""
cleanup() {
    [ -z "$bg_pid" ] || kill -TERM "$bg_pid" 2>/dev/null || true
    stop_pid "$px_pid"
    stop_pid "$up_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM

pick_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() { # port pid
    local end=$((SECONDS + 10)) body
    while [ "$SECONDS" -lt "$end" ]; do
        alive "$2" || return 1
        body=$(curl -fsS --max-time 1 "http://127.0.0.1:$1/health" 2>/dev/null) || body=""
        [[ "$body" != *'"status"'*'"ok"'* ]] || return 0
        sleep 0.1
    done
    return 1
}

# CPU ticks of process $1 and its children (nginx's and haproxy's workers).
ticks() {
    local t=0 p
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)

to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        else if (u != "ms") { print "nan"; exit }
        printf "%.3f\n", n }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# wrk with $1 connections for $2 s against port $3: sets w_rps w_p50 w_p99 w_err.
run_wrk() {
    local f="$tmp/wrk.out"
    taskset -c "$lcpu" timeout -k 5 $(($2 + 30)) wrk -t1 -c"$1" -d"$2s" --latency \
        "http://127.0.0.1:$3/health" >"$f" 2>&1 &
    bg_pid=$!
    wait "$bg_pid" || { bg_pid=""; log "wrk failed:"; cat "$f" >&2; return 1; }
    bg_pid=""
    w_rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    w_p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
    w_p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
    w_err=$(awk '/Socket errors:/ {gsub(/,/, ""); s += $4 + $6 + $8 + $10}
               /Non-2xx or 3xx responses:/ {s += $5} END {print s + 0}' "$f")
    [ -n "$w_rps" ] || { log "could not parse wrk output"; cat "$f" >&2; return 1; }
}

# --- peers -------------------------------------------------------------------

user_line=""
[ "$(id -u)" -ne 0 ] || user_line="user $(id -un) $(id -gn);"
have=()
for p in "${proxies[@]}"; do
    case "$p" in
    mica) [ -x "$mica_proxy" ] && have+=(mica) || log "no $mica_proxy: mica skipped" ;;
    haproxy) command -v haproxy >/dev/null && have+=(haproxy) || log "haproxy not found: skipped" ;;
    nginx) command -v nginx >/dev/null && have+=(nginx) || log "nginx not found: skipped" ;;
    go)
        if command -v go >/dev/null; then
            if [ ! -x "$go_bin" ] || [ -n "$(find "$root/bench/peers/goproxy" -newer "$go_bin" -print -quit)" ]; then
                log "building $go_bin (offline, standard library)"
                (cd "$root" && GO111MODULE=off GOFLAGS="" GOCACHE="${GOCACHE:-$build/bench/go-cache}" \
                    timeout 600 go build -o "$go_bin" ./bench/peers/goproxy) || { log "go build failed"; exit 1; }
            fi
            have+=(go)
        else
            log "go not found: skipped"
        fi
        ;;
    *) log "unknown proxy $p"; exit 2 ;;
    esac
done
[ -x "$hello" ] || { log "no $hello (build it first)"; exit 1; }

# Starts proxy $1 on port $2 in front of upstream port $3; sets px_pid, px_cmd.
start_proxy() {
    local name=$1 port=$2 up=$3 dir="$tmp/$1-$2" m v
    mkdir -p "$dir"
    case "$name" in
    mica)
        px_cmd="MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:$port MICA_PROXY_UPSTREAM=http://127.0.0.1:$up MICA_HTTP_CLIENT_MAX_IDLE=256 taskset -c $pcpu $mica_proxy"
        MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:$port MICA_PROXY_UPSTREAM=http://127.0.0.1:$up \
            MICA_HTTP_CLIENT_MAX_IDLE=256 taskset -c "$pcpu" "$mica_proxy" >"$dir/log" 2>&1 &
        ;;
    haproxy)
        sed -e "s|@PORT@|$port|g" -e "s|@UPSTREAM@|127.0.0.1:$up|g" -e "s|@DIR@|$dir|g" \
            "$root/bench/peers/haproxy.cfg.in" >"$dir/haproxy.cfg"
        cp "$dir/haproxy.cfg" "$build/bench/haproxy.cfg"
        px_cmd="taskset -c $pcpu haproxy -db -f haproxy.cfg  # bench/peers/haproxy.cfg.in filled in (copy: $build/bench/haproxy.cfg)"
        taskset -c "$pcpu" haproxy -db -f "$dir/haproxy.cfg" >"$dir/log" 2>&1 &
        ;;
    nginx)
        v=$(nginx -V 2>&1)
        local args=(-e "s|@PORT@|$port|g" -e "s|@UPSTREAM@|127.0.0.1:$up|g" -e "s|@DIR@|$dir|g"
            -e "s|@USER@|$user_line|")
        for m in proxy fastcgi uwsgi scgi; do
            [[ "$v" != *"--without-http_${m}_module"* ]] || args+=(-e "/^ *${m}_temp_path /d")
        done
        sed "${args[@]}" "$root/bench/peers/nginx-proxy.conf.in" >"$dir/nginx.conf"
        cp "$dir/nginx.conf" "$build/bench/nginx-proxy.conf"
        px_cmd="taskset -c $pcpu nginx -p DIR/ -c DIR/nginx.conf  # bench/peers/nginx-proxy.conf.in filled in (copy: $build/bench/nginx-proxy.conf)"
        taskset -c "$pcpu" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/log" 2>&1 &
        ;;
    go)
        px_cmd="GOMAXPROCS=1 taskset -c $pcpu $go_bin -listen 127.0.0.1:$port -upstream http://127.0.0.1:$up"
        GOMAXPROCS=1 taskset -c "$pcpu" "$go_bin" -listen "127.0.0.1:$port" \
            -upstream "http://127.0.0.1:$up" >"$dir/log" 2>&1 &
        ;;
    esac
    px_pid=$!
    if ! wait_ready "$port" "$px_pid"; then
        log "$name did not come up on $port; its log:"
        tail -n 20 "$dir/log" "$dir/error.log" >&2 2>/dev/null || true
        stop_pid "$px_pid"
        px_pid=""
        return 1
    fi
}

# --- runs ----------------------------------------------------------------------

cpu_times() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9}' /proc/stat; }
started=$(date -u +%Y-%m-%dT%H:%MZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
read -r c0 s0 < <(cpu_times)

up_port=$(pick_port)
up_cmd="MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:$up_port taskset -c $lcpu $hello"
MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:$up_port taskset -c "$lcpu" "$hello" >"$tmp/upstream.log" 2>&1 &
up_pid=$!
wait_ready "$up_port" "$up_pid" || { log "upstream did not start"; cat "$tmp/upstream.log" >&2; exit 1; }

declare -A R P50 P99 CORE BUSY ERR CMD
failed=0
for ((i = 1; i <= runs; i++)); do
    for c in "${conns[@]}"; do
        # direct: wrk straight to the upstream
        run_wrk "$c" "$secs" "$up_port" || { failed=1; continue; }
        k="direct,$c"
        R[$k]+="$w_rps " P50[$k]+="$w_p50 " P99[$k]+="$w_p99 " ERR[$k]=$((${ERR[$k]:-0} + w_err))
        log "run $i c=$c direct: $w_rps req/s, p50 $w_p50 ms, p99 $w_p99 ms"
        for p in "${have[@]}"; do
            k="$p,$c"
            port=$(pick_port)
            start_proxy "$p" "$port" "$up_port" || { failed=1; continue; }
            CMD[$p]=$px_cmd
            [ "$warmup" -eq 0 ] || taskset -c "$lcpu" wrk -t1 -c"$c" -d"${warmup}s" \
                "http://127.0.0.1:$port/health" >/dev/null 2>&1 || true
            t0=$(ticks "$px_pid")
            if run_wrk "$c" "$secs" "$port"; then
                t1=$(ticks "$px_pid")
                read -r busy core < <(awk -v r="$w_rps" -v d="$secs" -v t="$((t1 - t0))" -v hz="$hz" \
                    'BEGIN { cs = t / hz; if (cs > 0) printf "%.1f %.0f\n", 100 * cs / d, r * d / cs; else print "nan nan" }')
                R[$k]+="$w_rps " P50[$k]+="$w_p50 " P99[$k]+="$w_p99 " CORE[$k]+="$core " BUSY[$k]+="$busy "
                ERR[$k]=$((${ERR[$k]:-0} + w_err))
                e=""
                [ "$w_err" -eq 0 ] || e=", wrk errors/non-2xx $w_err"
                log "run $i c=$c $p: $w_rps req/s, p50 $w_p50 ms, p99 $w_p99 ms, proxy CPU $busy%, $core req per proxy CPU-second$e"
            else
                failed=1
            fi
            stop_pid "$px_pid"
            px_pid=""
        done
    done
done
read -r c1 s1 < <(cpu_times)
steal=$(awk -v t="$((c1 - c0))" -v s="$((s1 - s0))" 'BEGIN {printf "%.1f", t ? 100 * s / t : 0}')
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------

med() { # key field-array-name
    local -n a=$2
    [ -n "${a[$1]:-}" ] || { echo ""; return; }
    # shellcheck disable=SC2086
    median ${a[$1]}
}
{
    echo "## Reverse proxy, one hop: GET /health through each proxy"
    echo
    echo "$started, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $load_start at start and $load_end at the end, CPU steal during the runs $steal%."
    echo "Proxy alone on CPU $pcpu; upstream (examples/hello, 1 worker) and \`wrk -t1\` share CPU $lcpu. ${secs} s per run, $runs runs, proxies alternating, ${warmup} s warm-up each; medians."
    echo "Versions: $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(go version 2>/dev/null | cut -d' ' -f3), mica tree $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?')."
    echo
    echo "| proxy | conns | req/s | p50 | p99 | added p50 | added p99 | proxy CPU | req per proxy CPU-second | vs haproxy | vs nginx | vs go |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for c in "${conns[@]}"; do
        dp99=$(med "direct,$c" P99)
        dp50=$(med "direct,$c" P50)
        [ -z "$dp99" ] || printf '| direct (no proxy) | %s | %.0f | %.3f ms | %.3f ms | | | | | | | |\n' "$c" \
            "$(med "direct,$c" R)" "$dp50" "$dp99"
        for p in "${have[@]}"; do
            k="$p,$c"
            [ -n "${CORE[$k]:-}" ] || { echo "| $p | $c | failed | | | | | | | | | |"; continue; }
            core=$(med "$k" CORE)
            rat() { local o; o=$(med "$1,$c" CORE); [ -n "$o" ] && awk -v a="$core" -v b="$o" 'BEGIN {printf "%.2fx", a / b}' || echo "-"; }
            printf '| %s | %s | %.0f | %.3f ms | %.3f ms | %s | %s | %.0f%% | %.0f | %s | %s | %s |\n' "$p" "$c" \
                "$(med "$k" R)" "$(med "$k" P50)" "$(med "$k" P99)" \
                "$(awk -v a="$(med "$k" P50)" -v b="${dp50:-nan}" 'BEGIN {printf "%.0f us", 1000 * (a - b)}')" \
                "$(awk -v a="$(med "$k" P99)" -v b="${dp99:-nan}" 'BEGIN {printf "%.0f us", 1000 * (a - b)}')" \
                "$(med "$k" BUSY)" "$core" "$(rat haproxy)" "$(rat nginx)" "$(rat go)"
        done
    done
    echo
    echo "Per run (req/s; req per proxy CPU-second):"
    echo
    for c in "${conns[@]}"; do
        for p in direct "${have[@]}"; do
            k="$p,$c"
            [ -n "${R[$k]:-}" ] || continue
            e=""
            [ "${ERR[$k]:-0}" -eq 0 ] || e=" (wrk errors/non-2xx: ${ERR[$k]})"
            echo "- $p c=$c: ${R[$k]% }${CORE[$k]:+; ${CORE[$k]% }}$e"
        done
    done
    echo
    echo "Commands:"
    echo
    echo '```'
    echo "$up_cmd &   # the upstream, for every row"
    for p in "${have[@]}"; do [ -z "${CMD[$p]:-}" ] || echo "${CMD[$p]} &"; done
    echo "taskset -c $lcpu wrk -t1 -c<conns> -d${secs}s --latency http://127.0.0.1:<port>/health   # x $runs each"
    echo '```'
} >"$out_md"
cat "$out_md"
log "table written to $out_md"
exit "$failed"

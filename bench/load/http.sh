#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make bench`, HTTP part: GET /health on the seed's Gin service, nginx and
# mica's examples/hello, one after the other in one run, so the ratios
# compare like with like (docs: bench/load/README.md, /work/shared/BENCHMARKING.md).
#
# Each server runs alone on CPU 0 (one worker: GOMAXPROCS=1, nginx
# worker_processes 1, MICA_WORKERS=1); wrk runs on CPU 1 with one thread.
# For each server and connection count the server is started fresh on a free
# loopback port, warmed up, measured <runs> times, and stopped. The table
# quotes the median req/s, p50 and p99 of the runs and the req/s ratios.
#
# Usage: bench/load/http.sh <build-dir> [duration_s, default 10] [runs, default 3]
# Progress goes to stderr; the results (markdown) go to stdout and to
# <build-dir>/bench/http.md. Exit status 1 if a server that exists failed to
# start or to answer; a missing mica binary is only skipped.
#
# BENCH_TLS=1: the same over TLS (https, a throw-away P-256 certificate; wrk
# negotiates TLS 1.3) against nginx's ssl listener and mica's TLS listener;
# the seed's Gin service has no TLS, so the default servers are nginx mica,
# and the table goes to <build-dir>/bench/https.md.
#
# Knobs (environment): BENCH_SERVERS="gin nginx mica", BENCH_CONNS="50 256",
# BENCH_WARMUP_S=2, BENCH_SERVER_CPU=0, BENCH_LOAD_CPU=1,
# BENCH_NGINX_KEEPALIVE_REQUESTS=1000000 (1000 is nginx's stock value).
set -euo pipefail

usage() {
    echo "usage: $0 <build-dir> [duration_s, default 10] [runs, default 3]" >&2
    exit 2
}
if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage; fi
[ -d "$1" ] || { echo "http.sh: no build dir '$1'" >&2; exit 2; }

root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
secs=${2:-10}
runs=${3:-3}
warmup=${BENCH_WARMUP_S:-2}
tls=${BENCH_TLS:-0}
scheme=http
default_servers="gin nginx mica"
if [ "$tls" = 1 ]; then
    scheme=https
    default_servers="nginx mica"
fi
read -r -a servers <<<"${BENCH_SERVERS:-$default_servers}"
read -r -a conns <<<"${BENCH_CONNS:-50 256}"
nginx_ka=${BENCH_NGINX_KEEPALIVE_REQUESTS:-1000000}
srv_cpu=${BENCH_SERVER_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
for n in "$secs" "$runs" "$warmup" "${conns[@]}" "$srv_cpu" "$load_cpu" "$nginx_ka"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "http.sh: '$n' is not a number" >&2; usage; }
done
if [ "$secs" -lt 1 ] || [ "$runs" -lt 1 ]; then usage; fi

log() { echo "http.sh: $*" >&2; }

for tool in wrk taskset curl; do
    command -v "$tool" >/dev/null ||
        { log "$tool not found; run: scripts/deps.sh bench"; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    log "warning: $(nproc) CPU; server and wrk share a CPU, figures are not comparable with 2-CPU runs"
    srv_cpu=0
    load_cpu=0
fi

gin_src="$root/bench/peers/gin"
gin_bin="$build/bench/gin-peer"
nginx_conf_in="$root/bench/peers/nginx.conf.in"
mica_bin="$build/examples/hello"
out_md="$build/bench/http.md"
[ "$tls" != 1 ] || out_md="$build/bench/https.md"
mkdir -p "$build/bench"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mica-http-bench.XXXXXX")
srv_pid=""
srv_kids=""

# --- process helpers ---------------------------------------------------------

# True while $1 runs. A child that exited but was not yet reaped is a zombie
# and still passes `kill -0`, so read its state from /proc instead.
alive() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st:0:1}" != Z ]
}

# Stops the running server: SIGTERM, up to 5 s to exit, then SIGKILL for it
# and the children it had (nginx's worker).
stop_server() {
    [ -n "$srv_pid" ] || return 0
    local pid=$srv_pid i
    srv_pid=""
    srv_kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "pid $pid ignored SIGTERM for 5 s; killing it"
        # shellcheck disable=SC2086 # srv_kids is a list of pids
        kill -KILL "$pid" $srv_kids 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in $srv_kids; do
        if alive "$i"; then kill -KILL "$i" 2>/dev/null || true; fi
    done
    srv_kids=""
}

# Runs "${@:2}" in the background with stdout and stderr to file $1, and
# waits for it. A trapped INT or TERM then ends the wait at once; with a
# foreground child, bash would run the trap only after the child exits, and
# not at all for a SIGINT the child handled itself and exited 0 (wrk does),
# so Ctrl-C would not stop the script. (Redirect here, not around the call:
# the trap would inherit the redirection.)
bg_pid=""
run_bg() {
    local st=0 out=$1
    shift
    "$@" >"$out" 2>&1 &
    bg_pid=$!
    wait "$bg_pid" || st=$?
    bg_pid=""
    return "$st"
}

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
    if [ -n "$bg_pid" ]; then
        kill -TERM "$bg_pid" 2>/dev/null || true
        wait "$bg_pid" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM

# A free loopback port from the kernel (bind to port 0), else a probe of a
# random high port with bash's /dev/tcp. The caller re-checks before use.
pick_port() {
    if command -v python3 >/dev/null &&
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null; then
        return 0
    fi
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

port_in_use() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null || [ $? -ne 7 ]; }

# TLS mode: a self-signed certificate for 127.0.0.1, made once per run.
cert="$tmp/cert.pem"
key="$tmp/key.pem"
if [ "$tls" = 1 ]; then
    command -v openssl >/dev/null || { log "openssl not found; run: scripts/deps.sh bench"; exit 1; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$key" -out "$cert" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1 ||
        { log "openssl could not make a certificate"; exit 1; }
fi

# Polls GET /health until it answers {"status":"ok"}, the server dies, or
# 10 s pass.
wait_ready() {
    local port=$1 body end=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$end" ]; do
        alive "$srv_pid" || return 1
        body=$(curl -fsS --max-time 1 --cacert "$cert" "$scheme://127.0.0.1:$port/health" 2>/dev/null) ||
            body=""
        if [[ "$body" == *'"status"'*'"ok"'* ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# --- peers -------------------------------------------------------------------

build_gin() {
    command -v go >/dev/null || { log "go not found (scripts/deps.sh bench)"; return 1; }
    if [ -x "$gin_bin" ] && [ -z "$(find "$gin_src" -newer "$gin_bin" -print -quit)" ]; then
        return 0
    fi
    log "building $gin_bin (offline, Debian's Gin)"
    mkdir -p "$build/bench/gopath"
    run_bg "$tmp/go-build.log" env -C "$gin_src" GO111MODULE=off GOFLAGS="" \
        GOPATH="$build/bench/gopath:/usr/share/gocode" GOCACHE="${GOCACHE:-$build/bench/go-cache}" \
        timeout 600 go build -o "$gin_bin" . || {
        cat "$tmp/go-build.log" >&2
        return 1
    }
}

# Writes the nginx config for port $1 into its own dir and prints the dir.
nginx_prepare() {
    local dir="$tmp/nginx-$1" user_line="" m
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || user_line="user $(id -un) $(id -gn);"
    local v
    v=$(nginx -V 2>&1)
    local sed_args=(-e "s|@PORT@|$1|g" -e "s|@DIR@|$dir|g" -e "s|@USER@|$user_line|"
        -e "s|@KEEPALIVE_REQUESTS@|$nginx_ka|")
    [ "$tls" != 1 ] || sed_args+=(-e "s|^\( *listen 127.0.0.1:$1\);|\1 ssl; ssl_certificate $cert; ssl_certificate_key $key;|")
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$v" != *"--without-http_${m}_module"* ]] || sed_args+=(-e "/^ *${m}_temp_path /d")
    done
    sed "${sed_args[@]}" "$nginx_conf_in" >"$dir/nginx.conf"
    echo "$dir"
}

# Starts server $1 on port $2 pinned to the server CPU; sets srv_pid and
# srv_cmd (the command line, for the report).
start_server() {
    local name=$1 port=$2 slog="$tmp/$1-$2.log"
    case "$name" in
    gin)
        srv_cmd="GOMAXPROCS=1 PORT=$port taskset -c $srv_cpu $gin_bin"
        GOMAXPROCS=1 PORT=$port taskset -c "$srv_cpu" "$gin_bin" >"$slog" 2>&1 &
        ;;
    nginx)
        local dir
        dir=$(nginx_prepare "$port")
        cp "$dir/nginx.conf" "$build/bench/nginx.conf"
        srv_cmd="# DIR: a fresh temp dir; DIR/nginx.conf: bench/peers/nginx.conf.in filled in"
        srv_cmd+=" (@PORT@=$port; a copy: $build/bench/nginx.conf)"$'\n'
        srv_cmd+="taskset -c $srv_cpu nginx -p \$DIR/ -e \$DIR/error.log -c \$DIR/nginx.conf"
        taskset -c "$srv_cpu" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$slog" 2>&1 &
        ;;
    mica)
        if [ "$tls" = 1 ]; then # the cleartext listener (required) sits unused on a spare port
            srv_cmd="MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:0 MICA_TLS_LISTEN=127.0.0.1:$port MICA_TLS_CERT=cert.pem MICA_TLS_KEY=key.pem taskset -c $srv_cpu $mica_bin"
            MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:0 MICA_TLS_LISTEN=127.0.0.1:$port MICA_TLS_CERT="$cert" \
                MICA_TLS_KEY="$key" taskset -c "$srv_cpu" "$mica_bin" >"$slog" 2>&1 &
        else
            srv_cmd="MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:$port taskset -c $srv_cpu $mica_bin"
            MICA_WORKERS=1 MICA_LISTEN=127.0.0.1:$port taskset -c "$srv_cpu" "$mica_bin" >"$slog" 2>&1 &
        fi
        ;;
    esac
    srv_pid=$!
    if ! wait_ready "$port"; then
        if alive "$srv_pid"; then
            log "$name did not answer GET /health on 127.0.0.1:$port within 10 s; its log:"
        else
            local st=0
            wait "$srv_pid" || st=$?
            log "$name exited with status $st before answering on 127.0.0.1:$port; its log:"
        fi
        tail -n 20 "$slog" >&2 || true
        [ "$name" != nginx ] || tail -n 20 "$tmp/nginx-$port/error.log" >&2 2>/dev/null || true
        stop_server
        return 1
    fi
    if [ "$name" = nginx ]; then
        # One worker must be doing the serving, and it inherits the pinning.
        local kids
        kids=$(pgrep -P "$srv_pid" | wc -l)
        if [ "$kids" -ne 1 ]; then
            log "nginx has $kids worker processes, expected 1"
            stop_server
            return 1
        fi
        log "nginx: master $srv_pid, 1 worker ($(pgrep -P "$srv_pid")), $(taskset -cp "$(pgrep -P "$srv_pid")" | sed 's/.*: /CPU list /')"
    fi
}

# --- wrk ---------------------------------------------------------------------

# Converts a wrk duration (850.00us, 1.05ms, 1.20s, 2.00m) to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
        else if (u != "ms") { print "nan"; exit }
        printf "%.3f\n", n }'
}

# Runs wrk with $1 connections for $2 s against port $3; sets w_rps, w_p50
# and w_p99 (ms) and w_err (socket errors + non-2xx/3xx). Not to be run in a
# $(...) subshell: the trap must see bg_pid.
run_wrk() {
    local c=$1 d=$2 port=$3 f="$tmp/wrk.out"
    run_bg "$f" timeout -k 5 $((d + 30)) taskset -c "$load_cpu" \
        wrk -t1 -c"$c" -d"${d}s" --latency "$scheme://127.0.0.1:$port/health" || {
        log "wrk failed:"
        cat "$f" >&2
        return 1
    }
    local rps p50 p99 err
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(awk '$1 == "50%" {print $2}' "$f")
    p99=$(awk '$1 == "99%" {print $2}' "$f")
    err=$(awk '/Socket errors:/ {gsub(/,/, ""); s += $4 + $6 + $8 + $10}
               /Non-2xx or 3xx responses:/ {s += $5} END {print s + 0}' "$f")
    if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then
        log "could not parse wrk output:"
        cat "$f" >&2
        return 1
    fi
    w_rps=$rps
    w_p50=$(to_ms "$p50")
    w_p99=$(to_ms "$p99")
    w_err=$err
}

# CPU time (clock ticks, all threads) of process $1 so far.
proc_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- the run -----------------------------------------------------------------

declare -A rps=() p50=() p99=() runs_rps=() errs=() cmd_srv=() cmd_wrk=() note=() busy=() per_core=()
failed=0
have=()
for s in "${servers[@]}"; do
    case "$s" in
    gin)
        if build_gin; then have+=(gin); else
            log "SKIP gin: the peer did not build"; note[gin]="did not build"; failed=1
        fi
        ;;
    nginx)
        if command -v nginx >/dev/null; then have+=(nginx); else
            log "SKIP nginx: not installed (scripts/deps.sh bench)"; note[nginx]="not installed"; failed=1
        fi
        ;;
    mica)
        if [ -x "$mica_bin" ]; then have+=(mica); else
            log "SKIP mica: $mica_bin does not exist yet (build it: cmake --build $build)"
            note[mica]="skipped: no $mica_bin"
        fi
        ;;
    *) log "unknown server '$s' (gin, nginx, mica)"; exit 2 ;;
    esac
done

# Total and steal jiffies of all CPUs: on a VM, time the hypervisor gave to
# a neighbour shows up as steal and makes every figure noisier.
cpu_times() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat; }
started=$(date -u +%Y-%m-%dT%H:%MZ)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
read -r cpu_t0 steal_t0 < <(cpu_times)
for s in "${have[@]}"; do
    for c in "${conns[@]}"; do
        k="$s,$c"
        port=$(pick_port) || { log "no free port"; exit 1; }
        if port_in_use "$port"; then
            port=$(pick_port)
            ! port_in_use "$port" || { log "port $port in use"; exit 1; }
        fi
        log "$s c=$c: starting on 127.0.0.1:$port (CPU $srv_cpu)"
        if ! start_server "$s" "$port"; then
            note[$s]="failed to start"
            failed=1
            continue
        fi
        cmd_srv[$k]=$srv_cmd
        cmd_wrk[$k]="taskset -c $load_cpu wrk -t1 -c$c -d${secs}s --latency $scheme://127.0.0.1:$port/health"
        if [ "$warmup" -gt 0 ]; then
            run_bg /dev/null timeout -k 5 $((warmup + 30)) taskset -c "$load_cpu" \
                wrk -t1 -c"$c" -d"${warmup}s" "$scheme://127.0.0.1:$port/health" || true
        fi
        r_rps=() r_p50=() r_p99=() r_busy=() r_core=()
        e_sum=0
        # The process doing the serving: nginx's worker, else the server itself.
        cpu_pid=$srv_pid
        [ "$s" != nginx ] || cpu_pid=$(pgrep -P "$srv_pid" | head -1)
        for ((i = 1; i <= runs; i++)); do
            t0=$(proc_ticks "$cpu_pid")
            if ! run_wrk "$c" "$secs" "$port"; then
                failed=1
                break
            fi
            t1=$(proc_ticks "$cpu_pid")
            # Server CPU busy (%) and requests per CPU-second it used: what a
            # core would serve if the load generator could saturate it.
            read -r w_busy w_core < <(awk -v r="$w_rps" -v d="$secs" -v t="$((t1 - t0))" -v hz="$hz" \
                'BEGIN { cs = t / hz; if (cs > 0) printf "%.1f %.0f\n", 100 * cs / d, r * d / cs; else print "nan nan" }')
            r_busy+=("$w_busy") r_core+=("$w_core")
            r_rps+=("$w_rps") r_p50+=("$w_p50") r_p99+=("$w_p99")
            e_sum=$((e_sum + w_err))
            extra=""
            [ "$w_err" -eq 0 ] || extra=", wrk errors/non-2xx $w_err"
            log "$s c=$c run $i/$runs: $w_rps req/s, p50 $w_p50 ms, p99 $w_p99 ms, server CPU $w_busy%, $w_core req per CPU-second$extra"
            alive "$srv_pid" || { log "$s died during the run"; failed=1; break; }
        done
        stop_server
        if [ "${#r_rps[@]}" -eq "$runs" ]; then
            rps[$k]=$(median "${r_rps[@]}")
            p50[$k]=$(median "${r_p50[@]}")
            p99[$k]=$(median "${r_p99[@]}")
            busy[$k]=$(median "${r_busy[@]}")
            per_core[$k]=$(median "${r_core[@]}")
            runs_rps[$k]=$(printf '%.0f ' "${r_rps[@]}")
            errs[$k]=$e_sum
        else
            note[$s]="run failed"
        fi
    done
done

# --- report ------------------------------------------------------------------

ratio() { # ratio of req/s of keys $1/$2, or "-"
    local a=${rps[$1]:-} b=${rps[$2]:-}
    if [ -n "$a" ] && [ -n "$b" ]; then awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2fx", a / b}'; else echo "-"; fi
}

read -r cpu_t1 steal_t1 < <(cpu_times)
steal=$(awk -v t="$((cpu_t1 - cpu_t0))" -v s="$((steal_t1 - steal_t0))" 'BEGIN {printf "%.1f", t ? 100 * s / t : 0}')
mica_built="no binary"
[ ! -x "$mica_bin" ] || mica_built="binary built $(date -u -r "$mica_bin" +%Y-%m-%dT%H:%MZ)"
gin_ver=$(sed -n 's/^const Version = "v\{0,1\}\(.*\)"/\1/p' /usr/share/gocode/src/github.com/gin-gonic/gin/version.go 2>/dev/null || true)
{
    if [ "$tls" = 1 ]; then
        echo "## HTTPS GET /health (TLS, HTTP/1.1), one server core"
        echo
        echo "Certificate: self-signed P-256 (openssl req -x509 -newkey ec); nginx: \`listen ... ssl\` with it, mica: MICA_TLS_LISTEN."
    else
        echo "## HTTP GET /health, one server core"
    fi
    echo
    echo "$started, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at start $load_at_start, CPU steal during the run $steal%."
    echo "Server on CPU $srv_cpu, \`wrk -t1\` on CPU $load_cpu; ${secs} s per run, $runs run(s) after a ${warmup} s warm-up; medians."
    echo "Versions: Gin ${gin_ver:-?} (release mode, gin.New(), no logger, GOMAXPROCS=1), $(nginx -v 2>&1 | sed 's/^nginx version: //') (1 worker, return 200, keepalive_requests $nginx_ka), $(go version 2>/dev/null | cut -d' ' -f3); mica: tree $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?'), $mica_built."
    echo
    echo "| server | conns | req/s | p50 | p99 | vs gin | vs nginx |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for s in "${servers[@]}"; do
        for c in "${conns[@]}"; do
            k="$s,$c"
            if [ -n "${rps[$k]:-}" ]; then
                printf '| %s | %s | %.0f | %.2f ms | %.2f ms | %s | %s |\n' "$s" "$c" "${rps[$k]}" \
                    "${p50[$k]}" "${p99[$k]}" "$(ratio "$k" "gin,$c")" "$(ratio "$k" "nginx,$c")"
            else
                printf '| %s | %s | %s | | | | |\n' "$s" "$c" "${note[$s]:-not run}"
            fi
        done
    done
    echo
    echo "Per core: requests per CPU-second the server process used (its utime + stime over"
    echo "the run), i.e. what one core would serve if the load generator could saturate it."
    echo
    echo "| server | conns | server CPU busy | req per CPU-second | vs gin |"
    echo "|---|---:|---:|---:|---:|"
    for s in "${servers[@]}"; do
        for c in "${conns[@]}"; do
            k="$s,$c"
            [ -n "${per_core[$k]:-}" ] || continue
            g=${per_core[gin,$c]:-}
            r="-"
            [ -z "$g" ] || r=$(awk -v a="${per_core[$k]}" -v b="$g" 'BEGIN {printf "%.2fx", a / b}')
            printf '| %s | %s | %.0f%% | %.0f | %s |\n' "$s" "$c" "${busy[$k]}" "${per_core[$k]}" "$r"
        done
    done
    echo
    echo "req/s of each run:"
    echo
    for s in "${servers[@]}"; do
        for c in "${conns[@]}"; do
            k="$s,$c"
            [ -n "${runs_rps[$k]:-}" ] || continue
            extra=""
            [ "${errs[$k]}" -eq 0 ] || extra=" (wrk errors/non-2xx: ${errs[$k]})"
            echo "- $s c=$c: ${runs_rps[$k]% }$extra"
        done
    done
    echo
    echo "Commands (fresh server and free port per row):"
    echo
    echo '```'
    [ -z "${cmd_srv[gin,${conns[0]}]:-}" ] ||
        echo "GO111MODULE=off GOPATH=$build/bench/gopath:/usr/share/gocode go build -o $gin_bin ./bench/peers/gin"
    for s in "${servers[@]}"; do
        for c in "${conns[@]}"; do
            k="$s,$c"
            [ -n "${cmd_srv[$k]:-}" ] || continue
            echo "${cmd_srv[$k]} &"
            [ "$warmup" -eq 0 ] || echo "${cmd_wrk[$k]/ -d${secs}s --latency/ -d${warmup}s}  # warm-up"
            echo "${cmd_wrk[$k]}  # x $runs"
        done
    done
    echo '```'
    [ "${#note[@]}" -eq 0 ] || {
        echo
        for s in "${!note[@]}"; do echo "- $s: ${note[$s]}"; done
    }
} >"$out_md"
cat "$out_md"
log "table written to $out_md"
exit "$failed"

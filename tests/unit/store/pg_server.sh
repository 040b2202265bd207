#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A throwaway PostgreSQL 15 cluster for the store tests.
#   pg_server.sh start <dir> [pid]   initdb in <dir>, start postgres on a free loopback
#                              port and a Unix socket in <dir>; prints the port;
#                              stops by itself once process <pid> is gone
#   pg_server.sh stop <dir>    stop it (immediate) and remove <dir>
# PostgreSQL refuses to run as root, and CI runs as root: then the cluster
# belongs to `nobody`. Trust authentication, loopback only, no fsync.
set -euo pipefail
bin=${MICA_PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=$1
dir=$2
run() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}
case "$cmd" in
start)
    [ -x "$bin/postgres" ] || { echo "pg_server.sh: no $bin/postgres (apt-get install postgresql)" >&2; exit 1; }
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown nobody:nogroup "$dir"
    chmod 700 "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    run "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200 -c shared_buffers=32MB" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    # If the test process (pid $3) dies without stopping us, stop anyway. The
    # watcher gets its own session: a timeout that kills the test's process
    # group must not take the watcher with it.
    if [ -n "${3:-}" ]; then
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"' \
            _ "$3" "$(readlink -f "$0")" "$dir" </dev/null >/dev/null 2>&1 &
    fi
    echo "$port"
    ;;
stop)
    [ -d "$dir/data" ] && run "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: pg_server.sh start|stop <dir>" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The README's two commands on a fresh Debian 12 machine, as a new user runs
# them: a minimal root (debootstrap --variant=minbase, plus git, make and
# ca-certificates) gets this machine's DNS and CA certificates, a clone of the
# commit under test, then
#   1. `make run`: /health answers over REST and GetUser over gRPC, SIGTERM
#      drains it and it exits 0;
#   2. `make test` passes;
#   3. `make install`, then a program outside the tree (tests/install/) builds
#      against the installed mica through pkg-config and through CMake, and runs;
#      `make uninstall` removes it.
# The pristine root is cached in $MICA_FRESH_CACHE (default /var/cache/mica-fresh)
# and copied for every run. Everything is mounted in a private mount namespace
# and unmounted by the exit trap on every path. Needs root.
# Usage: scripts/fresh-machine.sh [commit, default HEAD]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse "${1:-HEAD}")
cache=${MICA_FRESH_CACHE:-/var/cache/mica-fresh}
mirror=${MICA_FRESH_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-machine: needs root (debootstrap, chroot, mounts)" >&2
    exit 2
fi
# Our own mounts stay out of the host's mount table, whatever happens.
if [ -z "${MICA_FRESH_NS:-}" ]; then
    MICA_FRESH_NS=1 exec unshare --mount --propagation private "$0" "$commit"
fi
"$repo/scripts/deps.sh" fresh

t0=$(date +%s)
step_t0=$t0
step() { # step <what>: prints how long the step before it took
    local now
    now=$(date +%s)
    [ -z "${step_name:-}" ] || printf 'fresh-machine: %-44s %4ds\n' "$step_name done" $((now - step_t0))
    step_name=$1
    step_t0=$now
    [ -z "$1" ] || echo "fresh-machine: $1 ..."
}

# ---- the pristine root (cached) ----------------------------------------------
pristine="$cache/$suite-minbase"
if [ ! -f "$pristine/.mica-pristine" ]; then
    step "debootstrap $suite (minbase + git, make, ca-certificates)"
    mkdir -p "$cache"
    rm -rf "$pristine.tmp"
    debootstrap --variant=minbase --include=git,make,ca-certificates "$suite" "$pristine.tmp" \
        "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -30 "$cache/debootstrap.log"; echo "fresh-machine: debootstrap failed" >&2; exit 1; }
    # What Debian's installer writes: the release, its updates and security.
    cat >"$pristine.tmp/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SRC
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$pristine.tmp/etc/hosts"
    rm -rf "$pristine.tmp/var/cache/apt/archives/"*.deb
    touch "$pristine.tmp/.mica-pristine"
    mv "$pristine.tmp" "$pristine"
fi

# ---- this run's copy -----------------------------------------------------------
step "copy the pristine root"
work=$(mktemp -d /var/tmp/mica-fresh.XXXXXX)
r="$work/root"
logs="$work/logs"
mkdir -p "$logs"
mounts=()
run_pid=""

cleanup() {
    local rc=$? pid m i
    # Whatever still runs inside the root (a server, a test) goes first.
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$r" ] && kill -9 "$pid" 2>/dev/null
    done
    [ -z "$run_pid" ] || wait "$run_pid" 2>/dev/null || true
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        m=${mounts[$i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "fresh-machine: could not unmount $m" >&2
    done
    if [ $rc -eq 0 ]; then
        rm -rf "$work"
    else
        # The root goes; the logs stay for whoever looks at the failure.
        rm -rf "$r"
        echo "fresh-machine: FAILED after $(($(date +%s) - t0))s; logs in $logs" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -a "$pristine" "$r"
mnt() { # mnt <mount args...> <target>
    mount "$@"
    mounts+=("${*: -1}")
}
mnt -t proc proc "$r/proc"
mnt -t sysfs sysfs "$r/sys"
mnt --bind /dev "$r/dev"
mnt --bind /dev/pts "$r/dev/pts"
mnt -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
# This machine's network setup: resolver and trusted CAs (registries may sit
# behind a TLS proxy only this trust store knows).
cp -L /etc/resolv.conf "$r/etc/resolv.conf"
mkdir -p "$r/usr/local/share/ca-certificates"
cp -a /usr/local/share/ca-certificates/. "$r/usr/local/share/ca-certificates/"
rm -rf "$r/etc/ssl/certs"
cp -a /etc/ssl/certs "$r/etc/ssl/certs"

step "clone $commit"
git clone -q --no-local "$repo" "$r/root/mica"
git -C "$r/root/mica" checkout -q "$commit"

# A login shell's environment, nothing of ours.
inroot() {
    chroot "$r" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        TERM=dumb LANG=C.UTF-8 /bin/bash -c "$1"
}

# ---- 1. make run -------------------------------------------------------------
step "make run (installs build packages, builds, serves)"
inroot 'cd /root/mica && exec make run' >"$logs/make-run.log" 2>&1 &
run_pid=$!
up=""
for _ in $(seq 1 1800); do
    if curl -sf -m 2 http://127.0.0.1:8080/health >"$work/health" 2>/dev/null; then up=1; break; fi
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 0.5
done
if [ -z "$up" ]; then
    tail -40 "$logs/make-run.log"
    echo "fresh-machine: make run never served /health" >&2
    exit 1
fi
grep -q '"status":"ok"' "$work/health" || { echo "fresh-machine: /health said: $(cat "$work/health")" >&2; exit 1; }
echo "fresh-machine: REST /health: $(cat "$work/health")"
# GetUser(UserRequest{user_id:"1001"}), one gRPC frame.
printf '\x00\x00\x00\x00\x06\x0a\x041001' >"$work/req.bin"
nghttp -v -d "$work/req.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    http://127.0.0.1:50051/user.UserService/GetUser >"$work/grpc.out" 2>&1 || true
if ! grep -aq 'Alice' "$work/grpc.out" || ! grep -aq 'grpc-status: 0' "$work/grpc.out"; then
    cat "$work/grpc.out"
    echo "fresh-machine: gRPC GetUser did not answer Alice with grpc-status 0" >&2
    exit 1
fi
echo "fresh-machine: gRPC GetUser(1001): Alice, grpc-status 0"

# SIGTERM to the server itself (make would die of it rather than report).
srv=""
for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$r/root/mica/build/examples/user" ] && srv=$pid
done
[ -n "$srv" ] || { echo "fresh-machine: no examples/user process found" >&2; exit 1; }
kill -TERM "$srv"
rc=0
timeout 30 tail --pid="$run_pid" -f /dev/null || { echo "fresh-machine: make run did not exit within 30s of SIGTERM" >&2; exit 1; }
wait "$run_pid" || rc=$?
run_pid=""
if [ $rc -ne 0 ]; then
    tail -20 "$logs/make-run.log"
    echo "fresh-machine: make run exited $rc after SIGTERM" >&2
    exit 1
fi
grep -q 'draining' "$logs/make-run.log" ||
    { tail -20 "$logs/make-run.log"; echo "fresh-machine: no drain in the server's log" >&2; exit 1; }
echo "fresh-machine: SIGTERM: drained, exit 0"

# ---- 2. make test --------------------------------------------------------------
step "make test"
if ! inroot 'cd /root/mica && make test' >"$logs/make-test.log" 2>&1; then
    tail -60 "$logs/make-test.log"
    echo "fresh-machine: make test failed" >&2
    exit 1
fi
tail -1 "$logs/make-test.log"

# ---- 3. make install, and a program of someone else's -------------------------
step "make install; build tests/install with pkg-config and CMake"
if ! inroot 'set -e
    cd /root/mica && make install
    rm -rf /tmp/consumer && cp -r tests/install /tmp/consumer
    make -C /tmp/consumer consumer && /tmp/consumer/consumer
    cmake -S /tmp/consumer -B /tmp/consumer/build && cmake --build /tmp/consumer/build
    /tmp/consumer/build/consumer
    ldd /tmp/consumer/build/consumer >/tmp/consumer/ldd.txt
    grep -q "libmica.so.0 => /usr/local/lib/" /tmp/consumer/ldd.txt
    cd /root/mica && make uninstall
    test ! -e /usr/local/lib/libmica.so.0 && test ! -e /usr/local/include/mica/mica.h' \
    >"$logs/install.log" 2>&1; then
    tail -40 "$logs/install.log"
    echo "fresh-machine: install or the out-of-tree build failed" >&2
    exit 1
fi
grep '^ok:' "$logs/install.log" | sed 's/^/fresh-machine: consumer: /'

step ""
echo "fresh-machine: ok in $(($(date +%s) - t0))s"

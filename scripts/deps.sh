#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian packages a mica target needs, and only the missing ones.
# Usage: scripts/deps.sh build|test|bench|run|fresh   (idempotent; prints what it installs)
set -euo pipefail

build=(gcc make cmake pkg-config libjansson-dev libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
       zlib1g-dev libssl-dev libhiredis-dev libpq-dev libsqlite3-dev libgoogle-perftools-dev)
test=(libcmocka-dev clang libclang-rt-14-dev valgrind curl openssl python3 nghttp2-client nginx-light
      nodejs golang-go golang-google-grpc-dev golang-google-protobuf-dev
      protobuf-compiler golang-github-golang-protobuf-1-3-dev redis-server postgresql util-linux
      etcd-server etcd-client wrk
      prometheus)
# The fresh-machine check's own tools on the host (scripts/fresh-machine.sh).
fresh=(debootstrap curl nghttp2-client git util-linux)
bench=(wrk h2o nginx-light haproxy golang-go golang-github-gin-gonic-gin-dev util-linux redis-server
       redis-tools postgresql)

want=("${build[@]}")
for t in "$@"; do
    case "$t" in
    build | run) ;;
    test) want+=("${test[@]}") ;;
    bench) want+=("${test[@]}" "${bench[@]}") ;;
    fresh) want=("${fresh[@]}") ;;
    *) echo "deps.sh: unknown target '$t'" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The grpc-js peers need npm; some nodejs builds (NodeSource) bundle it and
# conflict with Debian's npm package, so ask for it only when it is absent.
if [[ " ${want[*]} " == *" nodejs "* ]] && ! command -v npm >/dev/null; then
    missing+=(npm)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the grpc-go peers, offline from Debian's packages (golang-go,
# golang-google-grpc-dev, golang-google-protobuf-dev), into <outdir>:
#   echo-server   the interop Echo service in grpc-go    (tests/interop/go/server)
#   echo-client   the interop matrix as a grpc-go client (tests/interop/go/client)
#   grpcgo-user   the seed's UserService, the benchmark peer (bench/peers/grpcgo)
# Usage: tests/interop/go/build.sh <outdir>   (quiet on success; rebuilds only what changed)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <outdir>" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

# Our one shared package (the messages and their codec) goes into a GOPATH
# of our own, next to Debian's /usr/share/gocode.
gopath="$out/gopath"
mkdir -p "$gopath/src/mica.test/interop"
ln -sfn "$root/tests/interop/go/msgs" "$gopath/src/mica.test/interop/msgs"

build() { # name source-dir
    local bin="$out/$1"
    if [ -x "$bin" ] && [ -z "$(find "$2" "$root/tests/interop/go/msgs" -newer "$bin" -name '*.go' -print -quit)" ]; then
        return 0
    fi
    env -C "$2" GO111MODULE=off GOFLAGS="" GOPATH="$gopath:/usr/share/gocode" \
        GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mica-go-build}" go build -o "$bin" .
}
build echo-server "$root/tests/interop/go/server"
build echo-client "$root/tests/interop/go/client"
build grpcgo-user "$root/bench/peers/grpcgo"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the grpc-go peers into <outdir>, offline, from Debian's packages:
#   echo-server   the interop Echo service in grpc-go    (tests/interop/go/server)
#   echo-client   the interop matrix as a grpc-go client (tests/interop/go/client)
#   grpcgo-user   the seed's UserService, the benchmark peer (bench/peers/grpcgo)
#   fault-server  a fault-injecting Echo backend (tests/interop/go/fault) for the
#                 resilience tests
#
# Needs golang-go, protobuf-compiler and golang-google-grpc-dev, which brings
# golang-github-golang-protobuf-1-3-dev: the protobuf runtime grpc-go 1.33 is
# built against, and the source of the protoc-gen-go that matches it. That
# protoc-gen-go still has the `plugins=grpc` generator, so the service stubs
# come from the .proto files like the messages; there is no
# protoc-gen-go-grpc to package.
#
# Everything generated lives under <outdir>: the plugin in bin/, and a GOPATH
# in gopath/ holding the generated packages mica.test/interop (echo.proto)
# and mica.example/user (user.proto), searched before /usr/share/gocode.
#
# Usage: tests/interop/go/build.sh <outdir>   (quiet on success; idempotent,
# and go build relinks nothing when no input changed)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <outdir>" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

gocode=/usr/share/gocode
for need in "go:golang-go" "protoc:protobuf-compiler"; do
    command -v "${need%%:*}" >/dev/null ||
        { echo "build.sh: ${need%%:*} not found (Debian package ${need#*:}; scripts/deps.sh test)" >&2; exit 1; }
done
for pkg in google.golang.org/grpc github.com/golang/protobuf/protoc-gen-go; do
    [ -d "$gocode/src/$pkg" ] ||
        { echo "build.sh: $gocode/src/$pkg missing (golang-google-grpc-dev; scripts/deps.sh test)" >&2; exit 1; }
done

# GOPATH mode: no modules, no network. GOFLAGS is cleared so a caller's
# -mod=... cannot break it. The build cache is the caller's (go's default
# under $HOME), shared by all build dirs, or one in <outdir> without a HOME.
export GO111MODULE=off GOFLAGS="" GOPROXY=off
export GOPATH="$out/gopath:$gocode"
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
    export GOCACHE="$out/gocache"
fi

# 1. protoc-gen-go, from the same source tree as the runtime it generates for.
go build -o "$out/bin/protoc-gen-go" github.com/golang/protobuf/protoc-gen-go

# 2. The generated packages. The GOPATH holds nothing else, so it is made
# anew each time: nothing stale survives a renamed .proto or package. Each
# file's go_package option gives its import path and so its place here.
rm -rf "$out/gopath"
mkdir -p "$out/gopath/src"
gen() { # dir-of-proto proto-file
    protoc -I "$1" --plugin=protoc-gen-go="$out/bin/protoc-gen-go" \
        --go_out=plugins=grpc:"$out/gopath/src" "$1/$2"
}
gen "$root/tests/interop/proto" echo.proto
gen "$root/examples/user" user.proto

# 3. The peers. go build compares content hashes, not times, so a binary whose
# inputs are unchanged is left as it is.
build() { # name source-dir
    env -C "$2" go build -o "$out/$1" .
}
build echo-server "$root/tests/interop/go/server"
build echo-client "$root/tests/interop/go/client"
build grpcgo-user "$root/bench/peers/grpcgo"
build fault-server "$root/tests/interop/go/fault"

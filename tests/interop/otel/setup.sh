#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the OpenTelemetry JS and grpc-js peers' dependencies (node_modules/) from
# package-lock.json, only when they are missing or older than the lockfile.
# Quiet on success; safe to run before every interop run.
set -eu
cd "$(dirname "$0")"

# npm ci touches node_modules/.package-lock.json, so a finished install is
# newer than package-lock.json; an interrupted one is redone next time.
stamp=node_modules/.package-lock.json
if [ -f "$stamp" ] && [ ! package-lock.json -nt "$stamp" ]; then
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! npm ci --no-audit --no-fund --loglevel=error >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: npm ci failed in $(pwd)" >&2
    exit 1
fi

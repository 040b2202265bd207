#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Bans C library calls that invite overflows or hide errors (curl's checksrc
# idea): use snprintf, memcpy with a checked length, strtol/strtoll instead.
set -euo pipefail
cd "$(dirname "$0")/.."
banned='\b(sprintf|vsprintf|strcpy|strcat|strncpy|strncat|gets|atoi|atol|atoll|atof|strtok|tmpnam|alloca)\s*\('
if grep -rnE "$banned" --include='*.c' --include='*.h' src include examples tests bench 2>/dev/null; then
    echo "lint: banned function above (see scripts/lint.sh)" >&2
    exit 1
fi
missing=$(grep -rLE 'SPDX-License-Identifier' --include='*.c' --include='*.h' --include='*.S' src include examples tests bench || true)
if [ -n "$missing" ]; then
    echo "lint: no SPDX header in:" >&2
    echo "$missing" >&2
    exit 1
fi
echo "lint: ok"

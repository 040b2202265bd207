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
# Layers call downward through public headers only (docs/internals.md): a
# file under src/<sub>/ may include its own private headers, src/common/'s,
# generated headers, and the public headers of its own layer or those below.
layers="common runtime http grpc observe store resilience discovery"
layer_of() { # <public header> -> its layer, from the table in scripts/layers.txt
    awk -v h="$1" '$1 == h { print $2 }' scripts/layers.txt
}
bad=0
for f in $(find src -name '*.c' -o -name '*.h' | sort); do
    sub=$(echo "$f" | cut -d/ -f2)
    rank=$(echo " $layers " | sed "s/ $sub .*//" | wc -w)
    while IFS= read -r inc; do
        case "$inc" in
        "$sub"/* | common/* | *.pb-c.h) ;;
        mica/*)
            l=$(layer_of "${inc#mica/}")
            if [ -z "$l" ]; then
                echo "lint: $f: $inc is not in scripts/layers.txt" >&2; bad=1; continue
            fi
            lrank=$(echo " $layers " | sed "s/ $l .*//" | wc -w)
            if [ "$lrank" -gt "$rank" ]; then
                echo "lint: $f ($sub) includes $inc of the layer above ($l)" >&2; bad=1
            fi ;;
        *)
            echo "lint: $f ($sub) includes another subsystem's private header $inc" >&2; bad=1 ;;
        esac
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done
[ $bad -eq 0 ] || { echo "lint: layering violations above" >&2; exit 1; }
echo "lint: ok"

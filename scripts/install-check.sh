#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `make install` as another project sees it: installs <build> into a scratch
# DESTDIR, checks the soname, builds tests/install/ against it once through
# pkg-config and once through find_package(mica), runs both, then uninstalls
# and checks nothing is left. Usage: scripts/install-check.sh <build-dir>
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
tmp=$(mktemp -d)
# cmake --install rewrites <build>/install_manifest.txt; keep a real install's.
manifest="$build/install_manifest.txt"
[ -f "$manifest" ] && cp "$manifest" "$tmp/manifest.saved"
restore() {
    if [ -f "$tmp/manifest.saved" ]; then cp "$tmp/manifest.saved" "$manifest"; else rm -f "$manifest"; fi
    rm -rf "$tmp"
}
trap restore EXIT

prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
dest="$tmp/dest"
DESTDIR="$dest" cmake --install "$build" >"$tmp/install.log"
top="$dest$prefix"
lib=$(dirname "$(find "$top" -name 'libmica.so' | head -1)")
soname=$(objdump -p "$lib/libmica.so" | awk '$1 == "SONAME" { print $2 }')
[ "$soname" = libmica.so.0 ] || { echo "install-check: soname is '$soname', not libmica.so.0" >&2; exit 1; }
for f in "$lib/libmica.a" "$lib/pkgconfig/mica.pc" "$lib/cmake/mica/micaConfig.cmake" \
         "$top/include/mica/mica.h" "$top/include/mica/grpc.h"; do
    [ -f "$f" ] || { echo "install-check: $f was not installed" >&2; exit 1; }
done
echo "install-check: installed under $top ($soname)"

# Through pkg-config: the .pc finds its prefix from its own place.
cp -r "$root/tests/install" "$tmp/pc"
PKG_CONFIG_PATH="$lib/pkgconfig" make -s -C "$tmp/pc" consumer
LD_LIBRARY_PATH="$lib" "$tmp/pc/consumer"
# (ldd's output is kept first: `ldd | grep -q` fails under pipefail when
# grep exits at the first match and ldd is still writing.)
deps=$(LD_LIBRARY_PATH="$lib" ldd "$tmp/pc/consumer")
grep -q "libmica.so.0 => $lib/" <<<"$deps" ||
    { echo "install-check: the pkg-config build does not load $lib/libmica.so.0" >&2; exit 1; }
echo "install-check: pkg-config build runs"

# Through CMake's find_package(mica).
cmake -S "$root/tests/install" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$top" >"$tmp/cmake.log" ||
    { cat "$tmp/cmake.log"; exit 1; }
cmake --build "$tmp/cm" >>"$tmp/cmake.log" || { cat "$tmp/cmake.log"; exit 1; }
LD_LIBRARY_PATH="$lib" "$tmp/cm/consumer"
echo "install-check: find_package(mica) build runs"

# make uninstall removes every installed file (the manifest is the install's own).
(cd "$build" && DESTDIR="$dest" cmake -P "$root/cmake/uninstall.cmake" >/dev/null)
left=$(find "$dest" -type f -o -type l)
[ -z "$left" ] || { echo "install-check: uninstall left:"; echo "$left"; exit 1; } >&2
echo "install-check: ok"

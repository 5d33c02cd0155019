#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that has the CUDA
# toolkit but none of this machine's Debian libraries. Run it here, after
#
#   ninja -C build kiln_tests kiln_bench_cuda
#
# It fills build/gpu/ (git-ignored, as all of build/ is):
#   bin/kiln_tests, bin/kiln_bench_cuda   stripped copies of the binaries
#   libs/<soname>.xz                      the shared libraries they need that
#                                         a bare machine lacks (libfmt,
#                                         OpenBLAS and its Fortran runtime),
#                                         xz -9 compressed
#   libs/fallback/<soname>.xz             libstdc++ / libgcc_s / libmvec:
#                                         used there only when its own are
#                                         missing or too old (ldd says so)
#   MANIFEST                              commit, sizes and checksums
# and prints the sizes (the device tool carries at most 64 MiB). The device
# command then carries build/gpu alone; see scripts/gpu_check.sh.
#
#   scripts/pack_gpu_libs.sh            (BUILD=dir, DEST=dir override build, build/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
DEST=${DEST:-$BUILD/gpu}
TESTS=$BUILD/tests/cpp/kiln_tests
BENCH=$BUILD/bench/cpp/kiln_bench_cuda
LIMIT_MIB=60

for b in "$TESTS" "$BENCH"; do
  if [ ! -x "$b" ]; then
    echo "missing $b: run  ninja -C $BUILD kiln_tests kiln_bench_cuda  first" >&2
    exit 1
  fi
done
if command -v ninja >/dev/null && ! ninja -C "$BUILD" -n kiln_tests kiln_bench_cuda 2>/dev/null | grep -q "no work to do"; then
  echo "WARNING: kiln_tests / kiln_bench_cuda are out of date (ninja -C $BUILD -n would rebuild them); packing them anyway" >&2
fi
if ! git check-ignore -q "$DEST/"; then
  echo "WARNING: $DEST/ is not git-ignored: the device tool would also copy it as part of the working tree, and a" >&2
  echo "         careless 'git add' would commit it" >&2
fi

rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/libs/fallback"

# ---- stripped binaries ----
for b in "$TESTS" "$BENCH"; do
  strip --strip-unneeded -o "$DEST/bin/$(basename "$b")" "$b"
done

# ---- shared libraries: every one ldd resolves for either binary ----
# glibc's own (libc, libm, ld.so, ...) must come from the target machine;
# libmvec belongs to glibc too (it uses GLIBC_PRIVATE symbols), so it is only
# a fallback, as are the GCC runtime libraries, which any machine with
# Python has (newer ones are backward compatible).
declare -A seen=()
while read -r name path; do
  [ -n "$path" ] || continue
  [ -z "${seen[$name]:-}" ] || continue
  seen[$name]=1
  case "$name" in
    linux-vdso.so.*|ld-linux*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*) continue ;;
    libstdc++.so.*|libgcc_s.so.*|libmvec.so.*) dir=$DEST/libs/fallback ;;
    *) dir=$DEST/libs ;;
  esac
  xz -9 -T1 -c "$(readlink -f "$path")" > "$dir/$name.xz"
  printf '  %-22s %9d bytes -> %s.xz (%d bytes)\n' "$name" "$(stat -Lc %s "$path")" "${dir#"$DEST"/}/$name" \
    "$(stat -c %s "$dir/$name.xz")"
done < <(ldd "$TESTS" "$BENCH" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')

if ldd "$TESTS" "$BENCH" | grep -q "not found"; then
  echo "ERROR: ldd cannot resolve every library here:" >&2
  ldd "$TESTS" "$BENCH" | grep "not found" >&2
  exit 1
fi

# ---- manifest ----
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (working tree has uncommitted changes)')"
  echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -1)"
  for b in "$TESTS" "$BENCH"; do
    echo "$(basename "$b") built $(date -u -r "$b" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$b" | cut -d' ' -f1)"
  done
  echo "needs: $(objdump -T "$TESTS" "$BENCH" | grep -oE '(GLIBC|GLIBCXX|CXXABI)_[0-9.]+' | sort -uV \
    | awk -F_ '{m[$1]=$0} END {for (k in m) printf "%s ", m[k]}')"
} > "$DEST/MANIFEST"

# ---- sizes ----
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bytes() { du -cbL "$@" | tail -1 | cut -f1; }
echo
echo "packed into $DEST/:"
(cd "$DEST" && find . -type f -printf '%10s  %P\n' | sort -k2)
raw=$(bytes "$TESTS" "$BENCH" "$DEST/libs")
packed=$(bytes "$DEST")
echo
echo "unstripped binaries + libs ($TESTS, $BENCH, $DEST/libs): $(mib "$raw")"
echo "to carry ($DEST): $(mib "$packed")"
if [ "$packed" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "WARNING: $DEST is over $LIMIT_MIB MiB; the device tool carries at most 64 MiB" >&2
fi
cat "$DEST/MANIFEST"
echo
echo "device tool: carry [\"$DEST\"], command: bash scripts/gpu_check.sh"

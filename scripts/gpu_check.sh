#!/usr/bin/env bash
# The GPU check, run ON a GPU machine from the repository root in one call:
# kiln's CUDA tests, then kiln's and PyTorch's GPU benchmarks side by side.
# The binaries are built elsewhere (this machine need not have a compiler or
# kiln's Debian libraries): scripts/pack_gpu_libs.sh puts stripped copies
# and the shared libraries they need, xz-compressed, in build/gpu/, the one
# path to carry. Without build/gpu/ it falls back to
# build/tests/cpp/kiln_tests, build/bench/cpp/kiln_bench_cuda and the
# libraries in gpu-libs/ (*.xz or plain .so files).
#
#   bash scripts/gpu_check.sh
#
# Writes under $OUT (default /tmp/gpu-out): gpu_check.log (everything
# printed), cuda-tests.txt, cuda-tests-compact.txt, kiln.txt / kiln.err,
# torch.txt / torch.err, merged.txt, merged.md. Exit status: 0 when the
# [cuda] tests pass (the benchmarks run either way and do not change it).
# Step time limits (seconds) can be overridden: TESTS_S, COMPACT_S, KILN_S,
# TORCH_S; the defaults add up to well under the device tool's 10 minutes.
set -u
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
TESTS_S=${TESTS_S:-120}
COMPACT_S=${COMPACT_S:-45}
KILN_S=${KILN_S:-120}
TORCH_S=${TORCH_S:-150}

limit() {  # limit SECONDS CMD...: timeout when the machine has one
  local s=$1
  shift
  if command -v timeout >/dev/null; then timeout -k 10 "$s" "$@"; else "$@"; fi
}

unpack() {  # unpack FILE.xz DEST: xz, or Python's lzma where xz is missing
  if command -v xz >/dev/null; then
    xz -dc "$1" > "$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}

main() {
  local start=$SECONDS
  echo "== machine"
  ldd --version 2>&1 | head -1
  local glibc
  glibc=$(ldd --version 2>&1 | head -1 | grep -oE '[0-9]+\.[0-9]+$')
  if [ -n "$glibc" ] && [ "$(printf '%s\n2.35\n' "$glibc" | sort -V | head -1)" != "2.35" ]; then
    echo "WARNING: glibc $glibc is older than the 2.35 the binaries need: they will not load"
  fi
  echo "$(uname -m), $(nproc) CPUs, kernel $(uname -r)"
  # The build targets x86-64-v3 (AVX2, FMA, BMI2).
  grep -qw avx2 /proc/cpuinfo 2>/dev/null || echo "WARNING: this CPU lacks AVX2: the binaries (-march=x86-64-v3) will not run"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
      --format=csv 2>/dev/null
  else
    echo "(no nvidia-smi)"
  fi
  local so found=""
  for so in libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libcudart.so.13; do
    [ -e "/usr/local/cuda/lib64/$so" ] && found="$found $so"
  done
  echo "in /usr/local/cuda/lib64:${found:- none of libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libcudart.so.13}"
  python3 --version 2>&1

  echo
  echo "== binaries and libraries"
  local work
  work=$(mktemp -d /tmp/kiln-gpu.XXXXXX)
  mkdir -p "$work/bin" "$work/libs"
  local bindir libdir pack=""
  if [ -d build/gpu/bin ]; then pack=build/gpu
  elif [ -d gpu-libs/bin ]; then pack=gpu-libs  # DEST=gpu-libs scripts/pack_gpu_libs.sh
  fi
  if [ -n "$pack" ]; then
    echo "packed binaries and libraries: $pack/"
    bindir=$pack/bin
    libdir=$pack/libs
    cat "$pack/MANIFEST" 2>/dev/null
  else
    echo "unstripped binaries from build/, libraries from gpu-libs/"
    mkdir -p "$work/unstripped"
    cp build/tests/cpp/kiln_tests build/bench/cpp/kiln_bench_cuda "$work/unstripped/" 2>/dev/null
    bindir=$work/unstripped
    libdir=gpu-libs
    [ -d gpu-libs/libs ] && libdir=gpu-libs/libs
  fi
  for b in kiln_tests kiln_bench_cuda; do
    if [ -f "$bindir/$b.xz" ]; then unpack "$bindir/$b.xz" "$work/bin/$b"
    elif [ -f "$bindir/$b" ]; then cp "$bindir/$b" "$work/bin/$b"
    else echo "ERROR: $bindir/$b is missing (carry build/gpu, made by scripts/pack_gpu_libs.sh)"
    fi
    chmod +x "$work/bin/$b" 2>/dev/null
  done
  local f
  for f in "$libdir"/*; do
    [ -f "$f" ] || continue
    case "$f" in
      *.xz) unpack "$f" "$work/libs/$(basename "$f" .xz)" ;;
      *) cp "$f" "$work/libs/" ;;
    esac
  done
  export KILN_LIBS="$work/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local problems
  problems=$(LD_LIBRARY_PATH=$KILN_LIBS ldd "$work/bin/kiln_tests" "$work/bin/kiln_bench_cuda" 2>&1 |
    grep -E "not found|version .* not found")
  if [ -n "$problems" ] && [ -d "$libdir/fallback" ]; then
    echo "the machine's own libraries fall short:"
    echo "$problems"
    echo "adding the packed fallbacks (libstdc++ / libgcc_s / libmvec)"
    mkdir -p "$work/libs/fallback"
    for f in "$libdir"/fallback/*; do
      case "$f" in
        *.xz) unpack "$f" "$work/libs/fallback/$(basename "$f" .xz)" ;;
        *) cp "$f" "$work/libs/fallback/" ;;
      esac
    done
    KILN_LIBS="$KILN_LIBS:$work/libs/fallback"
  fi
  # kiln dlopens cuBLAS (libcublas.so.13) and cuDNN (libcudnn.so.9): from
  # /usr/local/cuda/lib64, else from PyTorch's pip packages where they are.
  local lib dir
  for lib in libcublas.so.13 libcudnn.so.9; do
    [ -e "/usr/local/cuda/lib64/$lib" ] && continue
    dir=$(python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null |
      xargs -r -I{} find {} -maxdepth 5 -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
    if [ -n "$dir" ]; then
      echo "$lib is not in /usr/local/cuda/lib64: using $dir/$lib"
      KILN_LIBS="$KILN_LIBS:$dir"
    else
      echo "WARNING: $lib is neither in /usr/local/cuda/lib64 nor in Python's site-packages"
    fi
  done
  echo "LD_LIBRARY_PATH for kiln: $KILN_LIBS"
  LD_LIBRARY_PATH=$KILN_LIBS ldd "$work/bin/kiln_tests" 2>&1 | sed 's/^/  /'
  if LD_LIBRARY_PATH=$KILN_LIBS ldd "$work/bin/kiln_tests" "$work/bin/kiln_bench_cuda" 2>&1 | grep -q "not found"; then
    echo "ERROR: some libraries still cannot be found (above)"
  fi
  ldconfig -p 2>/dev/null | grep -m2 "libcuda.so.1" || echo "(ldconfig does not list libcuda.so.1)"

  echo
  echo "== kiln_tests [cuda]"
  local t0=$SECONDS tests_rc compact_rc
  LD_LIBRARY_PATH=$KILN_LIBS limit "$TESTS_S" "$work/bin/kiln_tests" "[cuda]" -d yes > "$OUT/cuda-tests.txt" 2>&1
  tests_rc=$?
  # The console report is long when tests pass (durations); show its failures and summary.
  grep -vE "^[0-9]+\.[0-9]+ s: " "$OUT/cuda-tests.txt" | tail -150
  echo "(kiln_tests [cuda]: exit $tests_rc after $((SECONDS - t0)) s; durations in $OUT/cuda-tests.txt)"
  if [ "$tests_rc" -eq 124 ] || [ "$tests_rc" -eq 137 ]; then
    echo "kiln_tests timed out after $TESTS_S s: skipping the compact rerun"
    compact_rc=skipped
  else
    LD_LIBRARY_PATH=$KILN_LIBS limit "$COMPACT_S" "$work/bin/kiln_tests" "[cuda]" -r compact \
      > "$OUT/cuda-tests-compact.txt" 2>&1
    compact_rc=$?
    echo "== kiln_tests [cuda] -r compact (exit $compact_rc), last lines:"
    tail -40 "$OUT/cuda-tests-compact.txt"
  fi

  echo
  echo "== kiln_bench_cuda"
  t0=$SECONDS
  LD_LIBRARY_PATH=$KILN_LIBS limit "$KILN_S" "$work/bin/kiln_bench_cuda" > "$OUT/kiln.txt" 2> "$OUT/kiln.err"
  local kiln_rc=$?
  echo "(exit $kiln_rc after $((SECONDS - t0)) s)"
  grep -m1 "no CUDA GPU" "$OUT/kiln.txt"
  [ -s "$OUT/kiln.err" ] && tail -20 "$OUT/kiln.err"

  echo
  echo "== bench/bench_cuda_torch.py"
  t0=$SECONDS
  limit "$TORCH_S" python3 bench/bench_cuda_torch.py > "$OUT/torch.txt" 2> "$OUT/torch.err"
  local torch_rc=$?
  echo "(exit $torch_rc after $((SECONDS - t0)) s)"
  grep -m1 "no CUDA GPU" "$OUT/torch.txt"
  [ -s "$OUT/torch.err" ] && grep -v "UserWarning\|warnings.warn" "$OUT/torch.err" | tail -20

  echo
  echo "== kiln vs PyTorch"
  python3 bench/merge_cuda.py "$OUT/kiln.txt" "$OUT/torch.txt" > "$OUT/merged.txt" 2>&1
  python3 bench/merge_cuda.py --markdown "$OUT/kiln.txt" "$OUT/torch.txt" > "$OUT/merged.md" 2>&1
  cat "$OUT/merged.txt"

  echo
  echo "== summary ($((SECONDS - start)) s)"
  echo "kiln_tests [cuda]: exit $tests_rc ($(grep -E "^(All tests passed|test cases:)" "$OUT/cuda-tests.txt" | tail -1)); compact rerun: $compact_rc"
  echo "kiln_bench_cuda: exit $kiln_rc; bench_cuda_torch.py: exit $torch_rc"
  echo "files in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
  rm -rf "$work"
  [ "$tests_rc" -eq 0 ]
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"

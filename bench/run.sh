#!/usr/bin/env bash
# Builds what the eager benchmark needs and runs it: one table (kiln vs NumPy
# vs PyTorch 1.13), printed and saved to bench/results/<date>-<hostname>.md.
#
#   bench/run.sh [--quick] [--no-save] [--out FILE]
#   bench/run.sh --train [--quick] [--no-save]   (training steps: bench_train.py)
#   bench/run.sh --jit [--quick] [--no-save]     (kiln.jit overheads: bench_jit.py)
#   bench/run.sh --compile [--quick] [--no-save] (kiln.jit(compile=True) vs eager, PyTorch, TorchScript
#                                                 and the memory-bandwidth limit: bench_compile.py)
#
# Needs ./build configured (scripts/build.sh does it); this script never
# reconfigures it. KILN_BUILD_JOBS sets the build parallelism (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR="${KILN_BUILD_DIR:-build}"
JOBS="${KILN_BUILD_JOBS:-$(nproc)}"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  echo "bench/run.sh: $BUILD_DIR is not configured; run scripts/build.sh first" >&2
  exit 1
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "building kiln_python and kiln_bench_dispatch in $BUILD_DIR (-j$JOBS) ..." >&2
if ! ninja -C "$BUILD_DIR" -j "$JOBS" kiln_python kiln_bench_dispatch kiln_bench_jit >"$log" 2>&1; then
  cat "$log" >&2
  echo "bench/run.sh: build failed" >&2
  exit 1
fi

# Fairness (DESIGN.md "Benchmarking facts"): two threads for everyone, and no
# OpenMP spin-waiting that would steal OpenBLAS's second core.
export OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE \
       KILN_NUM_THREADS=2
# Debian's OpenBLAS takes an unknown CPU (Sapphire Rapids) for a 'Prescott' and
# runs SSE3 GEMM kernels at a third of the speed; name the ones the CPU has,
# for everyone (NumPy, PyTorch and kiln share the library).
if [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
  if grep -qw avx512bw /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
if [[ "${1:-}" == "--jit" ]]; then
  shift
  PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 bench/bench_jit.py "$@"
fi
if [[ "${1:-}" == "--compile" ]]; then
  shift
  PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 bench/bench_compile.py "$@"
fi
if [[ "${1:-}" == "--train" ]]; then
  shift
  PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 bench/bench_train.py "$@"
fi
PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 bench/bench_eager.py \
  --cpp-bench "$BUILD_DIR/bench/cpp/kiln_bench_dispatch" "$@"

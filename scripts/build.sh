#!/usr/bin/env bash
# Configures and builds kiln (C++ libraries, tests, Python extension) in ./build.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${KILN_BUILD_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C build -j "$JOBS"

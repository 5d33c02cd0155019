#!/usr/bin/env bash
# Incremental build of ./build for development, serialized with a lock so
# that several people (or agents) editing one tree never run two builds at
# once (the Python extension is written into python/kiln/).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f build/build.ninja ]] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
exec flock /tmp/kiln-build.lock ninja -C build "$@"

#!/usr/bin/env bash
# The test command: installs the dependencies, builds, and runs every test
# (Catch2 for the C++ core, pytest for the Python package).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
ctest --test-dir build --output-on-failure

#!/usr/bin/env bash
# The demo command: installs the dependencies, builds, and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
PYTHONPATH=python /usr/bin/python3 examples/demo.py
PYTHONPATH=python /usr/bin/python3 examples/digits.py

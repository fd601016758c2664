#!/usr/bin/env bash
# The main job: trains the same network on real handwritten digits with each
# balancing method and prints a comparison (sets up ./.venv first if needed).
# Extra arguments go to examples/digits_demo.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python examples/digits_demo.py "$@"

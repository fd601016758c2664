#!/usr/bin/env bash
# The performance suite (benchmarks/performance.py): every method's train-step
# cost as ratios measured side by side; writes docs/performance.md (and .json).
# Sets up ./.venv first if needed. Takes about an hour on 2 CPU cores; extra
# arguments go to the suite, e.g. --quick (a smoke run) or --sections 1,3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python benchmarks/performance.py "$@"

#!/usr/bin/env bash
# The performance suite (benchmarks/performance.py): every method's train-step
# cost as ratios measured side by side, on the TensorFlow and JAX backends
# (each in processes of its own); writes docs/performance.md (and .json),
# keeping its hand-written Profile section. Sets up ./.venv first if needed.
# Takes 45-70 minutes on 2 quiet CPU cores (46 and 68 measured; most of it compiling ~280
# model variants); extra arguments go to the suite, e.g. --quick (a smoke
# run, to runs/perf-quick/), --sections 1,3 or --backends tensorflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python benchmarks/performance.py "$@"

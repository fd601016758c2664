#!/usr/bin/env bash
# Runs the whole conformance zoo (tests/test_zoo.py with KERAS_MTL_ZOO=full):
# every zoo model with every balancing method (a loss-level weighting, a
# parameter-mode aggregator, representation mode where the net has a
# representation layer), each fitted under XLA, saved and loaded in a new
# process, and exported, on TensorFlow and on JAX. The normal suite
# (scripts/test.sh) runs a fast slice of it. Extra arguments go to pytest
# (e.g. `-k bert`); KERAS_MTL_BACKENDS="jax" runs one backend only.
set -euo pipefail
cd "$(dirname "$0")/.."
KERAS_MTL_ZOO=full exec bash scripts/test.sh -n 0 tests/test_zoo.py "$@"

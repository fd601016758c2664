#!/usr/bin/env bash
# Runs the test suite (sets up ./.venv first if needed): the whole suite on
# the TensorFlow backend, then the tests marked `backend_neutral` again on
# JAX (tests/conftest.py keeps only those under another backend). Each pass
# runs in two pytest worker processes (pytest-xdist; a test file stays in
# one worker, so its module-scoped fixtures run once). Extra arguments go to
# both pytest runs, e.g. `-n 0` for one process or `tests/model -x`;
# KERAS_MTL_BACKENDS="tensorflow" (or "jax") runs one pass only.
# The suites that train methods in an environment (tf.distribute and
# resume, mixed precision, JAX data parallelism, TensorFlow/JAX parity),
# and representation mode's and the Gramian route's training tests, train
# one method per path of the step by default (tests/conftest.py,
# `PATH_CASES`) and the zoo a fast slice; KERAS_MTL_FULL_MATRIX=1 trains
# every method and the whole zoo (`KERAS_MTL_FULL_MATRIX=1 bash
# scripts/test.sh` runs everything).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
# One JAX compilation cache for the whole run (both passes and the worker
# processes tests start): many tests compile the same small programs, and a
# hit skips XLA's compile (measured on three JAX-heavy files: half the time).
# A fresh directory each run, removed at the end; a cache of your own
# (JAX_COMPILATION_CACHE_DIR set) is used as it is.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d)
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
# XLA (both backends, the worker processes too) compiles without LLVM's
# optimisations: the tests run small programs for a few steps, and on JAX
# the compile dominates (measured: tests/trainers/test_gramian_route.py 130 s ->
# 79 s on JAX; TensorFlow's XLA tests ~15% faster). Its CPU backend also
# emits fusions with its older elemental emitter instead of the MLIR fusion
# emitters (`--xla_cpu_use_fusion_emitters=false`; measured: the CPU time
# of tests/aggregation on JAX 231 s -> 127 s, a model's first XLA step
# 3.5 s -> 2.3 s on TensorFlow, 3.0 s -> 1.3 s on JAX). The same HLO is
# compiled, only its machine code differs; a compile with XLA's defaults
# is tested in tests/trainers/test_gramian_route.py, and the benchmarks
# keep the defaults. XLA_FLAGS of your own are used as they are.
export XLA_FLAGS=${XLA_FLAGS:---xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false}
status=0
for backend in ${KERAS_MTL_BACKENDS:-tensorflow jax}; do
  echo "== tests on the $backend backend" >&2
  rc=0
  # --durations: the slowest tests, to keep the CI run within its time.
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -n 2 --dist loadfile --durations=15 "$@" || rc=$?
  # 5: no test selected (e.g. only TensorFlow-specific files were named).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=$rc; fi
done
exit $status

#!/usr/bin/env bash
# Runs the test suite (sets up ./.venv first if needed): the whole suite on
# the TensorFlow backend, then the tests marked `backend_neutral` again on
# JAX (tests/conftest.py keeps only those under another backend). Each pass
# runs in two pytest worker processes (pytest-xdist; a test file stays in
# one worker, so its module-scoped fixtures run once). Extra arguments go to
# both pytest runs, e.g. `-n 0` for one process or `tests/test_layers.py -x`;
# KERAS_MTL_BACKENDS="tensorflow" (or "jax") runs one pass only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
status=0
for backend in ${KERAS_MTL_BACKENDS:-tensorflow jax}; do
  echo "== tests on the $backend backend" >&2
  rc=0
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -n 2 --dist loadfile "$@" || rc=$?
  # 5: no test selected (e.g. only TensorFlow-specific files were named).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=$rc; fi
done
exit $status

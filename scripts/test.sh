#!/usr/bin/env bash
# Runs the test suite (sets up ./.venv first if needed) in two pytest worker
# processes (pytest-xdist; a test file stays in one worker, so its
# module-scoped fixtures run once). Extra arguments go to pytest, e.g.
# `-n 0` for one process or `tests/test_layers.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"

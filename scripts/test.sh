#!/usr/bin/env bash
# Runs the test suite (sets up ./.venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The main job: compares the balancing methods on MultiDigits (two real
# handwritten digits from scikit-learn per image; tasks left, right, sum
# parity), offline, in a few minutes on 2 CPU cores. Sets up ./.venv first if
# needed. Extra arguments go to `keras-mtl bench` (see --help), e.g.
#   bash scripts/bench.sh --dataset goemotions --methods all --seeds 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
# TensorFlow 2.21 logs a few INFO lines (oneDNN, CUDA drivers) while its
# libraries load, before absl's logging is initialised: no variable silences
# those (TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel, the order of imports: all
# tried), so they are dropped here, exactly those, unless INFO was asked for.
if [ "$TF_CPP_MIN_LOG_LEVEL" -ge 1 ] 2>/dev/null; then
  # stderr through the filter, stdout (the progress bars, the table) untouched;
  # the exit status is the benchmark's, not grep's (1 when it passed nothing).
  set +e
  {
    .venv/bin/keras-mtl bench --out runs/bench "$@" 2>&1 1>&3 3>&- |
      grep --line-buffered -v -E '^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$|I0000 00:00:)' >&2
    status=${PIPESTATUS[0]}
  } 3>&1
  exit "$status"
fi
exec .venv/bin/keras-mtl bench --out runs/bench "$@"

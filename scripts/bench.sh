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
exec .venv/bin/keras-mtl bench --out runs/bench "$@"

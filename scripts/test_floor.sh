#!/usr/bin/env bash
# Runs a fast subset of the tests against the oldest Keras we support (the
# floor), on the TensorFlow backend: the tests of what changed between Keras
# releases under keras_mtl (per-task sample weights, train_on_batch and
# test_on_batch logs, saving and loading, aggregators). The floor Keras goes
# into ./.venv-floor-keras with --no-deps (a few seconds, skipped when it is
# already there) and is put in front of ./.venv's Keras with PYTHONPATH;
# ./.venv itself is not changed. Needs ./.venv (bash scripts/setup.sh).
# Extra arguments go to pytest. KERAS_MTL_BACKENDS="tensorflow jax" also runs
# the backend-neutral ones on JAX (they pass; CI keeps to TensorFlow for time).
set -euo pipefail
cd "$(dirname "$0")/.."
# The oldest Keras that TensorFlow 2.21 accepts (its metadata: keras>=3.12.0).
floor=${KERAS_FLOOR_VERSION:-3.12.0}
target=.venv-floor-keras
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup.sh
fi
# shellcheck source=scripts/install_side_folder.sh
source scripts/install_side_folder.sh
if ! side_folder_is_current "$target" "keras==$floor"; then
  echo "Installing keras==$floor into $target/ (no dependencies)..." >&2
  install_side_folder "$target" "keras-$floor.dist-info" "keras==$floor"
fi
export PYTHONPATH="$PWD/$target${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
# As scripts/test.sh: XLA compiles without LLVM's expensive passes and with
# its older fusion emitter (measured here: 53 s -> 48 s).
export XLA_FLAGS=${XLA_FLAGS:---xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false}
# Which Keras the tests import, without importing it (that loads TensorFlow).
.venv/bin/python - "$floor" "$PWD/$target" <<'EOF'
import importlib.metadata
import importlib.util
import sys

floor, target = sys.argv[1:]
origin = importlib.util.find_spec("keras").origin
version = importlib.metadata.version("keras")
print(f"== floor tests with keras {version} ({origin})", file=sys.stderr)
if version != floor or not origin.startswith(target + "/"):
    sys.exit(f"test_floor.sh: expected keras {floor} from {target}")
EOF
# The per-weighting and per-aggregator sweeps under XLA test the maths, not
# Keras: two of each stay (one stateful weighting, one stateful aggregator).
# The save-and-load sweeps go through the same saving code for every method:
# one weighting per kind of state stays (learned: uncertainty; epoch
# history: dwa; random stream: rlw; its own learned logits: famo), and two
# stateful aggregators (learned weights: grad_norm; loss history: db_mtl).
# Under JAX, tests/conftest.py keeps the backend-neutral tests only. (The
# frozen .keras files are not loaded here: a file written by a newer Keras
# does not load in an older one, e.g. Dense's `quantization_config`.)
selection="(not under_xla or uncertainty or db_mtl)"
selection+=" and (not test_save_load_restores_weighting_and_training_state"
selection+=" or uncertainty or dwa or rlw or famo)"
selection+=" and (not test_save_and_load_keeps_the_aggregator_state"
selection+=" or grad_norm or db_mtl)"
# Tests, not files, are shared out between the two workers (`--dist load`):
# three files of unequal cost would leave one worker idle (57 s -> 53 s).
status=0
for backend in ${KERAS_MTL_BACKENDS:-tensorflow}; do
  echo "== floor tests on the $backend backend" >&2
  rc=0
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -n 2 --dist load \
    tests/model/test_model_training.py tests/model/test_model_saving.py \
    tests/model/test_model_aggregation.py \
    -k "$selection" "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=$rc; fi
done
exit $status

#!/usr/bin/env bash
# Runs the backend-neutral tests on Keras' torch backend: by default a slice
# that covers every part of keras_mtl in about half a minute (weightings,
# aggregators, the model's saving and errors, callbacks, the torch
# trainer's step, skipped non-finite steps, mixed precision, ONNX export),
# none of them compiling with torch.compile. KERAS_MTL_TORCH_FULL=1 runs every
# backend-neutral test instead (about 30 minutes on 2 cores: most of it is
# torch.compile's first compile of each model). Extra arguments go to pytest.
#
# torch and the ONNX packages come from ./.venv-torch (scripts/setup_torch.sh),
# put in front with PYTHONPATH, as scripts/test_floor.sh does with the oldest
# Keras; to run the tests that need torch in the TensorFlow session (the
# torch parity test), `pip install torch` into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_torch.sh
target=.venv-torch
export PYTHONPATH="$PWD/$target${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
echo "== tests on the torch backend" >&2
if [ "${KERAS_MTL_TORCH_FULL:-0}" = 1 ]; then
  exec env KERAS_BACKEND=torch .venv/bin/python -m pytest -n 2 --dist loadfile \
    -m backend_neutral "$@"
fi
# One process: at -n 2 each worker first imports TensorFlow, torch, Keras and
# JAX, which costs more than this slice gains (measured 64 s against 23 s).
# Left out: every torch.compile run (tests/layers, the zoo, the bench, and in
# tests/aggregation the compiled runs of models with callable weights: `-k`,
# their ids end in `True`), the SavedModel route through TensorFlow; the
# full run has them.
exec env KERAS_BACKEND=torch .venv/bin/python -m pytest -n 0 -m backend_neutral \
  tests/weighting tests/callbacks tests/aggregation tests/model \
  tests/trainers/test_gramian_route.py::test_route_trains_as_the_jacobian \
  tests/trainers/test_torch_trainer.py::test_a_distribution_over_several_devices_raises \
  tests/trainers/test_torch_trainer.py::test_the_saved_optimizer_is_the_public_class \
  tests/trainers/test_torch_trainer.py::test_non_finite_steps_are_skipped_and_counted \
  tests/trainers/test_torch_trainer.py::test_training_does_not_import_tensorflow \
  tests/trainers/test_honest_logs.py tests/trainers/test_step_bookkeeping.py \
  tests/trainers/test_mixed_precision.py \
  tests/trainers/test_torch_export.py::test_onnx_export_serves_the_predictions \
  -k "not (test_models_with_the_callable_weights and True)" "$@"

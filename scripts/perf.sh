#!/usr/bin/env bash
# The performance suite (benchmarks/performance.py): every method's train-step
# cost as ratios measured side by side, on the TensorFlow and JAX backends
# (each in processes of its own); writes docs/performance.md (and .json),
# keeping its hand-written Profile section. Sets up ./.venv first if needed.
# Takes 45-70 minutes on 2 quiet CPU cores (46 and 68 measured; most of it compiling ~280
# model variants), plus about 20 for section 5 (side by side with TorchJD);
# extra arguments go to the suite, e.g. --quick (a smoke run, to
# runs/perf-quick/), --sections 1,3 or --backends tensorflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Section 5 (benchmarks/torchjd_side_by_side.py) runs keras_mtl beside PyTorch
# + TorchJD 0.18: installed here, for the suite only (not dependencies of
# keras_mtl). torch 2.13.0, the version scripts/setup_torch.sh tests: the
# CPU wheel from PyTorch's index first (PyPI's carries CUDA), else PyPI's
# (a machine that reaches PyPI only, or holds the CPU wheel locally);
# TorchJD's [full] extra brings the solvers of its CAGrad, Nash-MTL and UPGrad
# (cvxpy, ecos, qpsolvers, quadprog). PERF_NO_TORCH=1 skips this; section 5
# then names what is missing and measures the rest.
if [ -z "${PERF_NO_TORCH:-}" ] &&
  ! .venv/bin/python -c "import torch, torchjd, cvxpy, ecos, qpsolvers, quadprog" 2>/dev/null; then
  echo "Installing PyTorch (CPU) and TorchJD 0.18 for section 5..." >&2
  { .venv/bin/python -c "import torch" 2>/dev/null ||
    .venv/bin/python -m pip install -q torch==2.13.0 \
      --index-url https://download.pytorch.org/whl/cpu 2>/dev/null ||
    .venv/bin/python -m pip install -q torch==2.13.0; } &&
    .venv/bin/python -m pip install -q "torchjd[full]==0.18.0" ||
    echo "scripts/perf.sh: installing torch/TorchJD failed; section 5 will say what is missing." >&2
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python benchmarks/performance.py "$@"

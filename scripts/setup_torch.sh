#!/usr/bin/env bash
# Installs torch (the CPU build) and the ONNX packages for the torch tests
# (scripts/test_torch.sh) into ./.venv-torch, with pip --target and
# --no-deps: their dependencies that ./.venv lacks are listed below. Skipped
# when the same list is already installed there. ./.venv itself is not
# changed (so the TensorFlow pass of scripts/test.sh does not run the tests
# that need torch in the TensorFlow session). On a machine without a local
# CPU wheel, pip takes torch from PyPI (the CUDA build, larger).
set -euo pipefail
cd "$(dirname "$0")/.."
target=.venv-torch
packages=(
  torch==2.13.0 sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1
  onnx==1.23.1 onnx_ir==1.0.0 onnxscript==0.7.2 onnxruntime==1.30.0
)
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup.sh
fi
# shellcheck source=scripts/install_side_folder.sh
source scripts/install_side_folder.sh
if ! side_folder_is_current "$target" "${packages[@]}"; then
  echo "Installing torch and ONNX into $target/ (no dependencies)..." >&2
  install_side_folder "$target" torch "${packages[@]}"
fi

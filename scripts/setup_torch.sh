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
want=$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$target/.installed" 2>/dev/null)" != "$want" ]; then
  echo "Installing torch and ONNX into $target/ (no dependencies)..." >&2
  # Into a fresh folder, moved into place when complete: an interrupted
  # install is never taken for a finished one.
  rm -rf "$target" "$target.partial"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --no-compile --target "$target.partial" "${packages[@]}" 2>&1 |
    grep -v "is ignored" >&2 || true
  [ -d "$target.partial/torch" ] || {
    echo "setup_torch.sh: installing torch into $target failed" >&2
    exit 1
  }
  echo "$want" >"$target.partial/.installed"
  mv "$target.partial" "$target"
fi

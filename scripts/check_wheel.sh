#!/usr/bin/env bash
# Builds keras_mtl's sdist and wheel (python -m build) into dist/, installs the
# wheel (not editable) with its dependencies, pinned by constraints.txt, into a
# fresh virtual environment in a temporary folder, and runs
# scripts/wheel_smoke_test.py there, outside the checkout: import from the
# environment's site-packages, a fit with a weighting and one with an
# aggregator, save/load, `keras-mtl bench --help`, py.typed. One line per
# step; build and pip output only on failure. Sets up ./.venv first if needed.
# Measured: ~25 s with pip's cache warm (TensorFlow's install is then mostly
# unpacking), more on a machine that downloads the dependencies.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
step() { # step LABEL COMMAND...: runs COMMAND with its output in a log, shown on failure
  local label=$1 t0=$SECONDS
  shift
  if ! "$@" >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    echo "check_wheel.sh: FAILED: $label" >&2
    exit 1
  fi
  echo "$label ($((SECONDS - t0)) s)"
}

rm -rf dist
step "built the sdist and the wheel" .venv/bin/python -m build --outdir dist .
# A warning from the build backend (a deprecated setting, a file left out) is a
# packaging bug: fail on it rather than ship it. Not one: setuptools' note that
# byte-compiling is off when PYTHONDONTWRITEBYTECODE is set.
if grep -iE "warning" "$tmp/log" | grep -vE "is ignored|byte-compiling is disabled" >&2; then
  echo "check_wheel.sh: FAILED: the build printed warnings (above)" >&2
  exit 1
fi
wheel=$(ls dist/*.whl)
echo "  $(ls dist | tr '\n' ' ')"
# The wheel holds the package, its py.typed marker and no tests or docs.
step "wheel contents" .venv/bin/python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "keras_mtl/py.typed" in names, "py.typed missing"
assert "keras_mtl/bench/cli.py" in names, "keras_mtl.bench missing"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE missing"
stray = [n for n in names if not n.startswith(("keras_mtl/", "keras_mtl-"))]
assert not stray, f"files outside the package: {stray}"
PY
step "created a fresh virtual environment" "${PYTHON:-python3}" -m venv "$tmp/venv"
step "installed the wheel and its dependencies (-c constraints.txt)" \
  "$tmp/venv/bin/python" -m pip install -q -c "$root/constraints.txt" "$root/$wheel"
cd "$tmp"
# The smoke test's own lines on stdout; on stderr, TensorFlow's start-up INFO
# lines (printed before TF_CPP_MIN_LOG_LEVEL applies) are dropped.
set +e
{
  "$tmp/venv/bin/python" -I "$root/scripts/wheel_smoke_test.py" "$root" 2>&1 1>&3 3>&- |
    grep --line-buffered -v -E '^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$|I0000 00:00:)' >&2
  status=${PIPESTATUS[0]}
} 3>&1
set -e
if [ "$status" -ne 0 ]; then
  echo "check_wheel.sh: FAILED: the smoke test (above)" >&2
  exit "$status"
fi
echo "Wheel check passed in $((SECONDS - start)) s: dist/$(basename "$wheel")"

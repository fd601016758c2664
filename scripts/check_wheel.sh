#!/usr/bin/env bash
# Builds keras_mtl's sdist and wheel (python -m build) into dist/, installs the
# wheel (not editable) with its dependencies, as uv (or pip) resolves them
# under constraints.txt (linked from ./.venv), into a fresh virtual
# environment in a temporary folder, and runs scripts/wheel_smoke_test.py
# there, outside the checkout: import from the environment's site-packages,
# a fit with a weighting and one with an aggregator, save/load, `keras-mtl
# bench --help`, py.typed. One line per step; build and pip output only on
# failure. Sets up ./.venv first if needed.
# Measured: ~20 s, most of it TensorFlow's import and the two small fits.
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
# The environment gets only the wheel and what the installer resolves for it
# (for the environment's interpreter, --python): uv, as scripts/setup.sh
# installs with it (measured: 0.5 s against pip --dry-run's 10 s of CPU), or
# pip where ./.venv has no uv. pip runs from ./.venv, so the environment
# holds no pip or setuptools of its own unless the wheel needs them. The
# dependencies are linked from ./.venv, which must hold the resolved versions
# (not a second 2.7 GB copy: CI machines have run out of disk), and `pip
# check` then reads the wheel's requirements against them.
step "created a fresh virtual environment (no pip)" \
  "${PYTHON:-python3}" -m venv --without-pip "$tmp/venv"
pip_in_venv=(.venv/bin/python -m pip --python "$tmp/venv/bin/python")
if [ -x .venv/bin/uv ]; then
  resolved="$tmp/resolved.txt"
  echo "$wheel" >"$tmp/wheel.txt"
  step "resolved the wheel's dependencies (-c constraints.txt, uv pip compile)" \
    .venv/bin/uv pip compile -q --python "$tmp/venv/bin/python" \
    -c constraints.txt --no-header --no-annotate -o "$resolved" "$tmp/wheel.txt"
else
  resolved="$tmp/report.json"
  step "resolved the wheel's dependencies (-c constraints.txt, pip --dry-run)" \
    "${pip_in_venv[@]}" install -q --dry-run --ignore-installed \
    -c constraints.txt --report "$resolved" "$wheel"
fi
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
step "linked them from ./.venv (the same versions)" \
  .venv/bin/python scripts/link_resolved_dependencies.py "$resolved" "$site"
echo "  $(cat "$tmp/log")"
step "installed the wheel (--no-deps)" "${pip_in_venv[@]}" install -q --no-deps "$wheel"
step "pip check: the wheel's requirements are met" "${pip_in_venv[@]}" check
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

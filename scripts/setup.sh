#!/usr/bin/env bash
# Creates ./.venv and installs keras_mtl (editable, with the test, bench and
# docs extras) with the versions pinned in constraints.txt. Re-running is
# cheap: it reinstalls only when pyproject.toml or constraints.txt changed.
# Prints two lines when it installs, nothing otherwise. Set PYTHON to choose
# the interpreter (3.10+).
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=.venv/.keras_mtl-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Setting up .venv (TensorFlow, Keras, JAX, test and docs tools): about a minute..." >&2
  start=$SECONDS
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  # The installers' output goes to a log, shown in full if the install
  # fails and otherwise only what is left after two known, harmless
  # messages: this machine's pip configuration names index folders that
  # may not exist ("is ignored"), and setuptools' editable install always
  # warns that a folder named like the package takes precedence (it is
  # this checkout, on purpose).
  # uv (pinned in constraints.txt, from PyPI: ~2 s) installs the same pins
  # as pip would, in parallel and from its cache when it has them (measured
  # here: 4-10 s against pip's ~40 s); pip does it if uv cannot be had.
  # Neither byte-compiles (PYTHONDONTWRITEBYTECODE may be set, and then no
  # import would): compileall -j 0 does it on every core (~12,800 files,
  # ~19 s). As with pip, a file that does not compile is not an install
  # error (-qq, || true).
  with_uv() {
    .venv/bin/python -m pip install -q -c constraints.txt uv &&
      PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/uv pip install -q --python .venv/bin/python -c constraints.txt \
        -e ".[test,bench,docs]"
  }
  with_pip() {
    .venv/bin/python -m pip install -q --upgrade pip &&
      PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/python -m pip install -q --no-compile -c constraints.txt \
        -e ".[test,bench,docs]"
  }
  if ! {
    { with_uv || { echo "uv failed: installing with pip" && with_pip; }; } &&
      { .venv/bin/python -m compileall -qq -j 0 .venv/lib/python*/site-packages || true; }
  } >"$log" 2>&1; then
    cat "$log" >&2
    echo "scripts/setup.sh: the install failed (its output is above)." >&2
    exit 1
  fi
  grep -v "is ignored" "$log" >&2 || true
  # Fail loudly if the install did not work; TensorFlow's start-up lines
  # (printed even with TF_CPP_MIN_LOG_LEVEL=3) are shown only then.
  if ! out=$(TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c \
    "import keras_mtl, sklearn, pytest, keras_nlp, matplotlib, tensorflow_datasets, mkdocs, build" 2>&1); then
    echo "$out" >&2
    echo "scripts/setup.sh: the installed packages do not import (above)." >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  echo ".venv ready ($((SECONDS - start)) s)." >&2
fi

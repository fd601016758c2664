#!/usr/bin/env bash
# Creates ./.venv and installs keras_mtl (editable) with the versions pinned in
# constraints.txt. Re-running is cheap: it reinstalls only when pyproject.toml
# or constraints.txt changed. Set PYTHON to choose the interpreter (3.10+).
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=.venv/.keras_mtl-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Setting up .venv (TensorFlow, Keras, test tools): about a minute..." >&2
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" >&2 || true
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test,bench]" 2>&1 \
    | grep -v "is ignored" >&2 || true
  .venv/bin/python -c "import keras_mtl, sklearn, pytest, keras_nlp, matplotlib, tensorflow_datasets" # fail loudly if the install did not work
  echo "$want" > "$stamp"
fi

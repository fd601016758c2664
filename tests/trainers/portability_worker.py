"""Saves or loads a trained MultiTaskModel on one backend, for the
cross-backend `.keras` test (tests/trainers/test_backends.py).

    KERAS_BACKEND=jax python tests/trainers/portability_worker.py save DIR
    KERAS_BACKEND=tensorflow python tests/trainers/portability_worker.py load DIR
    KERAS_BACKEND=jax python tests/trainers/portability_worker.py load DIR1 save DIR2

(modes and directories in pairs, run in order; the test calls the
functions of its own backend in its own process).

`save` trains a model whose weighting and aggregator both keep state
(DWA's loss history, MoCo's tracked gradients) and writes `DIR/m.keras`
with `DIR/expected.npz`: its predictions on fixed inputs and the value of
every variable by path. `load` loads the file, checks both and writes
`DIR/loaded.json` with the backend and the largest differences.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conftest import TASK_LOSSES, Digits, build_net  # noqa: E402

import keras_mtl  # noqa: E402


def _values(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(keras.ops.convert_to_numpy(v)) for v in model.variables}


def save(directory: str) -> None:
    digits = Digits(256)
    keras.utils.set_random_seed(3)
    model = keras_mtl.MultiTaskModel(build_net(), weighting="dwa", aggregator="moco")
    model.compile(optimizer="adam", loss=dict(TASK_LOSSES), jit_compile=True)
    model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    model.save(os.path.join(directory, "m.keras"))
    predictions = model.predict(digits.x[:32], verbose=0)
    np.savez(
        os.path.join(directory, "expected.npz"),
        **{f"prediction/{k}": v for k, v in predictions.items()},
        **{f"variable/{k}": v for k, v in _values(model).items()},
    )


def load(directory: str) -> None:
    digits = Digits(256)
    expected = np.load(os.path.join(directory, "expected.npz"))
    model = keras.models.load_model(os.path.join(directory, "m.keras"))
    predictions = model.predict(digits.x[:32], verbose=0)
    values = _values(model)
    prediction_error = max(
        float(np.max(np.abs(predictions[k] - expected[f"prediction/{k}"])))
        for k in predictions
    )
    variables = sorted(
        k[len("variable/") :] for k in expected if k.startswith("variable/")
    )
    missing = sorted(set(variables) - set(values))
    variable_error = max(
        float(np.max(np.abs(values[k].astype("float64") - expected[f"variable/{k}"])))
        for k in variables
        if k in values
    )
    # The loaded model trains on (its optimizer and method state included).
    model.fit(digits.x, digits.y, epochs=1, batch_size=64, verbose=0)
    finite = all(np.all(np.isfinite(v)) for v in _values(model).values())
    result = {
        "backend": keras.backend.backend(),
        "prediction_error": prediction_error,
        "variable_error": variable_error,
        "missing": missing,
        "moco_state_nonzero": bool(np.any(values[model.aggregator.variables[0].path])),
        "trains": bool(finite),
    }
    with open(os.path.join(directory, "loaded.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    pairs = sys.argv[1:]
    for mode, directory in zip(pairs[::2], pairs[1::2], strict=True):
        {"save": save, "load": load}[mode](directory)

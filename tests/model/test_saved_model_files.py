"""`.keras` files frozen at each release (tests/saved_models/<version>/) load
in this version and compute what their release recorded beside them.

scripts/freeze_saved_models.py writes, per case, `<case>.keras` (a tiny
trained MultiTaskModel) and `<case>.json`: a fixed batch, the release's
predictions on it, the logs of one more training step on it, and the
method's state. A new release folder adds its cases here by itself.
"""

import importlib.util
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_mtl

pytestmark = pytest.mark.backend_neutral

SAVED_MODELS = Path(__file__).resolve().parents[1] / "saved_models"
# The cases every later version must load (those of the first release).
FIRST_RELEASE = "0.1.0"
FIRST_CASES = {
    "famo",
    "uncertainty_nash_mtl",
    "representation_mgda_dwa",
    "subclassed_pcgrad",
}
# A tiny float32 net on a batch of 16: the same inputs and weights give
# outputs and losses within a few float32 ulps on another backend or CPU
# (different kernels and summation orders), far inside these.
RTOL, ATOL = 1e-5, 1e-6


def _load_nets() -> None:
    """Registers the files' custom net class (tests/saved_models/nets.py),
    imported from its path under the name the freezing script uses."""
    name = "keras_mtl_frozen_nets"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SAVED_MODELS / "nets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _release_folders() -> list[Path]:
    if not SAVED_MODELS.is_dir():  # test_the_first_release_files_are_there fails
        return []
    return sorted(
        p for p in SAVED_MODELS.iterdir() if p.is_dir() and p.name[0] not in "._"
    )


def _records() -> list[Path]:
    return [r for folder in _release_folders() for r in sorted(folder.glob("*.json"))]


def test_the_first_release_files_are_there():
    folder = SAVED_MODELS / FIRST_RELEASE
    assert folder.is_dir(), f"{folder} is missing"
    cases = {p.stem for p in folder.glob("*.json")}
    assert FIRST_CASES <= cases, f"missing in {folder}: {FIRST_CASES - cases}"


@pytest.mark.parametrize("folder", _release_folders(), ids=lambda p: p.name)
def test_every_file_has_its_record(folder):
    models = {p.stem for p in folder.glob("*.keras")}
    records = {p.stem for p in folder.glob("*.json")}
    assert models and models == records, (models, records)
    for record in records:
        written_by = json.loads((folder / f"{record}.json").read_text())["written_by"]
        # A release writes into its own folder only.
        assert written_by["keras_mtl"] == folder.name, (record, written_by)


def _to_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _assert_state(layer, saved: dict, what: str) -> None:
    """A method's variables equal the file's values exactly: loading copies
    them (the integer random-generator state and counters too)."""
    if not saved:
        return
    assert layer is not None, f"the loaded model has no {what}"
    variables = {v.name: v for v in layer.variables}
    for name, entry in saved.items():
        assert name in variables, f"{what} lost its variable {name!r}"
        np.testing.assert_array_equal(
            _to_numpy(variables[name]), np.asarray(entry["value"]), err_msg=name
        )


@pytest.mark.parametrize(
    "record_path",
    _records(),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_frozen_file_loads_and_computes_what_its_release_did(record_path):
    record = json.loads(record_path.read_text())
    assert record["format"] == 1, record["format"]
    _load_nets()
    model = keras.models.load_model(record_path.with_suffix(".keras"))

    assert isinstance(model, keras_mtl.MultiTaskModel)
    tasks = record["tasks"]
    assert model.task_names == tasks
    state = record["state"]
    _assert_state(model.weighting, state["weighting"], "weighting")
    _assert_state(model.aggregator, state["aggregator"], "aggregator")
    assert int(_to_numpy(model.train_steps)) == state["train_steps"]
    assert int(_to_numpy(model.optimizer.iterations)) == state["optimizer_iterations"]
    np.testing.assert_array_equal(
        _to_numpy(model.task_loss_weights), state["task_loss_weights"]
    )

    x = np.asarray(record["x"], dtype="float32")
    y = {t: np.asarray(v["value"], dtype=v["dtype"]) for t, v in record["y"].items()}
    predictions = model.predict(x, verbose=0)
    assert sorted(predictions) == sorted(tasks)
    for task in tasks:
        np.testing.assert_allclose(
            predictions[task],
            np.asarray(record["predict"][task]),
            rtol=RTOL,
            atol=ATOL,
            err_msg=task,
        )

    # The next step's loss and task losses (and the weights it uses, when
    # they come from the saved state) need the method's state, the compile
    # configuration and the weights as they were saved.
    logs = model.train_on_batch(x, y, return_dict=True)
    for key, expected in record["next_step"].items():
        np.testing.assert_allclose(
            float(logs[key]), expected, rtol=RTOL, atol=ATOL, err_msg=key
        )
    assert int(_to_numpy(model.train_steps)) == state["train_steps"] + 1

"""Smoke test of an installed keras_mtl wheel (run by scripts/check_wheel.sh).

    python -I scripts/wheel_smoke_test.py CHECKOUT_DIR

Run with the interpreter of a fresh virtual environment holding the wheel,
from a directory outside the checkout (-I keeps the script's folder and
PYTHONPATH off sys.path). Prints one line per check and a final line; exits 1
at the first failed check.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras_mtl

CHECKS: list[tuple[str, Callable[[], str]]] = []


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Registers a check; the function returns a short detail for its line."""

    def register(function: Callable[[], str]) -> Callable[[], str]:
        CHECKS.append((name, function))
        return function

    return register


def tiny_problem() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """64 random examples, a 3-class and a regression task."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    return x, {
        "cls": rng.integers(0, 3, size=(64,)),
        "reg": rng.normal(size=(64, 1)).astype("float32"),
    }


def build_model(**method: str) -> keras_mtl.MultiTaskModel:
    # Imported here, so the first check sees where keras_mtl comes from.
    import keras

    import keras_mtl

    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    net = keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(3, activation="softmax", name="cls")(h),
            "reg": keras.layers.Dense(1, name="reg")(h),
        },
    )
    model = keras_mtl.MultiTaskModel(net, **method)
    model.compile(
        optimizer="adam",
        loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
    )
    return model


def fit_and_check(**method: str) -> str:
    x, y = tiny_problem()
    model = build_model(**method)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    losses = history.history["loss"]
    if len(losses) != 2 or not np.all(np.isfinite(losses)):
        raise AssertionError(f"losses per epoch: {losses}")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@check("import keras_mtl from the environment's site-packages")
def check_import() -> str:
    import keras_mtl

    where = Path(keras_mtl.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    checkout = Path(sys.argv[1]).resolve()
    if where.parent != site or checkout in where.parents:
        raise AssertionError(f"keras_mtl imported from {where}, not from {site}")
    return f"{where} (version {keras_mtl.__version__})"


@check("py.typed installed")
def check_py_typed() -> str:
    marker = resources.files("keras_mtl") / "py.typed"
    if not marker.is_file():
        raise AssertionError(f"{marker} is missing")
    return str(marker)


@check("fit with a weighting (adaptive)")
def check_fit_weighting() -> str:
    return fit_and_check(weighting="adaptive")


@check("fit with an aggregator (upgrad)")
def check_fit_aggregator() -> str:
    return fit_and_check(aggregator="upgrad")


@check("save and keras.models.load_model round trip")
def check_save_load() -> str:
    import keras

    x, y = tiny_problem()
    model = build_model(weighting="uncertainty")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
    before, after = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for task in before:
        # The same weights and the same graph: equal up to float rounding.
        np.testing.assert_allclose(after[task], before[task], rtol=1e-6, atol=1e-6)
    if type(loaded) is not type(model):
        raise AssertionError(f"loaded a {type(loaded).__name__}")
    return f"{type(loaded).__name__}, predictions equal"


@check("keras-mtl bench --help")
def check_cli() -> str:
    command = Path(sys.executable).parent / "keras-mtl"
    done = subprocess.run(
        [str(command), "bench", "--help"], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0 or "--methods" not in done.stdout:
        raise AssertionError(f"exit {done.returncode}: {done.stdout}{done.stderr}")
    return f"{command} prints its options"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for number, (name, function) in enumerate(CHECKS, 1):
        try:
            detail = function()
        except Exception as error:  # report which check failed, then stop
            print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
            return 1
        print(f"ok {number}/{len(CHECKS)} {name}: {detail}", flush=True)
    print(f"Wheel smoke test: all {len(CHECKS)} checks passed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

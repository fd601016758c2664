"""Freezes small `.keras` files of this release for tests/model/test_saved_model_files.py.

Run once at each release, on the TensorFlow backend, into a new folder named
by the version (the default, tests/saved_models/<keras_mtl.__version__>):

    KERAS_BACKEND=tensorflow .venv/bin/python scripts/freeze_saved_models.py

Never overwrite an older release's files (the script refuses an existing
folder): they are the promise that every later version loads what that
release saved. Each case writes `<case>.keras`, a tiny MultiTaskModel trained
a few steps so its method state is not the initial one, and `<case>.json`,
what this release computed with it: its predictions on a fixed batch, the
logs of one more training step on that batch, and its state.

`--output DIR` writes elsewhere (to try the script without a release).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_mtl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAVED_MODELS = ROOT / "tests" / "saved_models"
RECORD_FORMAT = 1
FEATURES = 8
HIDDEN = 8
CLASSES = 3
BATCH = 16  # the fixed batch of the record, and the training batch size
TRAIN_SAMPLES = 64  # 4 steps per epoch

# The three tasks of the functional nets: a regression, a 3-class and a
# binary classification (one loss family each).
LOSSES = {
    "value": "mean_squared_error",
    "label": "sparse_categorical_crossentropy",
    "flag": "binary_crossentropy",
}


def load_nets() -> Any:
    """tests/saved_models/nets.py (the registered subclassed net), imported
    from its path under the name the test uses too."""
    name = "keras_mtl_frozen_nets"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SAVED_MODELS / "nets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def make_data(num_samples: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs `(N, FEATURES)` and the three tasks' targets, learnable from them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, FEATURES)).astype("float32")
    mix = rng.normal(size=(FEATURES, CLASSES + 2)).astype("float32")
    z = x @ mix / np.sqrt(FEATURES)  # unit variance: losses of order 1
    y = {
        "value": (z[:, :1] + 0.1 * rng.normal(size=(num_samples, 1))).astype("float32"),
        "label": np.argmax(z[:, 1 : 1 + CLASSES], axis=1).astype("int32"),
        "flag": (z[:, -1:] > 0).astype("float32"),
    }
    return x, y


def functional_net(hidden_name: str = "trunk") -> keras.Model:
    """A functional net `(N, 8) -> {value, label, flag}` with one shared layer."""
    inputs = keras.Input((FEATURES,), name="features")
    h = keras.layers.Dense(
        HIDDEN,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=1),
        name=hidden_name,
    )(inputs)
    init = keras.initializers.GlorotUniform(seed=2)
    outputs = {
        "value": keras.layers.Dense(1, kernel_initializer=init, name="value")(h),
        "label": keras.layers.Dense(
            CLASSES, activation="softmax", kernel_initializer=init, name="label"
        )(h),
        "flag": keras.layers.Dense(
            1, activation="sigmoid", kernel_initializer=init, name="flag"
        )(h),
    }
    return keras.Model(inputs, outputs, name="functional_net")


def compiled(
    model: keras_mtl.MultiTaskModel, **kwargs: Any
) -> keras_mtl.MultiTaskModel:
    # jit_compile="auto": a loaded model compiles as that backend does by
    # default (XLA on JAX, not on TensorFlow on CPU), as a user's would.
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile="auto", **kwargs)
    return model


def famo() -> keras_mtl.MultiTaskModel:
    """A loss-level weighting with state updated at every step (logits,
    previous losses, its own Adam moments); static loss weights too."""
    model = keras_mtl.MultiTaskModel(functional_net(), weighting="famo")
    return compiled(
        model, loss=dict(LOSSES), loss_weights={"value": 1.0, "label": 0.5, "flag": 2.0}
    )


def uncertainty_nash_mtl() -> keras_mtl.MultiTaskModel:
    """A stateful aggregator over a weighting with trainable parameters.
    Nash-MTL solves every 3rd step: after 8 steps the next one (step 8)
    reuses the stored weights, so its logged weights come from the file."""
    model = keras_mtl.MultiTaskModel(
        functional_net(),
        weighting="uncertainty",
        aggregator=keras_mtl.aggregation.NashMTL(update_every=3),
    )
    return compiled(model, loss=dict(LOSSES))


def representation_mgda_dwa() -> keras_mtl.MultiTaskModel:
    """Representation mode (MGDA on the gradients of the "trunk" output)
    under DWA, an epoch-level weighting: after 3 epochs its next step
    closes the third one and weights the losses from the saved history."""
    model = keras_mtl.MultiTaskModel(
        functional_net(),
        weighting="dwa",
        aggregator="mgda",
        representation="trunk",
    )
    return compiled(model, loss=dict(LOSSES))


def subclassed_pcgrad() -> keras_mtl.MultiTaskModel:
    """A registered subclassed net (its variables exist after a call only)
    with a seeded aggregator, whose random-generator state is saved."""
    net = load_nets().SubclassedTwoTaskNet(hidden=HIDDEN, classes=CLASSES)
    model = keras_mtl.MultiTaskModel(
        net, aggregator=keras_mtl.aggregation.PCGrad(seed=5)
    )
    return compiled(
        model,
        loss={"value": LOSSES["value"], "label": LOSSES["label"]},
    )


# case: (builder, epochs of TRAIN_SAMPLES in batches of BATCH, whether the
# logged task weights of the next step are compared). Weights an
# aggregator solves for at that step (MGDA's iterative solver, PCGrad's
# projections of a Gramian) carry a rounding error that grows with the
# Gramian's conditioning, not float32 rounding alone: left out.
CASES: dict[str, tuple[Callable[[], keras_mtl.MultiTaskModel], int, bool]] = {
    "famo": (famo, 2, True),
    "uncertainty_nash_mtl": (uncertainty_nash_mtl, 2, True),
    "representation_mgda_dwa": (representation_mgda_dwa, 3, False),
    "subclassed_pcgrad": (subclassed_pcgrad, 2, False),
}


def to_list(value: Any) -> Any:
    """A JSON value of a tensor: float32 values as Python floats (exact:
    every float32 is a float64) and integers as ints."""
    array = np.asarray(keras.ops.convert_to_numpy(value))
    return array.tolist()


def named_values(layer: keras.layers.Layer | None) -> dict[str, Any]:
    """A method's variables (the seed generator's state included) by name."""
    if layer is None:
        return {}
    values = {}
    for variable in layer.variables:
        if variable.name in values:
            raise ValueError(f"Two variables named {variable.name!r} in {layer.name}.")
        values[variable.name] = {
            "dtype": variable.dtype,
            "value": to_list(variable),
        }
    return values


def state_of(model: keras_mtl.MultiTaskModel) -> dict[str, Any]:
    return {
        "weighting": named_values(model.weighting),
        "aggregator": named_values(model.aggregator),
        "train_steps": int(keras.ops.convert_to_numpy(model.train_steps)),
        "optimizer_iterations": int(
            keras.ops.convert_to_numpy(model.optimizer.iterations)
        ),
        "task_loss_weights": to_list(model.task_loss_weights),
    }


def freeze(case: str, folder: Path) -> None:
    build, epochs, weights_compared = CASES[case]
    keras.utils.set_random_seed(0)
    model = build()
    tasks = list(model.task_names)
    x_train, y_train = make_data(TRAIN_SAMPLES, seed=1)
    x, y = make_data(BATCH, seed=2)
    y_train = {t: y_train[t] for t in tasks}
    y = {t: y[t] for t in tasks}
    model.fit(x_train, y_train, epochs=epochs, batch_size=BATCH, verbose=0)
    path = folder / f"{case}.keras"
    model.save(path)

    record = {
        "format": RECORD_FORMAT,
        "case": case,
        "description": " ".join(build.__doc__.split()),
        "written_by": {
            "keras_mtl": keras_mtl.__version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "backend_version": backend_version(),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "tasks": tasks,
        "x": to_list(x),
        "y": {t: {"dtype": str(y[t].dtype), "value": y[t].tolist()} for t in tasks},
        "state": state_of(model),
        "predict": {t: to_list(v) for t, v in model.predict(x, verbose=0).items()},
    }
    logs = model.train_on_batch(x, y, return_dict=True)
    keys = ["loss", *(f"{t}_loss" for t in tasks)]
    if weights_compared:
        keys += [f"{t}_weight" for t in tasks]
    record["next_step"] = {k: float(logs[k]) for k in keys}
    (folder / f"{case}.json").write_text(json.dumps(record, indent=1) + "\n")
    check_reloads(path, record, x, y)
    print(f"{case}: {path.stat().st_size} bytes; next step {record['next_step']}")


def check_reloads(path: Path, record: dict[str, Any], x: Any, y: Any) -> None:
    """The file, loaded here, gives what the record says (what the test
    checks in later versions), or nothing is frozen."""
    loaded = keras.models.load_model(path)
    predictions = loaded.predict(x, verbose=0)
    for task, expected in record["predict"].items():
        np.testing.assert_allclose(predictions[task], expected, rtol=1e-6, atol=1e-7)
    logs = loaded.train_on_batch(x, y, return_dict=True)
    for key, expected in record["next_step"].items():
        np.testing.assert_allclose(logs[key], expected, rtol=1e-6, atol=1e-7)


def backend_version() -> str:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.__version__
    if backend == "jax":
        import jax

        return jax.__version__
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=SAVED_MODELS / keras_mtl.__version__,
        help="a new folder for the files (default: tests/saved_models/<version>)",
    )
    args = parser.parse_args(argv)
    output = args.output.resolve()
    if output.exists():
        raise SystemExit(
            f"{output} exists: a release's frozen files are never overwritten. "
            "Bump the version, or pass --output to a new folder."
        )
    # Written into a scratch folder and moved at the end: a failed run
    # leaves no partial release folder behind.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
        scratch = Path(scratch)
        for case in CASES:
            freeze(case, scratch)
        shutil.move(str(scratch), str(output))
        output.chmod(0o755)  # a scratch folder is private (0700)
        scratch.mkdir()  # for TemporaryDirectory's cleanup
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

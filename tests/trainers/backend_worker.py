"""Trains every method for a few steps on one Keras backend and writes what
it saw, for the TensorFlow/JAX parity test (tests/trainers/test_backend_parity.py).

    KERAS_BACKEND=jax python tests/trainers/backend_worker.py out.json METHOD [METHOD ...]

Each METHOD is a benchmark method specification (`adaptive`, `pcgrad`,
`adaptive+upgrad`), optionally with `@trunk` for representation mode and
`@k2` for the first two tasks only and `@reg` for regularisers (an L2
kernel and an L2 activity regulariser on the trunk, an L1 activity
regulariser on the digit head). Everything that could differ between
backends is fixed here instead: the data (real scikit-learn digits), the
initial weights (numpy, by variable path) and the optimizer (plain SGD).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.bench.runner import parse_method  # noqa: E402

NUM_SAMPLES = 256
BATCH_SIZE = 64
EPOCHS = 3
TASK_LOSSES = {
    "digit": "sparse_categorical_crossentropy",
    "parity": "binary_crossentropy",
    "ink": "mse",
}


def data(tasks: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    digits = load_digits()
    x = (digits.data[:NUM_SAMPLES] / 16.0).astype("float32")
    labels = digits.target[:NUM_SAMPLES]
    y = {
        "digit": labels.astype("int32"),
        "parity": (labels % 2).astype("float32")[:, None],
        "ink": (x.mean(axis=1, keepdims=True) * 4.0).astype("float32"),
    }
    return x, {t: y[t] for t in tasks}


def build_net(tasks: list[str], regularized: bool = False) -> keras.Model:
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(
        16,
        activation="tanh",
        name="trunk",
        kernel_regularizer=keras.regularizers.L2(1e-3) if regularized else None,
        activity_regularizer=keras.regularizers.L2(1e-3) if regularized else None,
    )(inputs)
    heads = {
        "digit": keras.layers.Dense(
            10,
            activation="softmax",
            name="digit",
            activity_regularizer=keras.regularizers.L1(1e-3) if regularized else None,
        ),
        "parity": keras.layers.Dense(1, activation="sigmoid", name="parity"),
        "ink": keras.layers.Dense(1, name="ink"),
    }
    outputs = {t: heads[t](hidden) for t in tasks}
    net = keras.Model(inputs, outputs, name="net")
    # The same initial values on every backend (their RNGs differ).
    rng = np.random.RandomState(0)
    for variable in net.weights:
        value = rng.uniform(-0.3, 0.3, size=tuple(variable.shape))
        variable.assign(value.astype("float32"))
    return net


# The one spec with an aggregator that is also evaluated (see `evaluated`).
EVALUATED_WITH_AGGREGATOR = "upgrad"


def evaluated(spec: str) -> bool:
    """Whether `spec`'s model is also evaluated. An evaluation step runs the
    net and the weighting, never the aggregator (it takes no gradients),
    so with an aggregator its numbers follow from the parameters, which
    are compared anyway; one such spec is evaluated, the others skip the
    compile of a second step."""
    method = spec.split("@")[0]
    return parse_method(method).aggregator is None or spec == EVALUATED_WITH_AGGREGATOR


def run(spec: str) -> dict[str, object]:
    method, *options = spec.split("@")
    tasks = list(TASK_LOSSES)[:2] if "k2" in options else list(TASK_LOSSES)
    keras.utils.set_random_seed(0)
    kwargs = parse_method(method).build()
    if "trunk" in options:
        kwargs["representation"] = "trunk"
    net = build_net(tasks, regularized="reg" in options)
    model = keras_mtl.MultiTaskModel(net, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.02),
        loss={t: TASK_LOSSES[t] for t in tasks},
        jit_compile=os.environ.get("PARITY_JIT_COMPILE", "1") == "1",
    )
    x, y = data(tasks)
    history = model.fit(
        x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0
    )
    out = {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "weights": {
            v.path: np.asarray(v.numpy(), "float64").ravel().tolist()
            for v in model.net.weights
        },
    }
    if evaluated(spec):
        logs = model.evaluate(x, y, batch_size=BATCH_SIZE, verbose=0, return_dict=True)
        out["evaluate"] = {k: float(v) for k, v in logs.items()}
    return out


def main() -> None:
    out, *specs = sys.argv[1:]
    results = {"backend": keras.backend.backend()}
    for spec in specs:
        try:
            results[spec] = run(spec)
        except Exception as error:  # noqa: BLE001 - reported per method
            results[spec] = {"error": f"{type(error).__name__}: {error}"}
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()

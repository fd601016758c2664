"""Trains every method for a few steps on one Keras backend and writes what
it saw, for the TensorFlow/JAX parity test (tests/trainers/test_backend_parity.py).

    KERAS_BACKEND=jax python tests/trainers/backend_worker.py out.json METHOD [METHOD ...]

Each METHOD is a method specification of `parity_specs.py` (`adaptive`,
`pcgrad`, `adaptive+upgrad`, with options `@trunk`, `@k2`, `@reg`).
Everything that could differ between backends is fixed instead: the data
(real scikit-learn digits) and the initial weights (numpy), both from
`parity_specs.py`, and the optimizer (plain SGD).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from parity_specs import BATCH_SIZE, TASK_LOSSES, build_net, data, parse  # noqa: E402

import keras_mtl  # noqa: E402

EPOCHS = 3


# The one spec with an aggregator that is also evaluated (see `evaluated`).
EVALUATED_WITH_AGGREGATOR = "upgrad"


def evaluated(spec: str) -> bool:
    """Whether `spec`'s model is also evaluated. An evaluation step runs the
    net and the weighting, never the aggregator (it takes no gradients),
    so with an aggregator its numbers follow from the parameters, which
    are compared anyway; one such spec is evaluated, the others skip the
    compile of a second step."""
    return parse(spec).aggregator is None or spec == EVALUATED_WITH_AGGREGATOR


def run(spec: str) -> dict[str, object]:
    keras.utils.set_random_seed(0)
    parsed = parse(spec)
    tasks = parsed.tasks
    kwargs = parsed.build()
    net = build_net(tasks, regularized=parsed.regularized)
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

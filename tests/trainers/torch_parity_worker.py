"""Trains a few methods on one Keras backend and writes what it saw, for
the torch parity tests (tests/trainers/test_torch_parity.py).

    KERAS_BACKEND=torch python tests/trainers/torch_parity_worker.py train OUT DIR SPEC...
    KERAS_BACKEND=jax python tests/trainers/torch_parity_worker.py resume OUT DIRS SPEC...

`train`: each SPEC (a method specification of `parity_specs.py`, `upgrad`,
`adaptive+upgrad`; `@k2` for the first two tasks only, `@trunk` for
representation mode, `@reg` for a net with weight and activity
regularisers) trains `EPOCHS` epochs from the same initial weights;
its per-epoch logs and final parameters are written to OUT. After
`SAVED_AFTER` of them the model is saved to `DIR/<SPEC>.keras`, so the last
epochs are the saving backend's own continuation.

`resume`: each `<DIR>/<SPEC>.keras` of each of the comma-separated DIRS
(saved by other backends' `train`) is loaded and trained for the remaining
epochs on the same batches; its logs and parameters are written to OUT, to
be compared with the saving backend's continuation.

Everything that could differ between backends is fixed: the data
(scikit-learn digits) and the initial weights (numpy), both from
`parity_specs.py`, the optimizer (plain SGD) and eager steps
(`jit_compile=False`; on torch the default).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from parity_specs import BATCH_SIZE, TASK_LOSSES, build_net, data, parse  # noqa: E402

import keras_mtl  # noqa: E402

EPOCHS = 3
SAVED_AFTER = 2


def _fit(model: keras.Model, tasks: list[str], epochs: int, initial: int) -> dict:
    x, y = data(tasks)
    history = model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        initial_epoch=initial,
        shuffle=False,
        verbose=0,
    )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _parameters(model: keras.Model) -> dict[str, list[float]]:
    return {
        v.path: np.asarray(keras.ops.convert_to_numpy(v), "float64").ravel().tolist()
        for v in model.net.weights
    }


def _state(model: keras.Model) -> dict[str, list[float]]:
    """The weighting's and aggregator's variables and the step counters."""
    variables = list(model.weighting.variables)
    if model.aggregator is not None:
        variables += list(model.aggregator.variables)
    variables += [model.train_steps, model.skipped_steps]
    return {
        v.path: np.asarray(keras.ops.convert_to_numpy(v), "float64").ravel().tolist()
        for v in variables
    }


def train(spec: str, directory: str) -> dict:
    keras.utils.set_random_seed(0)
    parsed = parse(spec)
    tasks = parsed.tasks
    net = build_net(tasks, regularized=parsed.regularized)
    model = keras_mtl.MultiTaskModel(net, **parsed.build())
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.02),
        loss={t: TASK_LOSSES[t] for t in tasks},
        jit_compile=False,
    )
    first = _fit(model, tasks, SAVED_AFTER, 0)
    saved = _state(model)
    model.save(os.path.join(directory, f"{spec}.keras"))
    rest = _fit(model, tasks, EPOCHS, SAVED_AFTER)
    x, y = data(tasks)
    logs = model.evaluate(x, y, batch_size=BATCH_SIZE, verbose=0, return_dict=True)
    return {
        "history": {k: first[k] + rest[k] for k in first},
        "continued": rest,
        "saved_state": saved,
        "weights": _parameters(model),
        "evaluate": {k: float(v) for k, v in logs.items()},
    }


def resume(spec: str, directory: str) -> dict:
    model = keras.saving.load_model(os.path.join(directory, f"{spec}.keras"))
    loaded = _state(model)
    rest = _fit(model, parse(spec).tasks, EPOCHS, SAVED_AFTER)
    return {"continued": rest, "loaded_state": loaded, "weights": _parameters(model)}


def _guarded(action: Callable[[str, str], dict], spec: str, directory: str) -> dict:
    try:
        return action(spec, directory)
    except Exception as error:  # noqa: BLE001 - reported per method
        return {"error": f"{type(error).__name__}: {error}"}


def main() -> None:
    """`train OUT DIR SPEC...`: results keyed by spec. `resume OUT DIRS
    SPEC...` (DIRS comma-separated, each holding another backend's files):
    keyed by `<directory name>/<spec>`."""
    command, out, directories, *specs = sys.argv[1:]
    results: dict[str, object] = {"backend": keras.backend.backend()}
    if command == "train":
        for spec in specs:
            results[spec] = _guarded(train, spec, directories)
    elif command == "resume":
        for directory in directories.split(","):
            name = os.path.basename(directory.rstrip("/"))
            for spec in specs:
                results[f"{name}/{spec}"] = _guarded(resume, spec, directory)
    else:
        raise SystemExit(f"Unknown command {command!r}: train or resume.")
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()

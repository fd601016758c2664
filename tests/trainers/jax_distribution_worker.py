"""Trains methods on JAX with `keras.distribution.DataParallel` over two host
devices and on one device, for tests/trainers/test_jax_distribution.py.

    python tests/trainers/jax_distribution_worker.py out.npz METHOD [METHOD ...]

Runs on the JAX backend with two forced host devices
(`--xla_force_host_platform_device_count=2`, appended to `XLA_FLAGS`
before JAX starts). Each METHOD is a benchmark method specification
(`adaptive`, `pcgrad`, `adaptive+upgrad`), optionally with `@trunk` for
representation mode. Each method is trained twice from the same initial
weights on the same data (3 steps of a global batch of 32, SGD, XLA):
under `DataParallel` over both devices and with no distribution. The
output holds, per method and run, every parameter of the net and the
logs of every step, or the error the run raised (`<spec>|<run>|error`).
"""

from __future__ import annotations

import json
import os
import sys
import time

# Before JAX starts: the backend, and two host devices (the flags the
# caller set, such as scripts/test.sh's optimisation level, are kept).
os.environ["KERAS_BACKEND"] = "jax"
os.environ["JAX_PLATFORMS"] = "cpu"  # the forced devices are host devices
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DEVICE_FLAG = "--xla_force_host_platform_device_count=2"
if DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}".strip()

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.bench.runner import parse_method  # noqa: E402

GLOBAL_BATCH = 32
STEPS = 3
FEATURES = 8
TASK_LOSSES = {
    "reg": "mse",
    "bin": "binary_crossentropy",
    "cls": "sparse_categorical_crossentropy",
}
# Methods that draw random numbers: seeded, the same seed in both runs.
SEEDED = {"rlw", "graddrop", "pcgrad", "gradvac"}
RUNS = ("data_parallel", "one_device")


def data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One global batch, trained on once per epoch (one step an epoch, so
    the history holds every step's logs and epoch-level methods see three
    epochs)."""
    rng = np.random.RandomState(1)
    x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype("float32")
    y = {
        "reg": (x[:, :1] - 0.5 * x[:, 1:2]).astype("float32"),
        "bin": (x[:, 2:3] > 0).astype("float32"),
        "cls": (np.argmax(x[:, 3:6], axis=1)).astype("int32"),
    }
    return x, y


def build_net() -> keras.Model:
    inputs = keras.Input((FEATURES,), name="x")
    hidden = keras.layers.Dense(12, activation="tanh", name="trunk")(inputs)
    outputs = {
        "reg": keras.layers.Dense(1, name="reg")(hidden),
        "bin": keras.layers.Dense(1, activation="sigmoid", name="bin")(hidden),
        "cls": keras.layers.Dense(3, activation="softmax", name="cls")(hidden),
    }
    net = keras.Model(inputs, outputs, name="net")
    # Fixed initial values, the same in both runs.
    rng = np.random.RandomState(0)
    for variable in net.weights:
        value = rng.uniform(-0.5, 0.5, size=tuple(variable.shape))
        variable.assign(value.astype("float32"))
    return net


def _method_kwargs(method: str) -> dict[str, object]:
    parsed = parse_method(method)
    for name, kwargs in (
        (parsed.weighting, parsed.weighting_kwargs),
        (parsed.aggregator, parsed.aggregator_kwargs),
    ):
        if name in SEEDED:
            kwargs.setdefault("seed", 0)
    return parsed.build()


def train(spec: str, distributed: bool) -> dict[str, np.ndarray]:
    """Trains `spec` once; returns its parameters and per-step logs."""
    method, *options = spec.split("@")
    distribution = (
        keras.distribution.DataParallel(devices=jax.devices()) if distributed else None
    )
    keras.distribution.set_distribution(distribution)
    try:
        keras.utils.set_random_seed(0)
        kwargs = _method_kwargs(method)
        if "trunk" in options:
            kwargs["representation"] = "trunk"
        model = keras_mtl.MultiTaskModel(build_net(), **kwargs)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.1),
            loss=dict(TASK_LOSSES),
            jit_compile=True,
        )
        x, y = data()
        history = model.fit(
            x, y, batch_size=GLOBAL_BATCH, epochs=STEPS, shuffle=False, verbose=0
        )
        out = {
            f"log/{key}": np.asarray(values, "float64")
            for key, values in history.history.items()
        }
        for variable in model.net.weights:
            out[f"param/{variable.path}"] = np.asarray(variable.numpy(), "float64")
        # Where the parameters live: both devices under DataParallel.
        sharding = model.net.weights[0].value.sharding
        out["devices"] = np.asarray(len(sharding.device_set))
        return out
    finally:
        keras.distribution.set_distribution(None)


def main() -> None:
    out, *specs = sys.argv[1:]
    if len(jax.devices()) != 2:
        raise SystemExit(f"expected 2 host devices, got {jax.devices()}")
    # The initial parameters (the same for every method), to tell that a
    # run trained at all.
    arrays = {
        f"initial/{v.path}": np.asarray(v.numpy(), "float64")
        for v in build_net().weights
    }
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for spec in specs:
        for run in RUNS:
            start = time.perf_counter()
            try:
                result = train(spec, distributed=run == "data_parallel")
            except Exception as error:  # noqa: BLE001 - reported per method
                errors[f"{spec}|{run}"] = f"{type(error).__name__}: {error}"
                continue
            finally:
                seconds[f"{spec}|{run}"] = time.perf_counter() - start
            arrays.update({f"{spec}|{run}|{k}": v for k, v in result.items()})
    arrays["errors"] = np.asarray(json.dumps(errors))
    # Wall time of each run (compile and 3 steps), for the docs.
    arrays["seconds"] = np.asarray(json.dumps(seconds))
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()

"""What is particular to the torch trainer (keras_mtl/trainers/torch_trainer.py):
`jit_compile=True` (Keras' `torch.compile` of the step), a
`keras.distribution`, the optimizer a `.keras` file saves. Runs in the torch
pass of the suite (`KERAS_BACKEND=torch`); the numbers against TensorFlow
are compared by tests/trainers/test_torch_parity.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TASK_LOSSES, build_net

import keras_mtl

pytestmark = [
    pytest.mark.backend_neutral,
    pytest.mark.skipif(
        keras.backend.backend() != "torch", reason="the torch trainer only"
    ),
]


def _model(aggregator: str | None, jit_compile: bool) -> keras_mtl.MultiTaskModel:
    keras.utils.set_random_seed(0)
    model = keras_mtl.MultiTaskModel(
        build_net(seed=3), weighting="uncertainty", aggregator=aggregator
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=dict(TASK_LOSSES),
        jit_compile=jit_compile,
    )
    return model


def _values(model: keras.Model) -> list[np.ndarray]:
    variables = model.net.weights + model.weighting.variables
    if model.aggregator is not None:
        variables = variables + model.aggregator.variables
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def test_jit_compile_trains_like_the_eager_step(digits):
    """Under `torch.compile` the step takes one gradient per task of one
    forward pass (a backward function compiled with donated buffers would
    refuse the second); the aggregator runs eagerly between the compiled
    parts. The same float32 operations: the same parameters."""
    x, y = digits.x[:128], {k: v[:128] for k, v in digits.y.items()}
    trained = []
    for jit_compile in (False, True):
        model = _model("upgrad", jit_compile)
        model.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
        assert model.jit_compile is jit_compile
        assert int(model.train_steps.numpy()) == 2
        trained.append(_values(model))
    for eager, compiled in zip(*trained):
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_jit_compile_trains_the_trunk_in_representation_mode(digits):
    """In representation mode the step differentiates the task losses at the
    trunk's output. Compiled in one graph with the heads, that output was
    not on the losses' backward path (no row, no direction, a trunk that
    never moved); the heads now take it across a graph break
    (`TorchTrainer._heads_input`). Compiled and eager: the same float32
    operations, their reductions possibly in another order."""
    x, y = digits.x[:128], {k: v[:128] for k, v in digits.y.items()}
    steps, learning_rate, batch_size = 2, 0.05, 64
    runs = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        # IMTL-G: a closed-form direction (no iterative solver to amplify
        # the rounding differences between the two runs).
        model = keras_mtl.MultiTaskModel(
            build_net(seed=3), aggregator="imtl_g", representation="hidden"
        )
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate),
            loss=dict(TASK_LOSSES),
            jit_compile=jit_compile,
        )
        initial = _net_values(model)
        model.fit(x, y, epochs=1, batch_size=batch_size, shuffle=False, verbose=0)
        assert model.jit_compile is jit_compile
        assert int(model.train_steps.numpy()) == steps
        runs.append((initial, _net_values(model)))
    names = [v.path for v in model.net.weights]
    assert names[:2] == ["hidden/kernel", "hidden/bias"]  # the trunk
    (initial, eager), (_, compiled) = runs
    # Each step's update, lr * g, may differ by n * u of its size, g's
    # entries being sums of n float32 terms in another order (n = 64, the
    # batch; u = 2^-24), and each parameter by one rounding of its value.
    u = float(np.finfo(np.float32).eps) / 2
    for name, start, expected, got in zip(names, initial, eager, compiled):
        update = np.max(np.abs(expected - start))
        bound = steps * batch_size * u * update + u * np.max(np.abs(expected))
        # The eager steps move every parameter (the trunk's too) by more
        # than the bound: a compiled step that leaves one unchanged fails.
        assert update > bound, name
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound, err_msg=name)


def _net_values(model: keras_mtl.MultiTaskModel) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.net.weights]


def test_a_distribution_over_several_devices_raises():
    mesh = keras.distribution.DeviceMesh((2,), ["batch"], ["cpu:0", "cpu:1"])
    distribution = keras.distribution.DataParallel(device_mesh=mesh)
    keras.distribution.set_distribution(distribution)
    try:
        with pytest.raises(NotImplementedError, match="keras.distribution"):
            _model("upgrad", jit_compile=False)
    finally:
        keras.distribution.set_distribution(None)
    # Set after compile: `fit` raises before any step.
    model = _model(None, jit_compile=False)
    keras.distribution.set_distribution(distribution)
    try:
        with pytest.raises(NotImplementedError, match="DataParallel"):
            model.fit(*_batch(), verbose=0)
    finally:
        keras.distribution.set_distribution(None)
    assert int(model.train_steps.numpy()) == 0


def _batch() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.random((16, 64)).astype("float32")
    digit = rng.integers(0, 10, 16)
    return x, {"digit": digit.astype("int32"), "parity": (digit % 2).astype("float32")}


def test_the_saved_optimizer_is_the_public_class():
    model = _model(None, jit_compile=False)
    assert type(model.optimizer).__module__.startswith("keras.src.backend.torch")
    saved = model.get_compile_config()["optimizer"]
    assert saved["module"] == "keras.optimizers" and saved["class_name"] == "SGD"
    revived = keras.saving.deserialize_keras_object(saved)
    # On torch the public class is again the torch implementation.
    assert type(revived) is type(model.optimizer)


@pytest.mark.parametrize(
    "weighting, aggregator", [("dwa", None), ("dwa", "pcgrad"), ("equal", "grad_norm")]
)
def test_non_finite_steps_are_skipped_and_counted(digits, weighting, aggregator):
    """A step whose loss is not finite changes no parameter, no optimizer
    state and no method state (its update is a Python branch on torch)."""
    model = keras_mtl.MultiTaskModel(
        build_net(), weighting=weighting, aggregator=aggregator, on_nonfinite="skip"
    )
    # A regression loss on parity: an infinite target gives a finite
    # prediction an infinite loss (eager torch rejects an infinite binary
    # cross-entropy target outright).
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=dict(TASK_LOSSES, parity="mse")
    )
    x, y = digits.batch()
    model.train_on_batch(x, y)
    before = _values(model) + [
        np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables
    ]
    model.train_on_batch(x, dict(y, parity=np.full_like(y["parity"], np.inf)))
    after = _values(model) + [
        np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables
    ]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(model.skipped_steps.numpy()) == 1
    np.testing.assert_array_equal(model.nonfinite_tasks.numpy(), [0, 1])


_TRAIN_AND_REPORT_TENSORFLOW = """
import sys
import keras
import numpy as np
import keras_mtl

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = {t: rng.normal(size=(64, 1)).astype("float32") for t in ("a", "b", "c")}
inputs = keras.Input((8,))
hidden = keras.layers.Dense(16, activation="relu")(inputs)
net = keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(hidden) for t in y})
model = keras_mtl.MultiTaskModel(net, weighting="uncertainty", aggregator="upgrad")
model.compile(optimizer="adam", loss={t: "mse" for t in y})
model.fit(x, y, batch_size=16, epochs=1, validation_split=0.25, verbose=0)
model.evaluate(x, y, verbose=0)
model.predict(x, verbose=0)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="TensorFlow is not installed: nothing could import it",
)
def test_training_does_not_import_tensorflow():
    """A torch user's `fit`, `evaluate` and `predict` leave TensorFlow
    unimported even where it is installed (it adds ~480 MB to the process):
    float labels may be missing, so `fit` copies the aggregator for the
    steps with absent tasks (`from_config(get_config())`), and serialising
    a dtype policy would import it (Keras checks for tf.TensorShape)."""
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_AND_REPORT_TENSORFLOW],
        env={**os.environ, "KERAS_BACKEND": "torch"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow imported: False" in result.stdout, result.stdout

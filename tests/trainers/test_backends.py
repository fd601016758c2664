"""What must hold on every Keras backend (run under TensorFlow and, by
`scripts/test.sh`, again under JAX): eager and compiled steps agree,
non-finite steps are skipped with the state kept, callbacks that write the
method's variables take effect, an error leaves the model usable, shared
parameters are found by structure, and a `.keras` file moves between
backends. The per-method numbers are compared across backends in
tests/trainers/test_backend_parity.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TASK_LOSSES, SubclassedNet, build_net

import keras_mtl

pytestmark = pytest.mark.backend_neutral

HERE = Path(__file__).parent
TESTS = HERE.parent  # tests/conftest.py, which the worker imports
OTHER = {"tensorflow": "jax", "jax": "tensorflow", "torch": "tensorflow"}[
    keras.backend.backend()
]


def _model(method="equal", net=None, jit_compile=True, **kwargs):
    model = keras_mtl.MultiTaskModel(
        net if net is not None else build_net(), **method_kwargs(method), **kwargs
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=dict(TASK_LOSSES),
        jit_compile=jit_compile,
    )
    return model


def method_kwargs(method: str) -> dict:
    from keras_mtl.bench.runner import parse_method

    return parse_method(method).build()


def _values(variables) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


@pytest.mark.parametrize("method", ["dwa", "uncertainty+upgrad", "moco"])
def test_eager_and_compiled_steps_agree(method, digits):
    x, y = digits.x[:128], {k: v[:128] for k, v in digits.y.items()}
    results = []
    for jit in (True, False):
        keras.utils.set_random_seed(0)
        model = _model(method, build_net(seed=1), jit_compile=jit)
        if not jit:
            model.compile(
                optimizer=keras.optimizers.SGD(0.05),
                loss=dict(TASK_LOSSES),
                run_eagerly=True,
            )
        model.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
        results.append(_values(model.net.weights + model.weighting.variables))
    for compiled, eager in zip(*results):
        np.testing.assert_allclose(eager, compiled, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="torch's binary_cross_entropy raises on an infinite target; "
    "tests/trainers/test_torch_trainer.py skips such steps with a regression loss",
)
@pytest.mark.parametrize("method", ["dwa", "pcgrad", "grad_norm"])
def test_a_non_finite_step_is_skipped_and_the_state_kept(method, digits):
    x, y = digits.batch()
    model = _model(method, on_nonfinite="skip")
    model.train_on_batch(x, y)  # builds everything; one good step
    state = model.weighting.variables + (
        model.aggregator.variables if model.aggregator is not None else []
    )
    before = _values(model.net.weights + model.optimizer.variables + state)
    # inf, not NaN: a NaN label is a missing label, not a non-finite loss.
    bad = dict(y, parity=np.full_like(y["parity"], np.inf))
    logs = model.train_on_batch(x, bad, return_dict=True)
    after = _values(model.net.weights + model.optimizer.variables + state)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(model.skipped_steps)) == 1
    assert list(keras.ops.convert_to_numpy(model.nonfinite_tasks)) == [0, 1]
    # No step of this call was applied: its loss logs NaN (not a made-up 0).
    assert np.isnan(logs["loss"])
    model.train_on_batch(x, y)  # and it trains on
    assert not np.array_equal(_values(model.net.weights)[0], before[0])


def test_a_callback_writing_the_method_variables_takes_effect(digits):
    """`TaskWeightScheduler` assigns `task_loss_weights` between epochs; on
    JAX the step reads the variables as state, so the new value must reach
    the next epoch's compiled step (no value baked into the trace)."""
    model = _model("equal")
    scheduler = keras_mtl.callbacks.TaskWeightScheduler(
        lambda epoch, weights: {**weights, "parity": 0.0} if epoch >= 1 else weights
    )
    history = model.fit(
        digits.x[:128],
        {k: v[:128] for k, v in digits.y.items()},
        epochs=2,
        batch_size=64,
        verbose=0,
        callbacks=[scheduler],
    )
    assert history.history["parity_weight"] == [1.0, 0.0]
    assert history.history["digit_weight"] == [1.0, 1.0]


def test_an_error_in_fit_leaves_the_model_usable(digits):
    x, y = digits.x[:128], {k: v[:128] for k, v in digits.y.items()}
    model = _model("dwa")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    before = _values(model.weights)
    with pytest.raises(ValueError, match="colour"):
        model.fit(x, {**y, "colour": y["parity"]}, epochs=1, verbose=0)
    for a, b in zip(before, _values(model.weights)):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert np.all(np.isfinite(model.predict(x[:4], verbose=0)["digit"]))


def test_shared_parameters_of_a_subclassed_net_are_found_by_structure(digits):
    """On JAX an unconnected gradient is zeros, not None: the shared
    parameters come from the traced program, and a head is never shared."""
    model = _model("pcgrad", SubclassedNet(hidden=16), jit_compile=True)
    model.fit(digits.x[:64], {k: v[:64] for k, v in digits.y.items()}, verbose=0)
    shared = {v.path for v in model._shared_variables}
    assert shared == {v.path for v in model.net.hidden.weights}


def _run_worker(arguments: list[str], backend: str) -> None:
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, str(HERE / "portability_worker.py"), *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _check_loaded(directory: Path, backend: str) -> None:
    result = json.loads((directory / "loaded.json").read_text())
    assert result["backend"] == backend
    assert result["missing"] == []
    assert result["prediction_error"] < 1e-5
    assert result["variable_error"] == 0.0
    assert result["moco_state_nonzero"]
    assert result["trains"]


# Starts the other backend itself: runs once, from the TensorFlow pass.
_tensorflow_pass_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="starts the other backend itself; runs once, in the TensorFlow pass",
)


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory) -> dict[str, Path]:
    """`.keras` files both ways: saved here (in this process) and loaded by
    one process of the other backend, which then saves its own, loaded
    here. The directory each backend loaded, by backend."""
    import portability_worker

    saved_here = tmp_path_factory.mktemp("saved_here")
    saved_there = tmp_path_factory.mktemp("saved_there")
    portability_worker.save(str(saved_here))
    _run_worker(["load", str(saved_here), "save", str(saved_there)], OTHER)
    portability_worker.load(str(saved_there))
    return {OTHER: saved_here, keras.backend.backend(): saved_there}


@_tensorflow_pass_only
def test_a_keras_file_saved_on_the_other_backend_loads_here(exchanged):
    _check_loaded(exchanged[keras.backend.backend()], keras.backend.backend())


@_tensorflow_pass_only
def test_a_keras_file_saved_here_loads_on_the_other_backend(exchanged):
    _check_loaded(exchanged[OTHER], OTHER)


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras 3.15 exports no SavedModel from torch 2.13, for any model "
    "(torch.export rejects its dynamic_shapes); the routes from torch are "
    "tested in tests/trainers/test_torch_export.py",
)
def test_export_serves_like_predict(digits, tmp_path):
    """`model.export` writes a SavedModel on either backend (JAX through
    jax2tf); its `serve` gives the model's predictions."""
    import tensorflow as tf

    model = _model("adaptive+upgrad")
    model.fit(digits.x[:128], {k: v[:128] for k, v in digits.y.items()}, verbose=0)
    model.export(str(tmp_path / "serving"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "serving"))
    outputs = served.serve(tf.constant(digits.x[:16]))
    expected = model.predict(digits.x[:16], verbose=0)
    for task in ("digit", "parity"):
        np.testing.assert_allclose(
            np.asarray(outputs[task]), expected[task], rtol=1e-5, atol=1e-6
        )

"""MultiTaskModel with a gradient-level aggregator (per-task gradients of the
shared parameters, aggregated inside the compiled step)."""

import keras
import numpy as np
import pytest
from conftest import TASK_LOSSES, build_net

import keras_mtl


def _model(aggregator, weighting="equal", jit_compile=False, **net_kwargs):
    net = build_net(**net_kwargs)
    model = keras_mtl.MultiTaskModel(net, weighting=weighting, aggregator=aggregator)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES, jit_compile=jit_compile
    )
    return model


def test_shared_parameters_are_the_trunk_only():
    model = _model("pcgrad")
    shared = {v.path for v in model._shared_variables}
    assert shared == {"hidden/kernel", "hidden/bias"}
    # The aggregator is built for the size of the shared parameters.
    model.fit(
        np.zeros((4, 64), "float32"),
        {"digit": np.zeros(4), "parity": np.zeros(4)},
        verbose=0,
    )
    assert model.aggregator.num_tasks == 2


@pytest.mark.parametrize("name", keras_mtl.aggregation.names())
def test_every_aggregator_trains_and_lowers_every_task_loss(digits, name):
    model = _model(name)
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0], (name, task, curve)
        assert np.all(np.isfinite(history.history[f"{task}_weight"]))
    cosine = history.history["grad_cosine_min"]
    assert all(-1.0 - 1e-5 <= c <= 1.0 + 1e-5 for c in cosine)


@pytest.mark.parametrize("name", ["upgrad", "nash_mtl"])
def test_aggregators_under_xla(digits, name):
    model = _model(name, jit_compile=True)
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0]


def test_sum_aggregator_equals_plain_training(digits):
    """`sum` of the per-task gradients is the ordinary gradient of the summed
    losses: one SGD step gives the same weights as without an aggregator."""
    batch = digits.batch()
    results = []
    for aggregator in (None, "sum"):
        net = build_net(kernel_regularizer="l2")
        model = keras_mtl.MultiTaskModel(net, aggregator=aggregator)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES)
        model.train_on_batch(*batch)
        results.append([v.numpy() for v in net.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_effective_weights_of_pcgrad_without_conflict(digits):
    """Without conflict PCGrad is the plain sum: both effective weights 1."""
    model = _model("pcgrad")
    x, y = digits.batch()
    logs = model.train_on_batch(x, y, return_dict=True)
    if logs["grad_cosine_min"] > 0:
        assert logs["digit_weight"] == pytest.approx(1.0, abs=1e-3)
        assert logs["parity_weight"] == pytest.approx(1.0, abs=1e-3)


def test_save_and_load_with_an_aggregator(digits, tmp_path):
    model = _model("pcgrad", weighting="uncertainty")
    model.fit(digits.x, digits.y, epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.aggregator).__name__ == "PCGrad"
    batch = digits.batch()
    a = model.train_on_batch(*batch, return_dict=True)["loss"]
    b = loaded.train_on_batch(*batch, return_dict=True)["loss"]
    assert a == pytest.approx(b, rel=1e-6)


def test_no_shared_parameter_is_an_error():
    inputs = keras.Input((4,))
    net = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(1, name="a")(inputs),
            "b": keras.layers.Dense(1, name="b")(inputs),
        },
    )
    with pytest.raises(ValueError, match="No parameter is shared"):
        keras_mtl.MultiTaskModel(net, aggregator="pcgrad")

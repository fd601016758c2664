"""Saving, loading, checkpointing and exporting a MultiTaskModel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.weighting import AdaptiveWeighting

CASES = [*keras_mtl.weighting.names(), "adaptive_epoch"]
STATEFUL = {
    "fixed",
    "uncertainty",
    "dwa",
    "rlw",
    "adaptive_epoch",
    "famo",
    "imtl_l",
    "stch",
}
# Variables the model owns for training only (never part of an export).
TRAINING_ONLY = (
    "log_variances",
    "task_loss_weights",
    "train_steps",
    "skipped_steps",
    "last_nonfinite_step",
    "nonfinite_tasks",
)


def _weighting(case):
    if case == "adaptive_epoch":
        return AdaptiveWeighting(mode="epoch", temperature=0.5)
    return case


def _assert_same_values(first, second, **tolerance):
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        assert a.shape == b.shape
        if tolerance:
            np.testing.assert_allclose(a, b, **tolerance)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES)
def test_save_load_restores_weighting_and_training_state(
    case, digits, make_model, task_metrics, tmp_path
):
    model = make_model(
        _weighting(case),
        loss_weights={"digit": 1.0, "parity": 0.5},
        metrics=task_metrics,
    )
    x, y = digits.x[:256], {k: v[:256] for k, v in digits.y.items()}
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    if case in STATEFUL:
        assert model.weighting.variables

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")

    assert type(loaded) is keras_mtl.MultiTaskModel
    assert type(loaded.weighting) is type(model.weighting)
    assert loaded.weighting.get_config() == model.weighting.get_config()
    assert loaded.task_names == ["digit", "parity"]
    assert loaded.on_nonfinite == model.on_nonfinite
    _assert_same_values(model.weighting.variables, loaded.weighting.variables)
    _assert_same_values(model.variables, loaded.variables)
    np.testing.assert_array_equal(loaded.task_loss_weights.numpy(), [1.0, 0.5])
    assert int(loaded.train_steps.numpy()) == 8
    assert int(loaded.optimizer.iterations.numpy()) == 8
    _assert_same_values(model.optimizer.variables, loaded.optimizer.variables)

    # The next step is the same step on both (for DWA it is the first one
    # with two completed epochs, so its weights come from the saved history).
    x, y = digits.batch(256)
    expected = model.train_on_batch(x, y, return_dict=True)
    got = loaded.train_on_batch(x, y, return_dict=True)
    for key in ("loss", "digit_loss", "parity_loss", "digit_weight", "parity_weight"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    _assert_same_values(model.variables, loaded.variables, rtol=1e-6, atol=1e-7)
    _assert_same_values(
        model.optimizer.variables, loaded.optimizer.variables, rtol=1e-6, atol=1e-7
    )


@pytest.mark.backend_neutral
@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras 3.15 exports no SavedModel from torch 2.13, for any model "
    "(torch.export rejects its dynamic_shapes); the routes from torch are "
    "tested in tests/trainers/test_torch_export.py",
)
@pytest.mark.parametrize("outputs", ["dict", "list", "subclassed"])
def test_export_serves_the_inference_net_only(
    outputs, digits, make_net, make_subclassed_net, task_losses, tmp_path
):
    if outputs == "subclassed":
        net = make_subclassed_net()
    else:
        net = make_net(outputs=outputs)
    model = keras_mtl.MultiTaskModel(net, weighting="uncertainty")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task_losses)
    model.train_on_batch(*digits.batch())

    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    x = digits.x[:40]
    expected = model.predict(x, verbose=0)
    got = served.serve(tf.constant(x))
    assert set(got) == {"digit", "parity"}
    for task in ("digit", "parity"):
        np.testing.assert_allclose(got[task].numpy(), expected[task], atol=1e-5)

    assert len(served.variables) == len(model.net.variables) == 6
    names = [v.name for v in served.variables]
    assert not [n for n in names if any(t in n for t in TRAINING_ONLY)], names


@pytest.mark.backend_neutral
@pytest.mark.parametrize("alias", ["uncertainty", "dwa"])
def test_save_weights_restores_weighting_state(
    alias, digits, make_model, make_net, tmp_path
):
    model = make_model(alias)
    model.fit(
        digits.x[:256],
        {k: v[:256] for k, v in digits.y.items()},
        epochs=3,
        batch_size=64,
        verbose=0,
    )
    if alias == "uncertainty":
        assert np.all(np.abs(model.weighting.log_variances.numpy()) > 1e-3)
    else:
        assert int(model.weighting.epoch_history.completed.numpy()) == 2

    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    fresh = make_model(alias, net=make_net(seed=9))
    with pytest.raises(AssertionError):
        _assert_same_values(model.weighting.variables, fresh.weighting.variables)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    _assert_same_values(model.variables, fresh.variables)
    _assert_same_values(model.optimizer.variables, fresh.optimizer.variables)
    _assert_same_values(model.weighting.variables, fresh.weighting.variables)

    x, y = digits.batch(256)
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    got = fresh.evaluate(x, y, verbose=0, return_dict=True)
    assert got == pytest.approx(expected, rel=1e-6)
    if alias == "dwa":  # two completed epochs: DWA weights from the history
        # (Logged by a training step: evaluation logs no weights.)
        trained = model.train_on_batch(x, y, return_dict=True)
        restored = fresh.train_on_batch(x, y, return_dict=True)
        assert restored["digit_weight"] == pytest.approx(
            trained["digit_weight"], rel=1e-6
        )
        assert abs(restored["digit_weight"] - 1.0) > 1e-4


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.train.Checkpoint tracks TensorFlow variables only",
)
def test_tf_train_checkpoint_restores_weighting_state(
    digits, make_model, make_net, tmp_path
):
    model = make_model("dwa")
    model.fit(
        digits.x[:256],
        {k: v[:256] for k, v in digits.y.items()},
        epochs=3,
        batch_size=64,
        verbose=0,
    )
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))

    fresh = make_model("dwa", net=make_net(seed=9))
    fresh.optimizer.build(fresh.trainable_variables)
    status = tf.train.Checkpoint(model=fresh).read(path)
    status.assert_consumed()
    _assert_same_values(model.variables, fresh.variables)
    _assert_same_values(model.optimizer.variables, fresh.optimizer.variables)
    history = fresh.weighting.epoch_history
    assert int(history.completed.numpy()) == 2
    np.testing.assert_array_equal(
        history.history.numpy(), model.weighting.epoch_history.history.numpy()
    )


@pytest.mark.backend_neutral
def test_subclassed_net_with_a_stateful_aggregator_loads_exactly(
    digits, make_subclassed_net, task_losses, tmp_path
):
    """A subclassed net has no variables before its first call, so MoCo (state
    of the size D of the shared parameters) is built in the first training
    step; loading builds the net from the saved input shape, then MoCo, so
    its state exists when the weights are read."""
    model = keras_mtl.MultiTaskModel(make_subclassed_net(), aggregator="moco")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task_losses)
    model.fit(digits.x[:256], {k: v[:256] for k, v in digits.y.items()}, verbose=0)
    # The trunk (64 x 32 kernel and 32 biases) is shared, the heads are not.
    assert tuple(model.aggregator.tracked.shape) == (2, 64 * 32 + 32)
    assert int(model.aggregator.step.numpy()) == 8

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")

    assert type(loaded.aggregator).__name__ == "MoCo"
    _assert_same_values(model.aggregator.variables, loaded.aggregator.variables)
    _assert_same_values(model.variables, loaded.variables)
    _assert_same_values(model.optimizer.variables, loaded.optimizer.variables)
    x, y = digits.batch(256)
    expected = model.train_on_batch(x, y, return_dict=True)
    got = loaded.train_on_batch(x, y, return_dict=True)
    assert got == pytest.approx(expected, rel=1e-6)
    _assert_same_values(model.variables, loaded.variables, rtol=1e-6, atol=1e-7)
    _assert_same_values(
        model.aggregator.variables, loaded.aggregator.variables, rtol=1e-6, atol=1e-7
    )

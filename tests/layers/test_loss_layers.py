"""The loss layers for plain Keras models: WeightedTaskLoss and its two named forms."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl


def _regression_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, 8)).astype("float32")
    # Two tasks with very different loss scales.
    ya = (3.0 * xs[:, :1] + 1.0).astype("float32")
    yb = (0.1 * xs[:, 1:2]).astype("float32")
    return xs, ya, yb


def _trainer(loss_layer, seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((8,))
    y_a = keras.Input((1,))
    y_b = keras.Input((1,))
    h = keras.layers.Dense(16, activation="relu")(x)
    pred_a = keras.layers.Dense(1, name="a")(h)
    pred_b = keras.layers.Dense(1, name="b")(h)
    loss_a = keras.ops.mean(keras.ops.square(y_a - pred_a))
    loss_b = keras.ops.mean(keras.ops.square(y_b - pred_b))
    objective = loss_layer([loss_a, loss_b])
    trainer = keras.Model([x, y_a, y_b], objective)
    predictor = keras.Model(x, [pred_a, pred_b])
    return trainer, predictor


def test_uncertainty_layer_trains_log_variances_and_lowers_both_losses():
    xs, ya, yb = _regression_data()
    layer = keras_mtl.layers.UncertaintyWeightedLoss()
    trainer, predictor = _trainer(layer)
    trainer.compile(optimizer=keras.optimizers.Adam(0.02))
    before = [
        float(np.mean((p - y) ** 2))
        for p, y in zip(predictor.predict(xs, verbose=0), (ya, yb))
    ]
    trainer.fit([xs, ya, yb], epochs=8, batch_size=32, verbose=0)
    after = [
        float(np.mean((p - y) ** 2))
        for p, y in zip(predictor.predict(xs, verbose=0), (ya, yb))
    ]
    assert after[0] < before[0] and after[1] < before[1]
    s = layer.log_variances.numpy()
    # Trained: the smaller-loss task b ends with the smaller log-variance
    # (weight exp(-s) near 1 / L), and both moved away from 0.
    assert np.all(np.abs(s) > 0.05)
    assert s[1] < s[0]
    assert any(v is layer.log_variances for v in trainer.trainable_variables)


def test_layer_objective_matches_the_weighting_formula():
    layer = keras_mtl.layers.UncertaintyWeightedLoss(initial_log_variance=0.5)
    losses = [tf.constant(2.0), tf.constant(0.25)]
    objective = float(layer(losses))
    expected = sum(np.exp(-0.5) * v + 0.5 for v in (2.0, 0.25))
    np.testing.assert_allclose(objective, expected, rtol=1e-6)
    np.testing.assert_allclose(
        layer.task_weights(losses).numpy(), [np.exp(-0.5)] * 2, rtol=1e-6
    )


def test_loss_transform_layer_is_bmtl():
    layer = keras_mtl.layers.LossTransform(temperature=2.0, add_loss=False)
    losses = np.array([1.0, 3.0], dtype="float32")
    weights = layer.task_weights(losses).numpy()
    e = np.exp(losses / 2.0)
    np.testing.assert_allclose(weights, 2 * e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(
        float(layer(losses)), float(np.sum(weights * losses)), rtol=1e-6
    )
    assert layer.losses == []  # add_loss=False adds nothing
    literal = keras_mtl.layers.LossTransform(normalize=False, add_loss=False)
    np.testing.assert_allclose(
        float(literal(losses)), float(np.sum(np.exp(losses))), rtol=1e-6
    )


def test_weighted_task_loss_accepts_dict_and_vector_inputs():
    layer = keras_mtl.layers.WeightedTaskLoss(
        keras_mtl.weighting.FixedWeighting([2.0, 1.0]), add_loss=False
    )
    as_dict = float(layer({"a": tf.constant(1.0), "b": tf.constant(3.0)}))
    as_vector = float(layer(tf.constant([1.0, 3.0])))
    assert as_dict == pytest.approx(5.0) and as_vector == pytest.approx(5.0)


def test_layers_save_and_load_with_state(tmp_path):
    xs, ya, yb = _regression_data()
    trainer, _ = _trainer(keras_mtl.layers.UncertaintyWeightedLoss())
    trainer.compile(optimizer=keras.optimizers.Adam(0.02))
    trainer.fit([xs, ya, yb], epochs=2, batch_size=64, verbose=0)
    path = tmp_path / "trainer.keras"
    trainer.save(path)
    loaded = keras.models.load_model(path)
    original = trainer.layers[-1]
    restored = loaded.layers[-1]
    assert isinstance(restored, keras_mtl.layers.UncertaintyWeightedLoss)
    np.testing.assert_array_equal(
        original.log_variances.numpy(), restored.log_variances.numpy()
    )
    np.testing.assert_allclose(
        trainer.predict([xs[:16], ya[:16], yb[:16]], verbose=0),
        loaded.predict([xs[:16], ya[:16], yb[:16]], verbose=0),
        rtol=1e-6,
    )
    for layer in (
        keras_mtl.layers.LossTransform(transform="power", power=3.0),
        keras_mtl.layers.WeightedTaskLoss("dwa"),
    ):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_inference_export_carries_no_loss_layer(tmp_path):
    xs, ya, yb = _regression_data(64)
    trainer, predictor = _trainer(keras_mtl.layers.UncertaintyWeightedLoss())
    trainer.compile(optimizer="adam")
    trainer.fit([xs, ya, yb], epochs=1, verbose=0)
    path = str(tmp_path / "serving")
    predictor.export(path, verbose=False)
    served = tf.saved_model.load(path)
    names = [v.name for v in served.variables]
    assert len(served.variables) == len(predictor.variables)
    assert not any("log_variances" in n for n in names)
    out = served.serve(xs[:8])
    expected = predictor.predict(xs[:8], verbose=0)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="temperature"):
        keras_mtl.layers.LossTransform(temperature=0.0)
    with pytest.raises(ValueError, match="convex"):
        keras_mtl.layers.LossTransform(transform=lambda v: keras.ops.sqrt(v + 1.0))
    with pytest.raises(ValueError, match="Unknown weighting"):
        keras_mtl.layers.WeightedTaskLoss("no-such-method")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        keras_mtl.layers.WeightedTaskLoss("equal")([tf.constant(1.0)])

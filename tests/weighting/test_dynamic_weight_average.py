"""Tests of DynamicWeightAverage (Liu, Johns & Davison 2019),
keras_mtl/weighting/dynamic_weight_average.py."""

import numpy as np
import pytest
from _backend import compiled, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import DynamicWeightAverage

pytestmark = pytest.mark.backend_neutral

# Known training losses per epoch (several steps each, 3 tasks).
EPOCHS = [
    [[1.0, 2.0, 0.5], [0.8, 1.6, 0.7], [0.9, 2.2, 0.6]],
    [[0.7, 1.9, 0.2], [0.5, 1.5, 0.3]],
    [[0.4, 1.0, 0.2], [0.6, 1.4, 0.2], [0.5, 1.2, 0.2], [0.3, 1.6, 0.2]],
    [[0.3, 0.9, 0.1]],
]


def np_dwa(older, newer, temperature=2.0):
    r = np.asarray(newer, np.float64) / np.asarray(older, np.float64)
    e = np.exp(r / temperature - np.max(r / temperature))
    return len(r) * e / e.sum()


def epoch_means():
    return [np.mean(np.asarray(e, np.float64), axis=0) for e in EPOCHS]


def run(w, step, epochs=EPOCHS, first_epoch=0):
    """Runs the epochs; returns the weights of every step, per epoch."""
    out = []
    for e, steps in enumerate(epochs, start=first_epoch):
        w.on_epoch_begin(e)
        out.append([to_numpy(step(tensor(s, "float32"))[1]) for s in steps])
    return out


def make(**kwargs):
    w = DynamicWeightAverage(**kwargs)
    w.build((3,))
    return w


def test_weights_per_epoch():
    w = make()
    weights = run(w, w)
    means = epoch_means()
    for e in (0, 1):
        for step_w in weights[e]:
            np.testing.assert_allclose(step_w, np.ones(3))
    for step_w in weights[2]:
        np.testing.assert_allclose(step_w, np_dwa(means[0], means[1]), rtol=1e-5)
    for step_w in weights[3]:
        np.testing.assert_allclose(step_w, np_dwa(means[1], means[2]), rtol=1e-5)


def test_objective_and_temperature():
    w = make(temperature=0.5)
    run(w, w, EPOCHS[:2])
    w.on_epoch_begin(2)
    losses = np.array([0.4, 1.0, 0.2], np.float32)
    objective, weights = w(tensor(losses))
    means = epoch_means()
    exp_w = np_dwa(means[0], means[1], temperature=0.5)
    np.testing.assert_allclose(to_numpy(weights), exp_w, rtol=1e-5)
    np.testing.assert_allclose(float(objective), np.sum(exp_w * losses), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(weights).sum(), 3.0, rtol=1e-6)


def test_eager_and_xla_agree():
    eager = make()
    jitted = make()
    step = compiled(lambda x: jitted(x), state=jitted, jit_compile=True)
    for a, b in zip(run(eager, eager), run(jitted, step), strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6)


def test_reannouncing_an_epoch_does_not_roll():
    w = make()
    w.on_epoch_begin(0)
    for s in EPOCHS[0]:
        w(tensor(s))
    w.on_epoch_begin(1)
    w(tensor(EPOCHS[1][0]))
    w.on_epoch_begin(1)  # e.g. a resumed run announcing the same epoch
    w.on_epoch_begin(1)
    _, weights = w(tensor(EPOCHS[1][1]))
    np.testing.assert_allclose(to_numpy(weights), np.ones(3))
    assert int(to_numpy(w.epoch_history.completed)) == 1
    w.on_epoch_begin(2)
    _, weights = w(tensor(EPOCHS[2][0]))
    means = epoch_means()
    np.testing.assert_allclose(to_numpy(weights), np_dwa(means[0], means[1]), rtol=1e-5)


def test_train_end_then_new_fit_closes_last_epoch():
    w = make()
    run(w, w, EPOCHS[:2])
    w.on_train_end()
    w.on_epoch_begin(0)  # a second fit() starts again at epoch 0
    _, weights = w(tensor(EPOCHS[2][0]))
    means = epoch_means()
    np.testing.assert_allclose(to_numpy(weights), np_dwa(means[0], means[1]), rtol=1e-5)
    assert int(to_numpy(w.epoch_history.completed)) == 2


def test_training_false_changes_no_variable_and_reads_next_weights():
    w = make()
    run(w, w, EPOCHS[:2])
    w.on_epoch_begin(2)
    before = [to_numpy(v).copy() for v in w.variables]
    _, eval_weights = w(tensor([9.0, 9.0, 9.0]), training=False)
    for a, v in zip(before, w.variables, strict=True):
        np.testing.assert_array_equal(a, to_numpy(v))
    means = epoch_means()
    np.testing.assert_allclose(
        to_numpy(eval_weights), np_dwa(means[0], means[1]), rtol=1e-5
    )
    _, train_weights = w(tensor(EPOCHS[2][0]))
    np.testing.assert_allclose(to_numpy(train_weights), to_numpy(eval_weights))


def test_gradient_equals_weights():
    w = make()
    run(w, w, EPOCHS[:2])
    w.on_epoch_begin(2)
    losses = tensor(EPOCHS[2][0], "float32")
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)


def test_zero_denominator_keeps_weights_finite():
    w = make()
    run(w, w, [[[0.0, 1.0, 0.0]], [[0.5, 1.0, 0.0]], [[1.0, 1.0, 1.0]]])
    _, weights = w(tensor([1.0, 1.0, 1.0]))
    assert np.all(np.isfinite(to_numpy(weights)))
    np.testing.assert_allclose(to_numpy(weights).sum(), 3.0, rtol=1e-6)
    assert to_numpy(weights)[0] > to_numpy(weights)[1]


def test_alias_and_serialization():
    w = keras_mtl.weighting.get("dwa", temperature=3.0)
    assert type(w) is DynamicWeightAverage
    config = w.get_config()
    assert config["temperature"] == 3.0
    assert DynamicWeightAverage.from_config(config).temperature == 3.0
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is DynamicWeightAverage
    assert restored.temperature == 3.0
    assert keras_mtl.weighting.get("dwa").temperature == 2.0


def test_state_restore():
    w = make()
    run(w, w, EPOCHS[:3])
    clone = DynamicWeightAverage.from_config(w.get_config())
    clone.build((3,))
    clone.set_weights(w.get_weights())
    for a, b in zip(
        run(w, w, EPOCHS[3:], 3), run(clone, clone, EPOCHS[3:], 3), strict=True
    ):
        np.testing.assert_allclose(np.array(a), np.array(b))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "x"])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(temperature=bad)

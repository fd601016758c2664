"""Tests of UncertaintyWeighting (Kendall, Gal & Cipolla 2018)."""

import keras
import numpy as np
import pytest
from _backend import compiled, dtype_of, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import UncertaintyWeighting

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.7, 2.0, 0.1], dtype=np.float32)
LOG_VARS = np.array([0.3, -0.5, 1.2], dtype=np.float32)


def make(log_vars=LOG_VARS, **kwargs):
    w = UncertaintyWeighting(**kwargs)
    w.build((len(log_vars),))
    w.log_variances.assign(log_vars)
    return w


def expected(losses, s):
    losses = np.asarray(losses, np.float64)
    s = np.asarray(s, np.float64)
    return np.sum(np.exp(-s) * losses + s), np.exp(-s)


def test_formula():
    w = make()
    objective, weights = w(tensor(LOSSES))
    exp_obj, exp_w = expected(LOSSES, LOG_VARS)
    np.testing.assert_allclose(to_numpy(objective), exp_obj, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), exp_w, rtol=1e-6)
    assert dtype_of(objective) == "float32" and dtype_of(weights) == "float32"


def test_default_start_is_equal_weighting():
    w = UncertaintyWeighting()
    objective, weights = w(tensor(LOSSES))
    np.testing.assert_allclose(to_numpy(objective), LOSSES.sum(), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), np.ones(3))


def test_initial_log_variance():
    w = UncertaintyWeighting(initial_log_variance=0.5)
    objective, weights = w(tensor(LOSSES))
    np.testing.assert_allclose(to_numpy(w.log_variances), [0.5] * 3)
    exp_obj, exp_w = expected(LOSSES, [0.5] * 3)
    np.testing.assert_allclose(to_numpy(objective), exp_obj, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), exp_w, rtol=1e-6)


def test_log_variances_are_trainable_state():
    w = make()
    assert [v.path for v in w.trainable_variables] == [w.log_variances.path]
    assert tuple(w.log_variances.shape) == (3,)
    assert dtype_of(w.log_variances) == "float32"


def test_eager_and_xla_agree():
    w = make()
    eager = w(tensor(LOSSES))
    jitted = compiled(lambda x: w(x), state=w, jit_compile=True)(tensor(LOSSES))
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6)


def test_gradients():
    w = make()
    losses = tensor(LOSSES)
    (objective, weights), g_losses, (g_s,) = value_and_gradient(
        w, losses, variables=[w.log_variances]
    )
    np.testing.assert_allclose(to_numpy(g_losses), to_numpy(weights), rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(g_s), 1.0 - np.exp(-LOG_VARS.astype(np.float64)) * LOSSES, rtol=1e-5
    )


def test_sgd_moves_log_variances_towards_log_losses():
    w = UncertaintyWeighting()
    w.build((3,))
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    losses = tensor(LOSSES)
    target = np.log(LOSSES)
    start_gap = np.abs(to_numpy(w.log_variances) - target)

    def step():
        # Eager on both backends: on JAX the optimizer's update would need
        # its own stateless plumbing inside a compiled function.
        _, _, grads = value_and_gradient(w, losses, variables=w.trainable_variables)
        optimizer.apply_gradients(zip(grads, w.trainable_variables, strict=True))

    step()
    one_step_gap = np.abs(to_numpy(w.log_variances) - target)
    assert np.all(one_step_gap < start_gap)
    for _ in range(400):
        step()
    np.testing.assert_allclose(to_numpy(w.log_variances), target, atol=1e-2)


def test_training_false_changes_no_variable():
    w = make()
    before = [to_numpy(v).copy() for v in w.variables]
    w(tensor(LOSSES), training=False)
    for a, v in zip(before, w.variables, strict=True):
        np.testing.assert_array_equal(a, to_numpy(v))


def test_alias_and_serialization():
    w = keras_mtl.weighting.get("uncertainty", initial_log_variance=-0.25)
    assert type(w) is UncertaintyWeighting
    config = w.get_config()
    assert config["initial_log_variance"] == -0.25
    clone = UncertaintyWeighting.from_config(config)
    assert clone.initial_log_variance == -0.25
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is UncertaintyWeighting
    assert restored.initial_log_variance == -0.25
    assert keras_mtl.weighting.get(keras_mtl.weighting.serialize(w)).get_config() == (
        config
    )


def test_weights_restore():
    w = make()
    clone = UncertaintyWeighting.from_config(w.get_config())
    clone.build((3,))
    clone.set_weights(w.get_weights())
    np.testing.assert_allclose(
        to_numpy(clone(tensor(LOSSES))[0]), to_numpy(w(tensor(LOSSES))[0])
    )


def test_mixed_precision_stays_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        w = UncertaintyWeighting()
        objective, weights = w(tensor(LOSSES, dtype="float16"))
    finally:
        keras.config.set_dtype_policy(previous)
    assert dtype_of(w.log_variances) == "float32"
    assert dtype_of(objective) == "float32" and dtype_of(weights) == "float32"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", None])
def test_bad_initial_log_variance(bad):
    with pytest.raises(ValueError, match="initial_log_variance"):
        UncertaintyWeighting(initial_log_variance=bad)

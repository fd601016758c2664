"""Tests of GeometricLossStrategy (Chennupati et al. 2019),
keras_mtl/weighting/geometric_loss_strategy.py."""

import numpy as np
import pytest
from _backend import compiled, dtype_of, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import GeometricLossStrategy

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.5, 2.0, 4.0], dtype=np.float32)


def expected(losses):
    losses = np.asarray(losses, np.float64)
    objective = np.prod(losses) ** (1.0 / len(losses))
    return objective, objective / (len(losses) * losses)


def test_formula():
    objective, weights = GeometricLossStrategy()(tensor(LOSSES))
    exp_obj, exp_w = expected(LOSSES)
    np.testing.assert_allclose(float(objective), exp_obj, rtol=1e-6)  # 0.5*2*4=4
    np.testing.assert_allclose(float(objective), 4.0 ** (1 / 3), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), exp_w, rtol=1e-6)
    assert dtype_of(objective) == "float32" and dtype_of(weights) == "float32"


def test_two_tasks_docstring_example():
    objective, weights = GeometricLossStrategy()(tensor([0.5, 2.0]))
    np.testing.assert_allclose(float(objective), 1.0, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), [1.0, 0.25], rtol=1e-6)


@pytest.mark.parametrize("value", [1e-10, 1e30])
def test_no_underflow_or_overflow(value):
    # The plain float32 product of these losses is 0 or inf.
    losses = np.full(40, value, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        assert np.prod(losses) in (0.0, np.inf)
    objective, weights = GeometricLossStrategy()(tensor(losses))
    np.testing.assert_allclose(float(objective), value, rtol=1e-4)
    np.testing.assert_allclose(to_numpy(weights), np.full(40, 1.0 / 40), rtol=1e-4)


def test_zero_loss_is_clamped():
    w = GeometricLossStrategy(epsilon=1e-6)
    losses = tensor([0.0, 4.0])
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_allclose(float(objective), np.sqrt(1e-6 * 4.0), rtol=1e-5)
    assert np.all(np.isfinite(to_numpy(weights)))
    np.testing.assert_allclose(grad, weights, rtol=1e-5)
    assert to_numpy(weights)[0] == 0.0


def test_gradient_equals_weights():
    losses = tensor(LOSSES)
    w = GeometricLossStrategy()
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_allclose(grad, weights, rtol=1e-5)


def test_scale_invariance_of_weights_ratio():
    w = GeometricLossStrategy()
    obj1, _ = w(tensor(LOSSES))
    obj2, _ = w(tensor(LOSSES * np.array([10.0, 1.0, 1.0], np.float32)))
    np.testing.assert_allclose(float(obj2) / float(obj1), 10.0 ** (1 / 3), rtol=1e-5)


def test_eager_and_xla_agree():
    w = GeometricLossStrategy()
    eager = w(tensor(LOSSES))
    jitted = compiled(lambda x: w(x), state=w, jit_compile=True)(tensor(LOSSES))
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6)


def test_training_false_same_result_and_no_state():
    w = GeometricLossStrategy()
    a = w(tensor(LOSSES), training=True)
    b = w(tensor(LOSSES), training=False)
    assert w.variables == []
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


def test_alias_and_serialization():
    w = keras_mtl.weighting.get("gls", epsilon=1e-8)
    assert type(w) is GeometricLossStrategy
    config = w.get_config()
    assert config["epsilon"] == 1e-8
    assert GeometricLossStrategy.from_config(config).epsilon == 1e-8
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is GeometricLossStrategy and restored.epsilon == 1e-8


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf"), "a"])
def test_bad_epsilon(bad):
    with pytest.raises(ValueError, match="epsilon"):
        GeometricLossStrategy(epsilon=bad)

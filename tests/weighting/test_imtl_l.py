"""Tests of IMTLL (IMTL-L, Liu et al. 2021), keras_mtl/weighting/imtl_l.py."""

import keras
import numpy as np
import pytest
from _backend import compiled, dtype_of, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import IMTLL

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.7, 2.0, 0.1], dtype=np.float32)
SCALES = np.array([0.3, -0.5, 1.2], dtype=np.float32)


def make(scales=SCALES):
    w = IMTLL()
    w.build((len(scales),))
    w.log_scales.assign(scales)
    return w


def test_formula_and_gradients():
    w = make()
    (objective, weights), g_losses, (g_s,) = value_and_gradient(
        w, tensor(LOSSES), variables=[w.log_scales]
    )
    s, losses = SCALES.astype(np.float64), LOSSES.astype(np.float64)
    np.testing.assert_allclose(
        float(objective), np.sum(np.exp(s) * losses - s), rtol=1e-6
    )
    np.testing.assert_allclose(to_numpy(weights), np.exp(s), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(g_losses), np.exp(s), rtol=1e-6)
    # d/ds_i = e^{s_i} L_i - 1: zero where the scaled loss is 1.
    np.testing.assert_allclose(to_numpy(g_s), np.exp(s) * losses - 1.0, rtol=1e-5)
    assert dtype_of(objective) == "float32" and dtype_of(weights) == "float32"


def test_default_start_is_equal_weighting_and_xla_agrees():
    w = keras_mtl.weighting.get("imtl_l")
    objective, weights = w(tensor(LOSSES))
    np.testing.assert_allclose(to_numpy(objective), LOSSES.sum(), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), np.ones(3))
    w.log_scales.assign(SCALES)
    eager = w(tensor(LOSSES))
    jitted = compiled(lambda x: w(x), state=w, jit_compile=True)(tensor(LOSSES))
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6)


def test_sgd_drives_scaled_losses_to_one():
    w = IMTLL()
    w.build((3,))
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    losses = tensor(LOSSES)
    for _ in range(300):
        _, _, grads = value_and_gradient(w, losses, variables=w.trainable_variables)
        optimizer.apply_gradients(zip(grads, w.trainable_variables, strict=True))
    np.testing.assert_allclose(to_numpy(w.log_scales), -np.log(LOSSES), atol=1e-2)


def test_config_and_errors():
    w = keras_mtl.weighting.get("imtl_l", initial_scale=-0.25)
    assert type(w) is IMTLL and w.get_config()["initial_scale"] == -0.25
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert restored.get_config() == w.get_config()
    for bad in (float("nan"), float("inf"), "abc", None):
        with pytest.raises(ValueError, match="initial_scale"):
            IMTLL(initial_scale=bad)


def test_huge_and_zero_losses_stay_finite():
    w = make()
    for losses in ([0.0, 0.0, 0.0], [1e30, 1e-30, 0.0]):
        objective, weights = w(tensor(np.array(losses, np.float32)))
        assert np.isfinite(to_numpy(objective)) and np.all(
            np.isfinite(to_numpy(weights))
        )

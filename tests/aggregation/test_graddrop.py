"""Tests of GradDrop (Chen et al. 2020)."""

import numpy as np
import pytest
from _backend import to_numpy
from _stateful_checks import (
    assert_config_round_trip,
    assert_same_values,
    eager_uniform,
    jitted,
    values,
)

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.graddrop import GradDrop

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(1)


def numpy_graddrop(jacobian, uniform, leak=0.0):
    """Column by column, written with explicit loops."""
    jacobian = jacobian.astype(np.float64)
    scaled = jacobian / np.abs(jacobian).max()
    out = np.zeros(jacobian.shape[1])
    for k in range(jacobian.shape[1]):
        col = scaled[:, k]
        purity = 0.5 * (1 + col.sum() / (np.abs(col).sum() + 1e-7))
        for g in jacobian[:, k]:
            kept = (purity > uniform[k] and g > 0) or (purity < uniform[k] and g < 0)
            out[k] += g * (leak + (1 - leak) * kept)
    return out


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_matches_numpy_with_the_seeded_noise(leak):
    j = RNG.normal(size=(3, 12)).astype(np.float32)
    agg = GradDrop(leak=leak, seed=7)
    for draw in range(3):
        u = eager_uniform((12,), 7, draw)
        np.testing.assert_allclose(
            agg(j), numpy_graddrop(j, u, leak), rtol=1e-5, atol=1e-6
        )


def test_agreeing_signs_always_kept_and_one_sign_survives():
    j = np.array([[1.0, -2.0, 1.0], [3.0, -1.0, -1.0]], np.float32)
    step = jitted(GradDrop(seed=0))
    seen = set()
    for _ in range(20):
        d = to_numpy(step(j))
        np.testing.assert_allclose(d[:2], [4.0, -3.0])
        assert d[2] in (1.0, -1.0)
        seen.add(float(d[2]))
    assert seen == {1.0, -1.0}  # P = 1/2 for the tied column


def test_evaluation_is_the_expectation_and_keeps_generator():
    j = RNG.normal(size=(4, 5)).astype(np.float32)
    agg = GradDrop(seed=2)
    agg(j)
    before = values(agg)
    expected = to_numpy(agg(j, training=False))
    assert_same_values(before, values(agg))
    scaled = j / np.abs(j).max()
    p = 0.5 * (1 + scaled.sum(0) / (np.abs(scaled).sum(0) + 1e-7))
    manual = (j * ((j > 0) * p + (j < 0) * (1 - p))).sum(0)
    np.testing.assert_allclose(expected, manual, rtol=1e-5, atol=1e-6)
    step = jitted(agg)
    mean = np.mean([to_numpy(step(j)) for _ in range(150)], axis=0)
    np.testing.assert_allclose(mean, expected, atol=0.25 * np.abs(j).sum(0).max())


def test_full_leak_is_the_sum():
    j = RNG.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_allclose(GradDrop(leak=1.0, seed=0)(j), j.sum(0), rtol=1e-6)


def test_single_task_is_identity():
    j = RNG.normal(size=(1, 6)).astype(np.float32)
    np.testing.assert_allclose(GradDrop(seed=0)(j), j[0], rtol=1e-6)


def test_same_seed_reproducible_in_jit():
    j = RNG.normal(size=(3, 10)).astype(np.float32)
    agg = GradDrop(seed=8)
    step = jitted(agg)

    def sequence():
        agg.seed_generator.state.assign([8, 0])
        return np.array([to_numpy(step(j)) for _ in range(4)])

    np.testing.assert_array_equal(sequence(), sequence())
    np.testing.assert_allclose(
        jitted(agg, training=False)(j), agg(j, training=False), rtol=1e-6
    )


def test_config_and_validation():
    assert ALIASES["graddrop"] is GradDrop
    assert_config_round_trip(GradDrop(leak=0.2, seed=1))
    for bad in (-0.1, 1.5, float("nan"), "0.1"):
        with pytest.raises(ValueError):
            GradDrop(leak=bad)

"""Tests of ConFIG (Liu et al. 2025)."""

import numpy as np
import pytest
from _backend import to_numpy
from _jacobians import jacobians
from _stateful_checks import assert_config_round_trip, assert_finite_direction, jitted
from hypothesis import given, settings

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.base import uses_gramian
from keras_mtl.aggregation.config import ConFIG

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(3)
EPS32 = float(np.finfo(np.float32).eps)


def numpy_config(jacobian):
    """ConFIG with numpy's SVD pseudo-inverse (TorchJD / the authors' form)."""
    jacobian = jacobian.astype(np.float64)
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    best = np.linalg.pinv(units) @ np.ones(len(jacobian))
    unit = best / np.linalg.norm(best)
    return (jacobian @ unit).sum() * unit


def cosines(jacobian, d):
    return jacobian @ d / (np.linalg.norm(jacobian, axis=1) * np.linalg.norm(d))


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5])
def test_equal_cosines_and_matches_pinv(num_tasks):
    j = RNG.normal(size=(num_tasks, 8)) * RNG.uniform(0.1, 10, size=(num_tasks, 1))
    j = j.astype(np.float32)
    d = to_numpy(ConFIG()(j))
    c = cosines(j.astype(np.float64), d)
    np.testing.assert_allclose(c, np.full(num_tasks, c[0]), atol=1e-4)
    assert c[0] > 0
    np.testing.assert_allclose(d, numpy_config(j), rtol=1e-3, atol=1e-4)


def kept_condition_number(jacobian, rcond=1e-4):
    """cond(U U^T) over the eigenvalues ConFIG keeps (above `rcond` times
    the largest), in float64 from the exact rows."""
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(units @ units.T)
    kept = eigenvalues[eigenvalues > rcond * eigenvalues.max()]
    return kept.max() / kept.min()


@pytest.mark.parametrize("num_tasks", [2, 3, 4, 5, 6])
def test_gramian_coefficients_match_the_jacobian_algorithm(num_tasks):
    # The coefficients c (from G alone) against the pinv of the unit rows:
    # c @ J is the same direction, whatever the Gramian's scale.
    rng = np.random.default_rng(num_tasks)
    agg = ConFIG()
    assert uses_gramian(agg)
    for draw in range(4):
        j = rng.normal(size=(num_tasks, 9)) * rng.uniform(0.1, 10, (num_tasks, 1))
        if draw == 3:  # dependent rows: the pseudo-inverse's cutoff
            j[0] = 2.0 * j[1] if num_tasks == 2 else j[1] - 0.5 * j[-1]
        g = (j @ j.T).astype(np.float32)
        expected = numpy_config(j)
        c = to_numpy(agg.weights(g))
        np.testing.assert_allclose(c @ j, expected, rtol=1e-3, atol=1e-4)
        # A rounded scale factor changes each entry of the normalised
        # Gramian U U^T (|entries| <= 1) by a few float32 roundings: at
        # most ~2 eps * K in norm per computation, as much again from
        # eigh's backward error, and the solve amplifies the relative
        # perturbation by cond(U U^T). Twice that for two computations,
        # relative to the largest coefficient (an element may cancel).
        # Measured: at most 0.98 * K * eps * cond on TensorFlow, JAX, torch.
        bound = 8 * num_tasks * EPS32 * kept_condition_number(j) * np.abs(c).max()
        for factor in (1e-30, 1e30):
            scaled = to_numpy(agg.direction_weights(g * np.float32(factor)))
            np.testing.assert_allclose(scaled, c, rtol=0, atol=bound)


def test_docstring_example_and_single_task():
    np.testing.assert_allclose(
        ConFIG()(np.array([[1.0, 0.0], [0.0, 2.0]])), [1.5, 1.5], rtol=1e-5
    )
    g = RNG.normal(size=(1, 5)).astype(np.float32)
    np.testing.assert_allclose(ConFIG()(g), g[0], rtol=1e-5)


def test_dependent_gradients():
    g = RNG.normal(size=6).astype(np.float32)
    # Exactly opposite: U x = 1 has least-squares solution x = 0: d = 0.
    np.testing.assert_allclose(ConFIG()(np.stack([g, -3.0 * g])), np.zeros(6))
    # Parallel, same sense: d is their sum.
    np.testing.assert_allclose(
        ConFIG()(np.stack([g, 2.5 * g, g])), 4.5 * g, rtol=1e-5, atol=1e-6
    )
    # Two along g, one against: x = u / 3, d is the sum (along g).
    np.testing.assert_allclose(
        ConFIG()(np.stack([g, 2.0 * g, -0.5 * g])), 2.5 * g, rtol=1e-5, atol=1e-6
    )


def test_zero_row_is_ignored():
    j = RNG.normal(size=(2, 5)).astype(np.float32)
    padded = np.concatenate([j, np.zeros((1, 5), np.float32)])
    np.testing.assert_allclose(ConFIG()(padded), ConFIG()(j), rtol=1e-4, atol=1e-6)


def test_eager_equals_jit():
    j = RNG.normal(size=(4, 9)).astype(np.float32)
    agg = ConFIG()
    np.testing.assert_allclose(jitted(agg)(j), agg(j), rtol=1e-5, atol=1e-6)


def test_config_and_validation():
    assert ALIASES["config"] is ConFIG
    assert_config_round_trip(ConFIG(rcond=1e-5))
    with pytest.raises(ValueError):
        ConFIG(rcond=0.0)


# Each example compiles two fresh instances' eager functions for its shape
# (~0.3 s): 15 examples draw most of the 12 kinds of degenerate Jacobian in
# a run (the 48 kind and scale pairs over runs).
@settings(deadline=None, max_examples=15)
@given(jacobians())
def test_degenerate_jacobians_give_finite_directions(jacobian):
    d = to_numpy(ConFIG()(jacobian)).astype(np.float64)
    assert_finite_direction(ConFIG(), jacobian, calls=1)
    # |d| <= |sum of the (cleaned, rescaled) gradients|
    clean = np.where(np.isfinite(jacobian), jacobian, 0.0).astype(np.float64)
    peak = np.abs(clean).max()
    if peak > 0:
        bound = np.linalg.norm((clean / peak).sum(0)) * peak
        assert np.linalg.norm(d) <= bound * (1 + 1e-3) + 1e-6 * peak

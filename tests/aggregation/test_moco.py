"""Tests of MoCo (Fernando et al. 2023)."""

import numpy as np
import pytest
from _backend import to_numpy
from _jacobians import jacobians
from _stateful_checks import (
    assert_config_round_trip,
    assert_finite_direction,
    assert_same_values,
    values,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.moco import MoCo

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(6)


def simplex_projection(v):
    """By bisection on the threshold theta: sum(max(v - theta, 0)) = 1."""
    low, high = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.maximum(v - mid, 0).sum() > 1:
            low = mid
        else:
            high = mid
    return np.maximum(v - 0.5 * (low + high), 0)


def numpy_moco(
    sequence,
    beta=0.5,
    beta_sigma=0.5,
    gamma=0.1,
    gamma_sigma=0.5,
    rho=0.0,
    normalize=True,
):
    k, d = sequence[0].shape
    y = np.zeros((k, d))
    lam = np.full(k, 1.0 / k)
    out = []
    for t, j in enumerate(sequence, start=1):
        j = j.astype(np.float64)
        h = j / np.linalg.norm(j, axis=1, keepdims=True) if normalize else j
        y = y - beta / t**beta_sigma * (y - h)
        step = gamma / t**gamma_sigma
        lam = simplex_projection(lam - step * (y @ y.T + rho * np.eye(k)) @ lam)
        out.append(y.T @ lam)
    return out, y, lam


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_numpy_over_several_calls(normalize):
    kwargs = {"beta": 0.6, "gamma": 0.3, "rho": 0.1, "normalize": normalize}
    seq = [RNG.normal(size=(3, 5)).astype(np.float32) for _ in range(4)]
    expected, y, lam = numpy_moco(seq, **kwargs)
    agg = MoCo(**kwargs)
    for j, d in zip(seq, expected):
        np.testing.assert_allclose(agg(j), d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(agg.tracked), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(agg.lambdas), lam, rtol=1e-4, atol=1e-5)
    assert to_numpy(agg.step) == 4


def test_docstring_example():
    d = MoCo()(np.array([[3.0, 0.0], [0.0, 4.0]]))
    np.testing.assert_allclose(d, [0.25, 0.25], rtol=1e-6)


def test_weights_move_towards_the_min_norm_point():
    # Y Y^T penalises the longer tracked gradient: its weight drops.
    j = np.array([[4.0, 0.0], [0.0, 1.0]], np.float32)
    agg = MoCo(normalize=False, gamma=0.05)
    for _ in range(8):
        agg(j)
    lam = to_numpy(agg.lambdas)
    assert lam[0] < lam[1]
    np.testing.assert_allclose(lam.sum(), 1.0, rtol=1e-6)


def test_evaluation_keeps_state_and_returns_the_update():
    seq = [RNG.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]
    agg = MoCo()
    agg(seq[0])
    before = values(agg)
    d_eval = to_numpy(agg(seq[1], training=False))
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(agg(seq[1]), d_eval, rtol=1e-6)


def test_permutation_invariant():
    seq = [RNG.normal(size=(4, 5)).astype(np.float32) for _ in range(3)]
    perm = [2, 0, 3, 1]
    a, b = MoCo(normalize=False), MoCo(normalize=False)
    for j in seq:
        np.testing.assert_allclose(a(j), b(j[perm]), rtol=1e-5, atol=1e-6)


def test_config_and_validation():
    assert ALIASES["moco"] is MoCo
    # Scale-invariant with normalised rows (test_properties checks it), neither
    # homogeneous nor invariant on raw ones.
    assert MoCo().scale_degree == 0
    assert MoCo(normalize=False).scale_degree is None
    assert_config_round_trip(MoCo(beta=0.3, gamma=0.2, rho=0.1, normalize=False))
    for kwargs in ({"beta": 0.0}, {"beta": 1.5}, {"gamma": 0.0}, {"rho": -1.0}):
        with pytest.raises(ValueError):
            MoCo(**kwargs)
    with pytest.raises(ValueError, match="D"):
        MoCo().build((3, None))


# Each example compiles a fresh instance's eager function for its shape
# (~0.3 s): 15 examples draw most of the 12 kinds of degenerate Jacobian in
# a run (the 48 kind and scale pairs over runs).
@settings(deadline=None, max_examples=15)
@given(jacobians(), st.booleans())
def test_degenerate_jacobians_give_finite_directions(jacobian, normalize):
    agg = MoCo(normalize=normalize, gamma=10.0)
    assert_finite_direction(agg, jacobian, calls=1)

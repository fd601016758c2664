"""Tests of MoDo (Chen et al. 2023), keras_mtl/aggregation/modo.py."""

import numpy as np
import pytest
from _backend import tensor
from _jacobians import (
    assert_config_round_trip,
    jitted,
    random_jacobian,
)

from keras_mtl.aggregation import MoDo
from keras_mtl.aggregation.base import uses_gramian

pytestmark = pytest.mark.backend_neutral


def project_simplex(v):
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def test_documented_example():
    agg = MoDo(gamma=0.1, rho=0.0)
    np.testing.assert_allclose(
        agg(np.array([[1.0, 0.0], [0.0, 2.0]])), [0.575, 0.85], atol=1e-6
    )
    np.testing.assert_allclose(agg.lambdas, [0.575, 0.425], atol=1e-6)


def test_matches_reference_over_steps():
    """Four training steps against LibMTL's update in float64 (one Jacobian
    for its three minibatches)."""
    gamma, rho = 0.05, 0.1
    agg = MoDo(gamma=gamma, rho=rho)
    run = jitted(agg)
    lam = np.full(3, 1 / 3)
    for seed in range(4):
        j = random_jacobian(3, 6, seed, spread=1.0).astype(np.float64)
        lam = project_simplex(lam - gamma * (j @ (j.T @ lam) + rho * lam))
        got = np.asarray(run(tensor(j.astype(np.float32))), np.float64)
        np.testing.assert_allclose(got, lam @ j, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(agg.lambdas), lam, atol=1e-6)


def test_training_false_keeps_the_weights():
    agg = MoDo(gamma=0.1)
    j = random_jacobian(3, 4, 5)
    a = np.asarray(agg(j, training=False))
    np.testing.assert_allclose(agg.lambdas, 1 / 3)
    np.testing.assert_allclose(np.asarray(agg(j)), a, rtol=1e-6)
    assert not np.allclose(agg.lambdas, 1 / 3)


def test_permutation_equivariant():
    j = random_jacobian(4, 6, 3)
    perm = np.array([2, 0, 3, 1])
    a = np.asarray(MoDo(gamma=0.05)(j))
    b = np.asarray(MoDo(gamma=0.05)(j[perm]))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("unit", [1.0, 3.0, 1e25])
def test_gramian_route_call_matches_the_reference(unit):
    """`direction_weights(G, unit=)`, the Gramian route's call, for `G` the
    Gramian of `J / unit`: LibMTL's update of J itself, whose Gramian is
    not representable in float32 at 1e25 (the step is then capped at
    1e6 / gamma: a vertex)."""
    assert uses_gramian(MoDo())
    gamma, rho = 0.05, 0.1
    agg = MoDo(gamma=gamma, rho=rho)
    lam = np.full(3, 1 / 3)
    for seed in range(4):
        rows = random_jacobian(3, 6, seed, spread=1.0).astype(np.float64)
        j = rows * unit
        step = min(gamma * unit**2, 1e6)
        lam = project_simplex(lam - (step * rows @ rows.T @ lam + gamma * rho * lam))
        g = (rows @ rows.T).astype(np.float32)
        got = np.asarray(agg.direction_weights(g, unit=np.float32(unit)), np.float64)
        np.testing.assert_allclose(got @ j, lam @ j, rtol=1e-5, atol=1e-6 * unit)
        np.testing.assert_allclose(np.asarray(agg.lambdas), lam, atol=1e-6)
    # Evaluation: the would-be step, nothing stored.
    before = np.asarray(agg.lambdas)
    agg.direction_weights(g, training=False, unit=np.float32(unit))
    np.testing.assert_array_equal(np.asarray(agg.lambdas), before)


def test_huge_gradients_take_the_capped_step():
    j = np.array([[1e30, 0.0], [0.0, 2e30]], np.float32)
    d = np.asarray(MoDo()(j), np.float64)
    assert np.all(np.isfinite(d))
    # A huge step towards the smaller gradient: the vertex e_1.
    np.testing.assert_allclose(d, [1e30, 0.0], rtol=1e-6)


def test_config_and_invalid_arguments():
    assert_config_round_trip(MoDo(gamma=0.01, rho=0.5, name="modo"))
    for kwargs, name in (({"gamma": 0.0}, "gamma"), ({"rho": -1.0}, "rho")):
        with pytest.raises(ValueError, match=name):
            MoDo(**kwargs)

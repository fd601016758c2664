"""Tests of CAGrad: the best worst-case improvement near the mean gradient."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    assert_homogeneous,
    assert_permutation_invariant,
    random_jacobian,
)
from scipy.optimize import minimize

from keras_mtl.aggregation.cagrad import CAGrad

pytestmark = pytest.mark.backend_neutral

RUN = Graph(lambda: CAGrad(c=0.5, rescale=0))


def scipy_reference(jacobian, c):
    """The official algorithm in float64 (SciPy SLSQP on the dual, three
    starts), without rescaling."""
    j = jacobian.astype(np.float64)
    k = len(j)
    g = j @ j.T
    g0 = j.mean(axis=0)
    b = g.mean(axis=1)
    radius = c * np.linalg.norm(g0)

    def objective(w):
        return b @ w + radius * np.sqrt(max(w @ g @ w, 0.0) + 1e-20)

    rng = np.random.default_rng(0)
    best = None
    for start in [np.full(k, 1.0 / k)] + [rng.dirichlet(np.ones(k)) for _ in range(2)]:
        result = minimize(
            objective,
            start,
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or result.fun < best.fun:
            best = result
    gw = best.x @ j
    return g0 + radius * gw / np.linalg.norm(gw)


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_reference(seed):
    k, dim = [(2, 3), (3, 5), (4, 9), (5, 5), (6, 12), (5, 3)][seed]
    j = random_jacobian(k, dim, seed, spread=1.0)
    j[0] -= 1.5 * j[1]
    expected = scipy_reference(j, 0.5)
    np.testing.assert_allclose(RUN(j), expected, atol=1e-4 * np.linalg.norm(expected))


@pytest.mark.parametrize("seed", range(4))
def test_maximises_the_worst_improvement_in_the_ball(seed):
    """Primal problem: d (rescale=0) lies on the sphere of radius
    c ||g_0|| around g_0 and no sampled point of the ball has a larger
    min_i <g_i, x>."""
    j = random_jacobian(4, 6, 50 + seed, spread=1.0).astype(np.float64)
    j[1] = -0.8 * j[0] + 0.3 * j[1]
    d = RUN(j)
    g0 = j.mean(axis=0)
    radius = 0.5 * np.linalg.norm(g0)
    np.testing.assert_allclose(np.linalg.norm(d - g0), radius, rtol=1e-4)
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(20000, 6))
    u *= (rng.random((20000, 1)) ** (1 / 6)) / np.linalg.norm(u, axis=1, keepdims=True)
    samples = g0 + radius * u
    best_sampled = (samples @ j.T).min(axis=1).max()
    assert (j @ d).min() >= best_sampled - 1e-5 * np.abs(j @ d).max()


def test_torchjd_example_and_rescaling():
    j = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
    np.testing.assert_allclose(RUN(j), [0.1835, 1.2041, 1.2041], atol=1e-4)
    # The rescaling is a final factor: a few iterations (eagerly) suffice.
    none, one, two = (CAGrad(c=0.5, rescale=r, iterations=3)(j) for r in (0, 1, 2))
    np.testing.assert_allclose(np.asarray(one) * 1.25, none, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(two) * 1.5, none, rtol=1e-5)


def test_c_zero_is_the_mean():
    j = random_jacobian(3, 5, seed=1)
    d = CAGrad(c=0.0, iterations=3)(j)
    np.testing.assert_allclose(d, j.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_generic_properties():
    j = random_jacobian(4, 9, seed=7, spread=1.0)
    j[2] = -j[0] + 0.3 * j[2]
    assert_homogeneous(RUN, j)
    assert_permutation_invariant(RUN, j)
    # The default solve, each run against SciPy's solution of the dual at
    # the accuracy of test_matches_scipy_reference. (A 50-iteration solve,
    # compared run against run, differed by 1e-4 of the norm between XLA and
    # graph mode on an AVX-512/AMX CPU and by 1e-6 on an AMD EPYC.)
    assert_every_run_reaches(
        CAGrad(c=0.5, rescale=0), RUN, j, scipy_reference(j, 0.5), 1e-4
    )
    assert_config_round_trip(CAGrad(c=0.3, rescale=2, iterations=40, name="ca"))


@pytest.mark.parametrize(
    "kwargs", [{"c": -0.1}, {"c": 1.0}, {"rescale": 3}, {"iterations": 0}]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        CAGrad(**kwargs)

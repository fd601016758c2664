"""Tests of DualProj: the mean gradient projected onto the dual cone."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    assert_non_conflicting,
    random_jacobian,
)
from scipy.optimize import nnls

from keras_mtl.aggregation.dualproj import DualProj

pytestmark = pytest.mark.backend_neutral

RUN = Graph(DualProj)


def reference(jacobian):
    """Projection of the mean onto {x : J x >= 0} by SciPy's NNLS on the
    dual problem min_{w >= 0} ||mean + J^T w|| (float64)."""
    j = jacobian.astype(np.float64)
    mean = j.mean(axis=0)
    w, _ = nnls(j.T, -mean, maxiter=10_000)
    return mean + j.T @ w


def test_documented_example():
    np.testing.assert_allclose(
        RUN(np.array([[1.0, 0.0], [-2.0, 1.0]])), [0.0, 0.5], atol=1e-6
    )


@pytest.mark.parametrize("seed", range(8))
def test_matches_scipy_reference(seed):
    rng = np.random.default_rng(400 + seed)
    k, dim = [(2, 3), (3, 2), (4, 9), (5, 5), (6, 12), (6, 3), (3, 15), (4, 4)][seed]
    j = random_jacobian(k, dim, seed, spread=1.0)
    j[0] -= 3.0 * j[1] * rng.uniform(0.5, 1.5)
    d = RUN(j)
    scale = np.linalg.norm(j, axis=1).max()
    np.testing.assert_allclose(d, reference(j), atol=2e-5 * scale)


@pytest.mark.parametrize("seed", range(6))
def test_non_conflicting_and_closest(seed):
    """d conflicts with no task and is as close to the mean as the reference
    projection."""
    j = random_jacobian(6, 10, seed, spread=2.0)
    j[1] = -2.0 * j[0] + 0.1 * j[1]
    d = RUN(j)
    assert_non_conflicting(j, d)
    mean = j.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(
        np.linalg.norm(d - mean),
        np.linalg.norm(reference(j) - mean),
        rtol=1e-3,
        atol=1e-6,
    )


def test_equals_mean_when_mean_does_not_conflict():
    j = np.array([[1.0, 0.2], [0.3, 1.0], [-0.2, 0.9]], np.float32)
    assert np.all(j @ j.mean(axis=0) > 0)
    np.testing.assert_allclose(RUN(j), j.mean(axis=0), rtol=1e-6)


def test_generic_properties():
    j = random_jacobian(4, 9, seed=7, spread=2.0)
    j[2] = -2.0 * j[0] + 0.3 * j[2]
    # The default solve, each run against SciPy's NNLS projection at the
    # solver's accuracy on this conditioning.
    assert_every_run_reaches(DualProj(), RUN, j, reference(j), 1e-4)
    assert_config_round_trip(DualProj(iterations=30, name="dp"))


def test_invalid_iterations():
    with pytest.raises(ValueError, match="iterations"):
        DualProj(iterations=0)

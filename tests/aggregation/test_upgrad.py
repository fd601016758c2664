"""Tests of UPGrad (and of the shared non-negative QP solver): the mean of
the task gradients projected onto the dual cone of all of them."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    conflicting_jacobian,
    random_jacobian,
)
from scipy.optimize import nnls

from keras_mtl.aggregation.upgrad import UPGrad

pytestmark = pytest.mark.backend_neutral

RUN = Graph(UPGrad)


def project_onto_dual_cone(jacobian, v):
    """Reference projection of `v` onto {x : J x >= 0} (float64, SciPy's
    NNLS on the dual: min_{w >= 0} ||v + J^T w||)."""
    j = jacobian.astype(np.float64)
    w, _ = nnls(j.T, -np.asarray(v, np.float64), maxiter=10_000)
    return v + j.T @ w


def reference(jacobian):
    j = jacobian.astype(np.float64)
    return np.mean([project_onto_dual_cone(j, g) for g in j], axis=0)


def test_documented_example():
    np.testing.assert_allclose(
        RUN(np.array([[1.0, 0.0], [-1.0, 1.0]])), [0.25, 0.75], atol=1e-6
    )


@pytest.mark.parametrize("seed", range(8))
def test_matches_scipy_reference(seed):
    k, dim = [(2, 3), (3, 2), (4, 9), (5, 5), (6, 12), (6, 3), (3, 15), (4, 4)][seed]
    j = conflicting_jacobian(k, dim, seed)
    expected = reference(j)
    d = RUN(j)
    scale = np.linalg.norm(j, axis=1).max()
    np.testing.assert_allclose(d, expected, atol=2e-5 * scale)


def test_equals_mean_without_conflict():
    rng = np.random.default_rng(5)
    j = np.abs(rng.normal(size=(4, 6))).astype(np.float32)  # pairwise dots >= 0
    np.testing.assert_allclose(RUN(j), j.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_opposite_gradients_give_zero():
    j = np.array([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]], np.float32)
    np.testing.assert_allclose(RUN(j), 0.0, atol=1e-6)


def test_more_tasks_than_dimensions():
    j = random_jacobian(6, 3, seed=11)
    np.testing.assert_allclose(RUN(j), reference(j), atol=1e-4 * np.abs(j).max())


def test_generic_properties():
    j = random_jacobian(4, 9, seed=7, spread=2.0)
    j[2] = -j[0] + 0.3 * j[2]
    # The default solve, each run against SciPy's NNLS projections at the
    # solver's accuracy on this conditioning.
    assert_every_run_reaches(UPGrad(), RUN, j, reference(j), 1e-4)
    assert_config_round_trip(UPGrad(iterations=50, name="upgrad"))


@pytest.mark.parametrize("iterations", [0, -3, 1.5])
def test_invalid_iterations(iterations):
    with pytest.raises(ValueError, match="iterations"):
        UPGrad(iterations=iterations)

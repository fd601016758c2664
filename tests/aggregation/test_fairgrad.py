"""Tests of FairGrad (Ban & Ji 2024)."""

import numpy as np
import pytest
from _backend import to_numpy
from _jacobians import jacobians
from _stateful_checks import (
    assert_config_round_trip,
    assert_finite_direction,
    jitted,
    padded,
)
from hypothesis import given, settings

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.fairgrad import FairGrad
from keras_mtl.aggregation.nash_mtl import NashMTL

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(5)
_STEP = {}


def fair(jacobian, alpha):
    """A compiled FairGrad (stateless: one compiled step per alpha and shape)."""
    key = (alpha, jacobian.shape)
    if key not in _STEP:
        _STEP[key] = jitted(FairGrad(alpha=alpha))
    return to_numpy(_STEP[key](jacobian))


def well_conditioned(num_tasks, dim=10):
    q, _ = np.linalg.qr(RNG.normal(size=(dim, num_tasks)))
    mix = np.eye(num_tasks) + 0.3 * RNG.normal(size=(num_tasks, num_tasks))
    scales = RNG.uniform(0.5, 3.0, size=(num_tasks, 1))
    return (scales * (mix @ q.T)).astype(np.float32)


@pytest.mark.parametrize(("alpha", "num_tasks"), [(0.5, 4), (2.0, 2), (5.0, 5)])
def test_weights_solve_the_fairness_condition(alpha, num_tasks):
    j = well_conditioned(num_tasks)
    g = (j @ j.T).astype(np.float64)
    w = to_numpy(FairGrad(alpha=alpha).gramian_weights(g.astype(np.float32))).astype(
        np.float64
    )
    assert np.all(w > 0)
    # G w = w^(-1/alpha), written as w^(1/alpha) * (G w) = 1.
    np.testing.assert_allclose(w ** (1 / alpha) * (g @ w), 1.0, atol=2e-3)


def test_orthogonal_closed_form():
    # G = diag(n^2): n^2 w = w^(-1/alpha)  =>  w = n^(-2 alpha / (alpha + 1)).
    norms = np.array([2.0, 0.5, 3.0])
    j = np.diag(norms).astype(np.float32)
    for alpha in (0.5, 2.0):
        w = to_numpy(FairGrad(alpha=alpha).gramian_weights(j @ j.T))
        np.testing.assert_allclose(w, norms ** (-2 * alpha / (alpha + 1)), rtol=1e-4)


def test_alpha_one_is_nash_mtl():
    j = well_conditioned(3)
    np.testing.assert_allclose(FairGrad(alpha=1.0)(j), NashMTL()(j), rtol=1e-6)


def test_large_alpha_equalises_progress():
    # Max-min fairness: equal progress g_i . d when that needs no negative
    # weight (G^-1 1 > 0).
    j = np.array([[2.0, 0.6, 0.0], [0.0, 1.0, 0.3], [0.6, 0.0, 1.5]], np.float32)
    assert np.all(np.linalg.solve(j @ j.T, np.ones(3)) > 0)
    d = to_numpy(FairGrad(alpha=50.0)(j)).astype(np.float64)
    progress = j @ d
    assert progress.min() > 0
    assert progress.max() / progress.min() < 1.1


def test_scale_degree():
    for alpha in (0.5, 1.0, 3.0):
        degree = (1 - alpha) / (1 + alpha)
        assert FairGrad(alpha=alpha).scale_degree == pytest.approx(degree)
    j = padded(well_conditioned(3))
    # Compiled, alpha = 3: degree -1/2.
    d = fair(j, 3.0)
    for factor in (1e-20, 5.0, 1e20):
        np.testing.assert_allclose(
            fair(j * np.float32(factor), 3.0),
            d * factor**-0.5,
            rtol=2e-4,
            atol=1e-6 * factor**-0.5,
        )
    # Eager, alpha = 0.5: degree 1/3.
    agg = FairGrad(alpha=0.5)
    np.testing.assert_allclose(
        agg(j * np.float32(1e21)), to_numpy(agg(j)) * 1e7, rtol=2e-4, atol=1e1
    )


def test_permutation_invariant_and_eager_equals_jit():
    j = padded(well_conditioned(4))
    d = fair(j, 3.0)
    np.testing.assert_allclose(
        fair(j[[2, 0, 3, 1, 4, 5]], 3.0), d, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(FairGrad(alpha=3.0)(j), d, rtol=1e-4, atol=1e-6)


def test_config_and_validation():
    assert ALIASES["fairgrad"] is FairGrad
    assert_config_round_trip(FairGrad(alpha=2.0, iterations=25))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError):
            FairGrad(alpha=bad)


@settings(deadline=None, max_examples=15)
@given(jacobians())
def test_degenerate_jacobians_give_finite_directions(jacobian):
    # Default solver, compiled, on the zero-padded Jacobian (same direction).
    d = fair(padded(jacobian), 3.0)
    assert np.all(np.isfinite(d))
    assert np.all(d[jacobian.shape[1] :] == 0.0)
    # Eager, unpadded (output shape), with a short solve to keep this fast.
    assert_finite_direction(FairGrad(alpha=0.5, iterations=1), jacobian, calls=1)

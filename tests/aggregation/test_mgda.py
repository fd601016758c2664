"""Tests of MGDA (and of the shared min-norm solver): the minimum-norm
convex combination of the task gradients."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    assert_non_conflicting,
    brute_force_min_norm,
    random_jacobian,
)

from keras_mtl.aggregation.mgda import MGDA

pytestmark = pytest.mark.backend_neutral

RUN = Graph(MGDA)
WEIGHTS = Graph(MGDA, method="gramian_weights")


def two_task_closed_form(g1, g2):
    g1, g2 = g1.astype(np.float64), g2.astype(np.float64)
    diff = g1 - g2
    denom = diff @ diff
    w1 = 0.5 if denom == 0 else np.clip(((g2 - g1) @ g2) / denom, 0.0, 1.0)
    return w1 * g1 + (1.0 - w1) * g2


@pytest.mark.parametrize("seed", range(6))
def test_two_tasks_match_closed_form(seed):
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(1, 8))
    j = random_jacobian(2, dim, seed, spread=2.0)
    if seed == 0:  # one gradient dominated: d is the smaller gradient
        j[1] = 0.2 * j[0]
    expected = two_task_closed_form(j[0], j[1])
    scale = np.linalg.norm(j, axis=1).max()
    np.testing.assert_allclose(RUN(j), expected, atol=1e-5 * scale)


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    k, dim = int(rng.integers(2, 7)), int(rng.integers(1, 12))
    j = random_jacobian(k, dim, seed, spread=2.0)
    expected = brute_force_min_norm(j)
    scale = np.linalg.norm(j, axis=1).max()
    np.testing.assert_allclose(RUN(j), expected, atol=1e-4 * scale)


@pytest.mark.parametrize("seed", range(6))
def test_kkt_conditions(seed):
    """w in the simplex; (G w)_i equals min_j (G w)_j = w^T G w wherever
    w_i > 0, and (G w)_j >= w^T G w everywhere."""
    dim = int(np.random.default_rng(200 + seed).integers(2, 20))
    j = random_jacobian(5, dim, seed, spread=1.0)
    g = (j.astype(np.float64) @ j.T.astype(np.float64)).astype(np.float32)
    w = WEIGHTS(g)
    assert np.all(w >= 0.0)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-6)
    g = g.astype(np.float64)
    grad = g @ w
    value = w @ grad
    tol = 1e-5 * np.abs(g).max()
    assert np.all(grad >= value - tol), (grad, value)
    active = w > 1e-4
    np.testing.assert_allclose(grad[active], value, atol=tol)


def test_solver_on_ill_conditioned_gramian():
    """Nearly parallel gradients: projected gradient alone stalls, the
    active-set rounds reach the exact minimiser."""
    j = np.array([[-6.0, -6.78], [1.2, 1.59], [-1.26, -1.18]], np.float32)
    expected = brute_force_min_norm(j)
    w = WEIGHTS(j @ j.T)  # min_norm_simplex with the default iterations
    np.testing.assert_allclose(w @ j.astype(np.float64), expected, atol=1e-5)


def test_common_descent_direction():
    """<d, g_i> >= ||d||^2 for every task (so -d decreases every loss)."""
    for seed in range(5):
        j = random_jacobian(5, 8, seed, spread=2.0)
        d = RUN(j)
        dots = j.astype(np.float64) @ d
        assert np.all(dots >= d @ d - 1e-4 * np.abs(dots).max())
        assert_non_conflicting(j, d)


def test_pareto_stationary_gives_zero():
    j = np.array([[1.0, 2.0, -1.0], [-2.0, -4.0, 2.0]], np.float32)
    np.testing.assert_allclose(RUN(j), 0.0, atol=1e-6)
    j = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], np.float32)
    np.testing.assert_allclose(RUN(j), 0.0, atol=1e-6)


def test_scaling_up_an_inactive_task_changes_nothing():
    """A task with zero weight keeps zero weight when its gradient grows:
    its KKT inequality <g_i, d> >= ||d||^2 only gets stronger."""
    j = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 2.0, 1.0]], np.float32)
    weights = WEIGHTS(j @ j.T)
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0], atol=1e-6)
    base = RUN(j)
    scaled = j.copy()
    scaled[2] *= 10.0
    np.testing.assert_allclose(RUN(scaled), base, atol=1e-6)
    np.testing.assert_allclose(base, [0.5, 0.5, 0.0], atol=1e-6)


def test_smallest_gradient_dominates():
    """Scaling a task's gradient down pulls d towards it."""
    j = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    j[1] *= 0.1
    d = RUN(j)
    np.testing.assert_allclose(d, two_task_closed_form(j[0], j[1]), atol=1e-6)
    # The min-norm point is (0.01, 0.1) / 1.01: the small gradient's entry
    # is exactly 10 times the other's (the inverse ratio of the norms), so
    # a strict `> 10` would be decided by rounding. The tolerance is the
    # closed form's above (1e-6 on d[0] ~ 0.01), for both entries.
    np.testing.assert_allclose(d[1] / d[0], 10.0, rtol=2e-4)


def test_generic_properties():
    j = random_jacobian(4, 9, seed=7, spread=2.0)
    # The default solve, each run against the exact min-norm point at the
    # solver's accuracy on this conditioning (test_matches_brute_force).
    assert_every_run_reaches(MGDA(), RUN, j, brute_force_min_norm(j), 1e-4)
    assert_config_round_trip(MGDA(iterations=50, name="mgda"))
    assert MGDA.from_config(MGDA(iterations=50).get_config()).iterations == 50


@pytest.mark.parametrize("iterations", [0, -1, 2.5, True])
def test_invalid_iterations(iterations):
    with pytest.raises(ValueError, match="iterations"):
        MGDA(iterations=iterations)


def test_single_task_is_identity():
    j = np.array([[3.0, -1.0]], np.float32)
    np.testing.assert_allclose(RUN(j), j[0])

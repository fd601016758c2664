"""Tests of IMTLG: equal projections of d on every unit task gradient."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    random_jacobian,
)

from keras_mtl.aggregation.imtl_g import IMTLG

pytestmark = pytest.mark.backend_neutral

RUN = Graph(IMTLG)


def paper_closed_form(jacobian):
    """Liu et al.'s formula: alpha_{2:K} = g_1 U^T (D U^T)^{-1}."""
    j = jacobian.astype(np.float64)
    u = j / np.linalg.norm(j, axis=1, keepdims=True)
    d_mat = j[0][None, :] - j[1:]
    u_mat = u[0][None, :] - u[1:]
    tail = j[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    alpha = np.concatenate([[1.0 - tail.sum()], tail])
    return alpha @ j


@pytest.mark.parametrize("shape", [(2, 2), (2, 7), (3, 5), (4, 4), (5, 12), (6, 20)])
def test_matches_paper_closed_form(shape):
    j = random_jacobian(*shape, seed=shape[0] * 31 + shape[1], spread=1.0)
    expected = paper_closed_form(j)
    np.testing.assert_allclose(
        RUN(j), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


@pytest.mark.parametrize("seed", range(5))
def test_projections_on_unit_gradients_are_equal(seed):
    j = random_jacobian(4, 9, seed, spread=3.0).astype(np.float64)
    d = RUN(j)
    projections = (j / np.linalg.norm(j, axis=1, keepdims=True)) @ d
    np.testing.assert_allclose(projections, projections[0], rtol=1e-4)


def test_scaling_one_task_keeps_the_direction():
    """The unit gradients, hence the direction of d, do not depend on the
    gradient norms."""
    j = random_jacobian(3, 6, seed=2)
    scaled = j.copy()
    scaled[1] *= 10.0
    a, b = RUN(j), RUN(scaled)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 1 - 1e-6


def test_documented_examples():
    np.testing.assert_allclose(
        RUN(np.array([[1.0, 0.0], [0.0, 2.0]])), [2 / 3, 2 / 3], rtol=1e-5
    )
    # TorchJD's documented value for the same input.
    j = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(RUN(j), [0.0767, 1.0, 1.0], atol=1e-4)


def test_opposite_gradients_give_zero():
    j = np.array([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], np.float32)
    np.testing.assert_allclose(RUN(j), 0.0, atol=1e-6)


def test_linearly_dependent_rows_use_the_pseudo_inverse():
    """A duplicated task: the generalised formula equals the result on the
    distinct rows (equal projections still hold)."""
    j = random_jacobian(3, 6, seed=9)
    dup = np.concatenate([j, j[:1]], axis=0)
    d = RUN(dup)
    projections = (j / np.linalg.norm(j, axis=1, keepdims=True)).astype(np.float64) @ d
    np.testing.assert_allclose(projections, projections[0], rtol=1e-3)


def test_generic_properties():
    # Well conditioned: float32 eigendecompositions (LAPACK eagerly, Jacobi
    # under XLA) agree to ~1e-6 relative only when cond(G) is moderate.
    j = random_jacobian(4, 9, seed=7, spread=0.5)
    # A closed form: float32 rounding amplified by cond(G) (moderate here).
    assert_every_run_reaches(IMTLG(), RUN, j, paper_closed_form(j), 1e-4)
    assert_config_round_trip(IMTLG(rcond=1e-4, name="imtl"))


def test_invalid_rcond():
    with pytest.raises(ValueError, match="rcond"):
        IMTLG(rcond=-1.0)

"""Tests of AlignedMTL: equal singular values of the aligned Jacobian."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    random_jacobian,
)

from keras_mtl.aggregation.aligned_mtl import AlignedMTL

pytestmark = pytest.mark.backend_neutral

RUN = Graph(AlignedMTL)
BALANCE = Graph(AlignedMTL, method="balance_transformation")


def svd_reference(jacobian, rcond=1e-5):
    """From the SVD J = U S W^T: the aligned Jacobian is s_R U_R W_R^T
    (s_R the smallest kept singular value); d is the sum of its rows."""
    j = jacobian.astype(np.float64)
    u, s, wt = np.linalg.svd(j, full_matrices=False)
    keep = s**2 > rcond * s[0] ** 2
    aligned = s[keep].min() * u[:, keep] @ wt[keep]
    return aligned.sum(axis=0)


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (4, 10), (6, 20)])
def test_aligned_singular_values_are_equal(shape):
    j = random_jacobian(*shape, seed=sum(shape), spread=1.0)
    s = np.linalg.svd(j.astype(np.float64), compute_uv=False)
    assert s.min() ** 2 > 1e-4 * s.max() ** 2  # full rank for the default rcond
    b = BALANCE((j.astype(np.float64) @ j.T.astype(np.float64)).astype(np.float32))
    aligned = b @ j.astype(np.float64)
    singular = np.linalg.svd(aligned, compute_uv=False)
    smallest = np.linalg.svd(j.astype(np.float64), compute_uv=False).min()
    np.testing.assert_allclose(singular, smallest, rtol=1e-3)


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (4, 10), (6, 20), (5, 3)])
def test_matches_svd_reference(shape):
    """(5, 3): more tasks than dimensions, rank 3."""
    j = random_jacobian(*shape, seed=10 + sum(shape), spread=1.0)
    expected = svd_reference(j)
    np.testing.assert_allclose(RUN(j), expected, atol=1e-4 * np.abs(expected).max())


def test_rank_deficient_keeps_non_zero_components():
    j = random_jacobian(3, 8, seed=4)
    j = np.concatenate([j, j[:1], -j[1:2]], axis=0)  # rank 3 of 5
    d = RUN(j)
    assert np.all(np.isfinite(d)) and np.linalg.norm(d) > 0
    np.testing.assert_allclose(d, svd_reference(j), atol=1e-4 * np.abs(d).max())


def test_documented_example():
    np.testing.assert_allclose(
        RUN(np.array([[3.0, 0.0], [0.0, 1.0]])), [1.0, 1.0], rtol=1e-6
    )


def test_generic_properties():
    # Well conditioned: float32 eigendecompositions (LAPACK eagerly, Jacobi
    # under XLA) agree to ~1e-6 relative only when cond(G) is moderate.
    j = random_jacobian(4, 9, seed=7, spread=0.5)
    # The documented accuracy of the float32 eigendecomposition (~1e-6),
    # amplified by cond(G) (moderate here).
    assert_every_run_reaches(AlignedMTL(), RUN, j, svd_reference(j), 1e-4)
    assert_config_round_trip(AlignedMTL(rcond=1e-4, name="aligned"))


def test_invalid_rcond():
    with pytest.raises(ValueError, match="rcond"):
        AlignedMTL(rcond=1.5)

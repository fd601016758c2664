"""Tests of Mean: the average of the task gradients."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_every_run_reaches,
    random_jacobian,
)

from keras_mtl.aggregation.mean import Mean

pytestmark = pytest.mark.backend_neutral


@pytest.mark.parametrize("shape", [(1, 3), (2, 5), (6, 20)])
def test_mean_of_rows(shape):
    j = random_jacobian(*shape, seed=1, spread=3.0)
    np.testing.assert_allclose(
        Mean()(j), j.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6
    )


def test_weights_are_uniform():
    w = Mean().gramian_weights(np.eye(4, dtype=np.float32))
    np.testing.assert_allclose(w, np.full(4, 0.25))


def test_huge_and_tiny_rows_do_not_overflow():
    j = np.array([[3e37, 1e-30], [3e37, -1e-30]], np.float32)
    np.testing.assert_allclose(Mean()(j), [3e37, 0.0], rtol=1e-6)


def test_non_finite_entries_are_zeroed():
    j = np.array([[np.nan, 2.0], [np.inf, 4.0]], np.float32)
    np.testing.assert_allclose(Mean()(j), [0.0, 3.0])


def test_generic_properties():
    j = random_jacobian(4, 7, seed=3)
    run = Graph(Mean)
    # A mean in float32: a few ulps of the inputs.
    assert_every_run_reaches(Mean(), run, j, j.astype(np.float64).mean(axis=0), 1e-6)
    assert_config_round_trip(Mean(name="m"))

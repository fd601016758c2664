"""Tests of TrimmedMean (Yin et al. 2018),
keras_mtl/aggregation/trimmed_mean.py."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    random_jacobian,
)

import keras_mtl
from keras_mtl.aggregation import TrimmedMean
from keras_mtl.aggregation.base import uses_gramian

pytestmark = pytest.mark.backend_neutral


def test_documented_example():
    j = np.array([[1.0, 9.0], [2.0, -4.0], [30.0, 0.0]])
    np.testing.assert_allclose(TrimmedMean(trim_number=1)(j), [2.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("trim", [0, 1, 2])
def test_matches_numpy(trim):
    j = random_jacobian(6, 9, trim, spread=2.0)
    j[trim, 3] = 1e6  # an outlier in one coordinate
    expected = np.sort(j.astype(np.float64), axis=0)[trim : 6 - trim].mean(axis=0)
    run = Graph(lambda: TrimmedMean(trim_number=trim))
    np.testing.assert_allclose(run(j), expected, rtol=1e-5, atol=1e-6)
    if trim:
        assert abs(run(j)[3]) < 10.0  # the outlier is removed


def test_not_on_the_gramian_route_and_config():
    assert not uses_gramian(TrimmedMean())
    assert_config_round_trip(TrimmedMean(trim_number=2, name="tm"))


def test_too_few_tasks_name_the_argument():
    with pytest.raises(ValueError, match=r"trim_number=2 .* 5 tasks .* got 4"):
        keras_mtl.aggregation.get("trimmed_mean", trim_number=2)(np.ones((4, 3)))
    with pytest.raises(ValueError, match="trim_number"):
        TrimmedMean(trim_number=-1)

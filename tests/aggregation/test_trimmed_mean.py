"""Tests of TrimmedMean (Yin et al. 2018),
keras_mtl/aggregation/trimmed_mean.py."""

import keras
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
from keras_mtl.aggregation.trimmed_mean import _SELECTION_MAX_TASKS, middle_rows

pytestmark = pytest.mark.backend_neutral


def test_documented_example():
    j = np.array([[1.0, 9.0], [2.0, -4.0], [30.0, 0.0]])
    np.testing.assert_allclose(TrimmedMean(trim_number=1)(j), [2.0, 0.0], atol=1e-6)


# K = 6 selects by rows, K = 11 (above `_SELECTION_MAX_TASKS`) sorts.
@pytest.mark.parametrize("trim", [0, 1, 2])
@pytest.mark.parametrize("num_tasks", [6, 11])
def test_matches_numpy(trim, num_tasks):
    j = random_jacobian(num_tasks, 9, trim, spread=2.0)
    j[trim, 3] = 1e6  # an outlier in one coordinate
    expected = np.sort(j.astype(np.float64), axis=0)[trim : num_tasks - trim]
    run = Graph(lambda: TrimmedMean(trim_number=trim))
    np.testing.assert_allclose(run(j), expected.mean(axis=0), rtol=1e-5, atol=1e-6)
    if trim:
        assert abs(run(j)[3]) < 10.0  # the outlier is removed


def test_middle_rows_are_the_sorted_middle_values():
    # Every K the row selection serves and every trim it allows, with ties
    # (small integers) and infinities: the same multiset per coordinate as
    # a sort (min and max are exact, so the values are equal, not close).
    rng = np.random.default_rng(0)
    for k in range(1, _SELECTION_MAX_TASKS + 1):
        for trim in range((k - 1) // 2 + 1):
            j = rng.integers(-3, 4, size=(k, 40)).astype(np.float32)
            j[rng.random((k, 40)) < 0.05] = np.inf
            j[rng.random((k, 40)) < 0.05] = -np.inf
            rows = middle_rows([keras.ops.convert_to_tensor(r) for r in j], trim)
            got = np.stack([keras.ops.convert_to_numpy(r) for r in rows])
            np.testing.assert_array_equal(
                np.sort(got, axis=0), np.sort(j, axis=0)[trim : k - trim]
            )


def test_not_on_the_gramian_route_and_config():
    assert not uses_gramian(TrimmedMean())
    assert_config_round_trip(TrimmedMean(trim_number=2, name="tm"))


def test_too_few_tasks_name_the_argument():
    with pytest.raises(ValueError, match=r"trim_number=2 .* 5 tasks .* got 4"):
        keras_mtl.aggregation.get("trimmed_mean", trim_number=2)(np.ones((4, 3)))
    with pytest.raises(ValueError, match="trim_number"):
        TrimmedMean(trim_number=-1)

"""Tests of Krum / Multi-Krum (Blanchard et al. 2017),
keras_mtl/aggregation/krum.py."""

import numpy as np
import pytest
from _jacobians import (
    Graph,
    assert_config_round_trip,
    assert_homogeneous,
    assert_permutation_invariant,
    random_jacobian,
)

import keras_mtl
from keras_mtl.aggregation import Krum
from keras_mtl.aggregation.base import uses_gramian

pytestmark = pytest.mark.backend_neutral


def reference(jacobian, f, m):
    """Multi-Krum from the rows directly, float64 (paper's squared distances)."""
    j = jacobian.astype(np.float64)
    n = len(j)
    distances = ((j[:, None, :] - j[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(distances[i], i))[: n - f - 2].sum() for i in range(n)]
    return j[np.argsort(scores, kind="stable")[:m]].mean(axis=0)


def test_documented_example():
    j = np.array([[1.0, 0.0], [1.2, 0.0], [0.9, 0.1], [-50.0, 9.0], [0.5, -0.5]])
    np.testing.assert_allclose(Krum(n_byzantine=1)(j), [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("f, m", [(0, 1), (1, 1), (2, 3), (1, 4)])
def test_matches_reference_with_outliers(f, m):
    rng = np.random.default_rng(10 + f + m)
    j = random_jacobian(7, 5, f + 3 * m, spread=0.5)
    j[rng.choice(7, size=f, replace=False)] *= -20.0  # Byzantine rows
    run = Graph(lambda: Krum(n_byzantine=f, n_selected=m))
    np.testing.assert_allclose(run(j), reference(j, f, m), rtol=1e-5, atol=1e-6)


def test_generic_properties():
    j = random_jacobian(6, 8, 3, spread=1.0)
    run = Graph(lambda: Krum(n_byzantine=1, n_selected=2))
    assert uses_gramian(Krum())
    assert_homogeneous(Krum(n_byzantine=1, n_selected=2), j)
    assert_permutation_invariant(run, j)
    assert_config_round_trip(Krum(n_byzantine=2, n_selected=3, name="krum"))


def test_too_few_tasks_name_the_argument():
    with pytest.raises(ValueError, match=r"n_byzantine=1 .* 4 tasks .* got 3"):
        keras_mtl.aggregation.get("krum", n_byzantine=1)(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"n_selected=5 .* got 4"):
        Krum(n_selected=5)(np.ones((4, 2)))
    for kwargs, name in (
        ({"n_byzantine": -1}, "n_byzantine"),
        ({"n_selected": 0}, "n_selected"),
    ):
        with pytest.raises(ValueError, match=name):
            Krum(**kwargs)

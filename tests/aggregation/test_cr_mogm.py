"""Tests of CR-MOGM (Zhou et al. 2022), keras_mtl/aggregation/cr_mogm.py."""

import keras
import numpy as np
import pytest
from _backend import tensor
from _jacobians import (
    assert_config_round_trip,
    assert_homogeneous,
    jitted,
    random_jacobian,
)

import keras_mtl
from keras_mtl.aggregation import CRMOGM, MGDA, SDMGrad
from keras_mtl.aggregation.base import uses_gramian

pytestmark = pytest.mark.backend_neutral


def mgda_weights_two_tasks(j):
    """The exact min-norm weights of two rows (closed form, float64)."""
    g = j.astype(np.float64) @ j.T.astype(np.float64)
    w1 = np.clip((g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1]), 0.0, 1.0)
    return np.array([w1, 1.0 - w1])


def test_documented_example():
    agg = keras_mtl.aggregation.get("cr_mogm", inner="mgda", alpha=0.5)
    agg(np.array([[1.0, 0.0], [0.0, 1.0]]))
    d = agg(np.array([[1.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_allclose(d, [0.7, 0.9], atol=1e-5)


def test_moving_average_of_exact_mgda_weights():
    alpha = 0.3
    agg = CRMOGM(alpha=alpha)
    run = jitted(agg)
    lam = None
    for seed in range(4):
        j = random_jacobian(2, 5, seed, spread=1.0)
        w = mgda_weights_two_tasks(j)
        lam = w if lam is None else (1 - alpha) * lam + alpha * w
        got = np.asarray(run(tensor(j)), np.float64)
        expected = lam @ j.astype(np.float64)
        assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(j), seed
        np.testing.assert_allclose(np.asarray(agg.lambdas), lam, atol=1e-5)


def test_alpha_one_is_the_inner_aggregator_and_eval_changes_nothing():
    j = random_jacobian(3, 6, 8)
    agg = CRMOGM(alpha=1.0)
    agg(random_jacobian(3, 6, 9))
    np.testing.assert_allclose(agg(j), MGDA()(j), rtol=1e-5, atol=1e-6)
    state = [np.asarray(v).copy() for v in agg.variables]
    agg(j, training=False)
    agg.weights(j @ j.T)
    for a, v in zip(state, agg.variables, strict=True):
        np.testing.assert_array_equal(a, np.asarray(v))


def test_gramian_route_homogeneous_and_inner_state():
    agg = CRMOGM(inner=SDMGrad(lmbda=0.1), alpha=0.2)
    assert uses_gramian(agg)
    j = random_jacobian(3, 6, 1, spread=1.0)
    run = lambda x: np.asarray(agg(x, training=False), np.float64)  # noqa: E731
    assert_homogeneous(run, j)
    weights = np.asarray(agg.weights(j @ j.T), np.float64)
    np.testing.assert_allclose(weights @ j, run(j), rtol=1e-4, atol=1e-6)
    agg(j)
    # The inner aggregator's variables are part of the wrapper's.
    paths = {v.path for v in agg.variables}
    assert agg.inner.simplex_weights.path in paths


def test_config_round_trip_keeps_the_inner_aggregator():
    agg = CRMOGM(inner=SDMGrad(lmbda=0.7, iterations=3), alpha=0.25, name="cr")
    assert_config_round_trip(agg)
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(agg)
    )
    assert type(clone.inner) is SDMGrad and clone.inner.lmbda == 0.7
    assert keras_mtl.aggregation.get("cr_mogm", inner="upgrad").inner.name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inner": "trimmed_mean"}, "Gramian-weighted"),
        ({"inner": "fairgrad"}, "scale_degree"),
        ({"inner": "no_such_method"}, "no_such_method"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CRMOGM(**kwargs)

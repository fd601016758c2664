"""Tests of SDMGrad (Xiao, Ban & Ji 2023), keras_mtl/aggregation/sdmgrad.py."""

import numpy as np
import pytest
from _backend import tensor
from _jacobians import (
    Graph,
    assert_config_round_trip,
    jitted,
    random_jacobian,
)
from scipy.optimize import minimize

from keras_mtl.aggregation import SDMGrad
from keras_mtl.aggregation.base import uses_gramian

pytestmark = pytest.mark.backend_neutral


def project_simplex(v):
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def libmtl_step(jacobian, w, lmbda=0.3, iterations=20, lr=5.0, momentum=0.5):
    """LibMTL's `SDMGrad.backward` in float64 with one Jacobian for its
    three minibatches: PyTorch SGD with momentum (a new buffer each step),
    projection after every step. Returns (direction, new w)."""
    j = jacobian.astype(np.float64)
    gg = j @ j.T
    gg = gg / np.mean(np.sqrt(np.maximum(np.diag(gg), 0.0))) ** 2
    gg0 = gg.mean(axis=1)
    buffer = None
    for _ in range(iterations):
        grad = gg @ w + lmbda * gg0
        buffer = grad if buffer is None else momentum * buffer + grad
        w = project_simplex(w - lr * buffer)
    return (w @ j + lmbda * j.mean(axis=0)) / (1 + lmbda), w


def test_documented_example():
    np.testing.assert_allclose(
        SDMGrad()(np.array([[1.0, 0.0], [0.0, 1.0]])), [0.5, 0.5], atol=1e-6
    )


def test_matches_libmtl_over_steps():
    """Three training steps (the weights carry over) against the float64
    re-implementation; the direction and the stored weights agree. Step
    1 rather than LibMTL's 5: with 5 the iterates oscillate and float32
    rounding is amplified past any fixed tolerance on some inputs."""
    agg = SDMGrad(step_size=1.0)
    run = jitted(agg)
    w = np.full(4, 0.25)
    for seed in range(3):
        j = random_jacobian(4, 7, seed, spread=1.0)
        j[0] -= 1.5 * j[1]  # some conflict
        expected, w = libmtl_step(j, w, lr=1.0)
        got = np.asarray(run(tensor(j)), np.float64)
        scale = np.linalg.norm(j, axis=1).max()
        np.testing.assert_allclose(got, expected, atol=2e-5 * scale)
        np.testing.assert_allclose(np.asarray(agg.simplex_weights), w, atol=2e-5)


def test_converges_to_the_regularised_min_norm_point():
    """With small steps and many iterations, w solves
    min_{w in simplex} 1/2 ||J^T w + lambda g0||^2 (SciPy's SLSQP, float64)."""
    lmbda = 0.5
    j = random_jacobian(3, 6, 4, spread=0.5)
    j[2] = -0.8 * j[0] + 0.2 * j[2]
    j64 = j.astype(np.float64)
    g0 = j64.mean(axis=0)
    result = minimize(
        lambda w: 0.5 * np.sum((w @ j64 + lmbda * g0) ** 2),
        np.full(3, 1 / 3),
        jac=lambda w: j64 @ (w @ j64 + lmbda * g0),
        bounds=[(0, 1)] * 3,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    expected = (result.x @ j64 + lmbda * g0) / (1 + lmbda)
    run = Graph(
        lambda: SDMGrad(lmbda=lmbda, iterations=2000, step_size=0.1, momentum=0)
    )
    got = run(j)
    assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)


def test_large_lambda_tends_to_the_mean():
    j = random_jacobian(3, 5, 1)
    got = np.asarray(SDMGrad(lmbda=1e6)(j), np.float64)
    np.testing.assert_allclose(got, j.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_gramian_route_and_training_false():
    # Small steps: LibMTL's step 5 with momentum oscillates, which turns
    # rounding differences (float32 Gramians) into visible ones.
    agg = SDMGrad(step_size=0.5, momentum=0.0)
    j = random_jacobian(3, 5, 2)
    assert uses_gramian(agg)
    fresh = np.asarray(agg(j, training=False), np.float64)
    np.testing.assert_allclose(agg.simplex_weights, 1 / 3)
    weights = np.asarray(agg.weights(j @ j.T), np.float64)
    np.testing.assert_allclose(weights @ j, fresh, rtol=1e-4, atol=1e-6)
    agg(j)  # a training step moves the stored weights
    assert not np.allclose(agg.simplex_weights, 1 / 3)


def test_config_round_trip():
    assert_config_round_trip(
        SDMGrad(lmbda=0.1, iterations=5, step_size=1.0, momentum=0.0, name="s")
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lmbda": -0.1}, "lmbda"),
        ({"iterations": 0}, "iterations"),
        ({"step_size": 0.0}, "step_size"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SDMGrad(**kwargs)

"""Tests of GradVac (Wang et al. 2021)."""

import keras
import numpy as np
import pytest
from _backend import to_numpy
from _stateful_checks import (
    assert_config_round_trip,
    assert_same_values,
    eager_uniform,
    jitted,
    values,
)

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.base import uses_gramian
from keras_mtl.aggregation.gradvac import GradVac

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(2)


def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def numpy_gradvac(jacobian, orders, targets, beta):
    """One GradVac call, task by task (the paper's Algorithm 1 loop)."""
    jacobian = jacobian.astype(np.float64)
    targets = targets.astype(np.float64).copy()
    total = np.zeros(jacobian.shape[1])
    for i, order in enumerate(orders):
        g = jacobian[i].copy()
        for j in order:
            if j == i:
                continue
            c = cos(g, jacobian[j])
            t = targets[i, j]
            if c < t:
                # Solve for the multiple a of g_j with cos(g + a g_j, g_j) = t.
                a = (
                    np.linalg.norm(g)
                    * (t * np.sqrt(1 - c * c) - c * np.sqrt(1 - t * t))
                    / (np.linalg.norm(jacobian[j]) * np.sqrt(1 - t * t))
                )
                g = g + a * jacobian[j]
            targets[i, j] = (1 - beta) * t + beta * c
        total += g
    return total, targets


def test_first_call_is_pcgrad_for_two_tasks():
    j = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)
    np.testing.assert_allclose(GradVac(seed=0)(j), [0.5, 1.5], rtol=1e-6)


def test_matches_numpy_over_several_calls():
    beta = 0.3
    agg = GradVac(beta=beta, seed=11)
    targets = np.zeros((4, 4))
    for draw in range(4):
        j = RNG.normal(size=(4, 7)).astype(np.float32)
        j[1] = 0.8 * j[0] + 0.2 * j[1]  # one related pair: positive targets
        orders = np.argsort(eager_uniform((4, 4), 11, draw), axis=-1)
        expected, targets = numpy_gradvac(j, orders, targets, beta)
        np.testing.assert_allclose(agg(j), expected, rtol=2e-4, atol=1e-4)
        np.testing.assert_allclose(to_numpy(agg.targets), targets, atol=1e-5)
    assert to_numpy(agg.targets)[0, 1] > 0.1


@pytest.mark.parametrize("num_tasks", [2, 3, 4, 5, 6])
def test_gramian_coefficients_match_the_jacobian_algorithm(num_tasks):
    # The K-space coefficients c (from G alone) and target updates against
    # the paper's loop on the rows themselves, with given orders and targets.
    rng = np.random.default_rng(num_tasks)
    beta = 0.3
    agg = GradVac(beta=beta, seed=0)
    agg.build((num_tasks, 9))
    for _ in range(4):
        j = rng.normal(size=(num_tasks, 9)) * rng.uniform(0.1, 10, (num_tasks, 1))
        orders = np.stack([rng.permutation(num_tasks) for _ in range(num_tasks)])
        targets = rng.uniform(-0.5, 0.8, (num_tasks, num_tasks))
        agg.targets.assign(targets.astype(np.float32))
        agg.task_orders = lambda n, training, o=orders: keras.ops.convert_to_tensor(
            o, "int32"
        )
        c = to_numpy(agg.direction_weights((j @ j.T).astype(np.float32)))
        expected, new_targets = numpy_gradvac(j, orders, targets, beta)
        np.testing.assert_allclose(c @ j, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(to_numpy(agg.targets), new_targets, atol=1e-5)


def test_is_on_the_gramian_route():
    agg = GradVac(beta=0.5, seed=1)
    assert uses_gramian(agg)
    j = RNG.normal(size=(4, 6)).astype(np.float32)
    g = j @ j.T
    # Before the layer is built: the coefficients of zero targets (PCGrad's).
    first = to_numpy(agg.weights(g))
    np.testing.assert_allclose(first @ j, agg(j, training=False), rtol=1e-5, atol=1e-5)
    for _ in range(2):
        agg(j)
        # The evaluation-mode coefficients with the current targets,
        # changing nothing (and not stale in the cached function).
        before = values(agg)
        w = to_numpy(agg.weights(g))
        assert_same_values(before, values(agg))
        np.testing.assert_allclose(w, agg.gramian_weights(g), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w @ j, agg(j, training=False), rtol=1e-5, atol=1e-5)
    assert np.abs(w - first).max() > 1e-3
    # Of any (finite) scale; one task: the row itself.
    for factor in (1e-30, 1e30):
        scaled = to_numpy(agg.direction_weights(g * np.float32(factor), False))
        np.testing.assert_allclose(scaled, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(GradVac().weights(g[:1, :1])), [1.0])
    # A zero row: finite coefficients and targets.
    j[2] = 0.0
    assert np.all(np.isfinite(to_numpy(agg.direction_weights(j @ j.T))))
    assert np.all(np.isfinite(to_numpy(agg.targets)))


def test_correction_reaches_the_target_cosine():
    g1 = np.array([1.0, 0.2, -0.5], np.float32)
    g2 = np.array([-0.3, 1.0, 0.4], np.float32)
    agg = GradVac(seed=0)
    agg.build((2, 3))
    # Target 0.6 for (0, 1); -1 for (1, 0), which never triggers.
    agg.targets.assign(np.array([[0.0, 0.6], [-1.0, 0.0]], np.float32))
    d = to_numpy(agg(np.stack([g1, g2])))
    assert cos(g1, g2) < 0.6
    np.testing.assert_allclose(cos(d - g2, g2), 0.6, rtol=1e-5)
    new = to_numpy(agg.targets)
    np.testing.assert_allclose(new[0, 1], 0.99 * 0.6 + 0.01 * cos(g1, g2), rtol=1e-5)
    np.testing.assert_allclose(new[1, 0], 0.99 * -1.0 + 0.01 * cos(g1, g2), rtol=1e-5)


def test_evaluation_keeps_state():
    j = RNG.normal(size=(3, 5)).astype(np.float32)
    agg = GradVac(beta=0.5, seed=1)
    agg(j)
    before = values(agg)
    agg(j, training=False)
    assert_same_values(before, values(agg))


def test_same_seed_reproducible_in_jit():
    j = RNG.normal(size=(4, 6)).astype(np.float32)
    agg = GradVac(beta=0.5, seed=3)
    agg.build(j.shape)
    step = jitted(agg)

    def sequence():
        agg.seed_generator.state.assign([3, 0])
        agg.targets.assign(np.zeros((4, 4), np.float32))
        return np.array([to_numpy(step(j)) for _ in range(3)]), to_numpy(agg.targets)

    (d1, t1), (d2, t2) = sequence(), sequence()
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(t1, t2)


def test_config_and_validation():
    assert ALIASES["gradvac"] is GradVac
    assert_config_round_trip(GradVac(beta=0.2, seed=5))
    for bad in (0.0, 1.1, -1.0):
        with pytest.raises(ValueError):
            GradVac(beta=bad)

"""Tests of PCGrad (Yu et al. 2020)."""

import itertools

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
from keras_mtl.aggregation.pcgrad import PCGrad

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(0)


def two_task_closed_form(g1, g2):
    dot = g1 @ g2
    if dot >= 0:
        return g1 + g2
    return g1 - dot / (g2 @ g2) * g2 + g2 - dot / (g1 @ g1) * g1


def numpy_pcgrad(jacobian, orders):
    """Task by task, other task by other task (LibMTL's loop)."""
    jacobian = jacobian.astype(np.float64)
    total = np.zeros(jacobian.shape[1])
    for i, order in enumerate(orders):
        g = jacobian[i].copy()
        for j in order:
            if j == i:
                continue
            dot = g @ jacobian[j]
            if dot < 0:
                g = g - dot / (jacobian[j] @ jacobian[j]) * jacobian[j]
        total += g
    return total


@pytest.mark.parametrize("trial", range(6))
def test_two_tasks_closed_form(trial):
    j = RNG.normal(size=(2, 7)).astype(np.float32)
    if trial % 2:
        j[1] = -j[0] + 0.3 * RNG.normal(size=7)  # make them conflict
    expected = two_task_closed_form(*j.astype(np.float64))
    for training in (True, False):
        d = PCGrad(seed=trial)(j, training=training)
        np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)


def test_docstring_example():
    d = PCGrad(seed=0)(np.array([[1.0, 0.0], [-1.0, 1.0]]))
    np.testing.assert_allclose(d, [0.5, 1.5], rtol=1e-6)


def test_matches_numpy_with_the_seeded_orders():
    j = RNG.normal(size=(5, 9)).astype(np.float32)
    agg = PCGrad(seed=3)
    for draw in range(3):
        orders = np.argsort(eager_uniform((5, 5), 3, draw), axis=-1)
        np.testing.assert_allclose(
            agg(j), numpy_pcgrad(j, orders), rtol=1e-4, atol=1e-5
        )


def _given_orders(agg, orders):
    """`agg` drawing the given `[K, K]` orders instead of random ones."""
    agg.task_orders = lambda num_tasks, training: keras.ops.convert_to_tensor(
        orders, "int32"
    )
    return agg


@pytest.mark.parametrize("num_tasks", [2, 3, 4, 5, 6])
def test_gramian_coefficients_match_the_jacobian_algorithm(num_tasks):
    # The K-space coefficients c (from G alone) against the paper's loop on
    # the rows themselves: c @ J is the same direction.
    rng = np.random.default_rng(num_tasks)
    for _ in range(4):
        j = rng.normal(size=(num_tasks, 11)) * rng.uniform(0.1, 10, (num_tasks, 1))
        orders = np.stack([rng.permutation(num_tasks) for _ in range(num_tasks)])
        agg = _given_orders(PCGrad(seed=0), orders)
        c = to_numpy(agg.direction_weights((j @ j.T).astype(np.float32)))
        expected = numpy_pcgrad(j, orders)
        np.testing.assert_allclose(c @ j, expected, rtol=1e-4, atol=1e-4)


def test_is_on_the_gramian_route():
    agg = PCGrad(seed=0)
    assert uses_gramian(agg)
    j = RNG.normal(size=(4, 6)).astype(np.float32)
    g = j @ j.T
    # The public weights: the evaluation-mode coefficients, drawing nothing.
    before = values(agg)
    w = to_numpy(agg.weights(g))
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(w, agg.gramian_weights(g), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w @ j, agg(j, training=False), rtol=1e-5, atol=1e-5)
    # Of any (finite) scale; one task: the row itself.
    for factor in (1e-30, 1e30):
        scaled = to_numpy(agg.direction_weights(g * np.float32(factor), False))
        np.testing.assert_allclose(scaled, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(agg.weights(g[:1, :1])), [1.0])
    # A zero row: finite coefficients, the others unchanged.
    j[2] = 0.0
    c = to_numpy(agg.direction_weights(j @ j.T, training=False))
    assert np.all(np.isfinite(c))
    np.testing.assert_allclose(
        c @ j, numpy_pcgrad(j, [range(4)] * 4), rtol=1e-4, atol=1e-5
    )


def test_evaluation_uses_fixed_order_and_keeps_generator():
    j = RNG.normal(size=(4, 6)).astype(np.float32)
    agg = PCGrad(seed=1)
    agg(j)
    before = values(agg)
    d = agg(j, training=False)
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(d, numpy_pcgrad(j, [range(4)] * 4), rtol=1e-4, atol=1e-5)


def test_result_is_one_of_the_orderings():
    j = RNG.normal(size=(3, 4)).astype(np.float32)
    perms = list(itertools.permutations(range(3)))
    candidates = [
        numpy_pcgrad(j, orders) for orders in itertools.product(perms, repeat=3)
    ]
    step = jitted(PCGrad(seed=5))
    for _ in range(5):
        d = to_numpy(step(j))
        assert min(np.abs(c - d).max() for c in candidates) < 1e-4


@pytest.mark.parametrize("jit", [False, True])
def test_same_seed_same_sequence(jit):
    j = RNG.normal(size=(5, 6)).astype(np.float32)
    agg = PCGrad(seed=2)
    step = jitted(agg) if jit else agg

    def sequence():
        agg.seed_generator.state.assign([2, 0])
        return np.array([np.asarray(step(j)) for _ in range(6)])

    first = sequence()
    np.testing.assert_array_equal(first, sequence())
    assert len({tuple(np.round(row, 5)) for row in first}) > 1  # orders vary


def test_eager_and_jit_agree_in_evaluation():
    j = RNG.normal(size=(4, 6)).astype(np.float32)
    agg = PCGrad(seed=0)
    np.testing.assert_allclose(
        jitted(agg, training=False)(j), agg(j, training=False), rtol=1e-5
    )


def test_generator_state_is_saved():
    j = RNG.normal(size=(5, 6)).astype(np.float32)
    agg = PCGrad(seed=4)
    agg(j)
    agg(j)
    store = {}
    agg.save_own_variables(store)
    other = PCGrad(seed=4)
    other.build(j.shape)
    other.load_own_variables(store)
    np.testing.assert_array_equal(agg(j), other(j))


def test_config_and_alias():
    assert ALIASES["pcgrad"] is PCGrad
    assert_config_round_trip(PCGrad(seed=3, name="surgery"))
    with pytest.raises(ValueError):
        PCGrad(seed=1.5)


def test_inside_a_keras_model_input_shape():
    agg = PCGrad(seed=0)
    out = agg.compute_output_spec(keras.KerasTensor((3, 8)))
    assert out.shape == (8,)

"""Tests of ExcessMTL (He et al. 2024)."""

import numpy as np
import pytest
from _backend import to_numpy
from _jacobians import jacobians
from _stateful_checks import (
    assert_config_round_trip,
    assert_finite_direction,
    assert_same_values,
    values,
)
from hypothesis import given, settings

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.excess_mtl import ExcessMTL

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(8)


def numpy_excess_mtl(sequence, step_size=0.01):
    """The authors' update: a running sum of squares, w *= exp(eta r / r0)."""
    k = sequence[0].shape[0]
    sum_squares = np.zeros(sequence[0].shape)
    weights = np.ones(k)
    initial = None
    out = []
    for j in sequence:
        j = j.astype(np.float64)
        sum_squares += j**2
        risk = np.array([j[i] @ (j[i] / np.sqrt(sum_squares[i])) for i in range(k)])
        if initial is None:
            initial = risk
        else:
            weights = weights * np.exp(step_size * risk / initial)
            weights = weights / weights.sum() * k
        out.append(weights @ j)
    return out, weights


def test_matches_numpy_over_several_calls():
    seq = [RNG.normal(size=(3, 5)).astype(np.float32) for _ in range(5)]
    seq = [j * np.array([[1.0], [3.0], [0.2]], np.float32) for j in seq]
    expected, weights = numpy_excess_mtl(seq, step_size=0.5)
    agg = ExcessMTL(step_size=0.5)
    for j, d in zip(seq, expected):
        np.testing.assert_allclose(agg(j), d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(agg.task_weights), weights, rtol=1e-4)
    np.testing.assert_allclose(to_numpy(agg.task_weights).sum(), 3.0, rtol=1e-6)
    assert to_numpy(agg.step) == 5


def test_first_call_is_the_sum_and_stalled_task_gains_weight():
    j = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    agg = ExcessMTL(step_size=1.0)
    np.testing.assert_allclose(agg(j), [1.0, 2.0])
    # Task 0 keeps a large gradient, task 1's vanishes: task 0's relative
    # excess risk stays high and its weight grows.
    for _ in range(3):
        agg(np.array([[1.0, 0.0], [0.0, 0.01]], np.float32))
    weights = to_numpy(agg.task_weights)
    assert weights[0] > 1.0 > weights[1]


def test_evaluation_keeps_state_and_returns_the_update():
    seq = [RNG.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]
    agg = ExcessMTL(step_size=0.5)
    agg(seq[0])
    before = values(agg)
    d_eval = to_numpy(agg(seq[1], training=False))
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(agg(seq[1]), d_eval, rtol=1e-6)


def test_config_and_validation():
    assert ALIASES["excess_mtl"] is ExcessMTL
    assert_config_round_trip(ExcessMTL(step_size=0.1))
    for bad in (0.0, -1.0, "x"):
        with pytest.raises(ValueError):
            ExcessMTL(step_size=bad)


# Each example compiles a fresh instance's eager function for its shape
# (~0.2 s): 15 examples draw most of the 12 kinds of degenerate Jacobian in
# a run (the 48 kind and scale pairs over runs).
@settings(deadline=None, max_examples=15)
@given(jacobians())
def test_degenerate_jacobians_give_finite_directions(jacobian):
    assert_finite_direction(ExcessMTL(step_size=1.0), jacobian, calls=3)

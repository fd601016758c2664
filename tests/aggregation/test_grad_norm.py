"""Tests of GradNorm (Chen et al. 2018), keras_mtl/aggregation/grad_norm.py, and
of the base class's loss hooks it uses (keras_mtl/aggregation/base.py)."""

import keras
import numpy as np
import pytest
from _backend import to_numpy
from _stateful_checks import assert_config_round_trip, assert_same_values, values

import keras_mtl
from keras_mtl.aggregation import Aggregator, GradNorm

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(11)


def l_grad(w, norms, target):
    """The paper's L_grad for weights `w`, the target held constant."""
    return np.sum(np.abs(w * norms - target))


def numpy_grad_norm(jacobians, losses, alpha=1.5, lr=0.025):
    """GradNorm written from the paper: the gradient of L_grad in the
    weights by central finite differences (float64), then the step, the
    floor and the renormalisation. Returns directions and final state."""
    k = jacobians[0].shape[0]
    w = np.ones(k)
    initial = None
    directions = []
    for j, loss in zip(jacobians, losses):
        j, loss = j.astype(np.float64), loss.astype(np.float64)
        directions.append(w @ j)
        if initial is None:
            initial = loss.copy()
        norms = np.linalg.norm(j, axis=1)
        ratio = loss / initial
        r = ratio / ratio.mean()
        target = np.mean(w * norms) * r**alpha
        h = 1e-6
        grad = np.array(
            [
                (
                    l_grad(w + h * np.eye(k)[i], norms, target)
                    - l_grad(w - h * np.eye(k)[i], norms, target)
                )
                / (2 * h)
                for i in range(k)
            ]
        )
        w = np.maximum(w - lr * grad, 1e-4)
        w = k * w / w.sum()
    return directions, w, initial


def test_matches_the_paper_over_several_calls():
    jacobians = [RNG.normal(size=(3, 6)).astype(np.float32) for _ in range(5)]
    losses = [RNG.uniform(0.5, 2.0, size=3).astype(np.float32) for _ in range(5)]
    expected, w, initial = numpy_grad_norm(jacobians, losses, alpha=1.5, lr=0.05)
    agg = GradNorm(alpha=1.5, learning_rate=0.05)
    for j, loss, d in zip(jacobians, losses, expected):
        np.testing.assert_allclose(agg(j, losses=loss), d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(agg.task_weights), w, rtol=1e-4)
    np.testing.assert_allclose(to_numpy(agg.initial_losses), initial, rtol=1e-6)
    assert to_numpy(agg.has_initial_losses) == 1
    np.testing.assert_allclose(to_numpy(agg.task_weights).sum(), 3.0, rtol=1e-6)


def test_docstring_example_by_hand():
    agg = GradNorm(alpha=1.5, learning_rate=0.1)
    d = agg(np.array([[3.0, 0.0], [0.0, 1.0]]), losses=np.array([2.0, 1.0]))
    np.testing.assert_allclose(d, [3.0, 1.0], rtol=1e-6)
    # G = [3, 1], target 2 each: grad [+3, -1]; w = [0.7, 1.1] * 2 / 1.8.
    np.testing.assert_allclose(agg.task_weights, [0.7 / 0.9, 1.1 / 0.9], rtol=1e-6)
    # Second call, task 0's loss halved (it trains faster): ratios
    # [0.5, 1], r = [2/3, 4/3]; G = [0.7778 * 3, 1.2222 * 1] = [2.3333,
    # 1.2222], mean 1.7778: targets [1.7778 * (2/3)^1.5, 1.7778 * (4/3)^1.5]
    # = [0.9677, 2.7371]: grad [+3, -1]: w = [0.4778, 1.3222] * 2 / 1.8.
    d = agg(np.array([[3.0, 0.0], [0.0, 1.0]]), losses=np.array([1.0, 1.0]))
    np.testing.assert_allclose(d, [7.0 / 3.0, 1.1 / 0.9], rtol=1e-6)
    w = np.array([0.7 / 0.9 - 0.3, 1.1 / 0.9 + 0.1])
    np.testing.assert_allclose(agg.task_weights, w * 2.0 / w.sum(), rtol=1e-6)


def test_balanced_norms_and_rates_are_a_fixed_point():
    # Equal weighted norms and equal loss ratios: L_grad is 0, nothing moves.
    agg = GradNorm(alpha=1.5, learning_rate=0.5)
    j = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    for loss in ([1.0, 3.0], [0.5, 1.5], [0.2, 0.6]):
        agg(j, losses=np.array(loss, np.float32))
        np.testing.assert_allclose(agg.task_weights, [1.0, 1.0], rtol=1e-6)


def test_slow_task_gains_weight():
    # Same gradient norms; task 1's loss does not fall: its weight grows.
    agg = GradNorm(alpha=1.5, learning_rate=0.05)
    j = np.eye(2, dtype=np.float32)
    for t in range(10):
        agg(j, losses=np.array([1.0 / (1 + t), 1.0], np.float32))
    w = to_numpy(agg.task_weights)
    assert w[1] > 1.2 and w[0] < 0.8, w
    np.testing.assert_allclose(w.sum(), 2.0, rtol=1e-6)


def test_weights_stay_positive_and_sum_to_k():
    agg = GradNorm(alpha=3.0, learning_rate=10.0)  # huge steps
    for _ in range(6):
        j = RNG.normal(size=(4, 5)).astype(np.float32) * RNG.uniform(0.1, 10.0)
        agg(j, losses=RNG.uniform(0.1, 5.0, size=4).astype(np.float32))
        w = to_numpy(agg.task_weights)
        assert np.all(w > 0), w
        np.testing.assert_allclose(w.sum(), 4.0, rtol=1e-5)


def test_evaluation_changes_no_state_and_uses_current_weights():
    agg = GradNorm(learning_rate=0.1)
    j0 = RNG.normal(size=(3, 4)).astype(np.float32)
    agg(j0, losses=np.array([1.0, 2.0, 3.0], np.float32))
    before = values(agg)
    j = RNG.normal(size=(3, 4)).astype(np.float32)
    d = agg(j, training=False, losses=np.array([0.1, 9.0, 3.0], np.float32))
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(d, before[0] @ j, rtol=1e-5, atol=1e-6)


def test_non_finite_input_changes_no_state():
    agg = GradNorm(learning_rate=0.1)
    j = RNG.normal(size=(2, 3)).astype(np.float32)
    agg(j, losses=np.array([1.0, 2.0], np.float32))
    before = values(agg)
    agg(j, losses=np.array([np.nan, 2.0], np.float32))
    bad = j.copy()
    bad[0, 1] = np.inf
    agg(bad, losses=np.array([1.0, 2.0], np.float32))
    assert_same_values(before, values(agg))


@pytest.mark.parametrize("unit", [1.0, 3.0, 1e20])
def test_gramian_route_call_matches_the_paper(unit):
    """`direction_weights(G, losses=, unit=)`, the Gramian route's call,
    for `G` the Gramian of `J / unit`: the weights of the direction are
    those before the update, and the update is the paper's with the norms
    of J's rows, at J's own scale (at 1e20 the Gramian of J itself is not
    representable in float32; the steps then floor the weights)."""
    rows = [RNG.normal(size=(3, 6)) for _ in range(4)]
    jacobians = [r * unit for r in rows]
    losses = [RNG.uniform(0.5, 2.0, size=3).astype(np.float32) for _ in range(4)]
    expected, w, initial = numpy_grad_norm(jacobians, losses, alpha=1.5, lr=0.05)
    agg = GradNorm(alpha=1.5, learning_rate=0.05)
    agg.build((3, 6))
    for r, j, loss, d in zip(rows, jacobians, losses, expected):
        g = (r @ r.T).astype(np.float32)  # the Gramian of J / unit
        weights = agg.direction_weights(g, losses=loss, unit=np.float32(unit))
        np.testing.assert_allclose(to_numpy(weights) @ j, d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(agg.task_weights), w, rtol=1e-4)
    np.testing.assert_allclose(to_numpy(agg.initial_losses), initial, rtol=1e-6)
    # Evaluation reads the weights and changes nothing; training needs losses.
    before = values(agg)
    np.testing.assert_allclose(agg.direction_weights(g, training=False), w, rtol=1e-4)
    np.testing.assert_allclose(agg.weights(g), w, rtol=1e-4)
    assert_same_values(before, values(agg))
    with pytest.raises(ValueError, match="GradNorm needs the task losses"):
        agg.direction_weights(g)


def test_needs_losses():
    assert GradNorm.needs_losses
    agg = GradNorm()
    with pytest.raises(ValueError, match=r"GradNorm needs the task losses.*losses"):
        agg(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"GradNorm: `losses` must hold one loss"):
        agg(np.eye(2, dtype=np.float32), losses=np.ones(3, np.float32))


def test_config_registry_and_validation():
    for alias in ("gradnorm", "grad_norm"):
        assert type(keras_mtl.aggregation.get(alias)) is GradNorm
    agg = keras_mtl.aggregation.get("gradnorm", alpha=0.5, learning_rate=0.01)
    assert (agg.alpha, agg.learning_rate) == (0.5, 0.01)
    assert GradNorm().alpha == 1.5
    assert_config_round_trip(agg)
    for kwargs in ({"alpha": -1.0}, {"learning_rate": 0.0}, {"alpha": "x"}):
        with pytest.raises(ValueError, match="GradNorm"):
            GradNorm(**kwargs)


class _LossWeightedSum(Aggregator):
    """A custom aggregator of the base class's loss hook: d = L @ J."""

    needs_losses = True

    def aggregate(self, jacobian, training=True, losses=None):
        return keras.ops.matmul(losses[None, :], jacobian)[0]


def test_base_class_hands_the_losses_to_aggregate():
    j = np.array([[1e3, 0.0], [2e3, -4e3]], np.float32)
    losses = np.array([0.5, 2.0], np.float32)
    agg = _LossWeightedSum()
    np.testing.assert_allclose(agg(j, losses=losses), losses @ j, rtol=1e-6)
    with pytest.raises(ValueError, match="_LossWeightedSum needs the task losses"):
        agg(j)
    # Aggregators that do not need them accept and ignore them.
    mean = keras_mtl.aggregation.get("mean")
    np.testing.assert_allclose(mean(j, losses=losses), mean(j), rtol=1e-6)

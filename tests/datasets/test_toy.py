"""The CAGrad / Nash-MTL / FAMO two-objective toy problem."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.datasets import ToyProblem, load, toy_losses
from keras_mtl.datasets.toy import START_POINTS, pareto_front, pareto_set


def by_hand(x1, x2, scale):
    """The published formula, written with the math module."""
    up = max(math.tanh(x2 / 2), 0.0)
    low = max(math.tanh(-x2 / 2), 0.0)
    g1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), 5e-6)) + 6
    g2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), 5e-6)) + 6
    q1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    q2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return scale * (g1 * up + q1 * low), g2 * up + q2 * low


def test_load_returns_a_toy_problem():
    toy = load("toy")
    assert isinstance(toy, ToyProblem)
    assert toy.tasks == ("f1", "f2") and toy.loss_scale == 0.1
    assert toy.start_points.shape == (5, 2)
    np.testing.assert_array_equal(toy.start_points[0], [-8.5, 7.5])
    assert load("toy", loss_scale=1.0).loss_scale == 1.0
    with pytest.raises(ValueError, match="loss_scale"):
        load("toy", loss_scale=0.0)


def test_finite_at_start_points_and_batched():
    toy = load("toy")
    batch = toy.losses(toy.start_points).numpy()
    assert batch.shape == (5, 2) and np.all(np.isfinite(batch))
    for i, point in enumerate(START_POINTS):
        single = toy.losses(point).numpy()
        assert single.shape == (2,)
        np.testing.assert_allclose(single, batch[i], rtol=1e-6)


def test_known_values():
    # (1, 2): upper half plane, the log terms; (0, -8): the lower bowls, by hand
    # too: q1 = q2 = 49/10 - 20 = -15.1, times tanh(4).
    for point in [(1.0, 2.0), (0.0, -8.0), (-8.5, 7.5), (9.0, -1.0)]:
        for scale in (0.1, 1.0):
            got = toy_losses(np.array(point, np.float64), scale).numpy()
            np.testing.assert_allclose(got, by_hand(*point, scale), rtol=1e-10)
    got = toy_losses(np.array([0.0, -8.0], np.float64), 1.0).numpy()
    np.testing.assert_allclose(got, [-15.1 * math.tanh(4.0)] * 2, rtol=1e-12)
    scaled = toy_losses(np.array([1.0, 2.0]), 0.1).numpy()
    unscaled = toy_losses(np.array([1.0, 2.0]), 1.0).numpy()
    np.testing.assert_allclose(scaled, [0.1 * unscaled[0], unscaled[1]], rtol=1e-12)


def test_gradients_exist():
    toy = load("toy")
    for point in toy.start_points:
        params = tf.Variable(point)
        with tf.GradientTape(persistent=True) as tape:
            losses = toy.losses(params)
            first, second = losses[0], losses[1]
        for loss in (first, second):
            grad = tape.gradient(loss, params)
            assert grad is not None and grad.shape == (2,)
            assert np.all(np.isfinite(grad.numpy()))
        del tape


def test_pareto_set_matches_the_papers():
    points = pareto_set(101)
    assert points.shape == (101, 2)
    np.testing.assert_allclose(points[:, 0], np.linspace(-7, 7, 101))
    assert points[50, 1] == pytest.approx(-8.3552, abs=2e-4)  # the papers' line
    assert np.all((points[:, 1] < -8.3) & (points[:, 1] > -8.5))


def test_pareto_front_is_non_dominated():
    front = pareto_front(60)
    assert front.shape == (60, 2)
    # Ordered from the best L2 to the best L1, trading one for the other.
    assert np.all(np.diff(front[:, 0]) < 0) and np.all(np.diff(front[:, 1]) > 0)
    rng = np.random.default_rng(0)
    samples = np.concatenate(
        [
            rng.uniform(-10, 10, size=(20000, 2)),
            pareto_set(60) + rng.normal(scale=0.05, size=(60, 2)).repeat(1, 0),
            pareto_set(400) + rng.normal(scale=0.2, size=(400, 2)),
        ]
    )
    losses = toy_losses(samples, 0.1).numpy()
    for point in front:
        dominated = np.all(losses <= point + 1e-9, axis=1) & np.any(
            losses < point - 1e-7, axis=1
        )
        assert not dominated.any(), point
    # At Pareto points the two gradients point in opposite directions.
    params = tf.Variable(pareto_set(9)[1:-1])
    with tf.GradientTape(persistent=True) as tape:
        losses = toy_losses(params, 0.1)
        first, second = tf.reduce_sum(losses[:, 0]), tf.reduce_sum(losses[:, 1])
    g1, g2 = tape.gradient(first, params).numpy(), tape.gradient(second, params).numpy()
    cosine = (
        np.sum(g1 * g2, 1) / np.linalg.norm(g1, axis=1) / np.linalg.norm(g2, axis=1)
    )
    np.testing.assert_allclose(cosine, -1.0, atol=1e-6)


def test_scale_changes_the_front_not_the_set():
    toy = load("toy", loss_scale=1.0)
    np.testing.assert_allclose(toy.pareto_set(10), pareto_set(10))
    front1, front01 = toy.pareto_front(10), pareto_front(10, 0.1)
    np.testing.assert_allclose(front01[:, 0], 0.1 * front1[:, 0], rtol=1e-12)
    np.testing.assert_allclose(front01[:, 1], front1[:, 1], rtol=1e-12)
    with pytest.raises(ValueError, match="num"):
        pareto_set(1)
    with pytest.raises(ValueError, match="last axis"):
        toy_losses(np.zeros(3))

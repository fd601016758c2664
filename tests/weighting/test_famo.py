"""Tests of FAMO (Liu et al. 2023), keras_mtl/weighting/famo.py."""

import math

import numpy as np
import pytest
from _backend import compiled, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import FAMO

pytestmark = pytest.mark.backend_neutral

STEPS = [
    [0.5, 2.0, 1.0],
    [0.4, 1.9, 1.1],
    [0.3, 1.9, 0.9],
    [0.35, 1.5, 0.8],
    [0.2, 1.4, 0.8],
]


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def numpy_famo(steps, lr=0.025, gamma=1e-3, minimum=0.0):
    """FAMO as in the paper's code, in float64: weights from the current
    logits; before each step after the first, one Adam step (PyTorch's
    coupled weight decay) on the softmax vector-Jacobian product of the
    loss decrease. Returns the weights of every step and the last logits."""
    k = len(steps[0])
    xi, m, v, t = np.zeros(k), np.zeros(k), np.zeros(k), 0
    previous = None
    out = []
    for losses in steps:
        gaps = np.maximum(np.asarray(losses, np.float64) - minimum, 0.0) + 1e-8
        if previous is not None:
            delta = np.log(previous) - np.log(gaps)
            z = softmax(xi)
            jac = np.diag(z) - np.outer(z, z)  # d softmax / d xi (symmetric)
            g = jac.T @ delta + gamma * xi
            t += 1
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
            xi = xi - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        z = softmax(xi)
        c = 1.0 / np.sum(z / gaps)
        out.append(c * z / gaps)
        previous = gaps
    return out, xi


def make(k=3, **kwargs):
    w = FAMO(**kwargs)
    w.build((k,))
    return w


def test_first_two_steps_by_hand():
    w = make(2)
    objective, weights = w(tensor([0.5, 2.0]))
    # z = [1/2, 1/2], c = 1 / (1 + 1/4) = 0.8: weights c z / L = [0.8, 0.2].
    np.testing.assert_allclose(weights, [0.8, 0.2], rtol=1e-6)
    assert float(objective) == pytest.approx(0.4 * math.log(0.5) + 0.4 * math.log(2))
    np.testing.assert_array_equal(to_numpy(w.logits), [0.0, 0.0])
    _, weights = w(tensor([0.4, 1.9]))
    # delta = [log 1.25, log(2/1.9)] = [0.22314, 0.05129]; z . delta =
    # 0.13722; grad = z * (delta - 0.13722) = [+0.04296, -0.04296]. A first
    # Adam step moves each logit by lr * sign(grad): xi = [-0.025, +0.025].
    np.testing.assert_allclose(w.logits, [-0.025, 0.025], rtol=1e-5)
    z = np.exp([-0.025, 0.025]) / np.exp([-0.025, 0.025]).sum()
    c = 1.0 / (z[0] / 0.4 + z[1] / 1.9)
    np.testing.assert_allclose(weights, c * z / [0.4, 1.9], rtol=1e-5)
    assert int(to_numpy(w.adam_step)) == 1


@pytest.mark.parametrize(
    "kwargs", [{}, {"learning_rate": 0.1, "weight_decay": 0.05, "min_losses": 0.1}]
)
def test_matches_numpy_over_several_steps(kwargs):
    w = make(**kwargs)
    expected, xi = numpy_famo(
        STEPS,
        lr=kwargs.get("learning_rate", 0.025),
        gamma=kwargs.get("weight_decay", 1e-3),
        minimum=kwargs.get("min_losses", 0.0),
    )
    for losses, weights in zip(STEPS, expected):
        _, got = w(tensor(losses))
        np.testing.assert_allclose(got, weights, rtol=1e-4)
        np.testing.assert_allclose(to_numpy(got).sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w.logits, xi, rtol=1e-4, atol=1e-6)


def test_faster_task_loses_weight():
    w = make(2)
    for t in range(8):
        w(tensor([1.0 / (1 + t), 1.0]))  # task 0 falls, task 1 does not
    logits = to_numpy(w.logits)
    assert logits[0] < logits[1], logits


def test_gradient_is_the_effective_weights():
    w = make()
    for losses in STEPS[:3]:
        w(tensor(losses))
    losses = tensor(STEPS[3])
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)


def test_training_false_changes_no_state():
    w = make()
    for losses in STEPS[:2]:
        w(tensor(losses))
    before = [to_numpy(v).copy() for v in w.variables]
    _, weights = w(tensor([9.0, 0.1, 1.0]), training=False)
    for a, v in zip(before, w.variables, strict=True):
        np.testing.assert_array_equal(a, to_numpy(v))
    z = softmax(before[0].astype(np.float64))
    gaps = np.array([9.0, 0.1, 1.0])
    np.testing.assert_allclose(weights, z / gaps / np.sum(z / gaps), rtol=1e-5)


def test_losses_below_the_minimum_are_clipped():
    w = make(2, min_losses=[0.5, 0.0])
    objective, weights = w(tensor([0.2, 1.0]))
    assert np.all(np.isfinite(to_numpy(weights))) and np.isfinite(float(objective))
    # Gap of task 0 is 1e-8: (almost) all the weight.
    np.testing.assert_allclose(weights, [1.0, 0.0], atol=1e-6)


def test_eager_and_xla_agree():
    eager, jitted = make(), make()
    step = compiled(lambda x: jitted(x), state=jitted, jit_compile=True)
    for losses in STEPS:
        a = eager(tensor(losses))
        b = step(tensor(losses))
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
        np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(eager.logits, jitted.logits, rtol=1e-6)


def test_state_restore():
    w = make()
    for losses in STEPS[:3]:
        w(tensor(losses))
    clone = FAMO.from_config(w.get_config())
    clone.build((3,))
    clone.set_weights(w.get_weights())
    for losses in STEPS[3:]:
        np.testing.assert_array_equal(w(tensor(losses))[1], clone(tensor(losses))[1])


def test_alias_config_and_validation():
    w = keras_mtl.weighting.get("famo", learning_rate=0.1, min_losses=[0.0, 0.5])
    assert type(w) is FAMO
    config = w.get_config()
    assert config["min_losses"] == [0.0, 0.5] and config["learning_rate"] == 0.1
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert restored.get_config() == config
    assert (FAMO().learning_rate, FAMO().weight_decay) == (0.025, 1e-3)
    for kwargs in (
        {"learning_rate": 0.0},
        {"weight_decay": -1.0},
        {"min_losses": float("nan")},
        {"min_losses": "x"},
    ):
        with pytest.raises(ValueError, match="FAMO"):
            FAMO(**kwargs)
    with pytest.raises(ValueError, match=r"min_losses has 2 values.*3 tasks"):
        make(3, min_losses=[0.0, 0.1])

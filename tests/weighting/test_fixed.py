"""Tests of FixedWeighting: a constant, user-chosen weight per task."""

import functools

import numpy as np
import pytest
from _backend import compiled, not_on_torch, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import FixedWeighting

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.5, 2.0, 4.0], np.float32)


def test_list_weights():
    c = [1.0, 0.1, 2.5]
    w = FixedWeighting(c)
    objective, weights = w(tensor(LOSSES))
    expected = np.sum(np.asarray(c) * LOSSES.astype(np.float64))
    np.testing.assert_allclose(float(objective), expected, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), c, rtol=1e-7)


def test_docstring_example():
    w = keras_mtl.weighting.get("fixed", weights=[1.0, 0.1])
    objective, weights = w(tensor([0.5, 2.0]))
    np.testing.assert_allclose(float(objective), 0.7, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), [1.0, 0.1], rtol=1e-7)


def test_dict_weights_follow_task_order():
    # Dict order deliberately differs from task order.
    w = FixedWeighting({"c": 3.0, "a": 0.5, "b": 0.0})
    w.set_task_names(["a", "b", "c"])
    objective, weights = w(tensor(LOSSES))
    np.testing.assert_allclose(to_numpy(weights), [0.5, 0.0, 3.0])
    np.testing.assert_allclose(
        float(objective), 0.5 * 0.5 + 0.0 * 2.0 + 3.0 * 4.0, rtol=1e-6
    )


def test_dict_weights_need_task_names():
    w = FixedWeighting({"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="set_task_names"):
        w(tensor([1.0, 2.0]))


def test_gradient_equals_weights():
    w = FixedWeighting([0.25, 4.0])
    losses = tensor([1.0, 3.0])
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_allclose(grad, [0.25, 4.0])
    np.testing.assert_allclose(to_numpy(weights), [0.25, 4.0])


@not_on_torch("a torch step runs eagerly: nothing is traced, or retraced")
def test_assigning_the_variable_needs_no_retrace():
    w = FixedWeighting([1.0, 1.0, 1.0])
    w.build((3,))
    traces = []

    @functools.partial(compiled, state=w)
    def step(x):
        traces.append(1)  # runs only while tracing
        return w(x)

    x = tensor(LOSSES)
    objective, weights = step(x)
    np.testing.assert_allclose(float(objective), LOSSES.sum(), rtol=1e-6)
    for c in ([2.0, 0.0, 0.5], [0.1, 0.2, 0.3]):
        w.weights_variable.assign(c)
        objective, weights = step(x)
        np.testing.assert_allclose(to_numpy(weights), c, rtol=1e-6)
        np.testing.assert_allclose(
            float(objective), np.sum(np.asarray(c) * LOSSES), rtol=1e-6
        )
    assert len(traces) == 1


def test_assigning_the_variable_under_xla():
    w = FixedWeighting([1.0, 1.0])
    w.build((2,))
    step = compiled(lambda x: w(x), state=w, jit_compile=True)
    x = tensor([2.0, 3.0])
    np.testing.assert_allclose(float(step(x)[0]), 5.0)
    w.weights_variable.assign([0.5, 2.0])
    np.testing.assert_allclose(float(step(x)[0]), 7.0)


def test_weights_variable_is_not_trainable():
    w = FixedWeighting([1.0, 2.0])
    w.build((2,))
    assert w.trainable_variables == []
    assert len(w.non_trainable_variables) == 1


def test_training_false_gives_same_result():
    w = FixedWeighting([0.3, 0.7, 1.1])
    a = w(tensor(LOSSES))
    b = w(tensor(LOSSES), training=False)
    np.testing.assert_allclose(float(a[0]), float(b[0]))
    np.testing.assert_array_equal(to_numpy(a[1]), to_numpy(b[1]))


@pytest.mark.parametrize("weights", [[1.0, 0.5], {"a": 1.0, "b": 0.0}])
def test_serialization_round_trip(weights):
    w = keras_mtl.weighting.get("fixed", weights=weights)
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is FixedWeighting
    assert restored.weights_spec == weights
    restored.set_task_names(["a", "b"])
    _, got = restored(tensor([1.0, 1.0]))
    expected = list(weights.values()) if isinstance(weights, dict) else weights
    np.testing.assert_allclose(to_numpy(got), expected)


def test_wrong_length():
    w = FixedWeighting([1.0, 2.0])
    with pytest.raises(ValueError, match="2 weights .* for 3 tasks"):
        w(tensor(LOSSES))


@pytest.mark.parametrize(
    "weights", [[1.0, -0.5], [float("nan"), 1.0], [1.0, float("inf")]]
)
def test_negative_or_non_finite(weights):
    with pytest.raises(ValueError, match="finite and >= 0"):
        FixedWeighting(weights)


def test_negative_in_dict():
    with pytest.raises(ValueError, match="finite and >= 0"):
        FixedWeighting({"a": 1.0, "b": -1.0})


@pytest.mark.parametrize("weights", [["x", 1.0], 3.0])
def test_not_numbers(weights):
    with pytest.raises(ValueError, match="numbers"):
        FixedWeighting(weights)


def test_dict_with_unknown_task_names():
    w = FixedWeighting({"a": 1.0, "b": 1.0, "zeta": 2.0})
    w.set_task_names(["a", "b"])
    with pytest.raises(ValueError, match="unknown tasks \\['zeta'\\]"):
        w(tensor([1.0, 2.0]))


def test_dict_with_missing_task_names():
    w = FixedWeighting({"a": 1.0})
    w.set_task_names(["a", "b", "c"])
    with pytest.raises(ValueError, match="miss tasks \\['b', 'c'\\]"):
        w(tensor(LOSSES))

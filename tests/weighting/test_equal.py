"""Tests of EqualWeighting: the plain sum of the task losses."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.weighting import EqualWeighting


@pytest.mark.parametrize(
    "losses", [[0.5, 2.0], [1.0, 0.0, 3.5], [7.0, 1e-3, 2.0, 40.0, 0.25]]
)
def test_objective_is_sum_and_weights_are_one(losses):
    w = EqualWeighting()
    objective, weights = w(tf.constant(losses, tf.float32))
    expected = np.sum(np.asarray(losses, np.float64))
    np.testing.assert_allclose(float(objective), expected, rtol=1e-6)
    np.testing.assert_array_equal(weights.numpy(), np.ones(len(losses)))
    assert weights.dtype == tf.float32
    assert objective.shape == ()


def test_gradient_equals_weights():
    w = EqualWeighting()
    losses = tf.Variable([0.3, 2.0, 5.0])
    with tf.GradientTape() as tape:
        objective, weights = w(losses)
    np.testing.assert_array_equal(tape.gradient(objective, losses), weights)
    np.testing.assert_array_equal(weights.numpy(), np.ones(3))


def test_float16_and_float64_inputs_are_cast_to_float32():
    w = EqualWeighting()
    for dtype in (tf.float16, tf.float64):
        objective, weights = w(tf.constant([1.5, 2.5], dtype))
        assert objective.dtype == tf.float32
        assert weights.dtype == tf.float32
        np.testing.assert_allclose(float(objective), 4.0)


def test_eager_and_xla_agree_and_training_flag_is_irrelevant():
    w = EqualWeighting()
    step = tf.function(lambda x: w(x), jit_compile=True)
    losses = tf.constant([0.2, 1.7, 3.1])
    eager = w(losses)
    jitted = step(losses)
    evaluated = w(losses, training=False)
    for a, b in ((eager, jitted), (eager, evaluated)):
        np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-6)
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert w.variables == []


def test_alias_and_serialization():
    w = keras_mtl.weighting.get("equal")
    assert type(w) is EqualWeighting
    assert keras_mtl.weighting.get(" Equal ").__class__ is EqualWeighting
    assert "equal" in keras_mtl.weighting.names()
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is EqualWeighting
    assert "dtype" not in w.get_config()
    again = keras_mtl.weighting.get(keras_mtl.weighting.serialize(w))
    assert type(again) is EqualWeighting


def test_instance_is_returned_as_is():
    w = EqualWeighting()
    assert keras_mtl.weighting.get(w) is w
    with pytest.raises(ValueError, match="instance"):
        keras_mtl.weighting.get(w, temperature=1.0)


@pytest.mark.parametrize("shape", [(), (2, 3)])
def test_rejects_non_vector_input(shape):
    with pytest.raises(ValueError, match="1-D"):
        EqualWeighting()(tf.ones(shape))


def test_rejects_single_task():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        EqualWeighting()(tf.constant([1.0]))


def test_rejects_other_number_of_tasks_after_build():
    w = EqualWeighting()
    w(tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match="built for 2 tasks"):
        w(tf.constant([1.0, 2.0, 3.0]))

"""Tests of EqualWeighting: the plain sum of the task losses."""

import keras
import numpy as np
import pytest
from _backend import compiled, dtype_of, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import EqualWeighting

pytestmark = pytest.mark.backend_neutral


@pytest.mark.parametrize(
    "losses", [[0.5, 2.0], [1.0, 0.0, 3.5], [7.0, 1e-3, 2.0, 40.0, 0.25]]
)
def test_objective_is_sum_and_weights_are_one(losses):
    w = EqualWeighting()
    objective, weights = w(tensor(losses, "float32"))
    expected = np.sum(np.asarray(losses, np.float64))
    np.testing.assert_allclose(float(objective), expected, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(weights), np.ones(len(losses)))
    assert dtype_of(weights) == "float32"
    assert objective.shape == ()


def test_gradient_equals_weights():
    w = EqualWeighting()
    losses = tensor([0.3, 2.0, 5.0])
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_array_equal(grad, weights)
    np.testing.assert_array_equal(to_numpy(weights), np.ones(3))


def test_float16_and_float64_inputs_are_cast_to_float32():
    w = EqualWeighting()
    for dtype in ("float16", "float64"):
        objective, weights = w(tensor([1.5, 2.5], dtype))
        assert dtype_of(objective) == "float32"
        assert dtype_of(weights) == "float32"
        np.testing.assert_allclose(float(objective), 4.0)


def test_eager_and_xla_agree_and_training_flag_is_irrelevant():
    w = EqualWeighting()
    step = compiled(lambda x: w(x), state=w, jit_compile=True)
    losses = tensor([0.2, 1.7, 3.1])
    eager = w(losses)
    jitted = step(losses)
    evaluated = w(losses, training=False)
    for a, b in ((eager, jitted), (eager, evaluated)):
        np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-6)
        np.testing.assert_array_equal(to_numpy(a[1]), to_numpy(b[1]))
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
        EqualWeighting()(keras.ops.ones(shape))


def test_rejects_single_task():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        EqualWeighting()(tensor([1.0]))


def test_rejects_other_number_of_tasks_after_build():
    w = EqualWeighting()
    w(tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="built for 2 tasks"):
        w(tensor([1.0, 2.0, 3.0]))

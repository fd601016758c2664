"""Tests of RandomLossWeighting (Lin et al. 2022),
keras_mtl/weighting/random_loss_weighting.py."""

import keras
import numpy as np
import pytest
from _backend import (
    compiled,
    stateless_normal,
    tensor,
    to_numpy,
    value_and_gradient,
)

import keras_mtl
from keras_mtl.weighting import RandomLossWeighting

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.7, 2.0, 0.1, 1.3], dtype=np.float32)
K = len(LOSSES)


def make(seed=7):
    w = RandomLossWeighting(seed=seed)
    w.build((K,))
    return w


def draws(step, n=5):
    return np.array([to_numpy(step(tensor(LOSSES))[1]) for _ in range(n)])


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def test_first_draws_match_softmax_of_seeded_normal():
    w = make(seed=11)
    for n in range(3):
        # The generator's state is [seed, n] at the n-th draw.
        z = stateless_normal((K,), [11, n])
        objective, weights = w(tensor(LOSSES))
        np.testing.assert_allclose(to_numpy(weights), np_softmax(z), rtol=1e-5)
        np.testing.assert_allclose(
            float(objective), np.sum(np_softmax(z) * LOSSES), rtol=1e-5
        )


@pytest.mark.parametrize("jit", [False, True])
def test_weights_positive_sum_to_one_and_vary(jit):
    w = make()
    step = compiled(lambda x: w(x), state=w, jit_compile=True) if jit else w
    weights = draws(step)
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), np.ones(len(weights)), rtol=1e-6)
    assert not np.allclose(weights[0], weights[1])
    assert len({tuple(np.round(row, 6)) for row in weights}) == len(weights)
    np.testing.assert_array_equal(to_numpy(w.seed_generator.state), [7, len(weights)])


@pytest.mark.parametrize("jit", [False, True])
def test_same_seed_same_sequence(jit):
    def sequence(seed):
        w = make(seed)
        step = compiled(lambda x: w(x), state=w, jit_compile=True) if jit else w
        return draws(step)

    np.testing.assert_array_equal(sequence(3), sequence(3))
    assert not np.allclose(sequence(3), sequence(4))


def test_graph_and_eager_agree():
    eager = make(seed=5)
    graph = make(seed=5)
    np.testing.assert_allclose(
        draws(eager), draws(compiled(lambda x: graph(x), state=graph)), rtol=1e-6
    )


def test_evaluation_uses_expected_weights_and_keeps_generator():
    w = make()
    w(tensor(LOSSES))
    state = to_numpy(w.seed_generator.state).copy()
    objective, weights = w(tensor(LOSSES), training=False)
    np.testing.assert_allclose(to_numpy(weights), np.full(K, 1.0 / K), rtol=1e-6)
    np.testing.assert_allclose(float(objective), LOSSES.mean(), rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(w.seed_generator.state), state)
    compiled(lambda x: w(x, training=False), state=w, jit_compile=True)(tensor(LOSSES))
    np.testing.assert_array_equal(to_numpy(w.seed_generator.state), state)


def test_gradient_equals_weights():
    w = make()
    losses = tensor(LOSSES)
    (objective, weights), grad, _ = value_and_gradient(w, losses)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)


def test_generator_state_is_saved_and_restored():
    w = make()
    draws(w, 3)
    assert any("seed_generator_state" in v.path for v in w.non_trainable_variables)
    store = {}
    w.save_own_variables(store)
    clone = RandomLossWeighting.from_config(w.get_config())
    clone.build((K,))
    clone.load_own_variables(store)
    np.testing.assert_array_equal(draws(clone, 3), draws(w, 3))


class _Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weighting = RandomLossWeighting(seed=9)

    def call(self, losses):
        return self.weighting(losses)[1]


def test_generator_state_survives_save_weights(tmp_path):
    model = _Net()
    for _ in range(3):
        model(tensor(LOSSES))
    path = str(tmp_path / "rlw.weights.h5")
    model.save_weights(path)
    restored = _Net()
    restored(tensor(LOSSES), training=False)  # build, no draw
    restored.load_weights(path)
    np.testing.assert_array_equal(
        to_numpy(restored.weighting.seed_generator.state), [9, 3]
    )
    np.testing.assert_array_equal(
        to_numpy(restored(tensor(LOSSES))), to_numpy(model(tensor(LOSSES)))
    )


def test_load_without_generator_state_keeps_it():
    w = make()
    draws(w, 2)
    w.load_own_variables({})
    np.testing.assert_array_equal(to_numpy(w.seed_generator.state), [7, 2])
    with pytest.raises(ValueError, match="expected 1 variables"):
        w.load_own_variables({"0": np.zeros(2), "1": np.zeros(2)})


def test_alias_and_serialization():
    w = keras_mtl.weighting.get("rlw", seed=42)
    assert type(w) is RandomLossWeighting
    config = w.get_config()
    assert config["seed"] == 42
    assert RandomLossWeighting.from_config(config).seed == 42
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is RandomLossWeighting and restored.seed == 42
    assert keras_mtl.weighting.get("rlw").seed is None
    assert RandomLossWeighting(seed=np.int64(3)).seed == 3


@pytest.mark.parametrize("bad", ["3", 1.5, True])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        RandomLossWeighting(seed=bad)

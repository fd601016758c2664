"""`aggregator.weights(gramian)`: the task weights of a Gramian-weighted
aggregator under the name of the issue, while `aggregator.weights` stays
Keras' list of the layer's variables (alone and inside a MultiTaskModel:
fit, XLA, get/set_weights, `.keras` round trip)."""

import keras
import numpy as np
import pytest
from _backend import to_numpy
from conftest import TASK_LOSSES, build_net

import keras_mtl
from keras_mtl.aggregation import GramianWeightedAggregator
from keras_mtl.aggregation._stateful import SeededAggregator
from keras_mtl.aggregation.base import GramianWeights

pytestmark = pytest.mark.backend_neutral

GRAMIAN_WEIGHTED = sorted(
    name
    for name, cls in keras_mtl.aggregation.ALIASES.items()
    if issubclass(cls, GramianWeightedAggregator)
)


WARM_STARTED = {"sdmgrad"}
# SDMGrad with LibMTL's step (5) does not settle in its 20 iterations: its
# weights amplify float32 differences between the Gramian given here and the
# one the call computes from J (4.5e-4 relative); at step 1 they converge.
ARGUMENTS = {"sdmgrad": {"step_size": 1.0}}


def _jacobian(seed, num_tasks=3, dim=7):
    j = np.random.default_rng(seed).normal(size=(num_tasks, dim))
    # Largest entry 1: the aggregator's internal rescaling is the identity,
    # so its direction is exactly weights(G) @ J.
    return (j / np.abs(j).max()).astype(np.float32)


def test_the_gramian_weighted_aliases():
    # Every aggregator whose direction is w(G) @ J (and only those).
    assert GRAMIAN_WEIGHTED == [
        "aligned_mtl",
        "cagrad",
        "config",
        "cr_mogm",
        "dualproj",
        "fairgrad",
        "grad_norm",
        "gradnorm",
        "gradvac",
        "imtl_g",
        "krum",
        "mean",
        "mgda",
        "modo",
        "nash_mtl",
        "pcgrad",
        "sdmgrad",
        "sum",
        "upgrad",
    ]


@pytest.mark.parametrize("name", GRAMIAN_WEIGHTED)
def test_weights_of_a_gramian_give_the_direction(name):
    agg = keras_mtl.aggregation.get(name, **ARGUMENTS.get(name, {}))
    j = _jacobian(len(name))
    g = (j.astype(np.float64) @ j.T.astype(np.float64)).astype(np.float32)
    w = np.asarray(agg.weights(g), np.float64)
    assert w.shape == (3,)
    # Eagerly `weights` runs a cached compiled function (`tf.function`,
    # `jax.jit`), `gramian_weights` op by op.
    np.testing.assert_allclose(w, agg.gramian_weights(g), rtol=1e-5, atol=1e-7)
    # GradNorm reads the losses too (its weights before a call's update).
    losses = {"losses": np.array([1.0, 2.0, 0.5])} if agg.needs_losses else {}
    d = np.asarray(agg(j, training=False, **losses), np.float64)
    np.testing.assert_allclose(d, w @ j, rtol=1e-4, atol=1e-6)
    if not isinstance(agg, SeededAggregator) and name not in WARM_STARTED:
        # A training call draws PCGrad's and GradVac's orders at random;
        # `weights` are their evaluation-mode (fixed-order) ones. SDMGrad's
        # training call starts its 20 iterations from the stored weights,
        # which the call itself updates.
        d = np.asarray(agg(j, **losses), np.float64)
        np.testing.assert_allclose(d, w @ j, rtol=1e-4, atol=1e-6)


def test_hand_computed_weights():
    # Orthogonal rows of norms 2 and 1/2: MGDA's min-norm point weighs them
    # 1/17 and 16/17 (w_i proportional to 1/|g_i|^2); Nash-MTL's alpha_i is
    # 1/|g_i|; Mean is 1/K whatever G.
    g = np.diag([4.0, 0.25]).astype(np.float32)
    mgda = keras_mtl.aggregation.get("mgda")
    np.testing.assert_allclose(mgda.weights(g), [1 / 17, 16 / 17], rtol=1e-5)
    nash = keras_mtl.aggregation.get("nash_mtl")
    np.testing.assert_allclose(nash.weights(g), [0.5, 2.0], rtol=1e-4)
    mean = keras_mtl.aggregation.get("mean")
    np.testing.assert_allclose(mean.weights(g), [0.5, 0.5])


def test_weights_is_still_the_list_of_variables():
    upgrad = keras_mtl.aggregation.get("upgrad")
    assert isinstance(upgrad.weights, GramianWeights)
    assert isinstance(upgrad.weights, list) and upgrad.weights == []
    nash = keras_mtl.aggregation.get("nash_mtl", update_every=2)
    nash(_jacobian(0))
    names = [v.name for v in nash.weights]
    assert names == ["task_weights", "step"]
    assert [id(v) for v in nash.weights] == [id(v) for v in nash.variables]
    values = nash.get_weights()
    assert [v.shape for v in values] == [(3,), ()]
    nash.set_weights([np.array([1.0, 2.0, 3.0], np.float32), np.array(5, np.int32)])
    np.testing.assert_array_equal(to_numpy(nash.task_weights), [1.0, 2.0, 3.0])
    assert int(to_numpy(nash.step)) == 5
    assert nash.count_params() == 4


def _model(aggregator, jit_compile=False):
    model = keras_mtl.MultiTaskModel(build_net(), aggregator=aggregator)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES, jit_compile=jit_compile
    )
    return model


def _fit(model, digits):
    x, y = digits.x[:128], {k: v[:128] for k, v in digits.y.items()}
    return model.fit(x, y, epochs=1, batch_size=64, verbose=0)


# `weights` is the same list (a `GramianWeights`) for every Gramian-weighted
# aggregator: one with state under XLA and one without state or XLA.
@pytest.mark.parametrize(
    "name, kwargs, jit_compile",
    [
        ("mgda", {}, False),
        ("nash_mtl", {"update_every": 2}, True),
    ],
)
def test_models_with_the_callable_weights(digits, tmp_path, name, kwargs, jit_compile):
    model = _model(keras_mtl.aggregation.get(name, **kwargs), jit_compile=jit_compile)
    history = _fit(model, digits)
    assert np.all(np.isfinite(history.history["loss"]))
    agg = model.aggregator
    assert model.losses == []
    # The aggregator's state is part of the model's weights and variables.
    model_ids = {id(v) for v in model.weights}
    assert {id(v) for v in agg.weights} <= model_ids
    if name == "nash_mtl":
        assert int(to_numpy(agg.step)) == 2
        assert {id(agg.task_weights), id(agg.step)} <= model_ids
    # get_weights / set_weights round trip on the whole model.
    values = model.get_weights()
    model.set_weights([np.zeros_like(v) for v in values])
    model.set_weights(values)
    for a, b in zip(model.get_weights(), values, strict=True):
        np.testing.assert_array_equal(a, b)
    # `.keras` round trip: same config, same variables, same next step.
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.aggregator) is type(agg)
    assert loaded.aggregator.get_config() == agg.get_config()
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A `fit` like the first (`model` reuses its compiled step).
    x, y = digits.batch(0, 64)
    first, second = (
        m.fit(x, y, batch_size=64, shuffle=False, verbose=0).history["loss"]
        for m in (model, loaded)
    )
    assert second == pytest.approx(first, rel=1e-6)
    # Still callable after all that.
    g = np.eye(2, dtype=np.float32)
    np.testing.assert_allclose(
        loaded.aggregator.weights(g), agg.gramian_weights(g), rtol=1e-5
    )

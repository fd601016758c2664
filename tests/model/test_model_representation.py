"""MultiTaskModel in representation mode (keras_mtl.model): per-task gradients
of the shared representation, aggregated, then one backward pass through the
trunk (MGDA-UB, Sener & Koltun 2018)."""

import keras
import numpy as np
import pytest
from conftest import (
    PATH_AGGREGATORS,
    TASK_LOSSES,
    build_net,
    full_matrix,
    uncovered_paths,
)

import keras_mtl
from keras_mtl.model import REPRESENTATION_AGGREGATORS


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class Trunk(keras.Model):
    """A subclassed trunk: pixels -> a 32-unit representation."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32, activation="relu")

    def call(self, x):
        return self.hidden(x)


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class Heads(keras.Model):
    """Subclassed task heads on the representation."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.digit = keras.layers.Dense(10, activation="softmax")
        self.parity = keras.layers.Dense(1, activation="sigmoid")

    def call(self, z):
        return {"digit": self.digit(z), "parity": self.parity(z)}


def _model(aggregator, net=None, jit_compile=False, optimizer=None, **kwargs):
    model = keras_mtl.MultiTaskModel(
        net if net is not None else build_net(),
        aggregator=aggregator,
        representation="hidden",
        **kwargs,
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=TASK_LOSSES,
        jit_compile=jit_compile,
    )
    return model


def _one_sgd_step(batch, **kwargs):
    """The net's weights after one SGD(0.1) step of a fresh model."""
    net = kwargs.pop("net", None) or build_net(kernel_regularizer="l2")
    model = keras_mtl.MultiTaskModel(net, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES)
    model.train_on_batch(*batch)
    return [v.numpy() for v in net.trainable_variables]


def test_sum_in_representation_mode_equals_plain_training(digits):
    """Chain rule: the trunk's gradient of the summed task losses is the
    backward pass of the summed representation gradients (regularisation
    included), so one SGD step gives the same weights."""
    batch = digits.batch()
    plain = _one_sgd_step(batch)
    representation = _one_sgd_step(batch, aggregator="sum", representation="hidden")
    for a, b in zip(plain, representation):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_mgda_trunk_update_matches_a_numpy_reference(digits):
    """MGDA-UB by hand: gradients of the two task losses w.r.t. z = relu(x W +
    b), their min-norm convex combination (closed form for two tasks), then
    the chain rule through the trunk; heads get the summed losses' gradient."""
    x, y = digits.batch()
    net = build_net()
    w, b, wd, bd, wp, bp = [
        v.numpy().astype("float64") for v in net.trainable_variables
    ]
    n = len(x)
    pre = x @ w + b
    z = np.maximum(pre, 0.0)
    onehot = np.eye(10)[y["digit"]]
    d_digit = (_softmax(z @ wd + bd) - onehot) / n  # d loss / d logits
    parity = 1.0 / (1.0 + np.exp(-(z @ wp + bp)))
    d_parity = (parity - y["parity"][:, None]) / n
    g1 = (d_digit @ wd.T).ravel()  # d loss / d z, flattened over the batch
    g2 = (d_parity @ wp.T).ravel()
    gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
    assert 0.0 < gamma < 1.0  # an interior solution: both tasks count
    direction = (gamma * g1 + (1 - gamma) * g2).reshape(z.shape)
    d_pre = direction * (pre > 0)
    lr = 0.1
    expected = [
        w - lr * x.T @ d_pre,
        b - lr * d_pre.sum(axis=0),
        wd - lr * z.T @ d_digit,
        bd - lr * d_digit.sum(axis=0),
        wp - lr * z.T @ d_parity,
        bp - lr * d_parity.sum(axis=0),
    ]
    got = _one_sgd_step((x, y), net=net, aggregator="mgda", representation="hidden")
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    # Parameter-mode MGDA balances other gradients: a different trunk step.
    parameter = _one_sgd_step((x, y), net=build_net(), aggregator="mgda")
    assert np.abs(parameter[0] - got[0]).max() > 1e-4


def test_mgda_trains_under_xla_and_lowers_every_task_loss(digits):
    model = _model("mgda", jit_compile=True)
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0], (task, curve)
        assert np.all(np.isfinite(history.history[f"{task}_weight"]))


def _representation_cases() -> list[str]:
    """One alias per class (GradNorm has two) of the aggregators representation
    mode takes; Krum and TrimmedMean need at least three tasks (this net has
    two: their error has its own test).

    By default those among `conftest.PATH_AGGREGATORS`, and for a path of
    the step none of them takes here (their stand-in takes state of the
    Jacobian's width, which representation mode rejects), one that takes
    it: every other one takes the same path of the step with the
    representation's Jacobian, and each aggregator's maths has its own
    tests. KERAS_MTL_FULL_MATRIX=1 trains every one."""
    aliases = keras_mtl.aggregation.ALIASES
    every = sorted(
        {
            aliases[n]: n
            for n in REPRESENTATION_AGGREGATORS
            if n not in ("krum", "trimmed_mean")
        }.values()
    )
    if full_matrix():
        return every
    on_paths = {aliases[n] for n in PATH_AGGREGATORS}
    cases = [n for n in every if aliases[n] in on_paths]
    # One aggregator for each path none of them takes: every path is then
    # taken (uncovered_paths names, per path, an aggregator that takes it).
    cases += sorted(set(uncovered_paths(cases, among=every).values()))
    return sorted(cases)


@pytest.mark.parametrize("name", _representation_cases())
def test_every_meaningful_aggregator_trains_in_representation_mode(digits, name):
    model = _model(name)
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=128, verbose=0)
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0], (name, task, curve)


def test_representation_aggregators_are_exactly_those_without_state_of_size_d():
    """The documented list: an aggregator fits representation mode iff it can
    be built without the Jacobian's width."""
    buildable = []
    for name in keras_mtl.aggregation.names():
        try:
            keras_mtl.aggregation.get(name).build((2, None))
        except ValueError:
            continue
        buildable.append(name)
    assert tuple(buildable) == REPRESENTATION_AGGREGATORS


@pytest.mark.parametrize("name", ["moco", "db_mtl", "excess_mtl"])
def test_aggregators_with_state_of_size_d_are_rejected(name):
    with pytest.raises(ValueError, match="cannot be used in representation mode"):
        keras_mtl.MultiTaskModel(build_net(), aggregator=name, representation="hidden")


def test_trunk_and_heads_sum_equals_plain_training(digits):
    """Subclassed trunk and heads: `sum` in representation mode gives the same
    step as training heads(trunk(x)) without an aggregator."""
    batch = digits.batch()
    results = []
    for aggregator in (None, "sum"):
        keras.utils.set_random_seed(3)  # the same initial weights
        model = keras_mtl.MultiTaskModel(
            trunk=Trunk(), heads=Heads(), aggregator=aggregator
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES)
        model.train_on_batch(*batch)
        assert model.representation_mode is (aggregator is not None)
        results.append([v.numpy() for v in model.net.trainable_variables])
    assert len(results[0]) == 6
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.backend_neutral
def test_trunk_and_heads_save_and_load_exactly(digits, tmp_path):
    """GradVac (targets [K, K] and a saved random stream) on subclassed trunk
    and heads: the loaded model takes exactly the same next step."""
    model = keras_mtl.MultiTaskModel(
        trunk=Trunk(), heads=Heads(), aggregator=keras_mtl.aggregation.GradVac(seed=1)
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES)
    model.fit(digits.x, digits.y, epochs=2, batch_size=64, verbose=0)
    assert np.abs(model.aggregator.targets.numpy()).max() > 0
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.representation_mode
    assert loaded.get_config()["net"]["config"]["trunk"]["class_name"] == "Trunk"
    assert len(loaded.variables) == len(model.variables)
    for a, b in zip(model.variables, loaded.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    batch = digits.batch(128)
    expected = model.train_on_batch(*batch, return_dict=True)
    got = loaded.train_on_batch(*batch, return_dict=True)
    assert got == pytest.approx(expected, rel=1e-6)
    for a, b in zip(model.variables, loaded.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.backend_neutral
def test_functional_representation_mode_is_kept_on_save(digits, tmp_path):
    model = _model("upgrad")
    # 100 does not divide 512: the last batch is smaller, so D (batch x 32)
    # changes between steps (the step is traced for both sizes).
    model.fit(digits.x, digits.y, epochs=1, batch_size=100, verbose=0)
    assert model.get_config()["representation"] == "hidden"
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.representation == "hidden" and loaded.representation_mode
    batch = digits.batch(64)
    expected = model.train_on_batch(*batch, return_dict=True)
    got = loaded.train_on_batch(*batch, return_dict=True)
    assert got == pytest.approx(expected, rel=1e-6)


def _skip_connection_net():
    inputs = keras.Input((64,))
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    both = keras.layers.Concatenate()([h, inputs])
    return keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(10, name="digit")(h),
            "parity": keras.layers.Dense(1, name="parity")(both),
        },
    )


def _twice_called_net():
    inputs = keras.Input((64,))
    dense = keras.layers.Dense(64, activation="relu", name="twice")
    h = dense(dense(inputs))
    return keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(10, name="digit")(h),
            "parity": keras.layers.Dense(1, name="parity")(h),
        },
    )


def test_errors_name_the_problem(make_subclassed_net):
    with pytest.raises(ValueError, match="has no layer of that name.*hidden"):
        keras_mtl.MultiTaskModel(build_net(), aggregator="mgda", representation="nope")
    with pytest.raises(ValueError, match="skip connection"):
        keras_mtl.MultiTaskModel(
            _skip_connection_net(), aggregator="mgda", representation="hidden"
        )
    with pytest.raises(ValueError, match="called 2 times"):
        keras_mtl.MultiTaskModel(
            _twice_called_net(), aggregator="mgda", representation="twice"
        )
    with pytest.raises(ValueError, match="needs a functional net.*trunk="):
        keras_mtl.MultiTaskModel(
            make_subclassed_net(), aggregator="mgda", representation="hidden"
        )
    with pytest.raises(ValueError, match="pass an `aggregator` too"):
        keras_mtl.MultiTaskModel(build_net(), representation="hidden")
    with pytest.raises(TypeError, match="name of a layer"):
        keras_mtl.MultiTaskModel(build_net(), aggregator="mgda", representation=1)
    with pytest.raises(ValueError, match="not both"):
        keras_mtl.MultiTaskModel(build_net(), trunk=Trunk(), heads=Heads())
    with pytest.raises(TypeError, match="`heads` must be a Keras layer"):
        keras_mtl.MultiTaskModel(trunk=Trunk(), aggregator="mgda")
    with pytest.raises(ValueError, match="`representation` must be left out"):
        keras_mtl.MultiTaskModel(
            trunk=Trunk(), heads=Heads(), aggregator="mgda", representation="hidden"
        )


def test_representation_at_an_input_layer_has_no_trunk_to_balance(digits):
    model = keras_mtl.MultiTaskModel(
        build_net(), aggregator="mgda", representation="pixels"
    )
    model.compile(optimizer="sgd", loss=TASK_LOSSES)
    with pytest.raises(ValueError, match="no trainable parameters"):
        model.train_on_batch(*digits.batch())


def test_a_nested_model_can_be_the_trunk(digits):
    """`representation` may name a nested model (it also has a call node of
    its own graph); `sum` then equals plain training."""

    def nested_net():
        def init(seed):
            return keras.initializers.GlorotUniform(seed=seed)

        pixels = keras.Input((64,))
        hidden = keras.layers.Dense(32, activation="relu", kernel_initializer=init(0))
        inner = keras.Model(pixels, hidden(pixels), name="backbone")
        inputs = keras.Input((64,))
        z = inner(inputs)
        digit = keras.layers.Dense(10, activation="softmax", kernel_initializer=init(1))
        parity = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init(2))
        return keras.Model(inputs, {"digit": digit(z), "parity": parity(z)})

    batch = digits.batch()
    plain = _one_sgd_step(batch, net=nested_net())
    got = _one_sgd_step(
        batch, net=nested_net(), aggregator="sum", representation="backbone"
    )
    for a, b in zip(plain, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

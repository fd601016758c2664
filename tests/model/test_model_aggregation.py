"""MultiTaskModel with a gradient-level aggregator (per-task gradients of the
shared parameters, aggregated inside the compiled step)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    PATH_AGGREGATORS,
    STATELESS_STAND_INS,
    TASK_LOSSES,
    build_net,
    full_matrix,
    one_alias_per_class,
)

import keras_mtl


def _model(aggregator, weighting="equal", jit_compile=False, **net_kwargs):
    net = build_net(**net_kwargs)
    model = keras_mtl.MultiTaskModel(net, weighting=weighting, aggregator=aggregator)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES, jit_compile=jit_compile
    )
    return model


def test_shared_parameters_are_the_trunk_only():
    model = _model("pcgrad")
    shared = {v.path for v in model._shared_variables}
    assert shared == {"hidden/kernel", "hidden/bias"}
    # The aggregator is built for the size of the shared parameters.
    model.fit(
        np.zeros((4, 64), "float32"),
        {"digit": np.zeros(4), "parity": np.zeros(4)},
        verbose=0,
    )
    assert model.aggregator.num_tasks == 2


# Each under XLA: one XLA compilation per aggregator (64 divides the 512
# examples, so every batch has the same shape). By default one aggregator
# per path of the step (`conftest.PATH_AGGREGATORS`) and UPGrad (a solver's
# loops): every other one takes a path of these through the step, and its
# own code is compiled under XLA and checked against exact references in
# its file and in tests/aggregation/test_properties.py. With
# KERAS_MTL_FULL_MATRIX=1 one alias per class (GradNorm has two).
# Krum and TrimmedMean need at least three tasks (these models have two);
# tests/trainers/test_jax_distribution.py and tests/trainers/test_backend_parity.py train them
# with three.
_NEED_THREE_TASKS = ("krum", "trimmed_mean")
_ONE_ALIAS_EACH = [
    a for a in one_alias_per_class(keras_mtl.aggregation) if a not in _NEED_THREE_TASKS
]
_XLA_SWEEP = (
    _ONE_ALIAS_EACH
    if full_matrix()
    else sorted(
        {*PATH_AGGREGATORS, *STATELESS_STAND_INS} & {*keras_mtl.aggregation.names()}
    )
)


@pytest.mark.parametrize("name", _XLA_SWEEP)
def test_every_aggregator_trains_under_xla_and_lowers_every_task_loss(digits, name):
    model = _model(name, jit_compile=True)
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0], (name, task, curve)
        assert np.all(np.isfinite(history.history[f"{task}_weight"]))
    cosine = history.history["grad_cosine_min"]
    assert all(-1.0 - 1e-5 <= c <= 1.0 + 1e-5 for c in cosine)


@pytest.mark.parametrize("name", _NEED_THREE_TASKS)
def test_robust_aggregators_with_two_tasks_raise_a_clear_error(digits, name):
    model = _model(name)
    with pytest.raises(ValueError, match="needs at least .* got 2"):
        model.train_on_batch(*digits.batch())


def test_sum_aggregator_equals_plain_training(digits):
    """`sum` of the per-task gradients is the ordinary gradient of the summed
    losses: one SGD step gives the same weights as without an aggregator."""
    batch = digits.batch()
    results = []
    for aggregator in (None, "sum"):
        net = build_net(kernel_regularizer="l2")
        model = keras_mtl.MultiTaskModel(net, aggregator=aggregator)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES)
        model.train_on_batch(*batch)
        results.append([v.numpy() for v in net.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_effective_weights_of_pcgrad_without_conflict(digits):
    """Without conflict PCGrad is the plain sum: both effective weights 1."""
    model = _model("pcgrad")
    x, y = digits.batch()
    logs = model.train_on_batch(x, y, return_dict=True)
    if logs["grad_cosine_min"] > 0:
        assert logs["digit_weight"] == pytest.approx(1.0, abs=1e-3)
        assert logs["parity_weight"] == pytest.approx(1.0, abs=1e-3)


def test_save_and_load_with_an_aggregator(digits, tmp_path):
    model = _model("pcgrad", weighting="uncertainty")
    model.fit(digits.x, digits.y, epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.aggregator).__name__ == "PCGrad"
    batch = digits.batch()
    a = model.train_on_batch(*batch, return_dict=True)["loss"]
    b = loaded.train_on_batch(*batch, return_dict=True)["loss"]
    assert a == pytest.approx(b, rel=1e-6)


def test_no_shared_parameter_is_an_error():
    inputs = keras.Input((4,))
    net = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(1, name="a")(inputs),
            "b": keras.layers.Dense(1, name="b")(inputs),
        },
    )
    with pytest.raises(ValueError, match="No parameter is shared"):
        keras_mtl.MultiTaskModel(net, aggregator="pcgrad")


# ------------------------------------------- methods that use the losses too
class _RecordingDBMTL(keras_mtl.aggregation.DBMTL):
    """DB-MTL that keeps the last Jacobian it was given (eager runs only)."""

    def call(self, jacobian, training=True):
        self.seen = np.array(jacobian)
        return super().call(jacobian, training=training)


def _task_losses(net, x, y):
    """The two task losses, written out with Keras' loss functions."""
    out = net(x, training=True)
    digit = keras.ops.mean(
        keras.losses.sparse_categorical_crossentropy(y["digit"], out["digit"])
    )
    parity = keras.ops.mean(
        keras.losses.binary_crossentropy(y["parity"][:, None], out["parity"])
    )
    return digit, parity


def test_db_mtl_differentiates_log_losses(digits):
    """Inside a model, DB-MTL's Jacobian rows are grad L_i / L_i (a
    loss-level weight cancels in the logarithm)."""
    x, y = digits.batch()
    net = build_net()
    model = keras_mtl.MultiTaskModel(
        net,
        weighting=keras_mtl.weighting.get("fixed", weights=[1.0, 0.25]),
        aggregator=_RecordingDBMTL(),
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES, run_eagerly=True
    )
    shared = model._shared_variables
    with tf.GradientTape(persistent=True) as tape:
        losses = _task_losses(net, x, y)
    rows = [
        np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, shared)])
        / float(loss)
        for loss in losses
    ]
    model.train_on_batch(x, y)
    np.testing.assert_allclose(
        model.aggregator.seen, np.stack(rows), rtol=1e-4, atol=1e-7
    )


def test_db_mtl_trains_the_heads_on_log_losses(digits):
    x, y = digits.batch()
    net = build_net()
    model = keras_mtl.MultiTaskModel(net, aggregator="db_mtl")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES)
    heads = [net.get_layer("digit").kernel, net.get_layer("parity").kernel]
    with tf.GradientTape(persistent=True) as tape:
        losses = _task_losses(net, x, y)
        logs = [keras.ops.log(loss) for loss in losses]
    expected = [
        head.numpy() - 0.1 * tape.gradient(log, head).numpy()
        for head, log in zip(heads, logs)
    ]
    logs = model.train_on_batch(x, y, return_dict=True)
    for head, value in zip(heads, expected):
        np.testing.assert_allclose(head.numpy(), value, rtol=1e-5, atol=1e-6)
    # `loss` stays the (equal-weighted) objective of the raw losses.
    assert logs["loss"] == pytest.approx(float(sum(losses)), rel=1e-5)


def test_db_mtl_without_log_losses_uses_the_raw_losses(digits):
    x, y = digits.batch()
    net = build_net()
    agg = _RecordingDBMTL(log_losses=False)
    model = keras_mtl.MultiTaskModel(net, aggregator=agg)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES, run_eagerly=True
    )
    with tf.GradientTape() as tape:
        digit, _ = _task_losses(net, x, y)
    row = tape.gradient(digit, model._shared_variables)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(
        agg.seen[0], np.concatenate([g.numpy().ravel() for g in row]), rtol=1e-4
    )


def test_grad_norm_first_step_is_plain_training_and_records_losses(digits):
    """GradNorm's weights start at 1: its first step is the ordinary
    gradient step; it stores the step's unweighted losses as L(0)."""
    x, y = digits.batch()
    results = []
    for aggregator in (None, "grad_norm"):
        net = build_net()
        model = keras_mtl.MultiTaskModel(net, aggregator=aggregator)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES)
        losses = [float(v) for v in _task_losses(net, x, y)]
        model.train_on_batch(x, y)
        results.append([v.numpy() for v in net.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.aggregator.initial_losses, losses, rtol=1e-5)
    assert int(model.aggregator.has_initial_losses.numpy()) == 1
    w = model.aggregator.task_weights.numpy()
    assert np.all(w > 0) and w.sum() == pytest.approx(2.0) and abs(w[0] - 1) > 1e-6


@pytest.mark.parametrize("name", ["grad_norm", "db_mtl", "modo", "cr_mogm", "sdmgrad"])
def test_save_and_load_keeps_the_aggregator_state(digits, tmp_path, name):
    model = _model(name)
    model.fit(
        digits.x[:256],
        {k: v[:256] for k, v in digits.y.items()},
        epochs=1,
        batch_size=64,
        verbose=0,
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.aggregator.get_config() == model.aggregator.get_config()
    assert loaded.aggregator.variables
    for a, b in zip(
        model.aggregator.variables, loaded.aggregator.variables, strict=True
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    batch = digits.batch(256)
    a = model.train_on_batch(*batch, return_dict=True)
    b = loaded.train_on_batch(*batch, return_dict=True)
    for key in ("loss", "digit_weight", "parity_weight"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key
    for a, b in zip(model.aggregator.variables, loaded.aggregator.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_skipped_step_leaves_the_aggregator_state_alone(digits):
    """DB-MTL would smooth a Jacobian with zeroed non-finite entries into
    its state: the model rolls that back with the rest of a skipped step."""
    net = build_net()
    model = keras_mtl.MultiTaskModel(net, aggregator="db_mtl", on_nonfinite="skip")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES)
    x, y = digits.batch()
    model.train_on_batch(x, y)
    before = [v.numpy().copy() for v in model.aggregator.variables]
    y = {k: v.copy() for k, v in y.items()}
    y["parity"][3] = np.inf  # non-finite (a NaN label would be missing)
    model.train_on_batch(x, y)
    assert int(model.skipped_steps.numpy()) == 1
    for a, v in zip(before, model.aggregator.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


def test_subclassed_net_finds_its_shared_parameters_in_the_first_step(
    digits, make_subclassed_net
):
    """A subclassed net creates its variables in its first call, inside the
    first (here XLA-compiled) trace of the step: the shared parameters are
    found there, and the aggregator built for their size."""
    model = keras_mtl.MultiTaskModel(make_subclassed_net(), aggregator="pcgrad")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES, jit_compile=True
    )
    assert model._shared_variables is None
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    hidden = model.net.hidden
    assert [id(v) for v in model._shared_variables] == [
        id(hidden.kernel),
        id(hidden.bias),
    ]
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0], (task, curve)


def test_shared_parameters_given_explicitly(digits, tmp_path):
    """`shared=` replaces the automatic search: layer names select every
    variable under the layer, paths one variable; the rest (heads, and here
    the trunk's bias) get the objective's gradient."""
    net = build_net()
    auto = keras_mtl.MultiTaskModel(build_net(), aggregator="pcgrad")
    named = keras_mtl.MultiTaskModel(net, aggregator="pcgrad", shared=["hidden"])
    assert [v.path for v in named._find_shared_variables()] == [
        v.path for v in auto._find_shared_variables()
    ]
    kernel_only = keras_mtl.MultiTaskModel(
        build_net(), aggregator="mgda", shared="hidden/kernel"
    )
    kernel_only.compile(optimizer=keras.optimizers.Adam(1e-2), loss=TASK_LOSSES)
    assert [v.path for v in kernel_only._shared_variables] == ["hidden/kernel"]
    history = kernel_only.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    for task in ("digit", "parity"):
        curve = history.history[f"{task}_loss"]
        assert curve[-1] < curve[0]
    path = tmp_path / "shared.keras"
    kernel_only.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.shared == ["hidden/kernel"]
    assert [v.path for v in loaded._find_shared_variables()] == ["hidden/kernel"]


def test_shared_argument_errors():
    with pytest.raises(ValueError, match="'nope' is neither a layer"):
        keras_mtl.MultiTaskModel(build_net(), aggregator="upgrad", shared=["nope"])
    with pytest.raises(ValueError, match="pass an `aggregator`"):
        keras_mtl.MultiTaskModel(build_net(), shared=["hidden"])
    with pytest.raises(ValueError, match="every trainable variable"):
        keras_mtl.MultiTaskModel(
            build_net(), aggregator="upgrad", shared=["hidden", "digit", "parity"]
        )
    with pytest.raises(ValueError, match="non-empty list"):
        keras_mtl.MultiTaskModel(build_net(), aggregator="upgrad", shared=[])

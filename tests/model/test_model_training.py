"""MultiTaskModel trains through a real `fit` on the digits data."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl

ALIASES = keras_mtl.weighting.names()


def _losses_fell(history, tasks=("digit", "parity"), factor=0.95):
    for task in tasks:
        values = history.history[f"{task}_loss"]
        assert np.all(np.isfinite(values)), (task, values)
        assert values[-1] < factor * values[0], (task, values)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("alias", ALIASES)
def test_every_weighting_lowers_every_task_loss_under_xla(alias, digits, make_model):
    model = make_model(alias, jit_compile=True)
    assert type(model.weighting) is keras_mtl.weighting.ALIASES[alias]
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    assert model.jit_compile is True
    _losses_fell(history)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(model.train_steps.numpy()) == 3 * 8
    assert int(model.skipped_steps.numpy()) == 0


@pytest.mark.parametrize("jit_compile", [True, False, "auto"])
def test_history_keys_and_jit_modes(jit_compile, digits, make_model, task_metrics):
    model = make_model("uncertainty", metrics=task_metrics, jit_compile=jit_compile)
    history = model.fit(
        digits.x,
        digits.y,
        epochs=2,
        batch_size=64,
        validation_split=0.25,
        verbose=0,
    )
    keys = {"loss"} | {
        f"{task}_{what}"
        for task in ("digit", "parity")
        for what in ("loss", "weight", "accuracy")
    }
    # Validation logs hold losses and metrics only: a weight belongs to a
    # training step.
    weights = {"val_digit_weight", "val_parity_weight"}
    assert set(history.history) == keys | {f"val_{k}" for k in keys} - weights
    assert not weights & set(history.history)
    for key, values in history.history.items():
        assert len(values) == 2 and np.all(np.isfinite(values)), key
        if key.endswith("accuracy"):
            assert all(0.0 <= v <= 1.0 for v in values), key
    _losses_fell(history, factor=1.0)
    # Validation losses are the unweighted task losses of the held-out part.
    x_val = digits.x[384:]
    pred = model(x_val, training=False)  # eager: no extra XLA compile
    expected = keras.losses.sparse_categorical_crossentropy(
        digits.y["digit"][384:], pred["digit"]
    )
    np.testing.assert_allclose(
        history.history["val_digit_loss"][-1], np.mean(expected), rtol=1e-4
    )


class CountingModel(keras_mtl.MultiTaskModel):
    """Counts how often `train_step` is traced."""

    traces = 0

    def train_step(self, data):
        type(self).traces += 1
        return super().train_step(data)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_changing_weights_never_retrace_the_step(jit_compile, digits, make_net):
    CountingModel.traces = 0
    model = CountingModel(make_net(), weighting="dwa")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={
            "digit": "sparse_categorical_crossentropy",
            "parity": "binary_crossentropy",
        },
        jit_compile=jit_compile,
    )
    # Without a strategy, Keras creates the optimizer's slots inside the first
    # trace, and tf.function then traces once more (a stock keras.Model too);
    # the model builds them before (`_build_optimizer_before_tracing`).
    dataset = tf.data.Dataset.from_tensor_slices((digits.x, digits.y)).batch(
        64, drop_remainder=True
    )
    scheduler = keras_mtl.callbacks.TaskWeightScheduler(
        lambda epoch, weights: {"digit": 1.0 + 0.5 * epoch, "parity": 1.0}
    )
    history = model.fit(
        dataset, epochs=4, callbacks=[scheduler], shuffle=False, verbose=0
    )
    assert CountingModel.traces == 1

    digit = np.array(history.history["digit_weight"])
    parity = np.array(history.history["parity_weight"])
    static = 1.0 + 0.5 * np.arange(4)
    np.testing.assert_allclose(history.history["digit_loss_weight"], static)
    # DWA: weights 1 for two epochs, then from the loss ratios (sum to K=2).
    np.testing.assert_allclose(digit[:2], static[:2], rtol=1e-6)
    np.testing.assert_allclose(parity[:2], 1.0, rtol=1e-6)
    assert np.all(np.abs(parity[2:] - 1.0) > 1e-4), parity
    np.testing.assert_allclose(digit[2:] / static[2:] + parity[2:], 2.0, rtol=1e-5)
    assert len(set(np.round(digit, 6))) == 4, digit


def test_effective_weights_are_weighting_times_loss_weights(digits, make_model):
    model = make_model(
        "fixed",  # weights [1.0, 0.5]
        loss_weights={"digit": 2.0, "parity": 1.0},
        optimizer=keras.optimizers.SGD(0.05),
    )
    x, y = digits.batch()
    pred = model.predict(x, verbose=0)
    digit_loss = float(
        keras.losses.SparseCategoricalCrossentropy()(y["digit"], pred["digit"])
    )
    parity_loss = float(
        keras.losses.BinaryCrossentropy()(y["parity"][:, None], pred["parity"])
    )

    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["digit_weight"] == pytest.approx(2.0)
    assert logs["parity_weight"] == pytest.approx(0.5)
    assert logs["digit_loss"] == pytest.approx(digit_loss, rel=1e-5)
    assert logs["parity_loss"] == pytest.approx(parity_loss, rel=1e-5)
    assert logs["loss"] == pytest.approx(2.0 * digit_loss + 0.5 * parity_loss, rel=1e-5)

    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(
        2.0 * logs["digit_loss"] + 0.5 * logs["parity_loss"], rel=1e-5
    )
    history = model.fit(digits.x, digits.y, epochs=1, batch_size=64, verbose=0)
    assert history.history["digit_weight"] == pytest.approx([2.0])
    assert history.history["parity_weight"] == pytest.approx([0.5])


def test_equal_weighting_matches_stock_keras(digits, make_net, task_losses):
    loss_weights = {"digit": 1.0, "parity": 0.3}
    net = make_net(seed=3)
    reference = make_net(seed=5)
    reference.set_weights(net.get_weights())
    initial = [w.copy() for w in net.get_weights()]

    model = keras_mtl.MultiTaskModel(net, weighting="equal")
    model.compile(
        optimizer=keras.optimizers.SGD(0.5), loss=task_losses, loss_weights=loss_weights
    )
    reference.compile(
        optimizer=keras.optimizers.SGD(0.5), loss=task_losses, loss_weights=loss_weights
    )
    for start in (0, 64):
        x, y = digits.batch(start)
        ours = model.train_on_batch(x, y, return_dict=True)
        # Stock Keras before 3.15 logs running means over these calls.
        reference.reset_metrics()
        theirs = reference.train_on_batch(x, y, return_dict=True)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    for mine, stock, first in zip(net.get_weights(), reference.get_weights(), initial):
        np.testing.assert_allclose(mine, stock, atol=1e-5)
        assert np.max(np.abs(mine - first)) > 1e-3  # both really trained


def test_regularisation_is_added_once_unweighted(digits, make_net, make_model):
    l2 = 0.05
    net = make_net(kernel_regularizer=keras.regularizers.L2(l2))
    model = make_model(
        "fixed",  # weights [1.0, 0.5]
        net=net,
        loss_weights={"digit": 2.0, "parity": 1.0},
        optimizer=keras.optimizers.SGD(0.05),
    )
    x, y = digits.batch()
    penalty = l2 * float(np.sum(net.get_layer("hidden").kernel.numpy() ** 2))
    assert penalty > 0.01

    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    expected = 2.0 * logs["digit_loss"] + 0.5 * logs["parity_loss"] + penalty
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)

    logs = model.train_on_batch(x, y, return_dict=True)  # pre-update penalty
    expected = 2.0 * logs["digit_loss"] + 0.5 * logs["parity_loss"] + penalty
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_per_task_sample_weights(digits, make_model):
    model = make_model("equal", optimizer=keras.optimizers.SGD(0.1))
    x, y = digits.batch()
    ones = np.ones(64, "float32")
    base = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)

    zero = {"digit": ones, "parity": np.zeros(64, "float32")}
    logs = model.evaluate(
        x, y, sample_weight=zero, batch_size=64, verbose=0, return_dict=True
    )
    # All parity labels missing (weight 0): no parity loss, logged as NaN.
    assert np.isnan(logs["parity_loss"])
    assert logs["digit_loss"] == pytest.approx(base["digit_loss"], rel=1e-6)
    assert np.isfinite(logs["loss"])

    # Half the parity samples: the mean over the kept half.
    half = np.concatenate([ones[:32], np.zeros(32, "float32")])
    logs = model.evaluate(
        x,
        y,
        sample_weight={"digit": ones, "parity": half},
        batch_size=64,
        verbose=0,
        return_dict=True,
    )
    pred = model.predict(x, verbose=0)["parity"][:, 0]
    per_sample = -(y["parity"] * np.log(pred) + (1 - y["parity"]) * np.log(1 - pred))
    assert logs["parity_loss"] == pytest.approx(per_sample[:32].mean(), rel=1e-4)

    # A zero-weighted task gives its head no gradient.
    parity_head = model.net.get_layer("parity")
    digit_head = model.net.get_layer("digit")
    parity_before = parity_head.kernel.numpy().copy()
    digit_before = digit_head.kernel.numpy().copy()
    logs = model.train_on_batch(x, y, sample_weight=zero, return_dict=True)
    assert np.isnan(logs["parity_loss"]) and np.isnan(logs["parity_weight"])
    assert np.isfinite(logs["digit_loss"]) and np.isfinite(logs["loss"])
    assert int(model.skipped_steps.numpy()) == 0  # applied, not skipped
    np.testing.assert_array_equal(parity_head.kernel.numpy(), parity_before)
    assert np.max(np.abs(digit_head.kernel.numpy() - digit_before)) > 1e-4


@pytest.mark.backend_neutral
def test_on_batch_calls_log_their_own_batch(digits, make_model, task_metrics):
    # Keras before 3.15 kept the metrics' state across these calls (running
    # means over the last epoch and every earlier call); the model resets it.
    model = make_model("equal", metrics=task_metrics, jit_compile="auto")
    model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    # A zero learning rate keeps the weights: each call sees the same model.
    model.optimizer.learning_rate = 0.0
    x, y = digits.batch(0)
    flipped = {"digit": y["digit"], "parity": 1.0 - y["parity"]}
    batches = [(x, y), (x, flipped)]  # far apart parity losses
    expected = [
        model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
        for x, y in batches
    ]
    assert expected[1]["parity_loss"] > 2.0 * expected[0]["parity_loss"]
    model.fit(digits.x, digits.y, epochs=1, batch_size=64, verbose=0)
    for call in (model.test_on_batch, model.train_on_batch, model.test_on_batch):
        for (x, y), want in zip(batches, expected):
            logs = call(x, y, return_dict=True)
            for key in ("loss", "digit_loss", "parity_loss", "parity_accuracy"):
                assert logs[key] == pytest.approx(want[key], rel=1e-5), key
            # Weights are logged by training steps only.
            assert ("digit_weight" in logs) == (call == model.train_on_batch)
            # Python floats, as Keras 3.14+ returns (before: 0-d arrays).
            assert all(type(v) is float for v in logs.values()), logs
    assert all(type(v) is float for v in model.test_on_batch(*batches[0]))


@pytest.mark.parametrize(
    "loss", ["mse", keras.losses.get("mse")], ids=["string", "bare_function"]
)
def test_rank_one_targets_against_width_one_outputs(loss, digits, make_net):
    model = keras_mtl.MultiTaskModel(make_net(regression=True))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss={"digit": loss, "parity": loss}
    )
    y = {"digit": digits.y["digit"].astype("float32"), "parity": digits.y["parity"]}
    x = digits.x[:64]
    y_batch = {k: v[:64] for k, v in y.items()}
    assert y_batch["digit"].shape == (64,)

    pred = model.predict(x, verbose=0)
    assert pred["digit"].shape == (64, 1)
    logs = model.evaluate(x, y_batch, batch_size=64, verbose=0, return_dict=True)
    for task in ("digit", "parity"):
        expected = np.mean((pred[task][:, 0] - y_batch[task]) ** 2)  # not (N, N)
        assert logs[f"{task}_loss"] == pytest.approx(expected, rel=1e-5)

    zero = {"digit": np.ones(64), "parity": np.zeros(64)}
    logs = model.evaluate(x, y_batch, sample_weight=zero, verbose=0, return_dict=True)
    # Every parity label missing: NaN, not 0; the digit loss is unchanged.
    assert np.isnan(logs["parity_loss"])
    assert logs["digit_loss"] == pytest.approx(
        np.mean((pred["digit"][:, 0] - y_batch["digit"]) ** 2), rel=1e-5
    )
    # And a step leaves the parity head alone (Adam's first step moves a
    # weight only where its gradient is non-zero).
    parity = model.net.get_layer("parity")
    parity_before = parity.kernel.numpy().copy()
    logs = model.train_on_batch(x, y_batch, sample_weight=zero, return_dict=True)
    assert np.isnan(logs["parity_loss"]) and np.isfinite(logs["digit_loss"])
    np.testing.assert_array_equal(parity.kernel.numpy(), parity_before)

    history = model.fit(digits.x, y, epochs=3, batch_size=64, verbose=0)
    _losses_fell(history)


def test_list_outputs_take_task_names_from_output_layers(digits, make_net, task_losses):
    net = make_net(outputs="list")
    model = keras_mtl.MultiTaskModel(net, weighting="dwa")
    assert model.task_names == ["digit", "parity"]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task_losses)
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    _losses_fell(history)
    x = digits.x[:16]
    pred = model.predict(x, verbose=0)
    assert set(pred) == {"digit", "parity"}
    digit, parity = net.predict(x, verbose=0)
    np.testing.assert_allclose(pred["digit"], digit, atol=1e-6)
    np.testing.assert_allclose(pred["parity"], parity, atol=1e-6)

    # Functional construction from a list of outputs: the same naming.
    inputs = keras.Input((64,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    functional = keras_mtl.MultiTaskModel(
        inputs,
        [
            keras.layers.Dense(10, activation="softmax", name="digit")(h),
            keras.layers.Dense(1, activation="sigmoid", name="parity")(h),
        ],
    )
    assert functional.task_names == ["digit", "parity"]
    functional.compile(optimizer="sgd", loss=task_losses)
    logs = functional.train_on_batch(*digits.batch(), return_dict=True)
    assert np.isfinite(logs["digit_loss"]) and np.isfinite(logs["parity_loss"])


def test_subclassed_net_takes_tasks_from_the_loss_dict(
    digits, task_losses, make_subclassed_net
):
    model = keras_mtl.MultiTaskModel(make_subclassed_net(), weighting="adaptive")
    assert model.task_names is None
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task_losses)
    assert model.task_names == ["digit", "parity"]
    history = model.fit(digits.x, digits.y, epochs=3, batch_size=64, verbose=0)
    _losses_fell(history)
    pred = model.predict(digits.x[:8], verbose=0)
    assert pred["digit"].shape == (8, 10) and pred["parity"].shape == (8, 1)


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class DigitsModel(keras_mtl.MultiTaskModel):
    """The functional-subclass style: builds its own graph in `__init__`."""

    def __init__(self, hidden=32, **kwargs):
        inputs = keras.Input((64,))
        h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
        outputs = {
            "digit": keras.layers.Dense(10, activation="softmax", name="digit")(h),
            "parity": keras.layers.Dense(1, activation="sigmoid", name="parity")(h),
        }
        super().__init__(inputs, outputs, **kwargs)
        self.hidden = hidden


def test_functional_subclass_trains_saves_and_loads(digits, task_losses, tmp_path):
    weighting = keras_mtl.weighting.UncertaintyWeighting(initial_log_variance=0.25)
    model = DigitsModel(hidden=48, weighting=weighting)
    assert model.task_names == ["digit", "parity"]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task_losses)
    history = model.fit(digits.x, digits.y, epochs=2, batch_size=64, verbose=0)
    _losses_fell(history, factor=1.0)
    assert model.get_config()["hidden"] == 48

    model.save(tmp_path / "digits.keras")
    loaded = keras.models.load_model(tmp_path / "digits.keras")
    assert type(loaded) is DigitsModel
    assert loaded.hidden == 48
    assert loaded.net.get_layer("hidden").units == 48
    assert loaded.weighting.initial_log_variance == 0.25
    np.testing.assert_allclose(
        loaded.weighting.log_variances.numpy(), model.weighting.log_variances.numpy()
    )
    x = digits.x[:32]
    expected, got = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for task in ("digit", "parity"):
        np.testing.assert_allclose(got[task], expected[task], atol=1e-6)


def test_uncertainty_log_variances_are_learned(digits, make_model):
    model = make_model("uncertainty")
    log_variances = model.weighting.log_variances
    assert any(v is log_variances for v in model.trainable_variables)
    history = model.fit(digits.x, digits.y, epochs=2, batch_size=64, verbose=0)
    s = log_variances.numpy()
    # Each s_i moves towards log L_i: up for the digit loss (> 1), down for
    # the parity loss (< 1).
    assert history.history["digit_loss"][-1] > 1.0 > history.history["parity_loss"][-1]
    assert s[0] > 0.02 and s[1] < -0.02, s
    assert (
        history.history["digit_weight"][-1] < 1.0 < history.history["parity_weight"][-1]
    )


def test_standalone_weighting_eager_and_traced_agree():
    weighting = keras_mtl.weighting.get("adaptive", temperature=2.0)
    losses = tf.constant([0.5, 2.0, 1.0])
    eager = weighting(losses)
    graph = tf.function(lambda value: weighting(value))(losses)
    xla = tf.function(lambda value: weighting(value), jit_compile=True)(losses)
    expected_weights = 3.0 * tf.nn.softmax(losses / 2.0).numpy()
    expected_objective = float(np.sum(expected_weights * losses.numpy()))
    for objective, weights in (eager, graph, xla):
        np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-6)
        assert float(objective) == pytest.approx(expected_objective, rel=1e-6)

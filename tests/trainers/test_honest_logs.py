"""Logs that cannot look like success: skipped steps enter no epoch mean,
an epoch without an applied step logs NaN and warns, validation logs hold
losses and metrics only, and per-task losses work with callbacks in mode
"auto"."""

import keras
import numpy as np
import pytest

import keras_mtl

pytestmark = pytest.mark.backend_neutral


def _model(aggregator=None, on_nonfinite="skip", weighting="equal", optimizer="sgd"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    net = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(1, name="a")(h),
            "b": keras.layers.Dense(1, name="b")(h),
        },
    )
    model = keras_mtl.MultiTaskModel(
        net, weighting=weighting, aggregator=aggregator, on_nonfinite=on_nonfinite
    )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    return model


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype("float32")
    y = {t: rng.standard_normal(n).astype("float32") for t in ("a", "b")}
    return x, y


def test_an_epoch_of_skipped_steps_logs_nan_and_warns():
    x, y = _data()
    model = _model()
    bad = np.full_like(x, np.nan)  # every step non-finite, so skipped
    with pytest.warns(UserWarning, match=r"Epoch 1: all 4 training steps"):
        history = model.fit(bad, y, batch_size=4, epochs=1, verbose=0)
    for key in ("loss", "a_loss", "b_loss", "a_weight", "b_weight"):
        assert np.isnan(history.history[key][0]), key
    assert int(keras.ops.convert_to_numpy(model.skipped_steps)) == 4


def test_skipped_steps_do_not_enter_the_epoch_means():
    x, y = _data()
    model = _model()
    x_bad = x.copy()
    x_bad[4:8] = np.nan  # the second of four batches is skipped
    history = model.fit(x_bad, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    # The three applied steps, one at a time (the skipped one changes nothing).
    ref2 = _model()
    a_losses = []
    for i in (0, 8, 12):
        out = ref2.train_on_batch(
            x[i : i + 4], {k: v[i : i + 4] for k, v in y.items()}, return_dict=True
        )
        a_losses.append(out["a_loss"])
    assert history.history["a_loss"][0] == pytest.approx(np.mean(a_losses), rel=1e-5)


def test_validation_logs_hold_losses_and_metrics_only():
    x, y = _data()
    model = _model(aggregator="upgrad", on_nonfinite="raise")
    history = model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y))
    keys = set(history.history)
    assert {"a_weight", "b_weight", "grad_cosine_min"} <= keys
    assert not {k for k in keys if k.startswith("val_") and k.endswith("_weight")}
    assert "val_grad_cosine_min" not in keys
    assert {"val_loss", "val_a_loss", "val_b_loss"} <= keys
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "a_loss", "b_loss"}


def test_per_task_losses_are_monitored_in_auto_mode(tmp_path):
    x, y = _data()
    model = _model(on_nonfinite="raise")
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_a_loss", patience=5),
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_b_loss", save_best_only=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="a_loss", patience=5),
    ]
    model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y), callbacks=callbacks)
    for callback in callbacks:
        assert callback.monitor_op is keras.ops.less
    assert (tmp_path / "best.keras").exists()


def _mse(model, x, y):
    """Each task's mean squared error over its labelled examples (numpy)."""
    pred = model.predict(x, verbose=0)
    out = {}
    for task in ("a", "b"):
        labelled = ~np.isnan(y[task])
        if labelled.any():
            error = pred[task][:, 0].astype("float64") - y[task]
            out[task] = np.mean(error[labelled] ** 2)
    return out


def test_the_logged_loss_leaves_an_absent_task_out():
    """Task b without labels: `loss` is the objective without b's
    stand-in, here exp(-s_a) L_a + s_a + s_b for uncertainty weighting
    with log-variances s (their terms do not depend on the data), in
    training and evaluation; with every label it is the objective."""
    x, y = _data()
    absent = {"a": y["a"], "b": np.full(16, np.nan, "float32")}
    uncertainty = keras_mtl.weighting.get("uncertainty", initial_log_variance=0.5)
    model = _model(weighting=uncertainty)
    # A fraction e^-0.5 of float32 losses of O(1): a few ulps.
    losses = _mse(model, x, absent)
    logs = model.test_on_batch(x, absent, return_dict=True)
    assert logs["loss"] == pytest.approx(np.exp(-0.5) * losses["a"] + 1.0, rel=1e-5)
    logs = model.train_on_batch(x, absent, return_dict=True)
    assert logs["loss"] == pytest.approx(np.exp(-0.5) * losses["a"] + 1.0, rel=1e-5)
    s = keras.ops.convert_to_numpy(model.weighting.log_variances)
    losses = _mse(model, x, y)
    logs = model.train_on_batch(x, y, return_dict=True)
    expected = np.sum(np.exp(-s) * [losses["a"], losses["b"]] + s)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("aggregator", [None, "upgrad"])
def test_a_batch_without_any_label_changes_nothing_and_logs_nan(aggregator):
    x, y = _data()
    model = _model(aggregator=aggregator, optimizer="adam")
    model.train_on_batch(x, y)  # Adam's moments are not 0 now
    # Parameters, weighting and aggregator state (the step counters count
    # every step) and the optimizer's moments.
    state = list(model.trainable_variables) + list(model.optimizer.variables)
    if aggregator is not None:
        state += model.aggregator.variables
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in state]
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    nothing = {t: np.full(16, np.nan, "float32") for t in ("a", "b")}
    logs = model.train_on_batch(x, nothing, return_dict=True)
    for key in ("loss", "a_loss", "b_loss", "a_weight", "b_weight"):
        assert np.isnan(logs[key]), key
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == iterations
    for value, variable in zip(before, state):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), value, err_msg=variable.path
        )

"""Logs that cannot look like success: skipped steps enter no epoch mean,
an epoch without an applied step logs NaN and warns, validation logs hold
losses and metrics only, and per-task losses work with callbacks in mode
"auto"."""

import keras
import numpy as np
import pytest

import keras_mtl

pytestmark = pytest.mark.backend_neutral


def _model(aggregator=None, on_nonfinite="skip"):
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
        net, aggregator=aggregator, on_nonfinite=on_nonfinite
    )
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
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

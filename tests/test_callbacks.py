"""The callbacks through a real `fit`."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.callbacks import EpochDriver, TaskWeightScheduler

pytestmark = pytest.mark.backend_neutral


class HeadWatcher(keras.callbacks.Callback):
    """Records the parity head's kernel at every epoch boundary."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def _record(self):
        kernel = self.model.net.get_layer("parity").kernel
        self.kernels.append(np.array(kernel.numpy()))

    def on_train_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()


def test_task_weight_scheduler_drives_the_logged_weights(digits, make_model):
    model = make_model("equal", optimizer=keras.optimizers.SGD(0.1))
    calls = []

    def warm_up(epoch, weights):
        calls.append((epoch, dict(weights)))
        return {"digit": 1.0, "parity": 0.0 if epoch < 1 else 1.0}

    watcher = HeadWatcher()
    history = model.fit(
        digits.x,
        digits.y,
        epochs=3,
        batch_size=64,
        verbose=0,
        callbacks=[TaskWeightScheduler(warm_up), watcher],
    )
    assert history.history["parity_weight"] == pytest.approx([0.0, 1.0, 1.0])
    assert history.history["digit_weight"] == pytest.approx([1.0, 1.0, 1.0])
    assert history.history["parity_loss_weight"] == pytest.approx([0.0, 1.0, 1.0])
    # The schedule sees the epoch and the current weights.
    assert calls[0] == (0, {"digit": 1.0, "parity": 1.0})
    assert calls[1] == (1, {"digit": 1.0, "parity": 0.0})
    # Weight 0: the parity head gets no gradient in epoch 1, then trains.
    np.testing.assert_array_equal(watcher.kernels[1], watcher.kernels[0])
    assert np.max(np.abs(watcher.kernels[2] - watcher.kernels[1])) > 1e-4
    # `loss` is the weighted objective: the digit loss alone in epoch 1.
    assert history.history["loss"][0] == pytest.approx(
        history.history["digit_loss"][0], rel=1e-5
    )


def test_task_weight_scheduler_combines_with_a_weighting(digits, make_model):
    model = make_model("fixed")  # weights [1.0, 0.5]
    scheduler = TaskWeightScheduler(lambda epoch, weights: [2.0, 1.0 + epoch])
    history = model.fit(
        digits.x, digits.y, epochs=2, batch_size=64, verbose=0, callbacks=[scheduler]
    )
    assert history.history["digit_weight"] == pytest.approx([2.0, 2.0])
    assert history.history["parity_weight"] == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize(
    "schedule, pattern",
    [
        (lambda epoch, weights: [1.0], r"list of 1 entries for 2 tasks"),
        (
            lambda epoch, weights: {"digit": 1.0, "colour": 1.0},
            r"unknown task.*'colour'",
        ),
        (lambda epoch, weights: {"digit": 1.0}, r"no entry for task.*'parity'"),
        (lambda epoch, weights: 0.5, r"must return a dict.*0\.5"),
        (
            lambda epoch, weights: {"digit": 1.0, "parity": -1.0},
            r"loss_weights\['parity'\]",
        ),
    ],
    ids=["short_list", "unknown_task", "missing_task", "scalar", "negative"],
)
def test_task_weight_scheduler_rejects_a_bad_schedule(
    schedule, pattern, digits, make_model
):
    model = make_model("equal")
    with pytest.raises(ValueError, match=pattern):
        model.fit(
            digits.x,
            digits.y,
            epochs=1,
            batch_size=64,
            verbose=0,
            callbacks=[TaskWeightScheduler(schedule)],
        )


def test_epoch_driver_drives_dwa(digits, make_model):
    model = make_model("dwa")
    history = model.fit(digits.x, digits.y, epochs=4, batch_size=64, verbose=0)
    digit = np.array(history.history["digit_weight"])
    parity = np.array(history.history["parity_weight"])
    # Exactly 1 until two epochs have completed.
    np.testing.assert_array_equal(digit[:2], 1.0)
    np.testing.assert_array_equal(parity[:2], 1.0)
    assert np.all(np.abs(digit[2:] - 1.0) > 1e-4)
    # Epoch 3 uses 2 * softmax(r / T), r = the ratio of the epoch means of
    # epochs 2 and 1, which are the logged `<task>_loss`.
    ratios = np.array(
        [
            history.history[f"{task}_loss"][1] / history.history[f"{task}_loss"][0]
            for task in ("digit", "parity")
        ]
    )
    temperature = model.weighting.temperature
    expected = 2.0 * np.exp(ratios / temperature) / np.sum(np.exp(ratios / temperature))
    np.testing.assert_allclose([digit[2], parity[2]], expected, rtol=1e-4)


def test_epoch_driver_is_added_once(digits, make_model):
    class CountingDriver(EpochDriver):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            type(self).epochs.append(epoch)
            super().on_epoch_begin(epoch, logs)

    model = make_model("dwa")
    model.fit(
        digits.x[:128],
        {k: v[:128] for k, v in digits.y.items()},
        epochs=3,
        batch_size=64,
        verbose=0,
        callbacks=[CountingDriver()],
    )
    assert CountingDriver.epochs == [0, 1, 2]
    assert int(model.weighting.epoch_history.epoch.numpy()) == 2


def test_tensorboard_writes_task_weight_scalars(digits, make_model, tmp_path):
    # tf.summary's implementation comes from the `tensorboard` package, which
    # TensorFlow 2.21 no longer installs.
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    model = make_model("dwa")
    history = model.fit(
        digits.x,
        digits.y,
        epochs=3,
        batch_size=64,
        verbose=0,
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path))],
    )
    files = glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
    assert files
    scalars = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, {})[event.step] = number
    for tag in (
        "epoch_loss",
        "epoch_digit_loss",
        "epoch_parity_loss",
        "epoch_digit_weight",
        "epoch_parity_weight",
    ):
        assert tag in scalars, sorted(scalars)
    logged = [scalars["epoch_digit_weight"][step] for step in range(3)]
    np.testing.assert_allclose(logged, history.history["digit_weight"], rtol=1e-6)

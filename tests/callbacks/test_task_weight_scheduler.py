"""`TaskWeightScheduler` (keras_mtl/callbacks/task_weight_scheduler.py)
through a real `fit`."""

import keras
import numpy as np
import pytest

from keras_mtl.callbacks import TaskWeightScheduler

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

"""Epoch-mean task-loss history kept in variables, for epoch-level methods."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class EpochLossHistory(keras.layers.Layer):
    """Keeps the mean training loss of each task over the last `depth` epochs.

    Everything lives in variables and is updated inside the traced step:

    - `epoch`: the current epoch index, written by `set_epoch` (from the
      `EpochDriver` callback's `on_epoch_begin`);
    - `seen_epoch`: the epoch the running sums belong to;
    - `loss_sum`, `count`: running sum of the batch losses of that epoch;
    - `history[depth, K]`: epoch means, most recent last;
    - `completed`: how many epochs have entered `history`.

    When a step sees `epoch != seen_epoch`, the running epoch is closed: its
    mean is shifted into `history` (if it had any step) and the sums restart.
    Writing the epoch index (not incrementing a counter) makes a resumed run
    (`BackupAndRestore`) idempotent: re-announcing the same epoch rolls
    nothing. `end_training` marks the running sums as belonging to no epoch
    (-2), so the next step, even of a new `fit` whose first epoch is again
    0, closes the last epoch of the previous one.
    """

    def __init__(self, depth: int, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.depth = int(depth)

    def build(self, input_shape: tuple[int, ...]) -> None:
        num_tasks = int(input_shape[0])
        self.epoch = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="epoch"
        )
        self.seen_epoch = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="seen_epoch",
        )
        self.loss_sum = self.add_weight(
            shape=(num_tasks,), initializer="zeros", trainable=False, name="loss_sum"
        )
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )
        self.history = self.add_weight(
            shape=(self.depth, num_tasks),
            initializer="ones",
            trainable=False,
            name="history",
        )
        self.completed = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="completed",
        )
        self.built = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch.assign(int(epoch))

    def end_training(self) -> None:
        self.seen_epoch.assign(-2)

    def _rolled(self) -> tuple[Any, Any, Any]:
        """History and completed count as they are once the epoch is closed."""
        new_epoch = ops.not_equal(self.epoch, self.seen_epoch)
        has_steps = ops.greater(self.count, 0.0)
        close = ops.logical_and(new_epoch, has_steps)
        mean = self.loss_sum / ops.maximum(self.count, 1.0)
        shifted = ops.concatenate([self.history[1:], mean[None, :]], axis=0)
        history = ops.where(close, shifted, self.history.value)
        completed = self.completed + ops.cast(close, "int32")
        return new_epoch, history, completed

    def update(self, losses: Any) -> tuple[Any, Any]:
        """Adds one step's losses; returns `(history, completed)` to use now."""
        new_epoch, history, completed = self._rolled()
        loss_sum = ops.where(
            new_epoch, ops.zeros_like(self.loss_sum.value), self.loss_sum.value
        )
        count = ops.where(new_epoch, ops.zeros_like(self.count.value), self.count.value)
        self.history.assign(history)
        self.completed.assign(completed)
        self.loss_sum.assign(loss_sum + losses)
        self.count.assign(count + 1.0)
        self.seen_epoch.assign(self.epoch)
        return history, completed

    def read(self) -> tuple[Any, Any]:
        """`(history, completed)` as `update` would see them, changing nothing."""
        _, history, completed = self._rolled()
        return history, completed

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)
        config["depth"] = self.depth
        return config

"""NonFiniteGuard: stop training at a NaN/Inf task loss, naming the task."""

from __future__ import annotations

from typing import Any

import keras


class NonFiniteGuard(keras.callbacks.Callback):
    """Raises `FloatingPointError` after a step with a non-finite task loss.

    `MultiTaskModel` never applies a non-finite update: its compiled step
    (XLA included, where in-graph assertions are not available) skips the
    optimizer step, keeps the weighting state and records the step and the
    offending tasks in variables. This callback reads those after each
    batch and raises an error that names the tasks, the step, the epoch and
    the batch. `MultiTaskModel.fit` adds it when `on_nonfinite="raise"`.

    With `steps_per_execution=N`, batch callbacks run every N steps, so the
    error comes at the end of that group of steps (each non-finite step in
    it was still skipped).
    """

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._skipped = int(keras.ops.convert_to_numpy(self.model.skipped_steps))
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(
        self, batch: int, logs: dict[str, Any] | None = None
    ) -> None:
        self._skipped = self.model.check_nonfinite(
            self._skipped, where=f" (epoch {self._epoch + 1}, batch {batch + 1})"
        )

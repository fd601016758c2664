"""TaskWeightScheduler: per-task loss weights as a function of the epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from keras_mtl.tasks import loss_weight_vector


class TaskWeightScheduler(keras.callbacks.Callback):
    """Sets the static per-task loss weights at the start of every epoch.

    Like `keras.callbacks.LearningRateScheduler`, for the task weights
    `compile(loss_weights=...)` sets once (asked for in TensorFlow issue
    52230). `schedule(epoch, weights)` receives the epoch index and the
    current weights as a dict `{task: weight}` and returns new ones (a dict
    keyed by task or a list in task order). They are written into the
    model's `task_loss_weights` variable, which the compiled step reads:
    no retracing. They multiply the task losses before the model's
    weighting method sees them, so they combine with any method (with
    `"equal"` they are exactly Keras' `loss_weights`).

    Args:
        schedule: `schedule(epoch: int, weights: dict) -> dict | list`.
        verbose: 1 prints the weights when they change.

    Example:

    ```python
    # Warm up the auxiliary task: weight 0 for 2 epochs, then 1.
    scheduler = keras_mtl.callbacks.TaskWeightScheduler(
        lambda epoch, w: {"digit": 1.0, "parity": 0.0 if epoch < 2 else 1.0}
    )
    model.fit(x, y, epochs=5, callbacks=[scheduler])
    ```
    """

    def __init__(
        self,
        schedule: Callable[[int, dict[str, float]], Any],
        verbose: int = 0,
    ) -> None:
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        tasks = self.model.task_names
        current = keras.ops.convert_to_numpy(self.model.task_loss_weights)
        new = self.schedule(epoch, dict(zip(tasks, (float(v) for v in current))))
        if not isinstance(new, (Mapping, list, tuple, np.ndarray)):
            raise ValueError(
                "TaskWeightScheduler: the schedule must return a dict keyed by task "
                f"or a list in task order {tasks}; got {new!r} at epoch {epoch}."
            )
        if isinstance(new, np.ndarray):
            new = new.tolist()
        values = loss_weight_vector(new, tasks)
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"TaskWeightScheduler: non-finite weights {new!r}.")
        self.model.task_loss_weights.assign(values)
        if self.verbose and not np.allclose(values, current):
            print(
                f"\nEpoch {epoch + 1}: TaskWeightScheduler set task weights "
                f"{dict(zip(tasks, values))}."
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            weights = keras.ops.convert_to_numpy(self.model.task_loss_weights)
            for task, value in zip(self.model.task_names, weights):
                logs[f"{task}_loss_weight"] = float(value)

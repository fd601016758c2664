"""EpochDriver: tells epoch-level weightings where the epochs are."""

from __future__ import annotations

from typing import Any

import keras


class EpochDriver(keras.callbacks.Callback):
    """Drives epoch-level weightings (DWA, adaptive per-epoch) from `fit`.

    At the start of each epoch it writes the epoch index into the
    weighting's variables (`weighting.on_epoch_begin(epoch)`); the compiled
    step reads them, closes the previous epoch's mean losses and computes
    the new weights in-graph, without retracing. At the end of `fit` it
    calls `weighting.on_train_end()`, so a following `fit` starts a new
    epoch. Writing the epoch index, not counting calls, keeps a run resumed
    by `keras.callbacks.BackupAndRestore` exact.

    `MultiTaskModel.fit` adds it automatically; add it yourself only to
    control its position among your callbacks.

    Example:

    ```python
    model = keras_mtl.MultiTaskModel(net, weighting="dwa")
    model.compile(optimizer="adam", loss={...})
    model.fit(x, y, epochs=10, callbacks=[keras_mtl.callbacks.EpochDriver()])
    ```
    """

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.model.weighting.on_epoch_begin(epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.model.weighting.on_train_end()

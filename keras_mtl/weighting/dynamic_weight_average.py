"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_temperature
from keras_mtl.weighting._epoch_history import EpochLossHistory
from keras_mtl.weighting.base import (
    Weighting,
    softmax_weights,
    weighted_sum,
)

# Floor of the older epoch mean in the loss-descent ratio: a task whose
# epoch-mean loss reached 0 must not turn the weights into inf or NaN.
_MIN_DENOMINATOR = 1e-12


@keras.saving.register_keras_serializable(package="keras_mtl")
class DynamicWeightAverage(Weighting):
    """Dynamic Weight Average (DWA): weight tasks by their loss-descent rate.

    With $\\bar L_i(e)$ the mean training loss of task i over epoch e, the
    weights used throughout epoch e are

    $$r_i = \\frac{\\bar L_i(e-1)}{\\bar L_i(e-2)}, \\qquad
    w_i = K \\cdot \\mathrm{softmax}(r / T)_i
        = \\frac{K \\exp(r_i / T)}{\\sum_j \\exp(r_j / T)},$$

    and $w_i = 1$ for every task during the first two epochs (until two
    epochs have completed). The objective is $\\sum_i w_i L_i$ with the
    weights treated as constants in the backward pass. A task whose loss
    falls more slowly (larger ratio) gets more weight; the weights sum to K
    and the temperature T sets how sharply (T -> infinity gives equal
    weighting).

    The epoch means are kept in variables (see `EpochLossHistory`) and
    updated inside the training step; `MultiTaskModel.fit` announces each
    epoch through `on_epoch_begin`. Evaluation (`training=False`) reads the
    weights without recording its losses. The older mean is floored at
    1e-12 in the ratio so a loss that reached 0 keeps the weights finite;
    the losses are assumed to be non-negative.

    Reference: S. Liu, E. Johns and A. J. Davison, "End-to-End Multi-Task
    Learning with Attention", CVPR 2019.

    Args:
        temperature: softmax temperature T > 0 (the paper uses 2).

    Example:

    ```python
    w = keras_mtl.weighting.get("dwa", temperature=2.0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # first epoch: objective == 2.5, weights == [1., 1.]
    ```
    """

    def __init__(self, temperature: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature, "DynamicWeightAverage")

    def build_state(self, num_tasks: int) -> None:
        self.epoch_history = EpochLossHistory(depth=2, name="epoch_history")
        self.epoch_history.build((num_tasks,))

    def weights_from(self, history: Any, completed: Any) -> Any:
        """The weights for `[2, K]` epoch means (older first) and the number
        of completed epochs."""
        history = ops.stop_gradient(history)
        ratio = history[1] / ops.maximum(history[0], _MIN_DENOMINATOR)
        dwa = softmax_weights(ratio, self.temperature)
        return ops.where(completed >= 2, dwa, ops.ones_like(dwa))

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        if training:
            history, completed = self.epoch_history.update(ops.stop_gradient(losses))
        else:
            history, completed = self.epoch_history.read()
        weights = self.weights_from(history, completed)
        return weighted_sum(losses, weights), weights

    def on_epoch_begin(self, epoch: int) -> None:
        self.epoch_history.set_epoch(epoch)

    def on_train_end(self) -> None:
        self.epoch_history.end_training()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}

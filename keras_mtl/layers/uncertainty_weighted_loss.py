"""UncertaintyWeightedLoss: Kendall et al.'s weighting as a plain Keras layer."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.layers.weighted_task_loss import WeightedTaskLoss
from keras_mtl.weighting.uncertainty import UncertaintyWeighting


@keras.saving.register_keras_serializable(package="keras_mtl")
class UncertaintyWeightedLoss(WeightedTaskLoss):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) as a layer.

    $$\\mathcal{L} = \\sum_i e^{-s_i} L_i + s_i$$ with trainable log-variances
    $s_i$ (weights of this layer). See `WeightedTaskLoss` for how to use it
    in a training model, and `keras_mtl.weighting.UncertaintyWeighting` for
    the method.

    Args:
        initial_log_variance: starting value of every $s_i$.
        add_loss: add the objective to the model's losses.

    Example:

    ```python
    objective = keras_mtl.layers.UncertaintyWeightedLoss()([loss_a, loss_b])
    ```
    """

    def __init__(
        self, initial_log_variance: float = 0.0, add_loss: bool = True, **kwargs: Any
    ) -> None:
        kwargs.pop("weighting", None)
        super().__init__(
            weighting=UncertaintyWeighting(initial_log_variance),
            add_loss=add_loss,
            **kwargs,
        )
        self.initial_log_variance = float(initial_log_variance)

    @property
    def log_variances(self) -> keras.Variable:
        return self.weighting.log_variances

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("weighting", None)
        config["initial_log_variance"] = self.initial_log_variance
        return config

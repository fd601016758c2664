"""LossTransform: BMTL's sum of increasing convex loss transforms as a layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from keras_mtl.layers.weighted_task_loss import WeightedTaskLoss
from keras_mtl.weighting.bmtl import BMTL


@keras.saving.register_keras_serializable(package="keras_mtl")
class LossTransform(WeightedTaskLoss):
    """BMTL (Liang & Zhang 2020) as a layer: minimise $\\sum_i h(L_i)$.

    `h` increasing and convex, `exp(l / T)` by default, computed in the
    overflow-safe normalised form unless `normalize=False`; see
    `keras_mtl.weighting.BMTL` for the method and `WeightedTaskLoss` for
    how to use it in a training model.

    Args:
        transform: `"exp"`, `"identity"`, `"power"` or a callable `h`.
        temperature: T > 0 for `"exp"`.
        power: p >= 1 for `"power"`.
        normalize: overflow-safe normalised form (default) or literal sum.
        add_loss: add the objective to the model's losses.

    Example:

    ```python
    objective = keras_mtl.layers.LossTransform(temperature=2.0)([loss_a, loss_b])
    ```
    """

    def __init__(
        self,
        transform: str | Callable[[Any], Any] = "exp",
        temperature: float = 1.0,
        power: float = 2.0,
        normalize: bool = True,
        add_loss: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("weighting", None)
        method = BMTL(
            transform=transform,
            temperature=temperature,
            power=power,
            normalize=normalize,
        )
        super().__init__(weighting=method, add_loss=add_loss, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("weighting", None)
        method = self.weighting.get_config()
        for key in ("transform", "temperature", "power", "normalize"):
            config[key] = method[key]
        return config

"""Geometric Loss Strategy (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_mtl.weighting.base import Weighting


@keras.saving.register_keras_serializable(package="keras_mtl")
class GeometricLossStrategy(Weighting):
    """Geometric Loss Strategy (GLS): minimise the geometric mean of losses.

    $$\\mathcal{L} = \\Big(\\prod_{i=1}^{K} L_i\\Big)^{1/K}
    = \\exp\\Big(\\frac{1}{K} \\sum_{i=1}^{K} \\log \\max(L_i, \\epsilon)\\Big),
    \\qquad w_i = \\frac{\\partial \\mathcal{L}}{\\partial L_i}
    = \\frac{\\mathcal{L}}{K \\, L_i}.$$

    The product is computed in log space, so it neither underflows nor
    overflows for many tasks or extreme losses. The objective is invariant
    to the scale of each loss: multiplying $L_i$ by a constant multiplies the
    objective by a constant, so no task dominates by its units alone, and a
    task's gradient weight is inversely proportional to its loss (a task
    that is already small is pushed relatively harder).

    Each loss is clamped below at `epsilon` (the logarithm of 0 is
    undefined). A loss below `epsilon` gets no gradient (reported weight 0);
    the losses are assumed to be non-negative.

    Reference: S. Chennupati, G. Sistu, S. Yogamani and S. A. Rawashdeh,
    "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss
    Strategy for Multi-Task Learning", CVPR Workshops 2019.

    Args:
        epsilon: the floor applied to each loss before the logarithm (a
            finite number > 0).

    Example:

    ```python
    w = keras_mtl.weighting.get("gls")
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # objective == sqrt(0.5 * 2.0) == 1.0, weights == [1.0, 0.25]
    ```
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            value = float(epsilon)
        except (TypeError, ValueError):
            raise ValueError(
                f"GeometricLossStrategy: epsilon must be a number > 0; got {epsilon!r}."
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"GeometricLossStrategy: epsilon must be finite and > 0; got {epsilon!r}."
            )
        self.epsilon = value

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        clamped = ops.maximum(losses, self.epsilon)
        objective = ops.exp(ops.mean(ops.log(clamped)))
        num_tasks = losses.shape[0]
        weights = ops.where(
            losses >= self.epsilon,
            objective / (num_tasks * clamped),
            ops.zeros_like(losses),
        )
        return objective, ops.stop_gradient(weights)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}

"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_mtl.weighting.base import Weighting


@keras.saving.register_keras_serializable(package="keras_mtl")
class UncertaintyWeighting(Weighting):
    """Uncertainty weighting: learned homoscedastic task uncertainty.

    Each task gets a trainable log-variance $s_i = \\log \\sigma_i^2$ and the
    objective is

    $$\\mathcal{L} = \\sum_{i=1}^{K} e^{-s_i} L_i + s_i,
    \\qquad w_i = e^{-s_i}.$$

    The $s_i$ are ordinary trainable variables of this layer, so the model's
    optimizer learns them together with the network: the objective keeps its
    gradient with respect to $s$ ($\\partial \\mathcal{L} / \\partial s_i =
    1 - e^{-s_i} L_i$), whose zero is at $s_i = \\log L_i$, i.e. a task's
    weight settles near $1 / L_i$. The reported weight $w_i = e^{-s_i}$ is
    the factor multiplying $L_i$ (treated as a constant, it is
    $\\partial \\mathcal{L} / \\partial L_i$).

    This is the form used by LibMTL: $s = \\log \\sigma^2$ and no $1/2$
    factor in front of $e^{-s_i} L_i$ (the paper's regression form is
    $\\frac{1}{2\\sigma^2} L + \\log \\sigma$; the two differ only by a
    rescaling of the objective and of $s$). The losses are assumed to be
    non-negative: the objective is unbounded below for a negative loss.

    Reference: A. Kendall, Y. Gal and R. Cipolla, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

    Args:
        initial_log_variance: the starting value of every $s_i$ (a finite
            number; the default 0.0 starts from equal weights 1).

    Example:

    ```python
    w = keras_mtl.weighting.get("uncertainty")
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # objective == 2.5 (s == 0), weights == [1., 1.]
    ```
    """

    def __init__(self, initial_log_variance: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            value = float(initial_log_variance)
        except (TypeError, ValueError):
            raise ValueError(
                "UncertaintyWeighting: initial_log_variance must be a finite "
                f"number; got {initial_log_variance!r}."
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                "UncertaintyWeighting: initial_log_variance must be finite; "
                f"got {initial_log_variance!r}."
            )
        self.initial_log_variance = value

    def build_state(self, num_tasks: int) -> None:
        self.log_variances = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(self.initial_log_variance),
            trainable=True,
            name="log_variances",
        )

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        log_variances = ops.convert_to_tensor(self.log_variances)
        precision = ops.exp(-log_variances)
        objective = ops.sum(precision * losses + log_variances)
        return objective, ops.stop_gradient(precision)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "initial_log_variance": self.initial_log_variance,
        }

"""IMTL-L (Liu et al., ICLR 2021): learned loss scales that equalise the
scaled task losses."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_mtl.weighting.base import Weighting


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTLL(Weighting):
    """IMTL-L: the loss-balancing half of Impartial Multi-task Learning.

    Each task gets a trainable log-scale $s_i$ and the objective is

    $$\\mathcal{L} = \\sum_{i=1}^{K} \\left(e^{s_i} L_i - s_i\\right),
    \\qquad w_i = \\frac{\\partial \\mathcal{L}}{\\partial L_i} = e^{s_i}.$$

    The network and the $s_i$ minimise the same objective (the model's
    optimizer learns them together). Its gradient in $s$ is
    $\\partial \\mathcal{L} / \\partial s_i = e^{s_i} L_i - 1$, zero at
    $s_i = -\\log L_i$: each scaled loss $e^{s_i} L_i$ is driven towards 1,
    so every task contributes the same scaled loss ("impartial" at the
    loss level). This is the paper's Eq. for losses of the L1/cross-entropy
    kind ($f(s) = e^{s} L - s$) and LibMTL's `IMTL` loss part
    (`loss_scale.exp() * losses - loss_scale`, scales initialised at 0).
    Only the loss-level half (IMTL-L) is implemented here; the gradient
    half (IMTL-G) is `keras_mtl.aggregation.IMTLG`, and the two can be
    combined (`weighting="imtl_l", aggregator="imtl_g"`).

    Compared with `UncertaintyWeighting` ($e^{-s} L + s$) this is the same
    objective under $s \\to -s$; the weights converge to $1 / L_i$ in both.
    The losses are assumed non-negative: for a negative loss the objective
    has no minimum in $s_i$.

    Reference: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao
    and W. Zhang, "Towards Impartial Multi-task Learning", ICLR 2021.

    Args:
        initial_scale: the starting value of every $s_i$ (a finite number;
            the default 0.0 starts from equal weights 1, as LibMTL).

    Example:

    ```python
    w = keras_mtl.weighting.get("imtl_l")
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # objective == 2.5 (s == 0), weights == [1., 1.]
    ```
    """

    def __init__(self, initial_scale: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            value = float(initial_scale)
        except (TypeError, ValueError):
            raise ValueError(
                f"IMTLL: initial_scale must be a finite number; got {initial_scale!r}."
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"IMTLL: initial_scale must be finite; got {initial_scale!r}."
            )
        self.initial_scale = value

    def build_state(self, num_tasks: int) -> None:
        self.log_scales = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(self.initial_scale),
            trainable=True,
            name="log_scales",
        )

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        log_scales = ops.convert_to_tensor(self.log_scales)
        scales = ops.exp(log_scales)
        objective = ops.sum(scales * losses - log_scales)
        return objective, ops.stop_gradient(scales)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "initial_scale": self.initial_scale}

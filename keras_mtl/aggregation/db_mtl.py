"""DB-MTL (Lin et al., 2023): gradient-magnitude balancing by the max norm."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.aggregation._helpers_b import (
    RawStateAggregator,
    check_number,
    row_norms,
    unit_rows,
)


@keras.saving.register_keras_serializable(package="keras_mtl")
class DBMTL(RawStateAggregator):
    """Dual-Balancing Multi-Task Learning (DB-MTL), gradient part: every
    task's (smoothed) gradient is rescaled to the largest task-gradient norm.

    At training call $t = 1, 2, \\dots$, with $\\beta_t = \\beta / t^{\\sigma}$,

    $$\\hat g_i \\leftarrow \\beta_t \\hat g_i + (1 - \\beta_t) g_i , \\qquad
      d = \\sum_{i=1}^{K} \\frac{\\max_j \\lVert \\hat g_j\\rVert}
                              {\\lVert \\hat g_i\\rVert}\\, \\hat g_i ,$$

    with $\\hat g_i$ (variable `smoothed`, `[K, D]`) starting at 0, so each
    task contributes its smoothed direction with the norm of the largest
    one (a zero gradient contributes nothing). Defaults $\\beta = 0.9$,
    $\\sigma = 0.5$ (LibMTL's `DB_beta`; its command line defaults
    `DB_beta_sigma` to 0, a constant rate).

    **Loss part.** DB-MTL is a pair: the task losses are log-transformed
    ($\\log(L_i + 10^{-8})$, which balances loss scales: its gradient is
    $\\nabla L_i / L_i$) *and* their gradients are aggregated as above. This
    aggregator does only the gradient part; the model must feed it the
    Jacobian of the log-transformed losses for the full method (without it,
    it is max-norm gradient balancing on the raw losses).

    Positively homogeneous (`scale_degree = 1`) for a fixed sequence of
    scales. The state is kept in the Jacobian's own units and updated only
    when `training=True`; `training=False` returns the direction the update
    would give, without storing it. D must be known when the layer is
    built.

    Reference: B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen, S. Liu
    and J. T. Kwok, "Dual-Balancing for Multi-Task Learning", arXiv
    2308.12029, 2023.

    Args:
        beta: smoothing $\\beta \\in [0, 1)$ (0: no smoothing).
        beta_sigma: decay exponent $\\sigma \\ge 0$ of $\\beta_t$.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.DBMTL()
    d = agg(np.array([[3.0, 0.0], [0.0, 1.0]]))
    # first call: g_hat = 0.1 * g; both rescaled to norm 0.3: d = [0.3, 0.3]
    ```
    """

    scale_degree = 1

    def __init__(
        self, beta: float = 0.9, beta_sigma: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.beta = check_number(beta, "beta", "DBMTL", 0.0, 1.0, high_open=True)
        self.beta_sigma = check_number(beta_sigma, "beta_sigma", "DBMTL", 0.0)

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        super().build_state(num_tasks, dim)
        self.smoothed = self.add_weight(
            shape=(num_tasks, dim),
            initializer="zeros",
            trainable=False,
            name="smoothed",
        )
        self.step = self.step_variable()

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        step = ops.convert_to_tensor(self.step) + 1
        beta_t = self.beta / ops.power(ops.cast(step, "float32"), self.beta_sigma)
        smoothed = ops.convert_to_tensor(self.smoothed)
        # A convex combination: finite whenever both are.
        smoothed = jacobian + beta_t * (smoothed - jacobian)
        if training:
            self.smoothed.assign(smoothed)
            self.step.assign(step)
        # max_j |g_j| / |g_i| * g_i == max_j |g_j| * unit(g_i): no ratio of
        # norms (it can overflow), zero rows drop out.
        largest = ops.max(row_norms(smoothed))
        return largest * ops.sum(unit_rows(smoothed), axis=0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
        }

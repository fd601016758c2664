"""DB-MTL (Lin et al., 2023): log-loss scale balancing and gradient-magnitude
balancing by the max norm."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_number
from keras_mtl.aggregation._linalg import row_norms, unit_rows
from keras_mtl.aggregation._rows import sum_rows
from keras_mtl.aggregation._stateful import RawStateAggregator

# Inside the logarithm of the loss part, as in the paper and LibMTL.
LOG_EPSILON = 1e-8


@keras.saving.register_keras_serializable(package="keras_mtl")
class DBMTL(RawStateAggregator):
    """Dual-Balancing Multi-Task Learning (DB-MTL): loss scales balanced by
    a logarithm, then every task's (smoothed) gradient rescaled to the
    largest task-gradient norm.

    **Loss part.** The rows of the Jacobian are the gradients of the
    log-transformed task losses (`task_terms`),

    $$g_i = \\nabla \\log(L_i + \\epsilon) = \\frac{\\nabla L_i}{L_i + \\epsilon},
    \\qquad \\epsilon = 10^{-8},$$

    and `MultiTaskModel` trains the task heads on $\\log(L_i + \\epsilon)$
    as well (the paper transforms the losses themselves; LibMTL's per-task
    backward passes of the log losses reach the heads too).
    A loss-level weight $w_i$ cancels out of $\\nabla \\log(w_i L_i)$, so
    combining DB-MTL with a loss-level weighting only changes what the
    `loss` log shows. `log_losses=False` leaves the losses as they are
    (max-norm gradient balancing of the raw losses).

    **Gradient part.** At training call $t = 1, 2, \\dots$, with
    $\\beta_t = \\beta / t^{\\sigma}$,

    $$\\hat g_i \\leftarrow \\beta_t \\hat g_i + (1 - \\beta_t) g_i , \\qquad
      d = \\sum_{i=1}^{K} \\frac{\\max_j \\lVert \\hat g_j\\rVert}
                              {\\lVert \\hat g_i\\rVert}\\, \\hat g_i ,$$

    with $\\hat g_i$ (variable `smoothed`, `[K, D]`) starting at 0, so each
    task contributes its smoothed direction with the norm of the largest
    one (a zero gradient contributes nothing). Defaults $\\beta = 0.9$,
    $\\sigma = 0.5$ (LibMTL's `DB_beta`; its command line defaults
    `DB_beta_sigma` to 0, a constant rate).

    Standalone, `agg(jacobian)` is the gradient part only: pass the
    Jacobian of $\\log(L_i + \\epsilon)$ (`agg.task_terms(losses)` gives
    the terms to differentiate).

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
        log_losses: differentiate $\\log(L_i + \\epsilon)$ (default, the
            full method) instead of $L_i$ inside a model.

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
        self,
        beta: float = 0.9,
        beta_sigma: float = 0.5,
        log_losses: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.beta = check_number(beta, "beta", "DBMTL", 0.0, 1.0, high_open=True)
        self.beta_sigma = check_number(beta_sigma, "beta_sigma", "DBMTL", 0.0)
        if not isinstance(log_losses, bool):
            raise ValueError(
                f"DBMTL: log_losses must be True or False; got {log_losses!r}."
            )
        self.log_losses = log_losses

    def task_terms(self, losses: Any) -> Any:
        if not self.log_losses:
            return losses
        return ops.log(losses + LOG_EPSILON)

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
        return largest * sum_rows(unit_rows(smoothed))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "log_losses": self.log_losses,
        }

"""MoCo (Fernando et al., ICLR 2023): tracked gradients, simplex weights."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_number
from keras_mtl.aggregation._linalg import (
    project_onto_simplex,
    regularised_gramian_step,
    unit_rows,
)
from keras_mtl.aggregation._rows import combine_rows
from keras_mtl.aggregation._stateful import RawStateAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class MoCo(RawStateAggregator):
    """MoCo ("Multi-objective gradient with Correction"): MGDA-like weights
    computed from moving averages of the task gradients, which removes the
    bias of stochastic MGDA.

    At training call $t = 1, 2, \\dots$, with $h_i$ the task gradients (unit
    vectors by default, see `normalize`):

    $$Y \\leftarrow Y - \\beta_t (Y - H), \\qquad
      \\lambda \\leftarrow \\Pi_{\\Delta}\\big(\\lambda - \\gamma_t
        (Y Y^\\top + \\rho I)\\lambda\\big), \\qquad d = Y^\\top \\lambda ,$$

    with $\\beta_t = \\beta / t^{\\sigma_\\beta}$,
    $\\gamma_t = \\gamma / t^{\\sigma_\\gamma}$, $\\Pi_\\Delta$ the Euclidean
    projection onto the probability simplex, $Y$ (`[K, D]`, initially 0) the
    tracked gradients and $\\lambda$ (initially uniform) the weights: one
    projected-gradient step per call on $\\min_{\\lambda \\in \\Delta}
    \\tfrac12 \\lVert Y^\\top\\lambda\\rVert^2 + \\tfrac\\rho2\\lVert\\lambda\\rVert^2$.
    Defaults are LibMTL's ($\\beta = 0.5$, $\\sigma_\\beta = 0.5$,
    $\\gamma = 0.1$, $\\sigma_\\gamma = 0.5$, $\\rho = 0$).

    `normalize=True` (default) tracks unit gradients $g_i/\\lVert g_i\\rVert$,
    as the authors' code does (it also multiplies them by the task loss,
    which an aggregator does not see); `d` then does not depend on the
    scale of `J` (`scale_degree = 0`). `normalize=False` tracks the raw
    gradients as in the paper's algorithm; then $\\gamma$ has units of
    $1/\\lVert g\\rVert^2$ and the result is not homogeneous in `J`
    (`scale_degree = None`). LibMTL replaces $\\Pi_\\Delta$ by a softmax;
    this follows the paper. The state (`tracked` `[K, D]`, `lambdas` `[K]`,
    `step`) is kept in the Jacobian's own units and updated only when
    `training=True`; `training=False` returns the direction the update
    would give, without storing it. D must be known when the layer is
    built.

    Reference: H. D. Fernando, H. Shen, M. Liu, S. Chaudhury, K. Murugesan
    and T. Chen, "Mitigating Gradient Bias in Multi-objective Learning: A
    Provably Convergent Approach", ICLR 2023 (arXiv 2210.12624).

    Args:
        beta, beta_sigma: tracking rate $\\beta \\in (0, 1]$ and its decay
            exponent $\\sigma_\\beta \\ge 0$.
        gamma, gamma_sigma: weight step $\\gamma > 0$ and its decay
            exponent $\\sigma_\\gamma \\ge 0$.
        rho: $\\ell_2$ regularisation $\\rho \\ge 0$ of the weights.
        normalize: track unit task gradients (True) or raw ones (False).

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.MoCo()
    d = agg(np.array([[3.0, 0.0], [0.0, 4.0]]))
    # Y = 0.5 * unit rows; lambda stays [0.5, 0.5]; d = [0.25, 0.25]
    ```
    """

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.beta = check_number(beta, "beta", "MoCo", 0.0, 1.0, low_open=True)
        self.beta_sigma = check_number(beta_sigma, "beta_sigma", "MoCo", 0.0)
        self.gamma = check_number(gamma, "gamma", "MoCo", 0.0, low_open=True)
        self.gamma_sigma = check_number(gamma_sigma, "gamma_sigma", "MoCo", 0.0)
        self.rho = check_number(rho, "rho", "MoCo", 0.0)
        self.normalize = bool(normalize)
        self.scale_degree = 0 if self.normalize else None

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        super().build_state(num_tasks, dim)
        self.tracked = self.add_weight(
            shape=(num_tasks, dim), initializer="zeros", trainable=False, name="tracked"
        )
        self.lambdas = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(1.0 / num_tasks),
            trainable=False,
            name="lambdas",
        )
        self.step = self.step_variable()

    def state_task_total(self, variable: Any) -> str | None:
        return "one" if variable is getattr(self, "lambdas", None) else None

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        step = ops.convert_to_tensor(self.step) + 1
        t = ops.cast(step, "float32")
        beta_t = self.beta / ops.power(t, self.beta_sigma)
        gamma_t = self.gamma / ops.power(t, self.gamma_sigma)
        target = unit_rows(jacobian) if self.normalize else jacobian
        tracked = ops.convert_to_tensor(self.tracked)
        # A convex combination (beta_t <= 1): finite whenever both are.
        tracked = tracked - beta_t * (tracked - target)
        lambdas = ops.convert_to_tensor(self.lambdas)
        candidate = regularised_gramian_step(tracked, lambdas, gamma_t, self.rho)
        # The projection commutes with adding a constant; shifting the
        # largest entry to 0 keeps it exact in float32 for large steps.
        lambdas = project_onto_simplex(candidate - ops.max(candidate))
        if training:
            self.tracked.assign(tracked)
            self.lambdas.assign(lambdas)
            self.step.assign(step)
        return combine_rows(lambdas, tracked)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "gamma": self.gamma,
            "gamma_sigma": self.gamma_sigma,
            "rho": self.rho,
            "normalize": self.normalize,
        }

"""FairGrad (Ban & Ji, ICML 2024): alpha-fair resource allocation."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_int, check_number
from keras_mtl.aggregation._alpha_fair import ITERATIONS, RIDGE, alpha_fair_weights
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class FairGrad(GramianWeightedAggregator):
    """FairGrad: the update that maximises an alpha-fair utility of the
    tasks' first-order progress.

    Treating $g_i^\\top d$ as the "resource" task i receives from the update
    $d$, FairGrad maximises $\\sum_i u_\\alpha(g_i^\\top d)$ with the
    alpha-fair utility $u_\\alpha(x) = x^{1-\\alpha}/(1-\\alpha)$
    ($\\log x$ for $\\alpha = 1$) over a ball. The optimum is
    $d = \\sum_i w_i g_i$ with the positive weights solving

    $$G w = w^{-1/\\alpha} \\quad\\text{(element-wise)}, \\qquad G = J J^\\top .$$

    $\\alpha = 1$ is proportional fairness, the Nash-MTL condition
    ($G w = 1/w$); $\\alpha \\to 0$ approaches the plain sum (utilitarian),
    $\\alpha \\to \\infty$ max-min fairness (every task progresses equally).
    The weights are the stationary point of the strictly convex
    $\\tfrac12 w^\\top G w - \\tfrac{\\alpha}{\\alpha-1}\\sum_i
    w_i^{(\\alpha-1)/\\alpha}$, found by a fixed number of damped Newton
    iterations (the official code calls `scipy.optimize.least_squares`);
    a small ridge keeps them finite for singular $G$.

    Scale: $J \\to cJ$ gives $w \\to c^{-2\\alpha/(\\alpha+1)} w$, so
    $d \\to c^{(1-\\alpha)/(1+\\alpha)} d$: `scale_degree` is
    $(1-\\alpha)/(1+\\alpha)$ (0 for $\\alpha = 1$), applied exactly by this
    class's `call`.

    Reference: H. Ban and K. Ji, "Fair Resource Allocation in Multi-Task
    Learning", ICML 2024 (arXiv 2402.15638).

    Args:
        alpha: the fairness parameter $\\alpha > 0$ (default 1.0, as in
            LibMTL; the paper tunes it per benchmark).
        iterations: Newton iterations of the weight solver.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.FairGrad(alpha=1.0)
    d = agg(np.array([[2.0, 0.0], [0.0, 0.5]]))
    # alpha = 1 is Nash-MTL: w = [1/2, 2], d = [1.0, 1.0]
    ```
    """

    def __init__(
        self, alpha: float = 1.0, iterations: int = ITERATIONS, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = check_number(alpha, "alpha", "FairGrad", 0.0, low_open=True)
        self.iterations = check_int(iterations, "iterations", "FairGrad")
        self.scale_degree = (1.0 - self.alpha) / (1.0 + self.alpha)

    def gramian_weights(self, gramian: Any) -> Any:
        """The FairGrad weights `w` (`[K]`) of a Gramian `G` (`[K, K]`)."""
        return alpha_fair_weights(gramian, self.alpha, self.iterations, RIDGE)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "iterations": self.iterations,
        }

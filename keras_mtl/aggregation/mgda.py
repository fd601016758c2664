"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_iterations
from keras_mtl.aggregation._solvers import MIN_NORM_ITERATIONS, min_norm_simplex
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class MGDA(GramianWeightedAggregator):
    """Multiple-gradient descent: the minimum-norm convex combination of the
    task gradients.

    $$w^\\star = \\operatorname*{argmin}_{w \\in \\Delta_K}
    \\Big\\lVert \\sum_i w_i g_i \\Big\\rVert^2
    = \\operatorname*{argmin}_{w \\in \\Delta_K} w^\\top G w,
    \\qquad d = w^{\\star\\top} J,$$

    with $\\Delta_K$ the probability simplex and $G = J J^\\top$. Either
    $d = 0$ (the point is Pareto-stationary) or $-d$ decreases every task
    loss: $\\langle d, g_i \\rangle \\ge \\lVert d \\rVert^2 > 0$ for all i.
    The direction is dominated by the task with the *smallest* gradient.

    From Désidéri, "Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization", Comptes Rendus Mathématique 350(5-6), 2012,
    and Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018 (MGDA-UB: the same problem on the gradients
    of a shared representation; use this aggregator in representation
    mode). The QP is solved in-graph by accelerated projected gradient
    followed by exact active-set rounds (`_solvers.min_norm_simplex`), not
    by the Frank-Wolfe iterations of Sener & Koltun; both reach the same
    minimiser.

    Args:
        iterations: number of projected-gradient iterations of the solver.

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.mgda import MGDA

    d = MGDA()(np.array([[1.0, 0.0], [0.0, 1.0]]))
    # d == [0.5, 0.5]: equal weights for orthogonal gradients of equal norm
    ```
    """

    def __init__(self, iterations: int = MIN_NORM_ITERATIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iterations = check_iterations(iterations, "iterations", "MGDA")

    def gramian_weights(self, gramian: Any) -> Any:
        return min_norm_simplex(gramian, iterations=self.iterations)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "iterations": self.iterations}

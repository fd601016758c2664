"""UPGrad: the mean of the task gradients projected onto the dual cone."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_iterations
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._solvers import NONNEG_QP_ITERATIONS, nonneg_qp
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class UPGrad(GramianWeightedAggregator):
    """Unconflicting projection of gradients: project every task gradient
    onto the dual cone of all of them, then average.

    With $\\pi_J(v)$ the Euclidean projection of $v$ onto the dual cone
    $\\{x : J x \\ge 0\\}$ of the rows of $J$,

    $$d = \\frac{1}{K} \\sum_{i=1}^{K} \\pi_J(g_i),
    \\qquad \\pi_J(J^\\top u) = J^\\top (u + w^\\star),
    \\qquad w^\\star = \\operatorname*{argmin}_{w \\ge 0}
    \\tfrac12 w^\\top G w + w^\\top G u,$$

    so $d = \\tfrac{1}{K} \\sum_i (e_i + w_i^\\star)^\\top J$: a Gramian
    weighting that solves K non-negative QPs in K variables
    (`_solvers.nonneg_qp`, all at once). Properties (Quinton & Rey):
    non-conflicting ($\\langle d, g_i \\rangle \\ge 0$ for every i, since each
    projection lies in the dual cone), linear under scaling
    ($f(cJ) = c f(J)$), weighted (a combination of the rows), and equal to
    the mean when no two gradients conflict.

    From Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    2024 (arXiv 2406.16232). TorchJD's reference implementation normalises
    the Gramian and adds `1e-4 * I` to it before the QP (quadprog); this one
    solves the unregularised problem, so results can differ by ~1e-4
    relative.

    Args:
        iterations: number of projected-gradient iterations of the QP
            solver (exact active-set rounds follow them).

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.upgrad import UPGrad

    d = UPGrad()(np.array([[1.0, 0.0], [-1.0, 1.0]]))
    # d == [0.25, 0.75]; <d, g_1> == 0.25 >= 0 and <d, g_2> == 0.5 >= 0
    ```
    """

    def __init__(self, iterations: int = NONNEG_QP_ITERATIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iterations = check_iterations(iterations, "iterations", "UPGrad")

    def gramian_weights(self, gramian: Any) -> Any:
        num = gramian.shape[0]
        # Row i: the dual of projecting g_i = J^T e_i (linear term G e_i).
        duals = nonneg_qp(gramian, gramian, iterations=self.iterations)
        return (1.0 + small.sum(duals, axis=0)) / num

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "iterations": self.iterations}

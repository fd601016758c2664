"""DualProj: the mean gradient projected onto the dual cone."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_iterations
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._solvers import NONNEG_QP_ITERATIONS, nonneg_qp
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class DualProj(GramianWeightedAggregator):
    """Dual projection: the mean gradient projected onto the dual cone of
    the task gradients.

    $$d = \\pi_J(\\bar g), \\quad \\bar g = \\tfrac1K \\mathbf 1^\\top J,
    \\qquad d = (u + w^\\star)^\\top J, \\quad u = \\tfrac1K \\mathbf 1,
    \\quad w^\\star = \\operatorname*{argmin}_{w \\ge 0}
    \\tfrac12 w^\\top G w + w^\\top G u,$$

    where $\\pi_J$ is the Euclidean projection onto the dual cone
    $\\{x : J x \\ge 0\\}$: the closest vector to the mean gradient that
    conflicts with no task ($\\langle d, g_i \\rangle \\ge 0$). One
    non-negative QP in K variables (`_solvers.nonneg_qp`). Equal to the mean
    when the mean already conflicts with no task; $f(cJ) = c f(J)$.

    From Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    2024 (arXiv 2406.16232), where it is the baseline UPGrad is compared
    with. Unlike UPGrad it is not "weighted" in the paper's sense
    (a task whose gradient is scaled up can dominate the mean before the
    projection). As for `UPGrad`, the Gramian is not regularised
    (TorchJD adds `1e-4 * I` after normalising it).

    Args:
        iterations: number of projected-gradient iterations of the QP
            solver (exact active-set rounds follow them).

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.dualproj import DualProj

    d = DualProj()(np.array([[1.0, 0.0], [-2.0, 1.0]]))
    # the mean [-0.5, 0.5] conflicts with g_1; d == [0.0, 0.5]
    ```
    """

    def __init__(self, iterations: int = NONNEG_QP_ITERATIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iterations = check_iterations(iterations, "iterations", "DualProj")

    def gramian_weights(self, gramian: Any) -> Any:
        num = gramian.shape[0]
        mean = small.full((num,), 1.0 / num, dtype="float32")
        dual = nonneg_qp(
            gramian, small.matmul(gramian, mean), iterations=self.iterations
        )
        return mean + dual

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "iterations": self.iterations}

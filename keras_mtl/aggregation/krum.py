"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017): Byzantine-robust
selection of task gradients."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_int
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class Krum(GramianWeightedAggregator):
    """Krum: the mean of the `n_selected` rows closest to their neighbours.

    For each row $g_i$ (of $n = K$ rows, at most $f$ of them adversarial)
    the score is the sum of the squared distances to its $n - f - 2$
    nearest other rows,

    $$s(i) = \\sum_{j \\in N_i} \\lVert g_i - g_j \\rVert^2 ,$$

    and Krum returns the row of smallest score; Multi-Krum (`n_selected`
    $= m > 1$) the mean of the $m$ rows of smallest scores (ties go to the
    lower index). The distances come from the Gramian,
    $\\lVert g_i - g_j\\rVert^2 = G_{ii} + G_{jj} - 2 G_{ij}$, so Krum is a
    Gramian weighting (weights $1/m$ on the selected rows): the Gramian
    route applies, and it is positively homogeneous and permutation
    equivariant. It needs $K \\ge f + 3$ rows (at least one neighbour) and
    $K \\ge m$; a smaller K raises a `ValueError` naming the argument when
    the aggregator is called.

    Deviation from TorchJD's `Krum`: TorchJD sums the (unsquared) distances
    to the neighbours; this follows the paper (squared distances). Both
    pick the same neighbours; the scores, and so the selection, can
    differ.

    Reference: P. Blanchard, E. M. El Mhamdi, R. Guerraoui and J. Stainer,
    "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017.

    Args:
        n_byzantine: $f \\ge 0$, the number of rows that may be adversarial.
        n_selected: $m \\ge 1$, the number of rows averaged (Multi-Krum).

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.Krum(n_byzantine=1)
    d = agg(np.array(
        [[1.0, 0.0], [1.2, 0.0], [0.9, 0.1], [-50.0, 9.0], [0.5, -0.5]]
    ))
    # n - f - 2 = 2 neighbours each; scores 0.06, 0.14, 0.12, ~2.6e3, 1.02:
    # d == [1.0, 0.0] (row 0)
    ```
    """

    scale_degree = 1

    def __init__(
        self, n_byzantine: int = 0, n_selected: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.n_byzantine = check_int(n_byzantine, "n_byzantine", "Krum", low=0)
        self.n_selected = check_int(n_selected, "n_selected", "Krum", low=1)

    @property
    def min_tasks(self) -> int:
        return max(self.n_byzantine + 3, self.n_selected)

    def _check_rows(self, num_tasks: int) -> None:
        if num_tasks < self.n_byzantine + 3:
            raise ValueError(
                f"Krum: n_byzantine={self.n_byzantine} needs at least "
                f"n_byzantine + 3 = {self.n_byzantine + 3} tasks (rows of the "
                f"Jacobian); got {num_tasks}."
            )
        if num_tasks < self.n_selected:
            raise ValueError(
                f"Krum: n_selected={self.n_selected} needs at least "
                f"{self.n_selected} tasks (rows of the Jacobian); got {num_tasks}."
            )

    def gramian_weights(self, gramian: Any) -> Any:
        num_tasks = gramian.shape[0]
        self._check_rows(num_tasks)
        squared_norms = ops.diagonal(gramian)
        distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * gramian
        # Rounding can leave a tiny negative distance; a row's distance to
        # itself is exactly 0, so after clipping it sorts first.
        distances = ops.maximum(distances, 0.0)
        neighbours = num_tasks - self.n_byzantine - 2
        nearest = ops.sort(distances, axis=1)[:, 1 : neighbours + 1]
        scores = ops.sum(nearest, axis=1)
        _, selected = ops.top_k(-scores, k=self.n_selected, sorted=False)
        chosen = ops.sum(ops.one_hot(selected, num_tasks, dtype="float32"), axis=0)
        return chosen / self.n_selected

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "n_byzantine": self.n_byzantine,
            "n_selected": self.n_selected,
        }

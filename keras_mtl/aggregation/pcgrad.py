"""PCGrad (Yu et al., NeurIPS 2020): project away conflicting components."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import normalized_gramian, safe_divide
from keras_mtl.aggregation._stateful import SeededAggregator
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class PCGrad(SeededAggregator, GramianWeightedAggregator):
    """Projecting Conflicting Gradients (PCGrad, "gradient surgery").

    For every task i, starting from $g_i^{PC} = g_i$, the other tasks j are
    visited in a random order and, whenever the (partly projected) gradient
    conflicts with the original one ($g_i^{PC} \\cdot g_j < 0$), its
    component along $g_j$ is removed:

    $$g_i^{PC} \\leftarrow g_i^{PC} -
      \\frac{g_i^{PC} \\cdot g_j}{\\lVert g_j \\rVert^2}\\, g_j ,
      \\qquad d = \\sum_{i=1}^{K} g_i^{PC}.$$

    The projected gradients are **summed**, as in the paper's algorithm and
    in LibMTL (some re-implementations average them, which divides the step
    by K). Each task gets its own random order of the others, drawn from
    a `keras.random.SeedGenerator` (a random permutation is the argsort of
    uniform noise; K fixed steps follow it), so the aggregator traces and
    runs under XLA. With two tasks the order is irrelevant and

    $$d = g_1 + g_2 - \\frac{g_1\\cdot g_2}{\\lVert g_2\\rVert^2} g_2
          - \\frac{g_1\\cdot g_2}{\\lVert g_1\\rVert^2} g_1
      \\quad\\text{if } g_1 \\cdot g_2 < 0, \\qquad d = g_1 + g_2
      \\text{ otherwise.}$$

    Every $g_i^{PC}$ is a combination $\\sum_k C_{ik} g_k$ of the original
    gradients, and each step needs only $g_i^{PC} \\cdot g_j = (CG)_{ij}$
    and $\\lVert g_j\\rVert^2 = G_{jj}$: so the projections run on the
    `[K, K]` matrix $C$ (from $I$) and the Gramian $G = JJ^\\top$, and
    $d = (\\mathbf 1^\\top C) J$. PCGrad is a `GramianWeightedAggregator`:
    `MultiTaskModel` never forms $J$ for it (the Gramian route), and
    `agg.weights(gramian)` gives the evaluation-mode coefficients
    $\\mathbf 1^\\top C$ (fixed order, no draw).

    Evaluation (`training=False`) uses the fixed order 0, 1, ..., K-1 and
    does not advance the generator. Positively homogeneous
    (`scale_degree = 1`). The generator state is saved with the layer's
    weights. (TensorFlow picks its random algorithm per device, so a seed
    gives a different, equally valid order sequence under XLA than eagerly;
    each is reproducible.)

    Reference: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman and C. Finn,
    "Gradient Surgery for Multi-Task Learning", NeurIPS 2020
    (arXiv 2001.06782).

    Args:
        seed: int seeding the order sequence, or None for a random seed.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.PCGrad(seed=0)
    d = agg(np.array([[1.0, 0.0], [-1.0, 1.0]]))
    # g1.g2 = -1 < 0: d = [0.5, 0.5] + [0.0, 1.0] = [0.5, 1.5]
    ```
    """

    scale_degree = 1

    def gramian_weights(self, gramian: Any) -> Any:
        """The evaluation-mode coefficients `c` (`[K]`, `d = c @ J`) of a
        Gramian of any scale: fixed order 0..K-1, no draw from the
        generator."""
        return self.direction_weights(gramian, training=False)

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        """The coefficients `c` (`[K]`) of `d = c @ J`: the column sums of
        `C`, the projected gradients' coefficients over the original
        ones. Scale-free (ratios of inner products), so they are computed
        on the normalised Gramian, where `C @ G` cannot overflow."""
        num_tasks = gramian.shape[0]
        if num_tasks == 1:
            return small.ones((1,), dtype="float32")
        orders = self.task_orders(num_tasks, training)
        gramian, _ = normalized_gramian(gramian)
        squared_norms = small.diagonal(gramian)
        tasks = small.arange(num_tasks, dtype="int32")
        coefficients = small.eye(num_tasks, dtype="float32")
        # All K rows are processed in parallel: row i only ever reads itself
        # and the original gradients. Step t visits task orders[i, t] for
        # row i (skipping i itself).
        for step in range(num_tasks):
            others = orders[:, step]
            # (C G)[i, others[i]] = g_i^PC . g_others[i]
            products = small.matmul(coefficients, gramian)
            dots = small.take_along_axis(products, others[:, None], axis=1)[:, 0]
            other_norms = small.take(squared_norms, others, axis=0)
            conflict = small.logical_and(dots < 0.0, small.not_equal(others, tasks))
            coefficient = small.where(conflict, safe_divide(dots, other_norms), 0.0)
            visit = small.one_hot(others, num_tasks, dtype="float32")
            coefficients = coefficients - coefficient[:, None] * visit
        return small.sum(coefficients, axis=0)

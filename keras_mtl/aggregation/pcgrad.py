"""PCGrad (Yu et al., NeurIPS 2020): project away conflicting components."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.aggregation._helpers_b import (
    SeededAggregator,
    safe_divide,
)
from keras_mtl.aggregation._rows import sum_rows


@keras.saving.register_keras_serializable(package="keras_mtl")
class PCGrad(SeededAggregator):
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

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        num_tasks = jacobian.shape[0]
        if num_tasks == 1:
            return jacobian[0]
        orders = self.task_orders(num_tasks, training)
        squared_norms = ops.sum(jacobian * jacobian, axis=1)
        tasks = ops.arange(num_tasks, dtype="int32")
        projected = jacobian
        # All K rows are processed in parallel: row i only ever reads itself
        # and the original gradients. Step t visits task orders[i, t] for
        # row i (skipping i itself).
        for step in range(num_tasks):
            others = orders[:, step]
            other_grads = ops.take(jacobian, others, axis=0)
            other_norms = ops.take(squared_norms, others, axis=0)
            dots = ops.sum(projected * other_grads, axis=1)
            conflict = ops.logical_and(dots < 0.0, ops.not_equal(others, tasks))
            coefficient = ops.where(conflict, safe_divide(dots, other_norms), 0.0)
            projected = projected - coefficient[:, None] * other_grads
        return sum_rows(projected)

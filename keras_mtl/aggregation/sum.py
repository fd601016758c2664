"""Sum: the sum of the task gradients."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.aggregation._rows import sum_rows
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class Sum(GramianWeightedAggregator):
    """Sum: the sum of the task gradients (the rows of the Jacobian).

    $$d = \\sum_{i=1}^{K} g_i = \\mathbf{1}^\\top J, \\qquad w_i = 1.$$

    The gradient of the plain sum of the task losses, i.e. what
    `keras_mtl.weighting.EqualWeighting` (and stock Keras) optimises, as an
    aggregator (Gramian-weighted with constant weights). Linear, so
    `f(cJ) = c f(J)`; permutation-invariant.

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.sum import Sum

    d = Sum()(np.array([[1.0, 0.0], [0.0, 3.0]]))
    # d == [1.0, 3.0]
    ```
    """

    def gramian_weights(self, gramian: Any) -> Any:
        return ops.ones((gramian.shape[0],), dtype="float32")

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        return self.gramian_weights(gramian)

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        # Same as gramian_weights(G) @ J, without forming the Gramian.
        return sum_rows(jacobian)

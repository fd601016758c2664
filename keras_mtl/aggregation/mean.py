"""Mean: the average of the task gradients."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.aggregation._rows import mean_rows
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class Mean(GramianWeightedAggregator):
    """Mean: the average of the task gradients (the rows of the Jacobian).

    $$d = \\frac{1}{K} \\sum_{i=1}^{K} g_i = \\tfrac{1}{K} \\mathbf{1}^\\top J,
    \\qquad w_i = \\tfrac{1}{K}.$$

    The gradient of the mean of the task losses: the baseline of every
    gradient-level method (Gramian-weighted with constant weights). It is
    linear, so `f(cJ) = c f(J)` and permuting the tasks changes nothing.

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.mean import Mean

    d = Mean()(np.array([[1.0, 0.0], [0.0, 3.0]]))
    # d == [0.5, 1.5]
    ```
    """

    def gramian_weights(self, gramian: Any) -> Any:
        num = gramian.shape[0]
        return ops.full((num,), 1.0 / num, dtype="float32")

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        return self.gramian_weights(gramian)

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        # Same as gramian_weights(G) @ J, without forming the Gramian.
        return mean_rows(jacobian)

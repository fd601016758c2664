"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.weighting.base import Weighting


@keras.saving.register_keras_serializable(package="keras_mtl")
class EqualWeighting(Weighting):
    """Equal weighting: minimises the plain sum of the task losses.

    $$\\mathcal{L} = \\sum_{i=1}^{K} L_i, \\qquad w_i = 1.$$

    The baseline every balancing method is measured against (it is what
    stock Keras does for a multi-output model without `loss_weights`).

    Example:

    ```python
    w = keras_mtl.weighting.get("equal")
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # objective == 2.5, weights == [1., 1.]
    ```
    """

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        return ops.sum(losses), ops.ones_like(losses)

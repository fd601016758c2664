"""Cross-stitch unit (Misra, Shrivastava, Gupta & Hebert, CVPR 2016)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mtl.layers import _experts


@keras.saving.register_keras_serializable(package="keras_mtl")
class CrossStitch(keras.layers.Layer):
    """A cross-stitch unit: K task activations mixed by a learned K x K matrix.

    Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
    Multi-task Learning", CVPR 2016. The unit takes one activation per task
    (K tensors of one shape, channels last) and returns

    $$\\tilde x_i = \\sum_{j=1}^{K} \\alpha_{ij}\\, x_j \\quad(i = 1..K),$$

    with one matrix $\\alpha$ for all channels, or with
    `per_channel=True` one matrix per channel
    ($\\tilde x_{i,c} = \\sum_j \\alpha_{ijc} x_{j,c}$).

    Initialisation: the paper's $\\alpha_S = 0.9$ on the diagonal and
    $\\alpha_D = 0.1$ off it for two tasks; for K tasks this layer puts
    `alpha_same` on the diagonal and $(1 - \\alpha_S)/(K - 1)$ elsewhere,
    so every row sums to one (a convex combination at the start; the
    matrix is then free, not constrained). The paper also scales the
    learning rate of $\\alpha$ up (by $10^2$-$10^3$); here it trains at
    the optimizer's rate.

    Every output is a mixture of all tasks' activations: none is a single
    shared representation for `MultiTaskModel(representation=...)`; the
    trunk before the first unit is one.

    Args:
        num_tasks: K >= 2, the number of inputs and outputs.
        alpha_same: initial diagonal entry $\\alpha_S$ in (0, 1], 0.9 by
            default (the paper's best initialisation).
        per_channel: one matrix per channel (last axis) instead of one
            for all.
        **kwargs: `name`, `dtype`, `trainable` as for any layer.

    Example:

    ```python
    import keras, keras_mtl
    x = keras.Input((32, 32, 3))
    a = keras.layers.Conv2D(16, 3, activation="relu")(x)
    b = keras.layers.Conv2D(16, 3, activation="relu")(x)
    a, b = keras_mtl.layers.CrossStitch(num_tasks=2)([a, b])
    ```
    """

    def __init__(
        self,
        num_tasks: int,
        alpha_same: float = 0.9,
        per_channel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_tasks = _experts.check_positive_int("num_tasks", num_tasks, 2)
        if not 0.0 < float(alpha_same) <= 1.0:
            raise ValueError(f"`alpha_same` must be in (0, 1]; got {alpha_same!r}.")
        self.alpha_same = float(alpha_same)
        self.per_channel = bool(per_channel)

    def initial_matrix(self) -> np.ndarray:
        """The `(K, K)` initial $\\alpha$: rows summing to one."""
        k = self.num_tasks
        other = (1.0 - self.alpha_same) / (k - 1)
        return np.full((k, k), other) + np.eye(k) * (self.alpha_same - other)

    def build(self, input_shape: Any) -> None:
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != self.num_tasks
            or not all(isinstance(s, (list, tuple)) for s in input_shape)
        ):
            raise ValueError(
                f"CrossStitch(num_tasks={self.num_tasks}) takes a list of "
                f"{self.num_tasks} tensors; got input shape(s) {input_shape}."
            )
        shapes = {tuple(s[1:]) for s in input_shape}
        if len(shapes) != 1:
            raise ValueError(
                f"CrossStitch: the task inputs must have one shape; got {input_shape}."
            )
        matrix = self.initial_matrix()
        shape: tuple[int, ...] = (self.num_tasks, self.num_tasks)
        if self.per_channel:
            channels = input_shape[0][-1]
            if channels is None:
                raise ValueError(
                    "CrossStitch(per_channel=True) needs a known last axis; got "
                    f"{input_shape[0]}."
                )
            shape = (*shape, int(channels))
            matrix = np.repeat(matrix[:, :, None], channels, axis=-1)
        self.alpha = self.add_weight(
            shape=shape,
            initializer=keras.initializers.Constant(matrix.astype("float32")),
            name="alpha",
        )

    def call(self, inputs: list[Any]) -> list[Any]:
        stacked = ops.stack(list(inputs), axis=0)  # (K, batch, ..., C)
        outputs = []
        for i in range(self.num_tasks):
            weights = self.alpha[i]  # (K,) or (K, C)
            if self.per_channel:
                # Broadcast (K, C) over the batch and spatial axes.
                weights = ops.reshape(
                    weights,
                    (self.num_tasks,) + (1,) * (len(stacked.shape) - 2) + (-1,),
                )
            else:
                weights = ops.reshape(
                    weights, (self.num_tasks,) + (1,) * (len(stacked.shape) - 1)
                )
            outputs.append(ops.sum(weights * stacked, axis=0))
        return outputs

    def compute_output_shape(self, input_shape: Any) -> list[Any]:
        return [tuple(s) for s in input_shape]

    def get_config(self) -> dict[str, Any]:
        return _experts.base_config(
            self,
            num_tasks=self.num_tasks,
            alpha_same=self.alpha_same,
            per_channel=self.per_channel,
        )

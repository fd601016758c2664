"""PLE: progressive layered extraction (Tang et al., RecSys 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from keras_mtl.layers import _experts
from keras_mtl.layers.cgc import CGC


@keras.saving.register_keras_serializable(package="keras_mtl")
class PLE(keras.layers.Layer):
    """Progressive layered extraction: stacked CGC levels with shared gates.

    Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations",
    RecSys 2020. Level $j$ is a `CGC` extraction layer on the previous
    level's outputs: task $k$'s experts and gate read task $k$'s previous
    output $x_k^{j-1}$, the shared experts and the shared gate read the
    shared output $x_s^{j-1}$ (all equal to the input at $j = 1$):

    $$x_k^{j} = g_k^{j}(x_k^{j-1})^\\top
    [E_k^{j}(x_k^{j-1}), S^{j}(x_s^{j-1})],\\qquad
    x_s^{j} = g_s^{j}(x_s^{j-1})^\\top
    [E_1^{j}, \\dots, E_K^{j}, S^{j}] \\quad (j < L).$$

    The last level has no shared gate; the layer returns
    $[x_1^{L}, \\dots, x_K^{L}]$. The levels are the sublayers `levels`
    (`CGC` instances named `level_<j>`), each with its own
    `gate_utilization` (and `shared_gate_utilization` below the top).

    No output is a single shared representation for
    `MultiTaskModel(representation=...)`; a shared layer before the PLE is
    one.

    Args:
        num_tasks: K >= 2.
        num_levels: L >= 1 extraction levels, 2 by default (L = 1 is CGC).
        num_task_experts: experts per task and level, 1 by default.
        num_shared_experts: shared experts per level, 1 by default.
        expert_units: sizes of each expert's dense layers (every level),
            `(64,)` by default.
        expert_activation: activation of every expert layer.
        use_bias: biases in the experts and gates.
        **kwargs: `name`, `dtype`, `trainable` as for any layer.

    Example:

    ```python
    import keras, keras_mtl
    features = keras.Input((16,))
    ctr, cvr = keras_mtl.layers.PLE(num_tasks=2)(features)
    ```
    """

    def __init__(
        self,
        num_tasks: int,
        num_levels: int = 2,
        num_task_experts: int = 1,
        num_shared_experts: int = 1,
        expert_units: int | Sequence[int] = (64,),
        expert_activation: Any = "relu",
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_tasks = _experts.check_positive_int("num_tasks", num_tasks, 2)
        self.num_levels = _experts.check_positive_int("num_levels", num_levels)
        self.num_task_experts = _experts.check_positive_int(
            "num_task_experts", num_task_experts
        )
        self.num_shared_experts = _experts.check_positive_int(
            "num_shared_experts", num_shared_experts
        )
        self.expert_units = _experts.check_units("expert_units", expert_units)
        self.expert_activation = keras.activations.get(expert_activation)
        self.use_bias = bool(use_bias)
        self.levels = [
            CGC(
                self.num_tasks,
                num_task_experts=self.num_task_experts,
                num_shared_experts=self.num_shared_experts,
                expert_units=self.expert_units,
                expert_activation=self.expert_activation,
                use_bias=self.use_bias,
                return_shared=j < self.num_levels - 1,
                name=f"level_{j}",
            )
            for j in range(self.num_levels)
        ]

    def build(self, input_shape: Any) -> None:
        _experts.check_rank2(self.name, input_shape)
        shape: Any = input_shape
        for level in self.levels:
            level.build(shape)
            shape = level.compute_output_shape(shape)

    def call(self, x: Any, training: bool | None = None) -> list[Any]:
        outputs: Any = x
        for level in self.levels:
            outputs = level(outputs, training=training)
        return outputs

    def compute_output_shape(self, input_shape: Any) -> list[tuple[Any, ...]]:
        return [(input_shape[0], self.expert_units[-1])] * self.num_tasks

    def get_config(self) -> dict[str, Any]:
        return _experts.base_config(
            self,
            num_tasks=self.num_tasks,
            num_levels=self.num_levels,
            num_task_experts=self.num_task_experts,
            num_shared_experts=self.num_shared_experts,
            expert_units=self.expert_units,
            expert_activation=self.expert_activation,
            use_bias=self.use_bias,
        )

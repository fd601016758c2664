"""CGC: customized gate control (Tang et al., RecSys 2020), one PLE level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_mtl.layers import _experts


@keras.saving.register_keras_serializable(package="keras_mtl")
class CGC(keras.layers.Layer):
    """Customized gate control: task-specific and shared experts, per-task gates.

    Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations",
    RecSys 2020. Task $k$ has $m_t$ experts $E_{k,1..m_t}$ of its own, all
    tasks share $m_s$ experts $S_{1..m_s}$; task $k$'s gate mixes its own
    and the shared experts only:

    $$S_k(x) = [E_{k,1}(x_k), \\dots, E_{k,m_t}(x_k), S_1(x_s), \\dots,
    S_{m_s}(x_s)],\\quad g_k = \\mathrm{softmax}(W_k x_k + b_k),\\quad
    y_k = g_k^\\top S_k(x).$$

    As a stand-alone layer (the paper's CGC) all inputs are one tensor
    $x_k = x_s = x$. As a level of `PLE` it takes a list
    `[x_1, ..., x_K, x_s]` and, with `return_shared=True`, also returns
    the shared output $y_s = g_s^\\top [E_1, \\dots, E_K, S]$ with a gate
    $g_s = \\mathrm{softmax}(W_s x_s + b_s)$ over all the level's experts.

    Gate statistics (last training batch's means, non-trainable):
    `gate_utilization` `(K, m_t + m_s)`, own experts first; with
    `return_shared`, `shared_gate_utilization` `(K m_t + m_s,)`.

    Each task gets its own mixture, so no output is a single shared
    representation for `MultiTaskModel(representation=...)`; a shared
    layer before the CGC is one.

    Args:
        num_tasks: K >= 2.
        num_task_experts: $m_t$ experts per task, 1 by default.
        num_shared_experts: $m_s$ shared experts, 1 by default.
        expert_units: sizes of each expert's dense layers, `(64,)` by default.
        expert_activation: activation of every expert layer.
        use_bias: biases in the experts and gates.
        return_shared: also return the shared gate's mixture (last).
        **kwargs: `name`, `dtype`, `trainable` as for any layer.

    Example:

    ```python
    import keras, keras_mtl
    features = keras.Input((16,))
    ctr, cvr = keras_mtl.layers.CGC(num_tasks=2, num_task_experts=2)(features)
    ```
    """

    def __init__(
        self,
        num_tasks: int,
        num_task_experts: int = 1,
        num_shared_experts: int = 1,
        expert_units: int | Sequence[int] = (64,),
        expert_activation: Any = "relu",
        use_bias: bool = True,
        return_shared: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_tasks = _experts.check_positive_int("num_tasks", num_tasks, 2)
        self.num_task_experts = _experts.check_positive_int(
            "num_task_experts", num_task_experts
        )
        self.num_shared_experts = _experts.check_positive_int(
            "num_shared_experts", num_shared_experts
        )
        self.expert_units = _experts.check_units("expert_units", expert_units)
        self.expert_activation = keras.activations.get(expert_activation)
        self.use_bias = bool(use_bias)
        self.return_shared = bool(return_shared)

        def stack(count: int, name: str) -> _experts.ExpertStack:
            return _experts.ExpertStack(
                count,
                self.expert_units,
                self.expert_activation,
                self.use_bias,
                name=name,
            )

        self.task_experts = [
            stack(self.num_task_experts, f"task_experts_{k}")
            for k in range(self.num_tasks)
        ]
        self.shared_experts = stack(self.num_shared_experts, "shared_experts")
        own = self.num_task_experts + self.num_shared_experts
        self.gates = [
            keras.layers.Dense(own, use_bias=self.use_bias, name=f"gate_{k}")
            for k in range(self.num_tasks)
        ]
        self.shared_gate = (
            keras.layers.Dense(
                self.num_tasks * self.num_task_experts + self.num_shared_experts,
                use_bias=self.use_bias,
                name="shared_gate",
            )
            if self.return_shared
            else None
        )

    def _split_shapes(self, input_shape: Any) -> list[Any]:
        """K + 1 input shapes (tasks, then shared) from one or K + 1."""
        if (
            isinstance(input_shape, (list, tuple))
            and input_shape
            and isinstance(input_shape[0], (list, tuple))
        ):
            if len(input_shape) != self.num_tasks + 1:
                raise ValueError(
                    f"{type(self).__name__}(num_tasks={self.num_tasks}) takes one "
                    f"tensor or a list of {self.num_tasks + 1} (one per task, then "
                    f"the shared input); got {len(input_shape)} inputs."
                )
            return list(input_shape)
        return [input_shape] * (self.num_tasks + 1)

    def build(self, input_shape: Any) -> None:
        shapes = self._split_shapes(input_shape)
        for shape in shapes:
            _experts.check_rank2(self.name, shape)
        for k in range(self.num_tasks):
            self.task_experts[k].build(shapes[k])
            self.gates[k].build(shapes[k])
        self.shared_experts.build(shapes[-1])
        if self.shared_gate is not None:
            self.shared_gate.build(shapes[-1])
            self.shared_gate_utilization = _experts.add_gate_statistics(
                self,
                "shared_gate_utilization",
                (self.num_tasks * self.num_task_experts + self.num_shared_experts,),
            )
        self.gate_utilization = _experts.add_gate_statistics(
            self,
            "gate_utilization",
            (self.num_tasks, self.num_task_experts + self.num_shared_experts),
        )

    def _gates(self, xs: list[Any]) -> list[Any]:
        # Per task, not stacked on the way to the outputs: gate k stays
        # disconnected from the other tasks' losses (MultiTaskModel's
        # aggregator then does not count it as shared).
        return [ops.softmax(g(xs[k]), axis=-1) for k, g in enumerate(self.gates)]

    def gate_weights(self, inputs: Any) -> Any:
        """The task gates stacked: `(batch, K, m_t + m_s)`, rows summing to one."""
        return ops.stack(self._gates(self._split_inputs(inputs)), axis=1)

    def _split_inputs(self, inputs: Any) -> list[Any]:
        if isinstance(inputs, (list, tuple)):
            return list(inputs)
        return [inputs] * (self.num_tasks + 1)

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        xs = self._split_inputs(inputs)
        shared = self.shared_experts(xs[-1])  # (batch, m_s, u)
        own = [self.task_experts[k](xs[k]) for k in range(self.num_tasks)]
        gates = self._gates(xs)
        _experts.record_gates(self.gate_utilization, ops.stack(gates, axis=1), training)
        outputs = [
            _experts.mix(gates[k], ops.concatenate([own[k], shared], axis=1))
            for k in range(self.num_tasks)
        ]
        if self.shared_gate is not None:
            shared_gate = ops.softmax(self.shared_gate(xs[-1]), axis=-1)
            _experts.record_gates(self.shared_gate_utilization, shared_gate, training)
            everything = ops.concatenate([*own, shared], axis=1)
            outputs.append(_experts.mix(shared_gate, everything))
        return outputs

    def compute_output_shape(self, input_shape: Any) -> list[tuple[Any, ...]]:
        batch = self._split_shapes(input_shape)[0][0]
        count = self.num_tasks + int(self.return_shared)
        return [(batch, self.expert_units[-1])] * count

    def get_config(self) -> dict[str, Any]:
        return _experts.base_config(
            self,
            num_tasks=self.num_tasks,
            num_task_experts=self.num_task_experts,
            num_shared_experts=self.num_shared_experts,
            expert_units=self.expert_units,
            expert_activation=self.expert_activation,
            use_bias=self.use_bias,
            return_shared=self.return_shared,
        )

"""MMoE: multi-gate mixture of experts (Ma et al., KDD 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_mtl.layers import _experts


@keras.saving.register_keras_serializable(package="keras_mtl")
class MMoE(keras.layers.Layer):
    """Multi-gate mixture of experts: one softmax gate per task over shared experts.

    Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in
    Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.
    For an input $x$ (`(batch, d)`), E expert MLPs $f_e$ and, per task $k$,
    a linear softmax gate

    $$g_k(x) = \\mathrm{softmax}(W_k x + b_k) \\in \\Delta^{E},\\qquad
    y_k = \\sum_{e=1}^{E} g_k(x)_e\\, f_e(x).$$

    The layer returns the K mixtures $[y_1, \\dots, y_K]$ (each
    `(batch, expert_units[-1])`), which feed the task towers. Every expert
    has `len(expert_units)` dense layers with `expert_activation` on each.

    Gate statistics: `gate_utilization` is a non-trainable `(K, E)`
    variable holding the last training batch's mean gate weight per task
    and expert (a collapsed gate puts all its mass on one expert); see
    `keras_mtl.layers.gate_utilization` and `GateUtilizationLogger`.

    There is no single shared representation (each task gets its own
    mixture): for `MultiTaskModel(representation=...)` put a shared layer
    before the MMoE and name that.

    Args:
        num_tasks: K >= 2, the number of gates and outputs.
        num_experts: E, 8 by default (the paper's synthetic experiments).
        expert_units: sizes of each expert's dense layers, `(64,)` by
            default (one hidden layer of 64 ReLU units).
        expert_activation: activation of every expert layer.
        use_bias: biases in the experts and gates.
        **kwargs: `name`, `dtype`, `trainable` as for any layer.

    Example:

    ```python
    import keras, keras_mtl
    features = keras.Input((16,))
    click, buy = keras_mtl.layers.MMoE(num_tasks=2)(features)
    outputs = {
        "click": keras.layers.Dense(1, activation="sigmoid", name="click")(click),
        "buy": keras.layers.Dense(1, activation="sigmoid", name="buy")(buy),
    }
    net = keras.Model(features, outputs)
    ```
    """

    def __init__(
        self,
        num_tasks: int,
        num_experts: int = 8,
        expert_units: int | Sequence[int] = (64,),
        expert_activation: Any = "relu",
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_tasks = _experts.check_positive_int("num_tasks", num_tasks, 2)
        self.num_experts = _experts.check_positive_int("num_experts", num_experts)
        self.expert_units = _experts.check_units("expert_units", expert_units)
        self.expert_activation = keras.activations.get(expert_activation)
        self.use_bias = bool(use_bias)
        self.experts = _experts.ExpertStack(
            self.num_experts,
            self.expert_units,
            self.expert_activation,
            self.use_bias,
            name="experts",
        )
        self.gates = [
            keras.layers.Dense(
                self.num_experts, use_bias=self.use_bias, name=f"gate_{k}"
            )
            for k in range(self.num_tasks)
        ]

    def build(self, input_shape: Any) -> None:
        _experts.check_rank2(self.name, input_shape)
        self.experts.build(input_shape)
        for gate in self.gates:
            gate.build(input_shape)
        self.gate_utilization = _experts.add_gate_statistics(
            self, "gate_utilization", (self.num_tasks, self.num_experts)
        )

    def _gates(self, x: Any) -> list[Any]:
        # One softmax per task, never stacked on the way to the outputs:
        # gate k is then disconnected from (not a zero gradient of) the
        # other tasks' losses, so MultiTaskModel's aggregator does not
        # count the gates as shared parameters.
        return [ops.softmax(gate(x), axis=-1) for gate in self.gates]

    def gate_weights(self, x: Any) -> Any:
        """The gates $g_k(x)$ stacked: `(batch, K, E)`, rows summing to one."""
        return ops.stack(self._gates(x), axis=1)

    def call(self, x: Any, training: bool | None = None) -> list[Any]:
        experts = self.experts(x)
        gates = self._gates(x)
        _experts.record_gates(self.gate_utilization, ops.stack(gates, axis=1), training)
        return [_experts.mix(gate, experts) for gate in gates]

    def compute_output_shape(self, input_shape: Any) -> list[tuple[Any, ...]]:
        return [(input_shape[0], self.expert_units[-1])] * self.num_tasks

    def get_config(self) -> dict[str, Any]:
        return _experts.base_config(
            self,
            num_tasks=self.num_tasks,
            num_experts=self.num_experts,
            expert_units=self.expert_units,
            expert_activation=self.expert_activation,
            use_bias=self.use_bias,
        )

"""DSelect-k: a differentiable k-sparse gate (Hazimeh et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mtl.layers import _experts

_EPSILON = 1e-6  # keeps log(0) out of the entropy of a saturated selector


def smooth_step(t: Any, gamma: float) -> Any:
    """The cubic smooth-step $S(t)$: 0 below $-\\gamma/2$, 1 above
    $\\gamma/2$, $-\\frac{2}{\\gamma^3}t^3 + \\frac{3}{2\\gamma}t + \\frac12$
    between (continuously differentiable)."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return ops.where(
        t <= -gamma / 2,
        ops.zeros_like(t),
        ops.where(t >= gamma / 2, ops.ones_like(t), cubic),
    )


@keras.saving.register_keras_serializable(package="keras_mtl")
class DSelectK(keras.layers.Layer):
    """Mixture of experts with one DSelect-k gate per task (per-example gates).

    Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi,
    "DSelect-k: Differentiable Selection in the Mixture of Experts with
    Applications to Multi-Task Learning", NeurIPS 2021. With E experts
    and $m = \\lceil \\log_2 E \\rceil$, task $k$'s gate has k selectors;
    selector $i$ has $m$ logits $z^{(i)}(x) = W^{(i)} x + b^{(i)}$ and
    picks expert $l$ (binary code $l_1..l_m$, bit $j$ = $(l \\gg (j-1))
    \\,\\&\\, 1$) with weight

    $$r(z^{(i)})_l = \\prod_{j=1}^{m}
    \\big(S(z^{(i)}_j)\\big)^{l_j}\\big(1 - S(z^{(i)}_j)\\big)^{1 - l_j},$$

    where $S$ is the cubic smooth-step with parameter $\\gamma$ (see
    `smooth_step`). With $\\alpha(x) = A x + a \\in \\mathbb{R}^k$ the gate is

    $$q(x) = \\sum_{i=1}^{k} \\mathrm{softmax}(\\alpha(x))_i\\, r(z^{(i)}(x)),
    \\qquad y_t = \\sum_{l=1}^{E} q_t(x)_l\\, f_l(x).$$

    Each $r(z^{(i)})$ sums to one over the $2^m$ codes; once every
    $|z^{(i)}_j| \\ge \\gamma/2$ (the smooth-step saturates) it is one-hot,
    so $q$ has at most k non-zeros: the gate is exactly k-sparse. If E is
    not a power of two, codes $\\ge E$ select no expert and $q$ sums to
    less than one (as in the paper).

    Entropy regularisation (optional, off by default): with
    `entropy_reg` $\\lambda > 0$ the layer `add_loss`es
    $\\lambda \\cdot \\mathrm{mean}_x \\sum_{t,i} H(r(z^{(i)}_t(x)))$, which
    pushes the selectors to binary choices sooner; if E is not a power of
    two also $\\lambda \\cdot \\mathrm{mean}_x \\sum_{t,i}
    (1 - \\sum_{l<E} r_l)$, the mass on missing experts.

    Initialisation: the selector logits' kernels uniform in
    $\\pm\\gamma/100$ (the paper's code), so training starts far from
    saturation.

    Gate statistics: `gate_utilization` `(K, E)`, the last training
    batch's mean $q_t$. No output is a single shared representation for
    `MultiTaskModel(representation=...)`.

    Args:
        num_tasks: K >= 2.
        num_experts: E >= 2, 8 by default.
        num_selected: k, the selectors per gate (1 <= k <= E), 2 by default.
        gamma: the smooth-step's width $\\gamma > 0$, 1.0 by default.
        entropy_reg: $\\lambda \\ge 0$, 0 (off) by default.
        expert_units: sizes of each expert's dense layers, `(64,)` by default.
        expert_activation: activation of every expert layer.
        use_bias: biases in the experts and gates.
        **kwargs: `name`, `dtype`, `trainable` as for any layer.

    Example:

    ```python
    import keras, keras_mtl
    features = keras.Input((16,))
    a, b = keras_mtl.layers.DSelectK(num_tasks=2, num_selected=2)(features)
    ```
    """

    def __init__(
        self,
        num_tasks: int,
        num_experts: int = 8,
        num_selected: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 0.0,
        expert_units: int | Sequence[int] = (64,),
        expert_activation: Any = "relu",
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_tasks = _experts.check_positive_int("num_tasks", num_tasks, 2)
        self.num_experts = _experts.check_positive_int("num_experts", num_experts, 2)
        self.num_selected = _experts.check_positive_int("num_selected", num_selected)
        if self.num_selected > self.num_experts:
            raise ValueError(
                f"`num_selected` must be <= num_experts={self.num_experts}; got "
                f"{num_selected!r}."
            )
        if not float(gamma) > 0:
            raise ValueError(f"`gamma` must be > 0; got {gamma!r}.")
        if not float(entropy_reg) >= 0:
            raise ValueError(f"`entropy_reg` must be >= 0; got {entropy_reg!r}.")
        self.gamma = float(gamma)
        self.entropy_reg = float(entropy_reg)
        self.expert_units = _experts.check_units("expert_units", expert_units)
        self.expert_activation = keras.activations.get(expert_activation)
        self.use_bias = bool(use_bias)
        self.num_bits = math.ceil(math.log2(self.num_experts))
        # codes[l, j] = bit j of expert l (least significant first).
        self.codes = np.array(
            [
                [(e >> j) & 1 for j in range(self.num_bits)]
                for e in range(self.num_experts)
            ],
            dtype="float32",
        )
        self.experts = _experts.ExpertStack(
            self.num_experts,
            self.expert_units,
            self.expert_activation,
            self.use_bias,
            name="experts",
        )
        small = keras.initializers.RandomUniform(-self.gamma / 100, self.gamma / 100)
        self.selector_logits = [
            keras.layers.Dense(
                self.num_selected * self.num_bits,
                use_bias=self.use_bias,
                kernel_initializer=small,
                name=f"selector_logits_{t}",
            )
            for t in range(self.num_tasks)
        ]
        # With k = 1 the selector weight is 1: no softmax over one logit.
        self.selector_weights = [
            keras.layers.Dense(
                self.num_selected, use_bias=self.use_bias, name=f"selector_weights_{t}"
            )
            for t in range(self.num_tasks if self.num_selected > 1 else 0)
        ]

    def build(self, input_shape: Any) -> None:
        _experts.check_rank2(self.name, input_shape)
        self.experts.build(input_shape)
        for layer in (*self.selector_logits, *self.selector_weights):
            layer.build(input_shape)
        self.gate_utilization = _experts.add_gate_statistics(
            self, "gate_utilization", (self.num_tasks, self.num_experts)
        )

    def _task_selectors(self, x: Any, task: int) -> tuple[Any, Any]:
        """Task `task`'s `(r, w)`: `(batch, k, E)` and `(batch, k)`."""
        z = ops.reshape(
            self.selector_logits[task](x), (-1, self.num_selected, 1, self.num_bits)
        )
        s = smooth_step(z, self.gamma)
        codes = ops.convert_to_tensor(self.codes, dtype=s.dtype)
        r = ops.prod(codes * s + (1.0 - codes) * (1.0 - s), axis=-1)
        if not self.selector_weights:
            return r, ops.ones_like(r[:, :, 0])
        return r, ops.softmax(self.selector_weights[task](x), axis=-1)

    def selectors(self, x: Any) -> tuple[Any, Any]:
        """`(r, w)`: the selector outputs $r(z^{(i)}_t(x))$ `(batch, K, k, E)`
        (over the existing experts) and the selector weights
        $\\mathrm{softmax}(\\alpha_t(x))$ `(batch, K, k)`."""
        pairs = [self._task_selectors(x, t) for t in range(self.num_tasks)]
        return ops.stack([r for r, _ in pairs], 1), ops.stack([w for _, w in pairs], 1)

    def gate_weights(self, x: Any) -> Any:
        """The gates $q_t(x)$ stacked: `(batch, K, E)`."""
        r, w = self.selectors(x)
        return ops.sum(w[..., None] * r, axis=2)

    def call(self, x: Any, training: bool | None = None) -> list[Any]:
        experts = self.experts(x)
        # Per task, not stacked on the way to the outputs: task t's gate
        # stays disconnected from the other tasks' losses (MultiTaskModel's
        # aggregator then does not count it as shared).
        pairs = [self._task_selectors(x, t) for t in range(self.num_tasks)]
        gates = [ops.sum(w[..., None] * r, axis=1) for r, w in pairs]
        _experts.record_gates(self.gate_utilization, ops.stack(gates, axis=1), training)
        if self.entropy_reg > 0:
            r32 = ops.cast(ops.stack([r for r, _ in pairs], axis=1), "float32")
            entropy = -ops.sum(r32 * ops.log(r32 + _EPSILON), axis=-1)
            penalty = ops.sum(entropy, axis=(1, 2))
            if self.num_experts != 2**self.num_bits:
                penalty = penalty + ops.sum(1.0 - ops.sum(r32, axis=-1), axis=(1, 2))
            self.add_loss(self.entropy_reg * ops.mean(penalty))
        return [_experts.mix(gate, experts) for gate in gates]

    def compute_output_shape(self, input_shape: Any) -> list[tuple[Any, ...]]:
        return [(input_shape[0], self.expert_units[-1])] * self.num_tasks

    def get_config(self) -> dict[str, Any]:
        return _experts.base_config(
            self,
            num_tasks=self.num_tasks,
            num_experts=self.num_experts,
            num_selected=self.num_selected,
            gamma=self.gamma,
            entropy_reg=self.entropy_reg,
            expert_units=self.expert_units,
            expert_activation=self.expert_activation,
            use_bias=self.use_bias,
        )

"""ExcessMTL (He et al., ICML 2024): weights from estimated excess risks."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._unobserved import mark_unobserved_if_never_updated
from keras_mtl._validation import check_number
from keras_mtl.aggregation._linalg import positive_or_one, safe_divide
from keras_mtl.aggregation._rows import combine_rows
from keras_mtl.aggregation._stateful import RawStateAggregator

# Cap of the relative excess risk (keeps exp-weights finite).
_MAX_RATIO = 1e30
# `initial_risk` of a task not observed yet (risks are >= 0). Files of
# keras_mtl 0.1.0 have zeros there before the first call (`step` 0);
# `load_own_variables` converts them.
NOT_OBSERVED = -1.0


@keras.saving.register_keras_serializable(package="keras_mtl")
class ExcessMTL(RawStateAggregator):
    """ExcessMTL: robust multi-task learning that up-weights the tasks with
    the largest estimated *excess* risk (distance to their own optimum)
    rather than the largest loss, which makes it insensitive to label
    noise.

    The excess risk of task i is approximated to second order with a
    diagonal (Adagrad-style) curvature estimate: with
    $h_i = \\sqrt{\\sum_{s \\le t} g_{i,s}^2}$ (element-wise, over the
    training calls so far),

    $$r_i = g_i^\\top \\operatorname{diag}(1 / h_i)\\, g_i
          = \\sum_k g_{ik}^2 / h_{ik} .$$

    The first training call records $r^{(1)}$ and keeps the weights at 1;
    every later call updates them by exponentiated gradient ascent on the
    relative excess risks and renormalises them to sum to K:

    $$w_i \\leftarrow K \\frac{w_i \\exp(\\eta\\, r_i / r_i^{(1)})}
                             {\\sum_j w_j \\exp(\\eta\\, r_j / r_j^{(1)})},
      \\qquad d = \\sum_i w_i g_i .$$

    This follows the authors' code (also in LibMTL), where the weights
    multiply the task losses. $\\eta$ = `step_size` (LibMTL's
    `robust_step_size`, default 0.01). The authors add $10^{-7}$ inside the
    square root; here it is left out (an entry with $h = 0$ has $g = 0$ and
    contributes 0), which makes the weights exactly invariant to the scale
    of the gradients. The accumulator is kept as the running root-sum of
    squares (never the sum of squares, which would overflow), in the
    Jacobian's own units; the exponent is capped at $10^{30}\\eta$.

    **Tasks without labels.** In a step where some tasks have no labelled
    example `MultiTaskModel` applies the aggregator to the present tasks'
    rows and keeps the absent tasks' state. A task first observed after
    the first call (its `initial_risk` is still -1, not a risk) records
    $r^{(1)}_i$ at that call, from a curvature accumulator that starts
    there too: its ratio is then 1, the value $r_i / r^{(1)}_i$ has at a
    first call, while the others follow their own ratios.

    Positively homogeneous (`scale_degree = 1`) for a fixed sequence of
    scales. State: `root_sum_squares` (`[K, D]`), `initial_risk` (`[K]`),
    `task_weights` (`[K]`), `step`; updated only when `training=True`
    (`training=False` returns the direction the update would give). D must
    be known when the layer is built.

    Reference: Y. He, S. Zhou, G. Zhang, H. Yun, Y. Xu, B. Zeng, T. Chilimbi
    and H. Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024
    (arXiv 2402.02009).

    Args:
        step_size: $\\eta > 0$, the exponentiated-gradient step.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.ExcessMTL()
    d = agg(np.array([[1.0, 0.0], [0.0, 2.0]]))   # first call: w = [1, 1]
    # d == [1.0, 2.0]
    ```
    """

    scale_degree = 1

    def __init__(self, step_size: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_size = check_number(
            step_size, "step_size", "ExcessMTL", 0.0, low_open=True
        )

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        super().build_state(num_tasks, dim)
        self.root_sum_squares = self.add_weight(
            shape=(num_tasks, dim),
            initializer="zeros",
            trainable=False,
            name="root_sum_squares",
        )
        self.initial_risk = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(NOT_OBSERVED),
            trainable=False,
            name="initial_risk",
        )
        self.task_weights = self.add_weight(
            shape=(num_tasks,), initializer="ones", trainable=False, name="task_weights"
        )
        self.step = self.step_variable()

    def state_task_total(self, variable: Any) -> str | None:
        return "tasks" if variable is getattr(self, "task_weights", None) else None

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        num_tasks = jacobian.shape[0]
        magnitude = ops.abs(jacobian)
        old = ops.convert_to_tensor(self.root_sum_squares)
        # sqrt(old^2 + g^2) through the larger of the two (no overflow).
        larger = ops.maximum(old, magnitude)
        safe = positive_or_one(larger)
        root = larger * ops.sqrt(ops.square(old / safe) + ops.square(magnitude / safe))
        # g^2 / h = |g| * (|g| / h) with |g| / h <= 1.
        risk = ops.sum(magnitude * safe_divide(magnitude, root), axis=1)
        step = ops.convert_to_tensor(self.step)
        first = ops.equal(step, 0)
        # Recorded at the first call that observes the task.
        unrecorded = ops.logical_or(first, self.initial_risk.value < 0.0)
        initial = ops.where(unrecorded, risk, self.initial_risk.value)
        ratio = ops.minimum(safe_divide(risk, initial), _MAX_RATIO)
        weights = ops.convert_to_tensor(self.task_weights)
        logits = ops.log(ops.maximum(weights, 1e-38)) + self.step_size * ratio
        exponentials = ops.exp(logits - ops.max(logits))
        updated = num_tasks * exponentials / ops.sum(exponentials)
        weights = ops.where(first, weights, updated)
        if training:
            self.root_sum_squares.assign(root)
            self.initial_risk.assign(initial)
            self.task_weights.assign(weights)
            self.step.assign(step + 1)
        return combine_rows(weights, jacobian)

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(store)
        mark_unobserved_if_never_updated(self.step, self.initial_risk, NOT_OBSERVED)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "step_size": self.step_size}

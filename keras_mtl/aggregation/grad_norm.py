"""GradNorm (Chen et al., 2018): learned task weights that equalise the
task-gradient norms, scaled by the tasks' relative training rates."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._unobserved import (
    LOWEST_FLOAT32,
    mark_unobserved_if_never_updated,
)
from keras_mtl._validation import check_number
from keras_mtl.aggregation._linalg import (
    clean_jacobian,
    max_abs_scaled,
    positive_or_one,
    row_norms,
)
from keras_mtl.aggregation._rows import combine_rows
from keras_mtl.aggregation.base import GramianWeightedAggregator

# Floor of a task weight before the renormalisation: a task whose weight a
# gradient step would push to 0 or below keeps a (tiny) positive weight, so
# its gradient norm, and with it its L_grad gradient, never vanishes for good.
_MIN_WEIGHT = 1e-4
# `initial_losses` of a task not observed yet. Files of keras_mtl 0.1.0
# have ones there before the first call (`has_initial_losses` 0);
# `load_own_variables` converts them.
NOT_OBSERVED = LOWEST_FLOAT32


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradNorm(GramianWeightedAggregator):
    """GradNorm: gradient normalisation for adaptive loss balancing.

    Each task has a learned weight $w_i > 0$ (variable `task_weights`,
    starting at 1, $\\sum_i w_i = K$). The direction is the weighted sum of
    the task gradients (the rows $g_i$ of the Jacobian),

    $$d = \\sum_{i=1}^{K} w_i\\, g_i ,$$

    with the weights as they are *before* this call's update. Then, in
    training, the weights take one gradient step of their own on

    $$L_{grad} = \\sum_{i=1}^{K} \\bigl| G_i - \\bar G\\, r_i^{\\alpha} \\bigr|,
    \\qquad G_i = \\lVert w_i g_i \\rVert,\\quad
    \\bar G = \\tfrac{1}{K}\\textstyle\\sum_j G_j,\\quad
    r_i = \\frac{L_i / L_i(0)}{\\frac{1}{K}\\sum_j L_j / L_j(0)},$$

    the target $\\bar G r_i^{\\alpha}$ treated as a constant, so
    $\\partial L_{grad} / \\partial w_i = \\mathrm{sign}(G_i - \\bar G
    r_i^{\\alpha})\\, \\lVert g_i \\rVert$ and

    $$w_i \\leftarrow \\max\\bigl(w_i - \\eta\\, \\partial L_{grad} /
    \\partial w_i,\\ 10^{-4}\\bigr), \\qquad
    w \\leftarrow K\\, w / \\textstyle\\sum_j w_j .$$

    A task that trains slowly (large loss ratio $r_i$) is given a larger
    gradient norm; $\\alpha$ sets how strongly (0: equal norms).
    $L_i(0)$ (variable `initial_losses`) are the losses of the first
    training call (flag `has_initial_losses`). A call whose losses or
    Jacobian are not finite changes no state.

    **Tasks without labels.** In a step where some tasks have no labelled
    example `MultiTaskModel` applies the aggregator to the present tasks'
    rows and keeps the absent tasks' state. A task first observed after
    the first call (its `initial_losses` entry still the lowest float32,
    not a loss) records its $L_i(0)$ at that call: its loss ratio there is
    1, as every task's is at a first call.

    The losses $L_i$ are the unweighted task losses, passed as
    `agg(jacobian, losses=losses)` (`MultiTaskModel` does it); they are
    assumed to be positive.

    **Which parameters.** The paper measures $G_i$ on the last shared
    layer only, to save backward passes. Here the task gradients of all
    shared parameters are computed anyway (for the direction), so $G_i$
    uses all of them: the balance is over the whole shared trunk, at no extra cost.

    **The Gramian route.** The direction's weights are known before the
    call, and the update reads of the task gradients only their norms
    $\\lVert g_i \\rVert = \\sqrt{G_{ii}}$ ($G = J J^\\top$). So in a
    `MultiTaskModel` GradNorm never gets the Jacobian: the model calls
    `direction_weights(G, losses=losses, unit=u)`, `G` the Gramian of
    $J / u$, as for the other Gramian-weighted aggregators.

    The update step is $\\eta \\lVert g_i \\rVert$: the learning rate is
    relative to the size of the task gradients of the model (the paper
    gives no universal value). The direction is positively homogeneous in
    the Jacobian; the weight update is not.

    Reference: Z. Chen, V. Badrinarayanan, C.-Y. Lee and A. Rabinovich,
    "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018.

    Args:
        alpha: the restoring-force exponent $\\alpha \\ge 0$ (the paper's
            default 1.5).
        learning_rate: step size $\\eta > 0$ of the weights' own gradient
            step.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.GradNorm(alpha=1.5, learning_rate=0.1)
    jacobian = np.array([[3.0, 0.0], [0.0, 1.0]])
    d = agg(jacobian, losses=np.array([2.0, 1.0]))
    # d == [3., 1.] (weights 1); then L(0) = losses, r = 1, G = [3, 1],
    # target 2: w = [1 - 0.3, 1 + 0.1] -> renormalised [0.7778, 1.2222]
    ```
    """

    needs_losses = True
    reads_gramian_scale = True
    scale_degree = 1

    def __init__(
        self, alpha: float = 1.5, learning_rate: float = 0.025, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = check_number(alpha, "alpha", "GradNorm", 0.0)
        self.learning_rate = check_number(
            learning_rate, "learning_rate", "GradNorm", 0.0, low_open=True
        )

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        self.task_weights = self.add_weight(
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
            name="task_weights",
        )
        self.initial_losses = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(NOT_OBSERVED),
            trainable=False,
            name="initial_losses",
        )
        self.has_initial_losses = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="has_initial_losses",
        )

    def state_task_total(self, variable: Any) -> str | None:
        return "tasks" if variable is getattr(self, "task_weights", None) else None

    def call(self, jacobian: Any, training: bool = True, losses: Any = None) -> Any:
        losses = self._checked_losses(losses)
        finite = ops.all(ops.isfinite(ops.cast(jacobian, "float32")))
        jacobian = clean_jacobian(jacobian)
        weights = ops.copy(self.task_weights.value)
        scaled, scale = max_abs_scaled(jacobian)
        direction = combine_rows(weights, scaled) * scale
        if training:
            self._train(weights, row_norms(jacobian), losses, finite)
        return direction

    def gramian_weights(self, gramian: Any) -> Any:
        """The task weights `[K]` (the variable `task_weights`): they do not
        depend on the Gramian, only the training update does (ones before
        the layer is built)."""
        if not self.built:
            return ops.ones((gramian.shape[0],), "float32")
        return ops.copy(self.task_weights.value)

    def direction_weights(
        self,
        gramian: Any,
        training: bool = True,
        losses: Any = None,
        unit: Any = 1.0,
    ) -> Any:
        """The task weights `[K]` of the direction `d = w @ J` (as they are
        before this call's update) for a Jacobian `J` whose Gramian is
        `gramian * unit**2`: the Gramian route's call. In training the
        weights then take their step on L_grad with the task-gradient norms
        `unit * sqrt(diag(gramian))` and the unweighted task `losses`."""
        if not self.built:
            self.build((gramian.shape[0], None))
        # A copy: on TensorFlow `convert_to_tensor` gives the variable
        # itself, which would read the updated weights after `_train`.
        weights = ops.copy(self.task_weights.value)
        if training:
            losses = self._checked_losses(losses)
            squares = ops.diagonal(ops.cast(gramian, "float32"))
            finite = ops.all(ops.isfinite(squares))
            norms = ops.sqrt(ops.maximum(squares, 0.0)) * unit
            self._train(weights, norms, losses, finite)
        return weights

    def _checked_losses(self, losses: Any) -> Any:
        if losses is None:
            raise ValueError(
                "GradNorm needs the task losses in training: pass "
                "`losses=` (the K unweighted task losses); got None."
            )
        losses = ops.cast(losses, "float32")
        if tuple(losses.shape) != (self.num_tasks,):
            raise ValueError(
                f"GradNorm: `losses` must hold one loss per task, shape "
                f"({self.num_tasks},); got shape {tuple(losses.shape)}."
            )
        return losses

    def _train(self, weights: Any, norms: Any, losses: Any, finite: Any) -> None:
        """The weights' step on L_grad (`updated_weights`), assigned with
        `L(0)` unless the losses, the norms (`finite`: whether the task
        gradients were) or the new weights are not finite."""
        new_weights, initial = self.updated_weights(weights, norms, losses)
        finite = ops.logical_and(finite, ops.all(ops.isfinite(losses)))
        finite = ops.logical_and(finite, ops.all(ops.isfinite(new_weights)))
        self.task_weights.assign(ops.where(finite, new_weights, weights))
        self.initial_losses.assign(
            ops.where(finite, initial, self.initial_losses.value)
        )
        self.has_initial_losses.assign(
            ops.where(finite, 1, self.has_initial_losses.value)
        )

    def updated_weights(self, weights: Any, norms: Any, losses: Any) -> tuple[Any, Any]:
        """`(new weights, L(0))` after one step on L_grad, for the current
        weights `[K]`, task-gradient norms `[K]` and losses `[K]`."""
        stored = ops.convert_to_tensor(self.initial_losses.value)
        # Recorded at the first call that observes the task.
        first = ops.logical_or(
            ops.equal(self.has_initial_losses, 0), ops.equal(stored, NOT_OBSERVED)
        )
        initial = ops.where(first, losses, stored)
        ratios = losses / positive_or_one(initial)
        relative = ratios / positive_or_one(ops.mean(ratios))
        norms_weighted = weights * norms
        target = ops.mean(norms_weighted) * ops.power(relative, self.alpha)
        gradient = ops.sign(norms_weighted - target) * norms
        stepped = ops.maximum(weights - self.learning_rate * gradient, _MIN_WEIGHT)
        num_tasks = ops.cast(self.num_tasks, "float32")
        return num_tasks * stepped / ops.sum(stepped), initial

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(store)
        mark_unobserved_if_never_updated(
            self.has_initial_losses, self.initial_losses, NOT_OBSERVED
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
        }

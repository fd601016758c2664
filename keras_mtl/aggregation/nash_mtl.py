"""Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_int, check_number
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._alpha_fair import ITERATIONS, RIDGE, alpha_fair_weights
from keras_mtl.aggregation._linalg import normalized_gramian, safe_divide
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class NashMTL(GramianWeightedAggregator):
    """Nash-MTL: the task gradients bargain for a shared update; the Nash
    bargaining solution weights them so that every task's share of progress
    is balanced.

    The direction is $d = \\sum_i \\alpha_i g_i$ with the unique
    $\\alpha > 0$ solving

    $$(G\\alpha)_i = \\frac{1}{\\alpha_i}\\quad (i = 1..K), \\qquad
      G = J J^\\top ,$$

    i.e. $g_i^\\top d = 1/\\alpha_i$: a task whose gradient is already well
    served by the others gets a small weight. It is the stationary point of
    the strictly convex $\\tfrac12 \\alpha^\\top G\\alpha - \\sum_i \\log\\alpha_i$,
    solved in-graph by a fixed number of damped Newton iterations (the
    paper solves a sequence of convex programmes with cvxpy and ECOS; the
    solution is the same). A small ridge ($G + 10^{-6} m I$, $m$ the largest
    diagonal entry) keeps it bounded for zero, repeated or opposite
    gradients, where the exact problem has no solution. For orthogonal
    gradients $\\alpha_i = 1/\\lVert g_i\\rVert$.

    Scale: $J \\to cJ$ gives $\\alpha \\to \\alpha / c$ and the same $d$,
    whose norm is always $\\sqrt K$ ($\\lVert d\\rVert^2 = \\alpha^\\top G\\alpha
    = \\sum_i \\alpha_i (G\\alpha)_i = K$): `scale_degree = 0`. The optional
    `max_norm` clips $\\lVert d\\rVert$ (the official code clips the shared
    parameters' gradient norm to 1.0 by default; here no clipping unless
    asked).

    `update_every = N` recomputes the weights at every N-th training call
    and reuses the stored ones in between (as the paper does to save
    time): the solve sits in one branch of a conditional on the step
    counter, so skipped calls do not run it (eagerly, in a `tf.function`
    and under XLA). Evaluation calls (`training=False`) recompute when the
    counter is at a multiple of N. The stored weights are those
    of the Jacobian scaled to a largest row norm of 1 at their step, and
    are applied to the current Jacobian scaled the same way. The weights
    (variable `task_weights`) and a step counter (`step`) are updated only
    when `training=True`. `agg.weights(gramian)` (the same as
    `agg.gramian_weights(gramian)`) solves for the weights of a Gramian
    without touching the state: those of `update_every=1` before clipping.

    Reference: A. Navon, A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi,
    G. Chechik and E. Fetaya, "Multi-Task Learning as a Bargaining Game",
    ICML 2022 (arXiv 2202.01017).

    Args:
        update_every: recompute the weights every this many training calls.
        max_norm: clip the direction to this norm (None or 0: no clipping).
        iterations: Newton iterations of the weight solver.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.NashMTL()
    d = agg(np.array([[2.0, 0.0], [0.0, 0.5]]))
    # orthogonal: alpha = [1/2, 2]; d = [1.0, 1.0] (norm sqrt(2))
    ```
    """

    scale_degree = 0

    def __init__(
        self,
        update_every: int = 1,
        max_norm: float | None = None,
        iterations: int = ITERATIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.update_every = check_int(update_every, "update_every", "NashMTL")
        if max_norm is not None:
            max_norm = check_number(max_norm, "max_norm", "NashMTL", 0.0)
        self.max_norm = max_norm
        self.iterations = check_int(iterations, "iterations", "NashMTL")

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        self.task_weights = self.add_weight(
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
            name="task_weights",
        )
        self.step = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="step"
        )

    def gramian_weights(self, gramian: Any) -> Any:
        """The Nash weights `alpha` (`[K]`) of a Gramian `G` (`[K, K]`)."""
        return alpha_fair_weights(gramian, 1.0, self.iterations, RIDGE)

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        """`alpha / n` for the raw Jacobian (`n` its largest row norm; the
        weights are solved for, or stored for, the Jacobian scaled to a
        largest row norm of 1), clipped by `max_norm` (the direction's
        norm is `sqrt(c^T G c)`)."""
        normalized, norm = normalized_gramian(gramian)
        step = small.convert_to_tensor(self.step)
        if self.update_every == 1:
            weights = self.gramian_weights(normalized)
        else:
            # A real branch (not `where`): skipped calls do not run the solver.
            recompute = small.equal(small.mod(step, self.update_every), 0)
            stored = small.convert_to_tensor(self.task_weights)
            weights = small.cond(
                recompute, lambda: self.gramian_weights(normalized), lambda: stored
            )
        if training:
            self.task_weights.assign(weights)
            self.step.assign(step + 1)
        if self.max_norm:
            # The direction of the normalised Jacobian, the one returned.
            length = small.sqrt(
                small.maximum(
                    small.sum(weights * small.matmul(normalized, weights)), 0.0
                )
            )
            factor = small.minimum(1.0, safe_divide(self.max_norm, length))
            weights = weights * small.where(length > 0.0, factor, 1.0)
        return weights / norm

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "update_every": self.update_every,
            "max_norm": self.max_norm,
            "iterations": self.iterations,
        }

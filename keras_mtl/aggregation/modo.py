"""MoDo (Chen et al., NeurIPS 2023): one projected-gradient step on the
MGDA weights per training step."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_number
from keras_mtl.aggregation._linalg import (
    clean_jacobian,
    project_onto_simplex,
    regularised_gramian_step,
    scaled_gramian_step,
)
from keras_mtl.aggregation._rows import combine_rows
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class MoDo(GramianWeightedAggregator):
    """MoDo ("Multi-objective gradient with Double sampling"): MGDA weights
    $\\lambda$ tracked by one projected-gradient step per training step.

    At every training call, with $J$ the Jacobian (rows $g_i$),

    $$\\lambda \\leftarrow \\Pi_{\\Delta}\\big(\\lambda - \\gamma
        (J J^\\top \\lambda + \\rho \\lambda)\\big), \\qquad d = J^\\top \\lambda,$$

    a step on $\\min_{\\lambda \\in \\Delta}
    \\tfrac12 \\lVert J^\\top \\lambda \\rVert^2 + \\tfrac\\rho2 \\lVert\\lambda\\rVert^2$
    ($\\Pi_\\Delta$ the Euclidean projection onto the probability simplex,
    $\\lambda$ a `[K]` variable `lambdas`, initially uniform). The direction
    uses the updated $\\lambda$, as LibMTL's `MoDo`. Defaults are LibMTL's:
    $\\gamma = 10^{-3}$, $\\rho = 0.1$.

    The update uses the raw (unnormalised) Jacobian, as the paper does, so
    $\\gamma$ has units of $1 / \\lVert g \\rVert^2$ and the direction is
    not homogeneous in $J$ (`scale_degree = None`). Called with a
    Jacobian, the update is computed as $\\gamma s^2 G_s$ with $s$ the
    largest absolute entry of $J$ and $G_s$ the Gramian of $J / s$, and
    $\\gamma s^2$ is capped at $10^6$ (larger values only overflow float32;
    the projection is then a vertex or an edge anyway). The update and the
    direction need only the Gramian: in a `MultiTaskModel` MoDo takes the
    Gramian route (`direction_weights(G, unit=u)`, `G` the Gramian of
    $J / u$: the step is $\\gamma u^2 G$, capped alike) and never gets
    $J$.
    `training=False` returns the direction of the would-be update without
    storing it.

    Deviation: the paper's double sampling uses three independent
    minibatches, $\\lambda \\leftarrow \\Pi(\\lambda - \\gamma
    (J_1 J_2^\\top \\lambda + \\rho\\lambda))$ and $d = J_3^\\top\\lambda$
    (an unbiased estimate of $J J^\\top \\lambda$); an aggregator sees one
    Jacobian, so $J_1 = J_2 = J_3 = J$, which is the deterministic
    algorithm (biased for stochastic gradients).

    Reference: L. Chen, H. Fernando, Y. Ying and T. Chen, "Three-Way
    Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance", NeurIPS 2023 (arXiv 2305.20057).

    Args:
        gamma: the step size $\\gamma > 0$ of the weights.
        rho: the $\\ell_2$ regularisation $\\rho \\ge 0$ of the weights.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.MoDo(gamma=0.1, rho=0.0)
    d = agg(np.array([[1.0, 0.0], [0.0, 2.0]]))
    # lambda = proj([0.5, 0.5] - 0.1 * [0.5, 2.0]) = [0.575, 0.425]
    # d == [0.575, 0.85]
    ```
    """

    scale_degree = None
    reads_gramian_scale = True

    def __init__(self, gamma: float = 1e-3, rho: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gamma = check_number(gamma, "gamma", "MoDo", 0.0, low_open=True)
        self.rho = check_number(rho, "rho", "MoDo", 0.0)

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        self.lambdas = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(1.0 / num_tasks),
            trainable=False,
            name="lambdas",
        )

    def state_task_total(self, variable: Any) -> str | None:
        return "one" if variable is getattr(self, "lambdas", None) else None

    def call(self, jacobian: Any, training: bool = True, losses: Any = None) -> Any:
        # The raw Jacobian: gamma is in its units (no rescaling by `call`).
        return self.aggregate(clean_jacobian(jacobian), training=training)

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        lambdas = ops.convert_to_tensor(self.lambdas)
        lambdas = project_onto_simplex(
            regularised_gramian_step(jacobian, lambdas, self.gamma, self.rho)
        )
        if training:
            self.lambdas.assign(lambdas)
        return combine_rows(lambdas, jacobian)

    def gramian_weights(self, gramian: Any) -> Any:
        """The weights `lambda` (`[K]`) after the would-be step from the
        stored ones for a Jacobian whose Gramian is `gramian`; no state
        change (the stored initial weights before the layer is built)."""
        return self.direction_weights(gramian, training=False)

    def direction_weights(
        self, gramian: Any, training: bool = True, unit: Any = 1.0
    ) -> Any:
        """The weights `lambda` (`[K]`, `d = lambda @ J`) after one step for
        a Jacobian `J` whose Gramian is `gramian * unit**2` (the Gramian
        route's call), stored when `training`."""
        num_tasks = gramian.shape[0]
        if self.built:
            lambdas = ops.copy(self.lambdas.value)
        else:
            lambdas = ops.full((num_tasks,), 1.0 / num_tasks, "float32")
        lambdas = project_onto_simplex(
            scaled_gramian_step(
                ops.cast(gramian, "float32"), unit, lambdas, self.gamma, self.rho
            )
        )
        if training:
            if not self.built:
                self.build((num_tasks, None))
            self.lambdas.assign(lambdas)
        return lambdas

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma, "rho": self.rho}

"""SDMGrad (Xiao, Ban & Ji, NeurIPS 2023): direction-oriented MGDA."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_iterations, check_number
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import normalized_gramian, project_onto_simplex
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class SDMGrad(GramianWeightedAggregator):
    """SDMGrad: MGDA's weights regularised towards a target direction, here
    the mean gradient $g_0 = \\tfrac1K \\sum_i g_i$.

    The weights solve (Eq. 6 of the paper, its deterministic form)

    $$\\min_{w \\in \\Delta_K} \\tfrac12
      \\lVert J^\\top w + \\lambda g_0 \\rVert^2
      \\quad\\text{(gradient } G w + \\lambda G \\mathbf 1 / K\\text{)},
      \\qquad d = \\frac{J^\\top w + \\lambda g_0}{1 + \\lambda},$$

    with $\\Delta_K$ the probability simplex and $G = J J^\\top$:
    $\\lambda = 0$ is MGDA, $\\lambda \\to \\infty$ the mean. As in the
    authors' code (and LibMTL's `SDMGrad`), $w$ is kept between steps
    (a `[K]` variable `simplex_weights`, initially uniform) and each step
    runs a fixed number of projected-gradient iterations with heavy-ball
    momentum (PyTorch's SGD: $b \\leftarrow \\beta b + \\nabla$,
    $w \\leftarrow \\Pi_\\Delta(w - \\eta b)$, $b$ restarting at 0 each
    step) on $G$ divided by the squared mean row norm
    $(\\tfrac1K \\sum_i \\lVert g_i \\rVert)^2$. Defaults are LibMTL's:
    $\\lambda = 0.3$, 20 iterations, $\\eta = 5$, $\\beta = 0.5$. The
    direction is a combination of the rows,
    $c = (w + \\lambda \\mathbf 1 / K) / (1 + \\lambda)$, so SDMGrad is a
    Gramian weighting (the Gramian route: `MultiTaskModel` never forms
    $J$). The normalisation makes $w$ scale-free: positively homogeneous
    (`scale_degree = 1`). `training=False` (and `agg.weights(gramian)`)
    returns the weights the update would give without storing them.

    Deviations: the paper and LibMTL use three independent minibatch
    gradients (two for the $w$ update, $\\xi_1 \\xi_2^\\top$, one for the
    direction); an aggregator sees one Jacobian, so all three are $J$
    (the deterministic algorithm). LibMTL adds $10^{-8}$ to the squared
    mean norm and projects in float64; here a zero Gramian leaves $w$
    unchanged and the projection is float32 (sort-based).

    Reference: P. Xiao, H. Ban and K. Ji, "Direction-oriented
    Multi-objective Learning: Simple and Provable Stochastic Algorithms",
    NeurIPS 2023 (arXiv 2305.18409).

    Args:
        lmbda: the regularisation $\\lambda \\ge 0$ towards $g_0$.
        iterations: projected-gradient iterations per step (>= 1).
        step_size: the step $\\eta > 0$ of those iterations.
        momentum: the heavy-ball momentum $\\beta \\in [0, 1)$.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.SDMGrad(lmbda=0.3)
    d = agg(np.array([[1.0, 0.0], [0.0, 1.0]]))
    # symmetric tasks: w stays uniform, d == [0.5, 0.5]
    ```
    """

    scale_degree = 1

    def __init__(
        self,
        lmbda: float = 0.3,
        iterations: int = 20,
        step_size: float = 5.0,
        momentum: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lmbda = check_number(lmbda, "lmbda", "SDMGrad", 0.0)
        self.iterations = check_iterations(iterations, "iterations", "SDMGrad")
        self.step_size = check_number(
            step_size, "step_size", "SDMGrad", 0.0, low_open=True
        )
        self.momentum = check_number(
            momentum, "momentum", "SDMGrad", 0.0, 1.0, high_open=True
        )

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        self.simplex_weights = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(1.0 / num_tasks),
            trainable=False,
            name="simplex_weights",
        )

    def state_task_total(self, variable: Any) -> str | None:
        return "one" if variable is getattr(self, "simplex_weights", None) else None

    def gramian_weights(self, gramian: Any) -> Any:
        """The evaluation-mode coefficients `c` (`[K]`): the update from the
        stored `w` (uniform before the layer is built), not stored."""
        return self.direction_weights(gramian, training=False)

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        num_tasks = gramian.shape[0]
        gramian, _ = normalized_gramian(gramian)
        norms = small.sqrt(small.maximum(small.diagonal(gramian), 0.0))
        mean_norm = small.mean(norms)
        scaled = gramian / small.where(mean_norm > 0.0, mean_norm * mean_norm, 1.0)
        target = self.lmbda * small.mean(scaled, axis=1)  # lambda * G 1 / K
        if self.built:
            start = small.convert_to_tensor(self.simplex_weights)
        else:
            start = small.full((num_tasks,), 1.0 / num_tasks, dtype="float32")

        def body(_: Any, state: tuple[Any, Any]) -> tuple[Any, Any]:
            w, buffer = state
            buffer = self.momentum * buffer + small.matmul(scaled, w) + target
            return project_onto_simplex(w - self.step_size * buffer), buffer

        w, _ = small.fori_loop(
            0, self.iterations, body, (start, small.zeros_like(start))
        )
        if training:
            self.simplex_weights.assign(w)
        return (w + self.lmbda / num_tasks) / (1.0 + self.lmbda)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "lmbda": self.lmbda,
            "iterations": self.iterations,
            "step_size": self.step_size,
            "momentum": self.momentum,
        }

"""CR-MOGM (Zhou et al., NeurIPS 2022): time-averaged weights of any
Gramian-weighted aggregator."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_number
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class CRMOGM(GramianWeightedAggregator):
    """CR-MOGM: the weights of a multi-objective gradient manipulation
    method (MGDA by default) smoothed by an exponential moving average.

    With $\\hat w_t$ the weights the inner aggregator gives at training
    step $t$ ($d = \\hat w_t^\\top J$ for it),

    $$\\lambda_t = (1 - \\alpha)\\, \\lambda_{t-1} + \\alpha\\, \\hat w_t ,
      \\qquad d = \\lambda_t^\\top J ,$$

    Zhou et al. show that stochastic MGDA-type methods are biased because
    $\\hat w_t$ is computed from the same noisy gradients it weights, and
    that averaging the weights over time (their "correlation-reduced"
    update) restores convergence. $\\lambda$ is a `[K]` variable
    `lambdas`; the first training step sets $\\lambda_1 = \\hat w_1$ (no
    arbitrary start to average with). A constant $\\alpha$ is used; the
    paper's analysis allows a step-dependent one.

    The inner aggregator is any `GramianWeightedAggregator` with
    `scale_degree = 1` (MGDA, UPGrad, DualProj, IMTL-G, PCGrad, GradVac,
    SDMGrad, Krum, ...), whose weights do not depend on the scale of $J$,
    so averaging them across steps is meaningful; its own state (if any)
    advances with every training call. CR-MOGM is itself a Gramian
    weighting (the Gramian route: `MultiTaskModel` never forms $J$) and
    positively homogeneous. `training=False` (and `agg.weights(gramian)`)
    returns the weights the update would give, without storing them.

    Reference: S. Zhou, W. Zhang, J. Jiang, W. Zhong, J. Gu and W. Zhu, "On
    the Convergence of Stochastic Multi-Objective Gradient Manipulation and
    Beyond", NeurIPS 2022.

    Args:
        inner: the aggregator whose weights are averaged: an alias, a
            config dict (as from `keras.saving.serialize_keras_object`) or
            an instance; default `"mgda"`.
        alpha: the averaging rate $\\alpha \\in (0, 1]$ ($\\alpha = 1$ is
            the inner aggregator itself).

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.get("cr_mogm", inner="mgda", alpha=0.5)
    agg(np.array([[1.0, 0.0], [0.0, 1.0]]))  # lambda_1 = [0.5, 0.5]
    d = agg(np.array([[1.0, 0.0], [0.0, 3.0]]))
    # MGDA gives [0.9, 0.1]: lambda_2 = [0.7, 0.3], d == [0.7, 0.9]
    ```
    """

    scale_degree = 1

    def __init__(self, inner: Any = "mgda", alpha: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Imported here: the registry imports this module.
        from keras_mtl.aggregation import get

        aggregator = get(inner)
        if not isinstance(aggregator, GramianWeightedAggregator):
            raise ValueError(
                "CRMOGM: inner must be a Gramian-weighted aggregator (its "
                "direction a combination of the rows); got "
                f"{type(aggregator).__name__} from inner={inner!r}."
            )
        if aggregator.needs_losses or aggregator.scale_degree != 1:
            raise ValueError(
                "CRMOGM: inner must have scale_degree 1 (weights that do not "
                f"depend on the Jacobian's scale) and need no losses; "
                f"{type(aggregator).__name__} has scale_degree "
                f"{aggregator.scale_degree!r}."
            )
        self.inner = aggregator
        self.alpha = check_number(alpha, "alpha", "CRMOGM", 0.0, 1.0, low_open=True)

    @property
    def min_tasks(self) -> int:
        return self.inner.min_tasks

    def state_task_total(self, variable: Any) -> str | None:
        return self.inner.state_task_total(variable)

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        if not self.inner.built:
            self.inner.build((num_tasks, dim))
        self.lambdas = self.add_weight(
            shape=(num_tasks,), initializer="zeros", trainable=False, name="lambdas"
        )
        self.started = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="started",
        )

    def gramian_weights(self, gramian: Any) -> Any:
        """The evaluation-mode weights: the update from the stored average
        (the inner weights before the layer is built), not stored."""
        return self.direction_weights(gramian, training=False)

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        current = self.inner.direction_weights(gramian, training=training)
        if not self.built:
            return current
        previous = ops.convert_to_tensor(self.lambdas)
        started = ops.convert_to_tensor(self.started) > 0
        lambdas = ops.where(
            started, (1.0 - self.alpha) * previous + self.alpha * current, current
        )
        if training:
            self.lambdas.assign(lambdas)
            self.started.assign(1)
        return lambdas

    def get_config(self) -> dict[str, Any]:
        inner = keras.saving.serialize_keras_object(self.inner)
        # The inner aggregator's configuration only: whether it has been built
        # (and for which shape) is not an argument of this one.
        inner.pop("build_config", None)
        return {**super().get_config(), "inner": inner, "alpha": self.alpha}

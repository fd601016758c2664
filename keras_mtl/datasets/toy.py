"""The two-objective 2-D toy problem of CAGrad, Nash-MTL and FAMO.

Source: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
Multi-task Learning" (CAGrad), NeurIPS 2021, reused with a loss-scale
imbalance by Navon et al., "Multi-Task Learning as a Bargaining Game"
(Nash-MTL), ICML 2022, and Liu, Liu, Stone & Liu, "FAMO: Fast Adaptive
Multitask Optimization", NeurIPS 2023. Those papers plot the paths that
weighting methods take from five start points towards the Pareto front.

Definition, for parameters `x = (x1, x2)` (written here from the papers'
public code, with keras.ops):

    c_up  = max(tanh(x2 / 2), 0)          (upper half plane)
    c_low = max(tanh(-x2 / 2), 0)         (lower half plane)
    g1 = log(max(|(-x1 - 7) / 2 - tanh(-x2)|, 5e-6)) + 6
    g2 = log(max(|(-x1 + 3) / 2 + tanh(-x2) + 2|, 5e-6)) + 6
    q1 = ((x1 - 7)^2 + 0.1 (x2 + 8)^2) / 10 - 20
    q2 = ((x1 + 7)^2 + 0.1 (x2 + 8)^2) / 10 - 20
    L1 = loss_scale * (c_up g1 + c_low q1)
    L2 = c_up g2 + c_low q2

`loss_scale` (0.1 in Nash-MTL and FAMO, 1.0 in CAGrad) makes L1 ten times
smaller than L2: the imbalance that loss weighting should undo.

Pareto set (scaling a loss leaves it unchanged): minimising `w L1 + (1 - w)
L2` in the lower half plane gives `x1 = 7 (2w - 1)`, so `x1` runs over
[-7, 7], and for each `x1` the `x2 < 0` that maximises
`tanh(-x2 / 2) (20 - (49 - x1^2) / 10 - (x2 + 8)^2 / 100)`, found here
numerically (golden-section search). That `x2` is -8.3552 at `x1 = 0` (the
papers draw the front as the segment `x2 = -8.3552`) and about -8.43 at
`x1 = +-7`.

`load("toy")` returns a `ToyProblem` (not `tf.data`): `losses(params)`,
`start_points`, `pareto_set(num)`, `pareto_front(num)`, `tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from keras import ops

LOWER = 5e-6
DEFAULT_LOSS_SCALE = 0.1
# The five start points of Nash-MTL and FAMO (CAGrad used the 1st, (-8.5, -5)
# and the 3rd).
START_POINTS = np.array(
    [[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -0.5], [9.0, -1.0]],
    dtype=np.float32,
)
TASKS = ("f1", "f2")


def toy_losses(params: Any, loss_scale: float = DEFAULT_LOSS_SCALE) -> Any:
    """The two losses `[L1, L2]` at `params`, a tensor of shape `(..., 2)`.

    `params` of shape `(2,)` gives shape `(2,)`; a batch `(N, 2)` gives
    `(N, 2)`. Differentiable (keras.ops), any backend.
    """
    params = ops.convert_to_tensor(params)
    if params.shape[-1] != 2:
        raise ValueError(f"params must have a last axis of 2; got {params.shape}.")
    x1 = params[..., 0]
    x2 = params[..., 1]
    upper = ops.maximum(ops.tanh(0.5 * x2), 0.0)
    lower = ops.maximum(ops.tanh(-0.5 * x2), 0.0)
    g1 = ops.log(ops.maximum(ops.abs(0.5 * (-x1 - 7.0) - ops.tanh(-x2)), LOWER)) + 6.0
    g2 = (
        ops.log(ops.maximum(ops.abs(0.5 * (-x1 + 3.0) + ops.tanh(-x2) + 2.0), LOWER))
        + 6.0
    )
    bowl = 0.1 * ops.square(-x2 - 8.0)
    q1 = (ops.square(-x1 + 7.0) + bowl) / 10.0 - 20.0
    q2 = (ops.square(-x1 - 7.0) + bowl) / 10.0 - 20.0
    loss1 = loss_scale * (g1 * upper + q1 * lower)
    loss2 = g2 * upper + q2 * lower
    return ops.stack([loss1, loss2], axis=-1)


def _best_x2(x1: np.ndarray, iterations: int = 100) -> np.ndarray:
    """For each `x1`, the `x2 < 0` minimising every weighted sum (see module)."""
    level = 20.0 - (49.0 - np.square(x1)) / 10.0

    def gain(x2: np.ndarray) -> np.ndarray:  # to maximise
        return np.tanh(-0.5 * x2) * (level - np.square(x2 + 8.0) / 100.0)

    low = np.full_like(x1, -14.0)
    high = np.full_like(x1, -4.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(iterations):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        left_better = gain(a) > gain(b)
        high = np.where(left_better, b, high)
        low = np.where(left_better, low, a)
    return 0.5 * (low + high)


def pareto_set(num: int = 100) -> np.ndarray:
    """`num` points `(x1, x2)` on the Pareto set, float64 `(num, 2)`, x1 from
    -7 (best L2) to 7 (best L1)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an int >= 2; got {num!r}.")
    x1 = np.linspace(-7.0, 7.0, num)
    return np.stack([x1, _best_x2(x1)], axis=-1)


def pareto_front(num: int = 100, loss_scale: float = DEFAULT_LOSS_SCALE) -> np.ndarray:
    """`num` loss pairs `(L1, L2)` on the Pareto front, float64 `(num, 2)`,
    ordered from the best L2 to the best L1."""
    points = pareto_set(num)
    return np.asarray(
        ops.convert_to_numpy(toy_losses(points, loss_scale)), dtype=np.float64
    )


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """The toy problem with a fixed `loss_scale` (what `load("toy")` returns).

    `losses(params)` -> `(..., 2)` tensor; `start_points` `(5, 2)` float32;
    `pareto_set(num)` / `pareto_front(num)` numpy `(num, 2)`; `tasks` the two
    loss names. Optimise a `keras.Variable` of shape `(2,)` from a start
    point with per-task gradients of `losses`.
    """

    loss_scale: float = DEFAULT_LOSS_SCALE
    name: str = "toy"
    tasks: tuple[str, ...] = TASKS
    start_points: np.ndarray = dataclasses.field(
        default_factory=lambda: START_POINTS.copy()
    )

    def losses(self, params: Any) -> Any:
        """`toy_losses(params, self.loss_scale)`."""
        return toy_losses(params, self.loss_scale)

    def pareto_set(self, num: int = 100) -> np.ndarray:
        """Points `(x1, x2)` on the Pareto set (independent of the scale)."""
        return pareto_set(num)

    def pareto_front(self, num: int = 100) -> np.ndarray:
        """Loss pairs `(L1, L2)` on the Pareto front for this `loss_scale`."""
        return pareto_front(num, self.loss_scale)

    @property
    def info(self) -> dict[str, Any]:
        return {"input": "params", "param_shape": (2,), "loss_scale": self.loss_scale}


def load_toy(loss_scale: float = DEFAULT_LOSS_SCALE) -> ToyProblem:
    """The toy problem; `loss_scale` multiplies L1 (0.1: the papers' setting)."""
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)):
        raise ValueError(f"loss_scale must be a number; got {loss_scale!r}.")
    if not loss_scale > 0:
        raise ValueError(f"loss_scale must be > 0; got {loss_scale!r}.")
    return ToyProblem(loss_scale=float(loss_scale))


__all__ = [
    "DEFAULT_LOSS_SCALE",
    "START_POINTS",
    "ToyProblem",
    "load_toy",
    "pareto_front",
    "pareto_set",
    "toy_losses",
]

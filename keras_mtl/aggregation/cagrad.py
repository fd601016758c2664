"""CAGrad: the best worst-case improvement near the mean gradient."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_iterations
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import (
    positive_or_one,
    project_onto_simplex,
    symmetric_part,
)
from keras_mtl.aggregation._solvers import (
    _KKT_TOL,
    ACTIVE_SET_ROUNDS,
    _iterate,
    _ratio_step,
    _refined_solve,
    _ridge,
    _support_system,
    keep_refined,
    lipschitz_bound,
)
from keras_mtl.aggregation.base import GramianWeightedAggregator

RESCALES = (0, 1, 2)
_NORM_EPS = 1e-7  # floor of ||g_w|| on the Gramian scaled to norm <= 1
_RHO_FLOOR = 1e-12  # floor of the majoriser's radius


@keras.saving.register_keras_serializable(package="keras_mtl")
class CAGrad(GramianWeightedAggregator):
    """Conflict-averse gradient descent: the direction within a ball around
    the mean gradient that maximises the smallest task improvement.

    With $g_0 = \\tfrac1K \\mathbf 1^\\top J$ the mean gradient, CAGrad
    solves $\\max_d \\min_i \\langle g_i, d \\rangle$ subject to
    $\\lVert d - g_0 \\rVert \\le c \\lVert g_0 \\rVert$ through its dual

    $$w^\\star = \\operatorname*{argmin}_{w \\in \\Delta_K}
    w^\\top J g_0 + \\sqrt\\phi\\, \\lVert w^\\top J \\rVert,
    \\qquad \\sqrt\\phi = c\\, \\lVert g_0 \\rVert,$$

    $$d = \\frac{1}{s}\\Big(g_0 + \\frac{\\sqrt\\phi}
    {\\lVert g_{w^\\star} \\rVert}\\, g_{w^\\star}\\Big), \\qquad
    g_w = w^\\top J,$$

    with $s = 1$, $1 + c^2$ or $1 + c$ for `rescale=0, 1, 2` (the official
    code's option; 1 by default). `c = 0` gives the mean; larger `c` moves
    towards the worst-off task (c < 1 keeps the convergence guarantee to a
    minimum of the average loss). Gramian-weighted:
    $d = \\tfrac1s (u + \\tfrac{\\sqrt\\phi}{\\lVert g_w \\rVert} w^\\star)^\\top J$,
    $u = \\tfrac1K \\mathbf 1$, and $f(cJ) = c f(J)$.

    The inner problem (convex, non-smooth only where $g_w = 0$) is solved
    in-graph by a fixed number of accelerated projected-gradient steps on
    the simplex, each on the majoriser
    $\\lVert x \\rVert \\le \\lVert x \\rVert^2 / (2\\rho) + \\rho / 2$ at the
    current radius $\\rho = \\lVert g_w \\rVert$ (a majorise-minimise
    scheme, step $\\rho / \\sqrt\\phi$ on the Gramian scaled to norm 1, with
    momentum restarted whenever the objective increases), then a few
    active-set rounds that solve the optimality conditions on the support in
    closed form (see `_active_set`). The official code uses SciPy's SLSQP
    instead; both find the same minimiser.

    From Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021.

    Args:
        c: radius factor of the ball, in [0, 1).
        rescale: 0 (no rescaling), 1 (divide by `1 + c**2`, default) or
            2 (divide by `1 + c`).
        iterations: number of solver iterations.

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.cagrad import CAGrad

    d = CAGrad(c=0.5)(np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
    # d ~= [0.147, 0.963, 0.963]: TorchJD's CAGrad(c=0.5) result
    # [0.1835, 1.2041, 1.2041] divided by 1 + c**2
    ```
    """

    def __init__(
        self,
        c: float = 0.5,
        rescale: int = 1,
        iterations: int = 200,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        c = float(c)
        if not 0.0 <= c < 1.0:
            raise ValueError(f"CAGrad: c must be in [0, 1); got {c}.")
        if rescale not in RESCALES:
            raise ValueError(
                f"CAGrad: rescale must be one of {RESCALES}; got {rescale!r}."
            )
        self.c = c
        self.rescale = int(rescale)
        self.iterations = check_iterations(iterations, "iterations", "CAGrad")

    def gramian_weights(self, gramian: Any) -> Any:
        gramian = symmetric_part(gramian)
        num = gramian.shape[0]
        bound = lipschitz_bound(gramian)
        # Scale-free problem: work with G / L (eigenvalues <= 1).
        g = gramian / positive_or_one(bound)
        mean = small.full((num,), 1.0 / num, dtype="float32")
        linear = small.matmul(g, mean)  # J g_0, [K]
        radius = self.c * small.sqrt(small.maximum(small.sum(mean * linear), 0.0))
        safe_radius = positive_or_one(radius)

        def times_g(w: Any) -> Any:
            # `@` on a column: run op by op on torch, Keras' `ops.matmul`
            # costs 10 times the product, and `@` has no dispatch at all.
            return (g @ w[:, None])[:, 0]

        def norm(w: Any, g_w: Any = None) -> Any:
            g_w = times_g(w) if g_w is None else g_w
            return small.sqrt(small.relu(small.sum(w * g_w)))

        def objective(w: Any) -> Any:
            return small.sum(w * linear) + radius * norm(w)

        def magnitude(w: Any) -> Any:
            absolute = small.abs(w)
            quadratic = small.sum(absolute * small.matmul(small.abs(g), absolute))
            return small.sum(absolute * small.abs(linear)) + radius * small.sqrt(
                quadratic
            )

        State = tuple[Any, Any, Any, Any]

        def body(_: Any, state: State) -> State:
            # `value` is objective(x), carried from the iteration that made x.
            x, y, t, value = state
            g_y = times_g(y)
            rho = small.maximum(norm(y, g_y), _RHO_FLOOR)
            step = rho / safe_radius
            x_new = project_onto_simplex(y - step * linear - g_y)
            t_new = 0.5 * (1.0 + small.sqrt(1.0 + 4.0 * t * t))
            value_new = objective(x_new)
            restart = value_new > value
            y_new = small.where(
                restart, x_new, x_new + ((t - 1.0) / t_new) * (x_new - x)
            )
            t_new = small.where(restart, 1.0, t_new)
            return x_new, y_new, t_new, value_new

        if num > 1:
            one = small.ones((), dtype="float32")
            start = (mean, mean, one, objective(mean))
            w = _iterate(self.iterations, body, start, moving=2)[0]
            refined = _active_set(g, linear, radius, w, min(num + 1, ACTIVE_SET_ROUNDS))
            w = keep_refined(refined, w, objective, magnitude, num)
        else:
            w = mean
        gw_norm = norm(w)
        coefficient = small.where(
            gw_norm > _NORM_EPS, radius / small.maximum(gw_norm, _NORM_EPS), 0.0
        )
        weights = mean + coefficient * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        return weights

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "iterations": self.iterations,
        }


def _active_set(g: Any, linear: Any, radius: Any, w: Any, rounds: int) -> Any:
    """Active-set rounds for `min_{w in simplex} b^T w + r ||J^T w||` from
    `w`. On a support S with `A = G_SS`, the stationarity conditions
    `b + r G w / rho = mu 1`, `1^T w = 1`, `rho = ||J^T w||` have the closed
    form `w_S = A^-1 (mu 1 - b) / sqrt(e^2 - a f + a r^2)`, with
    `a = 1^T A^-1 1`, `e = 1^T A^-1 b`, `f = b^T A^-1 b` and
    `mu = (e + sqrt(e^2 - a f + a r^2)) / a`. Each round steps towards it as
    far as `w >= 0` allows (the objective is convex, so it decreases along
    the segment) and, when it is feasible, adds the task that breaks the
    optimality conditions most. Fixes the slow tail of the first-order
    iterations when the Gramian is ill-conditioned."""
    num = g.shape[0]
    ridge = _ridge(g)

    def body(_: Any, state: tuple[Any, Any]) -> tuple[Any, Any]:
        w, support = state
        system, ridge_part = _support_system(g, support[None], ridge)
        rhs = small.stack([support, linear * support], axis=-1)[None]
        solution = _refined_solve(system, rhs, ridge_part)[0] * support[:, None]
        p, q = solution[:, 0], solution[:, 1]
        a, e, f = small.sum(p), small.sum(q), small.sum(linear * q)
        disc = e * e - a * f + a * radius * radius
        usable = small.logical_and(small.all(small.isfinite(solution)), disc > 0.0)
        usable = small.logical_and(usable, a > 0.0)
        root = small.sqrt(small.maximum(disc, 1e-30))
        mu = (e + root) / positive_or_one(a)
        candidate = small.where(usable, (mu * p - q) / root * support, w)
        moved, kept, feasible = _ratio_step(w[None], candidate[None], support[None])
        moved, kept, feasible = moved[0], kept[0], feasible[0, 0]
        rho = small.sqrt(small.maximum(small.sum(moved * small.matmul(g, moved)), 0.0))
        grad = linear + radius * small.matmul(g, moved) / small.maximum(rho, _RHO_FLOOR)
        value = small.sum(moved * grad)
        entering = small.one_hot(small.argmin(grad), num, dtype="float32")
        violated = small.min(grad) < value - _KKT_TOL
        grow = small.cast(small.logical_and(feasible, violated), "float32")
        kept = small.maximum(kept, grow * entering)
        w = small.where(usable, moved / small.maximum(small.sum(moved), 1e-30), w)
        return w, small.where(usable, kept, support)

    support = small.cast(w > 0.0, "float32")
    w, _ = _iterate(rounds, body, (w, support), moving=2)
    return w

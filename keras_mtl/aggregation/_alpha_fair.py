"""The alpha-fair weights of Nash-MTL (alpha = 1) and FairGrad.

`alpha_fair_weights(G, alpha)` returns the positive `w` with

    (G w)_i = w_i ** (-1 / alpha)        for every task i,

the stationarity condition of the strictly convex problem

    minimise  F(w) = 1/2 w^T (G + delta I) w + sum_i phi(w_i),   w > 0,
    phi(w) = -log w                                  (alpha = 1),
    phi(w) = -alpha / (alpha - 1) * w ** ((alpha - 1) / alpha)   (otherwise),

(phi' = -w ** (-1/alpha), phi'' > 0). The ridge `delta` (relative to the
largest diagonal entry of G) makes the problem bounded when G is singular
(zero, repeated or opposite gradients); it changes the weights by O(delta)
otherwise. The solver is Newton's method with a vectorised line search
(the best of a fixed ladder of step sizes, never shrinking a weight by
more than 100x in one step), a fixed
number of iterations and no data-dependent Python control flow, so it
traces under XLA.

Scale: G is divided by its largest diagonal entry m before solving; the
weights of G are those of G / m times m ** (-alpha / (alpha + 1)).
"""

from __future__ import annotations

from typing import Any

from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import positive_or_one, symmetric_part

RIDGE = 1e-6
ITERATIONS = 20
_LADDER = 12  # step sizes 1, 1/2, ..., 2 ** -(_LADDER - 1), and 0


def _phi_change(w: Any, ratio: Any, alpha: float) -> Any:
    """`phi(w (1 + ratio)) - phi(w)` without cancellation (`ratio > -1`)."""
    if alpha == 1.0:
        return -small.log1p(ratio)
    exponent = (alpha - 1.0) / alpha
    return (
        -(alpha / (alpha - 1.0))
        * small.power(w, exponent)
        * small.expm1(exponent * small.log1p(ratio))
    )


def normalised_weights(
    gramian: Any, alpha: float, iterations: int = ITERATIONS, ridge: float = RIDGE
) -> Any:
    """The alpha-fair weights of a Gramian whose largest diagonal entry is 1
    (or a zero Gramian)."""
    num = gramian.shape[0]
    eye = small.eye(num, dtype="float32")
    system = symmetric_part(gramian) + ridge * eye
    power = -1.0 / alpha
    # Start from the exact solution for orthogonal gradients (diagonal G).
    w = small.power(small.diagonal(system), -alpha / (alpha + 1.0))
    ladder = small.concatenate(
        [
            small.power(0.5, small.arange(_LADDER, dtype="float32")),
            small.zeros((1,), dtype="float32"),
        ]
    )

    # K is small: products with `system` as broadcast sums (cheaper than
    # matmul when run eagerly, the same under XLA).
    def body(_: Any, w: Any) -> Any:
        system_w = small.sum(system * w[None, :], axis=1)
        w_power = small.power(w, power)
        gradient = system_w - w_power
        hessian = system + eye * (w_power / (alpha * w))[None, :]
        delta = -small.linalg.solve(hessian, gradient[:, None])[:, 0]
        # Largest step keeping every weight above 1% of its current value.
        ratio = delta / w
        limit = small.minimum(1.0, 0.99 / small.maximum(-small.min(ratio), 1e-30))
        t = limit * ladder
        # F(w + t delta) - F(w) for each step size, from the differences
        # (no cancellation near the optimum); the best one (or 0) is taken.
        linear = small.sum(system_w * delta)
        quadratic = small.sum(delta * small.sum(system * delta[None, :], axis=1))
        barrier = small.sum(
            _phi_change(w[None, :], t[:, None] * ratio[None, :], alpha), 1
        )
        change = t * linear + (0.5 * quadratic) * t * t + barrier
        best = small.take(
            t, small.argmin(small.where(small.isnan(change), 0.0, change))
        )
        return w + best * delta

    return small.fori_loop(0, iterations, body, w)


def alpha_fair_weights(
    gramian: Any, alpha: float, iterations: int = ITERATIONS, ridge: float = RIDGE
) -> Any:
    """`w > 0` with `(G w)_i = w_i ** (-1/alpha)` (ridge-regularised), for a
    symmetric positive semi-definite `G` (`[K, K]`, float32)."""
    gramian = small.cast(gramian, "float32")
    scale = positive_or_one(small.max(small.diagonal(gramian)))
    weights = normalised_weights(gramian / scale, alpha, iterations, ridge)
    return weights * small.power(scale, -alpha / (alpha + 1.0))

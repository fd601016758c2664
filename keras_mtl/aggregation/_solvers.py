"""Small in-graph quadratic-programme solvers shared by the aggregators.

Every solver works on a Gramian `G = J J^T` (`[K, K]`, symmetric positive
semi-definite, float32), runs a fixed number of iterations of `keras.ops`
(so it traces under XLA) and has no Python control flow that depends on
data. Both run two phases:

1. accelerated projected gradient (FISTA; Beck & Teboulle 2009) with the
   adaptive gradient restart of O'Donoghue & Candès (2015), unit step on
   `G / L` with `L = min(trace G, max_i sum_j |G_ij|) >= lambda_max(G)`;
2. a few rounds of a primal active-set method written with masks (Wolfe's
   minimum-norm-point algorithm for the simplex, Lawson & Hanson's NNLS
   for the non-negative orthant): solve the KKT system on the current
   support exactly (a ridge-regularised solve plus iterative refinement),
   step towards its solution as far as feasibility allows, and add the most
   violated coordinate when it is feasible.

Phase 2 fixes the support errors phase 1 leaves on ill-conditioned problems
(nearly parallel task gradients), where projected gradient stalls. The
better of the two points (by objective) is returned. On random problems the
result matches an exact float64 solver to ~1e-7 relative; with condition
numbers near 1/eps(float32) errors of ~1e-3 remain (float32 limits).

Public API (stable; used by several aggregators):

- `min_norm_simplex(gramian, iterations=...) -> [K]`:
  `argmin_{w in simplex} w^T G w` (MGDA's min-norm point).
- `nonneg_qp(gramian, linear, iterations=...) -> [..., K]`:
  `argmin_{w >= 0} 1/2 w^T G w + w^T b` for each row `b` of `linear`
  (`[K]` or `[M, K]`), the dual of a projection onto a dual cone (UPGrad,
  DualProj).
- `lipschitz_bound(gramian) -> scalar`: the `L` above (0 for `G = 0`).
- `keep_refined(refined, fista, objective, magnitude, num)`: the choice
  between the two phases' points (the active-set point unless it is worse
  by more than float32 rounding; shared with CAGrad's solver).

Both solvers also take `active_set_rounds` (default `min(K + 1, 5)`).
`cagrad.py` reuses the active-set internals (`_support_system`,
`_refined_solve`, `_ratio_step`, `_ridge`, `_KKT_TOL`) and the loop that
stops at a fixed point when run op by op (`_iterate`).

Called eagerly, every iteration is a Python round trip through `keras.ops`;
inside `tf.function` or XLA a call takes milliseconds. Aggregators called
eagerly on TensorFlow and JAX therefore run through a cached compiled call
(`Aggregator.__call__`). On torch they run op by op, and the loops stop
once an iteration changes nothing (`_iterate`): the same numbers, and a
well-conditioned problem settles in tens of the 200 iterations. Their
operations come from `_small_ops`, which on torch calls torch's own
function for float32 tensors (a third to a fifth of the Keras op's
dispatch cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._eager_cache import runs_op_by_op
from keras_mtl.aggregation._linalg import (
    positive_or_one,
    project_onto_simplex,
    symmetric_part,
)

#: Default FISTA iteration counts: enough for a 1e-6 KKT residual on
#: well-conditioned problems (condition number up to ~1e3) with K <= 50.
MIN_NORM_ITERATIONS = 200
NONNEG_QP_ITERATIONS = 200
#: Default cap on the active-set rounds that follow (each solves K small
#: linear systems; FISTA usually leaves at most a couple of support errors).
ACTIVE_SET_ROUNDS = 5

_RIDGE = 1e-7  # relative regulariser of the active-set systems
_REFINEMENTS = 3  # iterative-refinement steps after each active-set solve
# KKT violation (on the Gramian scaled to norm <= 1) that adds a coordinate.
_KKT_TOL = 1e-7
# Unit roundoff of float32: a sum of n products is exact to n * this times
# the sum of the products' magnitudes (Higham, "Accuracy and Stability of
# Numerical Algorithms", 2002, section 3.1).
_FLOAT32_ROUNDOFF = 2.0**-24


def lipschitz_bound(gramian: Any) -> Any:
    """An upper bound of the largest eigenvalue of a PSD matrix: the smaller
    of its trace and its largest absolute row sum (both are bounds)."""
    trace = small.sum(small.diagonal(gramian))
    row_sum = small.max(small.sum(small.abs(gramian), axis=-1))
    return small.maximum(small.minimum(trace, row_sum), 0.0)


def _iterate(
    iterations: int,
    body: Callable[[int, tuple[Any, ...]], tuple[Any, ...]],
    state: tuple[Any, ...],
    moving: int,
) -> tuple[Any, ...]:
    """`ops.fori_loop(0, iterations, body, state)`, stopped once an
    iteration leaves the first `moving` entries of the state exactly as
    they were: `body` then computes the same values again, so those entries
    end as the full loop leaves them (the later entries, FISTA's momentum
    counter, are not used). The same numbers without the remaining
    iterations: run op by op (on torch about half a millisecond an
    iteration), and compiled by XLA on TensorFlow and JAX as a
    `while_loop` (TensorFlow's 5 active-set rounds of UPGrad at K = 40:
    22.5 ms, most of them after the support had settled). Under
    `torch.compile` the full loop, which it unrolls."""
    if not runs_op_by_op(state[0]):
        if keras.backend.backend() == "torch":
            return small.fori_loop(0, iterations, body, state)
        return _iterate_compiled(iterations, body, state, moving)
    for i in range(iterations):
        new = body(i, state)
        settled = all(
            small.unchanged(after, before)
            for after, before in zip(new[:moving], state[:moving])
        )
        state = new
        if settled:
            break
    return state


def _iterate_compiled(
    iterations: int,
    body: Callable[[int, tuple[Any, ...]], tuple[Any, ...]],
    state: tuple[Any, ...],
    moving: int,
) -> tuple[Any, ...]:
    """`_iterate` as one `ops.while_loop`: the loop variables are the
    iteration count, whether the last iteration changed nothing, and the
    state."""

    def going(i: Any, settled: Any, *state: Any) -> Any:
        return small.logical_and(i < iterations, small.logical_not(settled))

    def step(i: Any, settled: Any, *state: Any) -> tuple[Any, ...]:
        new = tuple(body(i, tuple(state)))
        same = [
            small.all(small.equal(a, b)) for a, b in zip(new[:moving], state[:moving])
        ]
        settled = same[0]
        for other in same[1:]:
            settled = small.logical_and(settled, other)
        return (i + 1, settled, *new)

    start = (small.zeros((), "int32"), small.zeros((), "bool"), *state)
    out = small.while_loop(going, step, start, maximum_iterations=iterations)
    return tuple(out[2:])


def _symmetrise(gramian: Any) -> Any:
    return symmetric_part(small.cast(gramian, "float32"))


def _fista(gradient: Any, project: Any, start: Any, step: Any, iterations: int) -> Any:
    """FISTA with gradient restart on rows of `start` (`[M, K]`).

    `gradient(x)` and `project(x)` act row-wise on `[M, K]` tensors; the
    momentum and its restart are per row.
    """
    rows = start.shape[0]
    ones = small.ones((rows, 1), dtype="float32")

    def body(_: Any, state: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        x, y, t = state
        x_new = project(y - step * gradient(y))
        t_new = 0.5 * (1.0 + small.sqrt(1.0 + 4.0 * t * t))
        restart = small.sum((y - x_new) * (x_new - x), axis=-1, keepdims=True) > 0.0
        beta = small.where(restart, 0.0, (t - 1.0) / t_new)
        t_new = small.where(restart, ones, t_new)
        y_new = x_new + beta * (x_new - x)
        return x_new, y_new, t_new

    x, _, _ = _iterate(iterations, body, (start, start, ones), moving=2)
    return x


def min_norm_simplex(
    gramian: Any,
    iterations: int = MIN_NORM_ITERATIONS,
    active_set_rounds: int | None = None,
) -> Any:
    """`argmin_{w in simplex} w^T G w` for a PSD Gramian `G` (`[K, K]`).

    The weights of the minimum-norm point of the convex hull of the rows of
    `J` (`G = J J^T`): `d = w^T J` is MGDA's common descent direction.
    Scale-invariant in `G`; returns the uniform weights for `G = 0`.

    Args:
        gramian: `[K, K]` symmetric positive semi-definite matrix.
        iterations: number of accelerated projected-gradient steps.
        active_set_rounds: number of exact active-set rounds after them
            (default `min(K + 1, 5)`; 0 disables the refinement).

    Returns:
        `[K]` float32 weights, non-negative, summing to 1.
    """
    gramian = _symmetrise(gramian)
    num = gramian.shape[0]
    start = small.full((1, num), 1.0 / num, dtype="float32")
    if num == 1:
        return start[0]
    bound = lipschitz_bound(gramian)
    # The minimiser does not depend on the scale of G: work with G / L.
    g = gramian / positive_or_one(bound)

    def gradient(x: Any) -> Any:
        return x @ g

    def project(x: Any) -> Any:
        return project_onto_simplex(x[0])[None, :]

    w = _fista(gradient, project, start, 1.0, iterations)[0]
    refined = _active_set_simplex(g, w, _rounds(num, active_set_rounds))

    def objective(x: Any) -> Any:
        return small.sum(x * small.matmul(g, x))

    def magnitude(x: Any) -> Any:
        return small.sum(small.abs(x) * small.matmul(small.abs(g), small.abs(x)))

    return keep_refined(refined, w, objective, magnitude, num)


def keep_refined(
    refined: Any,
    fista: Any,
    objective: Callable[[Any], Any],
    magnitude: Callable[[Any], Any],
    num: int,
) -> Any:
    """The active-set point `refined` or FISTA's point `fista`, by their
    objectives, each known to within its float32 rounding: `(num + 2) u`
    times `magnitude(x)`, the sum of the magnitudes of the objective's
    products at `x` (Higham's bound for sums of products).

    - `refined` clearly better: kept.
    - Within rounding of each other: `refined` unless it is more than twice
      as large (`magnitude`). The active-set rounds solve the KKT system on
      the support exactly, so near the optimum of an ill-conditioned
      problem they are the more accurate (UPGrad at condition number 3e4:
      a plain `<=` kept FISTA's point by the rounding of the moment, 4e-4
      off the optimum). On a (nearly) singular Gramian the support solve
      can grow along its null space, which changes the objective by less
      than rounding but not the point's size: `d = w^T J` of such weights
      overflowed on 1e30-sized, parallel task gradients.
    - `refined` clearly worse (a failed solve): FISTA's point.
    """
    slack = (num + 2) * _FLOAT32_ROUNDOFF
    size_r, size_f = magnitude(refined), magnitude(fista)
    value_r, value_f = objective(refined), objective(fista)
    better = value_r + slack * size_r < value_f - slack * size_f
    tied = value_r <= value_f + slack * (size_r + size_f)
    keep = small.logical_or(better, small.logical_and(tied, size_r <= 2.0 * size_f))
    return small.where(keep, refined, fista)


def _rounds(num: int, rounds: int | None) -> int:
    if rounds is None:
        return min(num + 1, ACTIVE_SET_ROUNDS)
    if rounds < 0:
        raise ValueError(f"active_set_rounds must be >= 0; got {rounds}.")
    return int(rounds)


def _active_set_simplex(g: Any, w: Any, rounds: int) -> Any:
    """A fixed number of rounds of a primal active-set method (Wolfe's
    minimum-norm-point algorithm, written with masks) from `w`: minimise on
    the support (`w_S ∝ G_SS^{-1} 1`), step towards that point as far as
    `w >= 0` allows, and when it is feasible add the most violated
    coordinate."""
    if rounds == 0:
        return w
    ridge = _ridge(g)

    def one_round(w: Any, support: Any) -> tuple[Any, Any]:
        system, ridge_part = _support_system(g, support[None], ridge)
        x = _refined_solve(system, support[None, :, None], ridge_part)[0, :, 0]
        x = x * support
        total = small.sum(x)
        usable = small.logical_and(small.all(small.isfinite(x)), total > 0.0)
        candidate = small.where(usable, x / small.where(usable, total, 1.0), w)
        moved, kept, feasible = _ratio_step(w[None], candidate[None], support[None])
        moved, kept, feasible = moved[0], kept[0], feasible[0, 0]
        # When the candidate is feasible it is optimal on its support: add
        # the coordinate whose gradient is smallest if it breaks the KKT
        # conditions (G w)_j >= w^T G w.
        grad = small.matmul(g, moved)
        value = small.sum(moved * grad)
        violated = small.min(grad) < value - _KKT_TOL
        kept = _add_most_violated(kept, grad, feasible, violated)
        w = small.where(usable, moved, w)
        support = small.where(usable, kept, support)
        return w, support

    w = _active_set_rounds(one_round, w, rounds)
    return w / small.maximum(small.sum(w), 1e-30)


def _ridge(g: Any) -> Any:
    """The regulariser of the active-set systems (relative to the largest
    diagonal entry): keeps `G_SS` invertible, small enough that iterative
    refinement removes its bias."""
    return _RIDGE * small.maximum(small.max(small.diagonal(g)), 1e-20)


def _support_system(g: Any, support: Any, ridge: Any) -> tuple[Any, Any]:
    """Per row of `support` (`[M, K]`): `G_SS + ridge I_S + I_(not S)` and
    its ridge part, both `[M, K, K]` (symmetric positive definite)."""
    eye = small.eye(g.shape[0], dtype="float32")
    mask = support[:, :, None] * support[:, None, :]
    diagonal = (1.0 - support + ridge * support)[:, None, :]
    system = g[None] * mask + eye[None] * diagonal
    ridge_part = eye[None] * (ridge * support)[:, None, :]
    return system, ridge_part


def nonneg_qp(
    gramian: Any,
    linear: Any,
    iterations: int = NONNEG_QP_ITERATIONS,
    active_set_rounds: int | None = None,
) -> Any:
    """`argmin_{w >= 0} 1/2 w^T G w + w^T b` for each row `b` of `linear`.

    With `G = J J^T` and `b = J v`, `v + J^T w*` is the Euclidean projection
    of `v` onto the dual cone `{x : J x >= 0}` of the rows of `J` (UPGrad,
    DualProj). The problem is bounded when `b` lies in the range of `G`,
    which holds for `b = J v`.

    Args:
        gramian: `[K, K]` symmetric positive semi-definite matrix.
        linear: `[K]` or `[M, K]`: one linear term per problem.
        iterations: number of accelerated projected-gradient steps.
        active_set_rounds: number of exact active-set rounds after them
            (default `min(K + 1, 5)`; 0 disables the refinement).

    Returns:
        `[K]` or `[M, K]` (like `linear`) non-negative float32 solutions.
    """
    gramian = _symmetrise(gramian)
    linear = small.cast(linear, "float32")
    vector = len(linear.shape) == 1
    if vector:
        linear = linear[None, :]
    num = gramian.shape[0]
    bound = lipschitz_bound(gramian)
    safe = positive_or_one(bound)
    # Divide the whole objective by L: same minimiser, unit step.
    g = gramian / safe
    b = linear / safe
    start = small.zeros_like(b)

    def gradient(x: Any) -> Any:
        return x @ g + b

    w = _fista(gradient, small.relu, start, 1.0, iterations)
    refined = _active_set_nonneg(g, b, w, _rounds(num, active_set_rounds))

    def objective(x: Any) -> Any:
        return small.sum(x * (0.5 * small.matmul(x, g) + b), axis=-1, keepdims=True)

    def magnitude(x: Any) -> Any:
        terms = 0.5 * small.matmul(small.abs(x), small.abs(g)) + small.abs(b)
        return small.sum(small.abs(x) * terms, axis=-1, keepdims=True)

    w = keep_refined(refined, w, objective, magnitude, num)
    w = small.where(bound > 0.0, w, 0.0)
    return w[0] if vector else w


def _active_set_nonneg(g: Any, b: Any, w: Any, rounds: int) -> Any:
    """Row-wise primal active-set rounds for `min_{w >= 0} 1/2 w^T G w +
    w^T b` (Lawson & Hanson's NNLS, written with masks) from `w`."""
    if rounds == 0:
        return w
    ridge = _ridge(g)

    def one_round(w: Any, support: Any) -> tuple[Any, Any]:
        system, ridge_part = _support_system(g, support, ridge)
        rhs = -(b * support)[:, :, None]
        candidate = _refined_solve(system, rhs, ridge_part)[:, :, 0] * support
        usable = small.all(small.isfinite(candidate), axis=-1, keepdims=True)
        candidate = small.where(usable, candidate, w)
        moved, kept, feasible = _ratio_step(w, candidate, support)
        grad = moved @ g + b
        violated = small.min(grad, axis=-1, keepdims=True) < -_KKT_TOL
        kept = _add_most_violated(kept, grad, feasible, violated)
        return small.where(usable, moved, w), small.where(usable, kept, support)

    return _active_set_rounds(one_round, w, rounds)


def _active_set_rounds(
    one_round: Callable[[Any, Any], tuple[Any, Any]], w: Any, rounds: int
) -> Any:
    """`rounds` rounds of `one_round(w, support) -> (w, support)` from `w`,
    its support the coordinates where it is positive; returns `w`."""
    support = small.cast(w > 0.0, "float32")
    w, _ = _iterate(rounds, lambda _, state: one_round(*state), (w, support), 2)
    return w


def _add_most_violated(kept: Any, grad: Any, feasible: Any, violated: Any) -> Any:
    """The support `kept` (`[..., K]`) with the coordinate of the smallest
    gradient `grad` added where the candidate was `feasible` (optimal on
    its support) and the KKT conditions are `violated`."""
    entering = small.one_hot(
        small.argmin(grad, axis=-1), grad.shape[-1], dtype="float32"
    )
    grow = small.cast(small.logical_and(feasible, violated), "float32")
    return small.maximum(kept, grow * entering)


def _refined_solve(system: Any, rhs: Any, ridge_part: Any) -> Any:
    """Solves `(system - ridge_part) x = rhs` (batched `[M, K, K]`,
    `[M, K, 1]`) by a QR factorisation of the regularised `system` and a
    few steps of iterative refinement with it (iterated Tikhonov), which
    remove most of the ridge's bias and of float32's solve error. QR, not
    `solve`/LU/Cholesky: those raise in eager mode on a numerically
    singular matrix, QR only returns large values (rejected by callers)."""
    exact = system - ridge_part
    q, r = small.linalg.qr(system)
    q_t = small.transpose(q, (0, 2, 1))

    def solve(x: Any) -> Any:
        return small.linalg.solve_triangular(r, q_t @ x, lower=False)

    x = solve(rhs)
    for _ in range(_REFINEMENTS):
        x = x + solve(rhs - exact @ x)
    return x


def _ratio_step(w: Any, candidate: Any, support: Any) -> tuple[Any, Any, Any]:
    """Moves each row of `w` towards `candidate` as far as `w >= 0` allows
    (all the way when the candidate is feasible) and drops the coordinates
    that reach 0 from the support. Returns the new point, the new support
    and whether each row's candidate was feasible (`[M, 1]`)."""
    decreasing = small.logical_and(candidate < 0.0, support > 0.0)
    gap = small.where(decreasing, w - candidate, 1.0)
    ratios = small.where(decreasing, w / gap, 1.0)
    theta = small.clip(small.min(ratios, axis=-1, keepdims=True), 0.0, 1.0)
    moved = w + theta * (candidate - w)
    blocked = small.logical_and(decreasing, ratios <= theta)
    moved = small.where(blocked, 0.0, small.relu(moved))
    support = support * (1.0 - small.cast(blocked, "float32"))
    feasible = small.logical_not(small.any(decreasing, axis=-1, keepdims=True))
    return moved, support, feasible

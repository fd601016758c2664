"""Property checks shared by every aggregator of the registry, driven by the
table of claims in test_properties.py.

Each check takes a `factory` (a fresh aggregator of the alias, built with
the table's arguments) and that alias's `Claims`. An aggregator with state
(variables or a random stream) is checked through twins: two fresh
instances fed the same sequence of Jacobians, transformed for the second
(scaled, rows permuted), so a property of one call becomes a property of
the whole sequence; a seeded one draws the same numbers in both twins.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
from _backend import TENSORFLOW, compiled, to_numpy
from _jacobians import assert_non_conflicting, random_jacobian

EPS32 = float(np.finfo(np.float32).eps)
# Powers of two scale a float32 Jacobian exactly (no overflow or underflow
# at 2**+-100 for entries near 1), and the aggregators divide J by its
# largest entry first: they see the same bits, so the result scales exactly
# but for the final multiplication by s ** scale_degree (a few ulps).
EXACT_FACTORS = (2.0**-100, 2.0**-7, 2.0**100)
# A factor that rounds every entry: the method's accuracy applies.
ROUNDING_FACTORS = (3.0,)
# Eager calls run a cached compiled function: the kernels of graph mode,
# which may fuse and order a few ops differently (a few ulps).
GRAPH_RTOL = 1e-5
TRAIN_TRAIN_EVAL = (True, True, False)


@dataclasses.dataclass(frozen=True)
class Claims:
    """What an aggregator of the registry promises (see test_properties.py).

    - `kwargs`: constructor arguments (a seed for a stochastic method).
    - `accuracy`: its stated accuracy, relative to the direction's norm:
      float32 rounding times a condition factor for a closed form, the
      solver's accuracy for an iterative one. Bounds every comparison of
      two directions that differ by rounding (permuted rows, a rounded
      scale factor, another compiler).
    - `stateful`: a call changes state that the next call reads.
    - `homogeneous`: `f(cJ) = c ** scale_degree f(J)` over a sequence of
      calls ("always"), on the first call only ("first_call"), or not
      claimed (None; also when `scale_degree` is None).
    - `permutation`: permuting the tasks leaves `d` unchanged for every K
      ("any"), for two tasks only ("two_tasks": PCGrad's and GradVac's random
      projection orders), or is not claimed (None).
    - `non_conflicting`: `<d, g_i> >= 0` for every task "always", on the
      "first_call" only (a moving average of such weights afterwards), or
      not claimed (None).
    - `xla`: eager, graph and XLA calls agree at `accuracy`; False for an
      iterative solver or an eigendecomposition, whose XLA and op-by-op
      kernels round differently per CPU (its file compares each run with
      an exact reference instead: `assert_every_run_reaches`), and for a
      random stream (TensorFlow draws other numbers under XLA); eager and
      graph (the same kernels) agree for every method.
    - `finite_examples`: hypothesis examples of the finiteness property.
    - `min_tasks`: fewest tasks the defaults accept (Krum, TrimmedMean).
    """

    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    accuracy: float = 1e-5
    stateful: bool = False
    homogeneous: str | None = "always"
    permutation: str | None = "any"
    non_conflicting: str | None = None
    xla: bool = True
    finite_examples: int = 12
    min_tasks: int = 1


def sequence(num_tasks: int, dim: int = 7, calls: int = 3, seed: int = 0) -> list:
    """`calls` float32 Jacobians `[K, D]` with row norms a factor 10**0.5
    apart at most and one conflicting pair (task 1 against task 0), and
    uniform random task losses for the methods that need them."""
    out = []
    rng = np.random.default_rng(seed)
    for n in range(calls):
        j = random_jacobian(num_tasks, dim, 1000 * seed + n, spread=0.5)
        if num_tasks > 1:
            j[1] = -0.6 * j[0] + 0.8 * j[1]
        losses = rng.uniform(0.5, 2.0, size=num_tasks).astype(np.float32)
        out.append((j, losses))
    return out


def call(aggregator: Any, jacobian: Any, losses: Any, training: bool = True):
    """The direction as float64 numpy (the losses go to the methods that
    need them only)."""
    kwargs = {"losses": losses} if aggregator.needs_losses else {}
    return np.asarray(aggregator(jacobian, training=training, **kwargs), np.float64)


def assert_close(got: Any, expected: Any, rtol: float, label: Any = "") -> None:
    """Elementwise within `rtol`, with an absolute floor of `rtol` times
    the norm of `expected` (an element that is a cancellation carries the
    rounding of the whole direction)."""
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(
        got,
        expected,
        rtol=rtol,
        atol=rtol * max(np.linalg.norm(expected), 1e-37),
        err_msg=str(label),
    )


def assert_homogeneous(factory: Any, claims: Claims, num_tasks: int = 4) -> None:
    """`f(cJ) = c ** p f(J)` with `p` the aggregator's `scale_degree` (the
    claim it makes to `MultiTaskModel`), over a sequence of calls: to a few
    ulps for powers of two, at the method's accuracy for a rounded factor."""
    degree = factory().scale_degree
    assert degree is not None, "no scale_degree: homogeneity is not claimed"
    calls = sequence(num_tasks, calls=3 if claims.homogeneous == "always" else 1)
    factors = [(c, 8 * EPS32) for c in EXACT_FACTORS]
    factors += [(c, claims.accuracy) for c in ROUNDING_FACTORS]
    # The unscaled sequence (a fresh instance, the same calls) is the same
    # for every factor: computed once.
    base = factory()
    unscaled = [call(base, j, losses) for j, losses in calls]
    for factor, rtol in factors:
        scaled = factory()
        for n, ((j, losses), direction) in enumerate(zip(calls, unscaled)):
            expected = direction * factor**degree
            got = call(scaled, (j * np.float32(factor)).astype(np.float32), losses)
            assert_close(got, expected, rtol, (factor, n))


def assert_permutation_invariant(
    factory: Any, claims: Claims, num_tasks: int = 4
) -> None:
    """Permuting the tasks (rows of every Jacobian, and the losses) leaves
    each direction of a sequence unchanged, at the method's accuracy: only
    the order of float32 sums changes."""
    if claims.permutation == "two_tasks":
        num_tasks = 2
    perm = np.random.default_rng(num_tasks).permutation(num_tasks)
    if num_tasks > 1 and np.all(perm == np.arange(num_tasks)):
        perm = perm[::-1]
    base, permuted = factory(), factory()
    for n, (j, losses) in enumerate(sequence(num_tasks, seed=1)):
        expected = call(base, j, losses)
        got = call(permuted, j[perm], losses[perm])
        assert_close(got, expected, claims.accuracy, n)


def conflicting_jacobians(count: int = 6) -> list:
    """Jacobians `[6, 10]` with row norms up to 100 apart and a strongly
    conflicting pair (task 1 nearly opposite task 0)."""
    out = []
    for seed in range(count):
        j = random_jacobian(6, 10, seed, spread=2.0)
        j[1] = -0.5 * j[0] + 0.1 * j[1]
        out.append(j)
    return out


def assert_non_conflicting_directions(factory: Any, claims: Claims) -> None:
    """`<d, g_i> >= -accuracy ||d|| ||g_i||` for every task, with `d`
    non-zero (these Jacobians are not Pareto stationary); for "first_call"
    each Jacobian goes to a fresh aggregator."""
    aggregator = factory()
    for j in conflicting_jacobians():
        if claims.non_conflicting == "first_call":
            aggregator = factory()
        losses = np.ones(len(j), np.float32)
        d = call(aggregator, j, losses)
        assert np.linalg.norm(d) > 0
        assert_non_conflicting(j, d, tol=claims.accuracy)


def _runner(aggregator: Any, jit_compile: Any, input_shapes: Any = None) -> Any:
    """A compiled call of `aggregator` (graph mode, or XLA), training and
    evaluation, its state updated as a traced call updates it
    (`input_shapes`: of the Jacobian and the losses, on TensorFlow)."""
    functions = {}

    def run(j: Any, losses: Any, training: bool) -> np.ndarray:
        if training not in functions:
            if aggregator.needs_losses:
                fn = lambda x, y: aggregator(x, training=training, losses=y)  # noqa: E731
            else:
                fn = lambda x, _: aggregator(x, training=training)  # noqa: E731
            functions[training] = compiled(
                fn,
                state=aggregator,
                jit_compile=jit_compile,
                input_shapes=input_shapes,
                autograph=False,
            )
        out = functions[training](
            keras.ops.convert_to_tensor(j), keras.ops.convert_to_tensor(losses)
        )
        return np.asarray(out, np.float64)

    return run


def assert_runs_agree(factory: Any, claims: Claims, num_tasks: int = 3) -> None:
    """Three training calls and one evaluation call give the same
    directions and the same state eagerly (the cached compiled function),
    in graph mode (within `GRAPH_RTOL`, or the method's accuracy if
    smaller) and, where `claims.xla`, XLA-compiled (within the method's
    accuracy)."""
    runs = {"eager": None, "graph": False}
    # Only TensorFlow compiles otherwise with `jit_compile=True`: `compiled`
    # is `jax.jit` on JAX and the function itself on torch whatever
    # `jit_compile`, so there the graph run is the XLA run, checked at the
    # graph's (tighter) tolerance.
    if claims.xla and TENSORFLOW:
        runs["XLA"] = True
    calls = sequence(num_tasks, dim=6, calls=4, seed=2)
    results = {}
    for label, jit_compile in runs.items():
        aggregator = factory()
        aggregator.build((num_tasks, 6))
        run = None if jit_compile is None else _runner(aggregator, jit_compile)
        out = []
        for n, (j, losses) in enumerate(calls):
            training = n < 3
            if run is None:
                d = call(aggregator, j, losses, training)
            else:
                d = run(j, losses, training)
            out.append((d, [to_numpy(v) for v in aggregator.variables]))
        results[label] = out
    for label, out in results.items():
        rtol = min(GRAPH_RTOL, claims.accuracy) if label == "graph" else claims.accuracy
        for n, ((d, state), (d0, state0)) in enumerate(zip(out, results["eager"])):
            assert_close(d, d0, rtol, (label, n))
            assert len(state) == len(state0)
            for a, b in zip(state, state0):
                if a.dtype.kind == "f":
                    assert_close(a, b, rtol, (label, n, "state"))
                else:
                    np.testing.assert_array_equal(a, b, err_msg=str((label, n)))


class FiniteRunner:
    """Runs one alias on degenerate Jacobians: two training calls, then an
    evaluation call, then every float variable must be finite.

    An aggregator whose state does not have the Jacobian's width runs
    compiled in graph mode, one instance per number of tasks K kept across
    examples (its state then also accumulates degenerate inputs); one
    whose state has that width (a new D per example) runs eagerly, a fresh
    instance per example."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.per_tasks = {}

    def runs_for(self, num_tasks: int) -> tuple[Any, Any]:
        if num_tasks not in self.per_tasks:
            aggregator = self.factory()
            aggregator.build((num_tasks, None))
            shapes = [[num_tasks, None], [num_tasks]]
            train = _runner(aggregator, jit_compile=False, input_shapes=shapes)
            self.per_tasks[num_tasks] = (aggregator, train)
        return self.per_tasks[num_tasks]

    def __call__(self, jacobian: np.ndarray) -> None:
        num_tasks, dim = jacobian.shape
        losses = np.ones(num_tasks, np.float32)
        if self.factory().state_has_jacobian_width:
            aggregator = self.factory()
            outs = [call(aggregator, jacobian, losses, t) for t in TRAIN_TRAIN_EVAL]
        else:
            aggregator, run = self.runs_for(num_tasks)
            outs = [run(jacobian, losses, t) for t in TRAIN_TRAIN_EVAL]
        for out in outs:
            assert out.shape == (dim,)
            assert np.all(np.isfinite(out)), (jacobian, out)
        for variable in aggregator.variables:
            value = to_numpy(variable)
            if value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), (variable.path, value)

"""The one hypothesis strategy of degenerate Jacobians used by every
aggregator's property tests, and shared checks for the tests of Mean, Sum,
MGDA, UPGrad, DualProj, IMTLG, AlignedMTL and CAGrad.

`jacobians()` draws degenerate float32 Jacobians `[K, D]` (K in 1..6, D in
1..20): zero rows, an all-zero matrix, identical, opposite, parallel and
nearly parallel rows, rank-one and rank-deficient matrices, one-hot
(sparse) rows, a single non-zero entry, a non-finite entry (inf or nan),
more tasks than dimensions, and magnitudes near 1e-30 and 1e30 (whole
matrix, or mixed per row).
"""

import itertools

import keras
import numpy as np
from _backend import compiled, tensor
from hypothesis import strategies as st

KINDS = (
    "random",
    "zero_rows",
    "all_zero",
    "identical",
    "opposite",
    "parallel",
    "nearly_parallel",
    "rank_one",
    "rank_deficient",
    "one_hot",
    "single_nonzero",
    "nonfinite",
)
SCALES = (1.0, 1e-30, 1e30, "mixed")


def make_jacobian(kind, scale, num_tasks, dim, seed):
    """One float32 Jacobian of the given kind, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    k = num_tasks
    j = rng.normal(size=(k, dim))
    if kind == "zero_rows":
        j[rng.random(k) < 0.5] = 0.0
    elif kind == "all_zero":
        j[:] = 0.0
    elif kind == "identical":
        j[:] = j[0]
    elif kind == "opposite":
        j[0::2] = j[0]
        j[1::2] = -j[0]
    elif kind == "parallel":
        j = rng.uniform(-3.0, 3.0, size=(k, 1)) * j[0][None, :]
    elif kind == "nearly_parallel":
        j = j[0][None, :] + 1e-4 * j
    elif kind == "rank_one":
        j = rng.normal(size=(k, 1)) @ rng.normal(size=(1, dim))
    elif kind == "rank_deficient":
        rank = max(1, min(k, dim) - 1)
        j = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, dim))
    elif kind == "one_hot":
        j = np.zeros((k, dim))
        j[np.arange(k), rng.integers(0, dim, size=k)] = rng.choice([-1.0, 1.0], k)
    elif kind == "single_nonzero":
        j[:] = 0.0
        j[rng.integers(k), rng.integers(dim)] = rng.choice([-1.0, 1.0])
    elif kind == "nonfinite":
        j.flat[rng.integers(0, j.size)] = rng.choice([np.inf, -np.inf, np.nan])
    if scale == "mixed":
        scale = rng.choice([1e-30, 1.0, 1e30], size=(k, 1))
    with np.errstate(invalid="ignore", over="ignore"):
        return (j * scale).astype(np.float32)


@st.composite
def jacobians(draw, max_tasks=6, max_dim=20):
    """A degenerate float32 Jacobian `[K, D]` (see the module docstring)."""
    num_tasks = draw(st.integers(1, max_tasks))
    dim = draw(st.integers(1, max_dim))
    kind = draw(st.sampled_from(KINDS))
    scale = draw(st.sampled_from(SCALES))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_jacobian(kind, scale, num_tasks, dim, seed)


def random_jacobian(num_tasks, dim, seed, spread=1.0):
    """A generic Jacobian whose row norms differ by up to `10**spread`."""
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(num_tasks, dim))
    j *= 10.0 ** rng.uniform(-spread / 2, spread / 2, size=(num_tasks, 1))
    return j.astype(np.float32)


def conflicting_jacobian(num_tasks, dim, seed):
    """`random_jacobian` (spread 1) with its first row pushed against the
    second, `g_0 - c g_1` for c in [1, 3]: conflicting gradients, and for
    some seeds an ill-conditioned Gramian (seed 3 with 5 tasks in 5
    dimensions: condition number ~3e4)."""
    j = random_jacobian(num_tasks, dim, seed, spread=1.0)
    j[0] -= 2.0 * j[1] * np.random.default_rng(300 + seed).uniform(0.5, 1.5)
    return j


def brute_force_min_norm(jacobian):
    """Exact min-norm point (float64): the best KKT solution over every
    support (equality-constrained least squares on each subset)."""
    j = jacobian.astype(np.float64)
    g = j @ j.T
    k = len(g)
    best, best_w = np.inf, None
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            s = list(support)
            a = np.zeros((r + 1, r + 1))
            a[:r, :r] = g[np.ix_(s, s)]
            a[:r, r] = 1.0
            a[r, :r] = 1.0
            rhs = np.zeros(r + 1)
            rhs[r] = 1.0
            x = np.linalg.lstsq(a, rhs, rcond=None)[0][:r]
            if np.any(x < -1e-12):
                continue
            w = np.zeros(k)
            w[s] = np.maximum(x, 0.0) / np.maximum(x, 0.0).sum()
            value = w @ g @ w
            if value < best - 1e-15:
                best, best_w = value, w
    return best_w @ j


class Graph:
    """Runs an aggregator compiled by the backend, with one function per
    number of tasks K and a fresh instance per K: on TensorFlow a
    `tf.function` in graph mode (no XLA) with one trace per K (D is
    dynamic), on JAX `jax.jit` (one trace per shape).

    The aggregators loop a few hundred times in-graph; eagerly every
    iteration is a Python round trip, so the numeric tests run here."""

    def __init__(self, factory, method="call"):
        self.factory = factory
        self.method = method
        self.functions = {}

    def function(self, num_tasks):
        if num_tasks not in self.functions:
            aggregator = self.factory()
            if self.method == "call":
                shape = [num_tasks, None]
                fn = aggregator
            else:
                shape = [num_tasks, num_tasks]
                fn = getattr(aggregator, self.method)
            self.functions[num_tasks] = compiled(
                fn,
                state=aggregator if self.method == "call" else None,
                input_shapes=[shape],
                autograph=False,
            )
        return self.functions[num_tasks]

    def __call__(self, array):
        array = np.asarray(array, np.float32)
        out = self.function(array.shape[0])(keras.ops.convert_to_tensor(array))
        return np.asarray(out, dtype=np.float64)


def direction(aggregator, jacobian):
    """The aggregator's direction as a float64 numpy array."""
    return np.asarray(aggregator(jacobian), dtype=np.float64)


def jitted(aggregator):
    """The aggregator XLA-compiled by the backend (`tf.function` with
    `jit_compile=True`, `jax.jit`), its state updated after each call."""
    return compiled(
        lambda x: aggregator(x), state=aggregator, jit_compile=True, autograph=False
    )


def assert_finite_direction(run, jacobian):
    """`run(jacobian)` (an aggregator or a `Graph`) is finite with shape [D]."""
    out = np.asarray(run(jacobian))
    assert out.shape == (jacobian.shape[1],)
    assert np.all(np.isfinite(out)), (jacobian, out)


def assert_every_run_reaches(aggregator, run, jacobian, expected, rtol):
    """An eager call on a numpy array (float64: cast inside), an
    XLA-compiled call and the graph-mode `run` each land within `rtol` of
    the exact direction `expected` (float64, computed independently),
    relative to its norm.

    `rtol` is the method's stated accuracy, not a few ulps: the runs are
    never compared with one another. XLA and the op-by-op kernels round
    differently on different CPUs (AVX-512/AMX against AVX2), and an
    iterative solver's fixed iteration count amplifies that rounding in ways
    no one tolerance between two runs covers on every machine; each run's
    distance to the optimum is what the method promises."""
    expected = np.asarray(expected, np.float64)
    eager = direction(aggregator, jacobian.astype(np.float64))
    assert eager.shape == (jacobian.shape[1],)
    compiled = np.asarray(jitted(aggregator)(tensor(jacobian)), np.float64)
    graph = run(jacobian)
    bound = rtol * max(np.linalg.norm(expected), 1e-30)
    for label, got in (("eager", eager), ("XLA", compiled), ("graph", graph)):
        error = np.linalg.norm(got - expected)
        assert error <= bound, (label, error, bound, got, expected)


def assert_config_round_trip(aggregator):
    config = aggregator.get_config()
    clone = type(aggregator).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(aggregator)
    )
    assert type(restored) is type(aggregator)
    assert restored.get_config() == config


def assert_permutation_invariant(run, jacobian, seed=0, rtol=1e-4):
    perm = np.random.default_rng(seed).permutation(jacobian.shape[0])
    a = run(jacobian)
    b = run(jacobian[perm])
    assert np.linalg.norm(a - b) <= rtol * max(np.linalg.norm(a), 1e-30), (a, b)


def assert_homogeneous(
    aggregator, jacobian, factors=(1e-20, 1e-3, 7.0, 1e20), rtol=1e-4
):
    """`f(cJ) = c f(J)` for positive `c`."""
    base = direction(aggregator, jacobian)
    for c in factors:
        scaled = direction(
            aggregator, (c * jacobian.astype(np.float64)).astype(np.float32)
        )
        assert np.linalg.norm(scaled / c - base) <= rtol * np.linalg.norm(base), (
            c,
            base,
            scaled,
        )


def assert_non_conflicting(jacobian, d, tol=1e-5):
    """`<d, g_i> >= -tol * ||d|| * ||g_i||` for every task."""
    j = jacobian.astype(np.float64)
    dots = j @ d
    bounds = tol * np.linalg.norm(d) * np.linalg.norm(j, axis=1)
    assert np.all(dots >= -bounds), (dots, bounds)

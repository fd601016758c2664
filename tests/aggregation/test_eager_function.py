"""Eager calls of an aggregator run through a cached per-instance
compiled function (`Aggregator.__call__`: a `tf.function` on TensorFlow, a
`jax.jit` of `stateless_call` on JAX): the same directions and the same
state updates as a traced call and as the op-by-op eager call."""

import gc
import weakref

import keras
import numpy as np
import pytest
from _backend import TENSORFLOW, not_on_torch
from _jacobians import brute_force_min_norm

import keras_mtl
from keras_mtl.aggregation import _eager_cache

pytestmark = [
    pytest.mark.backend_neutral,
    not_on_torch(
        "no cached compiled eager call: on torch every call runs op by op "
        "(torch.compile would unroll the solvers' fixed loops)"
    ),
]

SEEDED = {"pcgrad", "graddrop", "gradvac"}
# Shorter solves where an argument allows it: the op-by-op reference runs
# every iteration as a Python round trip.
SHORT = {
    "mgda": {"iterations": 10},
    "upgrad": {"iterations": 10},
    "dualproj": {"iterations": 10},
    "cagrad": {"iterations": 10},
    "nash_mtl": {"update_every": 2, "iterations": 3},
    "fairgrad": {"iterations": 3},
}


def _make(name, eager_function=True):
    kwargs = dict(SHORT.get(name, {}))
    if name in SEEDED:
        kwargs["seed"] = 3
    agg = keras_mtl.aggregation.get(name, **kwargs)
    agg.eager_function = eager_function
    return agg


def _calls(num_tasks=3, dim=6):
    """Three training calls and one evaluation call, each with its own
    Jacobian (and task losses, for the loss-aware aggregators)."""
    rng = np.random.default_rng(11)
    for n in range(4):
        j = rng.normal(size=(num_tasks, dim)).astype(np.float32)
        losses = rng.uniform(0.5, 2.0, size=num_tasks).astype(np.float32)
        yield j, losses, n < 3


def _run(agg, call):
    """Directions and variable values after each call."""
    out = []
    for j, losses, training in _calls():
        kwargs = {"losses": losses} if agg.needs_losses else {}
        d = np.asarray(call(agg, j, training, kwargs), np.float64)
        out.append((d, [np.asarray(v) for v in agg.variables]))
    return out


def _eager(agg, j, training, kwargs):
    if TENSORFLOW:
        import tensorflow as tf

        assert tf.executing_eagerly()
    return agg(j, training=training, **kwargs)


def _assert_same_runs(first, second, rtol, atol):
    assert len(first) == len(second)
    for (d1, v1), (d2, v2) in zip(first, second):
        np.testing.assert_allclose(d1, d2, rtol=rtol, atol=atol)
        assert len(v1) == len(v2)
        for a, b in zip(v1, v2):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "name",
    ["nash_mtl", "moco", "gradvac", "grad_norm"],
)
def test_eager_call_equals_the_op_by_op_call(name):
    fast = _make(name)
    slow = _make(name, eager_function=False)
    result = _run(fast, _eager)
    assert _eager_cache.EAGER_FUNCTIONS[fast]  # the fast path was taken
    assert slow not in _eager_cache.EAGER_FUNCTIONS  # and not for the reference
    _assert_same_runs(result, _run(slow, _eager), rtol=1e-4, atol=1e-6)


def test_an_iterative_solver_reaches_its_optimum_on_both_paths():
    """MGDA's fast path and its op-by-op call each reach the exact min-norm
    point at the solver's accuracy. They are not compared with each other:
    compiled and op-by-op kernels round differently on different CPUs, and
    an unconverged iterate (10 iterations) amplified that to 1.3e-4 relative
    on an AVX-512/AMX CPU where an AMD EPYC gave bitwise equality."""
    fast = keras_mtl.aggregation.get("mgda")
    slow = keras_mtl.aggregation.get("mgda")
    slow.eager_function = False
    rng = np.random.default_rng(11)
    for _ in range(2):
        j = rng.normal(size=(3, 6)).astype(np.float32)
        expected = brute_force_min_norm(j)
        bound = 1e-5 * np.linalg.norm(expected)
        for agg in (fast, slow):
            got = np.asarray(agg(j), np.float64)
            assert np.linalg.norm(got - expected) <= bound, (got, expected)
    assert (
        _eager_cache.EAGER_FUNCTIONS[fast] and slow not in _eager_cache.EAGER_FUNCTIONS
    )


def test_new_widths_retrace_and_stay_correct():
    agg = keras_mtl.aggregation.get("mgda")
    rng = np.random.default_rng(5)
    for dim in (4, 9, 2, 9):
        j = rng.normal(size=(3, dim)).astype(np.float32)
        got, want = np.asarray(agg(j), np.float64), brute_force_min_norm(j)
        assert got.shape == want.shape == (dim,)
        # The solver's accuracy on random problems (module _solvers).
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), (got, want)
    assert _eager_cache.EAGER_FUNCTIONS[agg]  # through the cached function


def test_a_changed_argument_is_not_baked_into_the_cached_function():
    agg = keras_mtl.aggregation.get("nash_mtl", iterations=3)
    j = np.diag([3.0, 4.0]).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(agg(j)), np.sqrt(2.0), rtol=1e-4)
    agg.max_norm = 1.0
    np.testing.assert_allclose(np.linalg.norm(agg(j)), 1.0, rtol=1e-5)


def test_cache_does_not_keep_the_aggregator_alive():
    agg = _make("upgrad")
    agg(np.eye(2, dtype=np.float32))
    assert agg in _eager_cache.EAGER_FUNCTIONS
    ref = weakref.ref(agg)
    del agg
    gc.collect()
    assert ref() is None


def test_bad_input_is_still_a_clear_error():
    with pytest.raises(ValueError, match="MGDA expects a Jacobian of shape"):
        _make("mgda")(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="needs the task losses"):
        _make("grad_norm")(np.ones((2, 3), np.float32))


def test_symbolic_calls_are_not_compiled():
    agg = _make("mean")
    out = agg(keras.KerasTensor((3, 5)))
    assert isinstance(out, keras.KerasTensor) and out.shape == (5,)
    assert agg not in _eager_cache.EAGER_FUNCTIONS


class _Recording(keras_mtl.aggregation.Mean):
    """Needs eager values: its trace fails, so it runs op by op."""

    def aggregate(self, jacobian, training=True):
        self.seen = np.array(jacobian)
        return super().aggregate(jacobian, training=training)


class _Broken(keras_mtl.aggregation.Mean):
    def aggregate(self, jacobian, training=True):
        raise ValueError("broken aggregate")


def test_an_untraceable_call_falls_back_to_op_by_op():
    agg = _Recording()
    j = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    np.testing.assert_allclose(agg(j), [2.0, -1.0])
    np.testing.assert_allclose(agg.seen, j / 4.0)  # normalised by the max entry
    assert None in _eager_cache.EAGER_FUNCTIONS[agg].values()  # fell back, remembered
    np.testing.assert_allclose(agg(2.0 * j), [4.0, -2.0])
    with pytest.raises(ValueError, match="broken aggregate"):
        _Broken()(j)

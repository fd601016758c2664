"""Checks of aggregators that keep state (variables, random streams), shared
by the tests of PCGrad, GradDrop, GradVac, ConFIG, NashMTL, FairGrad, MoCo,
DBMTL, ExcessMTL and others: state snapshots, XLA-compiled calls that update
the state, padded Jacobians."""

import keras
import numpy as np
from _backend import compiled, stateless_uniform
from _jacobians import assert_config_round_trip  # noqa: F401 (re-exported)


def jitted(aggregator, training=True):
    """The aggregator XLA-compiled by the backend (`tf.function` with
    `jit_compile=True`, `jax.jit`), its state updated after each call."""
    return compiled(
        lambda x: aggregator(x, training=training), state=aggregator, jit_compile=True
    )


def values(aggregator):
    """Numpy copies of every variable (including random-generator states)."""
    return [np.array(keras.ops.convert_to_numpy(v)) for v in aggregator.variables]


def assert_same_values(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def assert_finite_direction(aggregator, jacobian, calls=2):
    """Output of shape [D] and finite, for `calls` training calls and one
    evaluation call."""
    dim = jacobian.shape[1]
    for _ in range(calls):
        direction = np.asarray(aggregator(jacobian))
        assert direction.shape == (dim,)
        assert np.all(np.isfinite(direction)), (jacobian, direction)
    direction = np.asarray(aggregator(jacobian, training=False))
    assert direction.shape == (dim,)
    assert np.all(np.isfinite(direction)), (jacobian, direction)
    for variable in values(aggregator):
        if variable.dtype.kind == "f":
            assert np.all(np.isfinite(variable))


def eager_uniform(shape, seed, draw):
    """The eager draw number `draw` of `keras.random.uniform` from a
    `SeedGenerator(seed)` (its state is `[seed, draw]`)."""
    return stateless_uniform(shape, [seed, draw])


def padded(jacobian, num_tasks=6, dim=20):
    """`jacobian` with zero rows and columns appended to `[num_tasks, dim]`
    (Gramian-based aggregators give the same direction, zero-padded)."""
    out = np.zeros((num_tasks, dim), np.float32)
    out[: jacobian.shape[0], : jacobian.shape[1]] = jacobian
    return out

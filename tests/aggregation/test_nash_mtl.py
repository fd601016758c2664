"""Tests of Nash-MTL (Navon et al. 2022)."""

import numpy as np
import pytest
from _backend import TENSORFLOW, to_numpy
from _jacobians import jacobians
from _stateful_checks import (
    assert_config_round_trip,
    assert_finite_direction,
    assert_same_values,
    jitted,
    padded,
    values,
)
from hypothesis import given, settings

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.nash_mtl import NashMTL

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(4)
# One compiled NashMTL for the stateless checks (update_every=1: the output
# depends on J only); eager calls run the 20 solver iterations op by op.
_STEP = {}


def nash(jacobian):
    if jacobian.shape not in _STEP:
        agg = NashMTL()
        agg.build(jacobian.shape)
        _STEP[jacobian.shape] = jitted(agg)
    return to_numpy(_STEP[jacobian.shape](jacobian))


def well_conditioned(num_tasks, dim=12):
    """Rows of different norms, pairwise angles well away from 0 and pi."""
    q, _ = np.linalg.qr(RNG.normal(size=(dim, num_tasks)))
    mix = np.eye(num_tasks) + 0.3 * RNG.normal(size=(num_tasks, num_tasks))
    scales = RNG.uniform(0.5, 3.0, size=(num_tasks, 1))
    return (scales * (mix @ q.T)).astype(np.float32)


@pytest.mark.parametrize("num_tasks", [1, 3, 6])
def test_weights_solve_the_bargaining_condition(num_tasks):
    j = well_conditioned(num_tasks)
    g = (j @ j.T).astype(np.float64)
    alpha = to_numpy(NashMTL().gramian_weights(g.astype(np.float32))).astype(np.float64)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(alpha * (g @ alpha), np.ones(num_tasks), atol=2e-3)


def test_orthogonal_gradients_weigh_by_inverse_norm():
    j = np.diag([2.0, 0.5, 4.0]).astype(np.float32)
    alpha = to_numpy(NashMTL().gramian_weights(j @ j.T))
    np.testing.assert_allclose(alpha, [0.5, 2.0, 0.25], rtol=1e-4)
    np.testing.assert_allclose(NashMTL()(j), [1.0, 1.0, 1.0], rtol=1e-4)  # eager


@pytest.mark.parametrize("num_tasks", [2, 5])
def test_direction_has_norm_sqrt_k_and_equalised_progress(num_tasks):
    # Zero-padded rows take no part: |d|^2 = sum_i alpha_i (G alpha)_i = K.
    j = padded(well_conditioned(num_tasks))
    d = nash(j).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(d), np.sqrt(num_tasks), rtol=1e-3)
    # g_i . d = 1 / alpha_i > 0: no task is hurt to first order.
    assert np.all(j[:num_tasks] @ d > 0)


def test_update_every_reuses_the_stored_weights_under_jit():
    # Also checks the compiled step against eager weights.
    agg = NashMTL(update_every=3)
    agg.build((3, 12))
    step = jitted(agg)
    solver = NashMTL()
    stored = []
    for n in range(5):
        j = well_conditioned(3)
        d = to_numpy(step(j))
        weights = to_numpy(agg.task_weights)
        # The stored weights are those of J scaled to a largest row norm of 1.
        scaled = j / np.linalg.norm(j, axis=1).max()
        np.testing.assert_allclose(d, weights @ scaled, rtol=1e-5, atol=1e-6)
        if n % 3 == 0:
            fresh = to_numpy(solver.gramian_weights(scaled @ scaled.T))  # eager
            np.testing.assert_allclose(weights, fresh, rtol=1e-4)
        else:
            np.testing.assert_array_equal(weights, stored[-1])
        stored.append(weights)
    assert to_numpy(agg.step) == 5
    before = values(agg)
    step_eval = agg(j, training=False)  # eager evaluation: no state change
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(step_eval, weights @ scaled, rtol=1e-5, atol=1e-6)


def test_max_norm_clips():
    j = well_conditioned(4)
    d = to_numpy(NashMTL(max_norm=1.0)(j))
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
    full = padded(j)
    full = nash(full)[: j.shape[1]]
    np.testing.assert_allclose(d, full / 2.0, rtol=1e-4, atol=1e-6)


def test_eager_equals_jit():
    j = padded(well_conditioned(4))
    np.testing.assert_allclose(NashMTL()(j), nash(j), rtol=1e-4, atol=1e-6)


def test_config_and_validation():
    assert ALIASES["nash_mtl"] is NashMTL
    assert_config_round_trip(NashMTL(update_every=4, max_norm=1.0, iterations=20))
    for kwargs in ({"update_every": 0}, {"max_norm": -1.0}, {"iterations": 1.5}):
        with pytest.raises(ValueError):
            NashMTL(**kwargs)


# Each example compiles the solver for its K and a fresh instance's eager
# function for its shape (~0.4 s): 15 examples draw most of the 12 kinds of
# degenerate Jacobian in a run (the 48 kind and scale pairs over runs).
@settings(deadline=None, max_examples=15)
@given(jacobians())
def test_degenerate_jacobians_give_finite_directions(jacobian):
    # Default solver, compiled, on the zero-padded Jacobian (same direction).
    d = nash(padded(jacobian))
    assert np.all(np.isfinite(d))
    assert np.all(d[jacobian.shape[1] :] == 0.0)
    # Eager, unpadded (output shape), with a short solve to keep this fast.
    assert_finite_direction(NashMTL(iterations=1), jacobian, calls=1)


class CountingNash(NashMTL):
    """NashMTL that counts the solves that actually run (a Python counter
    would count traces): in a variable on TensorFlow; on JAX, where a
    variable assigned inside the solve's `cond` branch would leak a tracer
    out of the branch, by a `jax.debug.callback`, which runs on the host
    each time the branch runs."""

    def build_state(self, num_tasks, dim):
        super().build_state(num_tasks, dim)
        if TENSORFLOW:
            self.solves = self.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False
            )
        else:
            self.host_solves = [0]

    def gramian_weights(self, gramian):
        if TENSORFLOW:
            self.solves.assign_add(1)
        else:
            import jax

            jax.debug.callback(self._count)
        return super().gramian_weights(gramian)

    def _count(self):
        self.host_solves[0] += 1

    def solve_count(self):
        if TENSORFLOW:
            return int(to_numpy(self.solves))
        import jax

        jax.effects_barrier()  # every callback issued so far has run
        return self.host_solves[0]


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_update_every_skips_the_solve(mode):
    agg = CountingNash(update_every=3)
    agg.build((3, 12))
    call = agg if mode == "eager" else jitted(agg)
    reference = NashMTL()  # update_every=1: a fresh solve at every call
    for n in range(7):
        # A new Jacobian every call: a solve would give new weights.
        j = well_conditioned(3)
        before = to_numpy(agg.task_weights)
        d = np.asarray(call(j))
        # The stored weights are those of J scaled to a largest row norm of 1.
        scaled = j / np.linalg.norm(j, axis=1).max()
        if n % 3 == 0:
            np.testing.assert_allclose(d, np.asarray(reference(j)), rtol=1e-4)
        else:
            np.testing.assert_allclose(d, before @ scaled, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(to_numpy(agg.task_weights), before)
        # Solves at calls 0, 3, 6 only.
        assert agg.solve_count() == n // 3 + 1, n
    assert int(to_numpy(agg.step)) == 7

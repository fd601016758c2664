"""Mixed precision (`mixed_float16` with loss scaling, `mixed_bfloat16`) for
the methods of the registries (`conftest.environment_cases`).

By default one method per path of the step and its state handling
(`conftest.PATH_CASES`): the model casts the task losses and the Jacobian
to float32 and keeps the methods in float32 in one place for every
method, so what a policy can do differently for a method (its variables'
dtypes, loss scaling of its route's gradients, a skipped step's
rollback) follows its paths. KERAS_MTL_FULL_MATRIX=1 trains every method
with state and stand-ins for the stateless ones."""

import keras
import numpy as np
import pytest
from conftest import (
    TASK_LOSSES,
    aggregator_for,
    build_net,
    environment_cases,
    full_matrix,
    weighting_for,
)

import keras_mtl
from keras_mtl.aggregation.base import uses_gramian

POLICIES = ["mixed_float16", "mixed_bfloat16"]
# One method per path (every method with state with
# KERAS_MTL_FULL_MATRIX=1) under `mixed_float16`, whose loss scaling each
# path handles in its own way (the route's gradients, a skipped step's
# rollback). `mixed_bfloat16` only casts, as float16 does: by default one
# case per kind of step (the loss-level step, the Gramian route, the
# Jacobian), all of them with KERAS_MTL_FULL_MATRIX=1.
CASES = environment_cases()


def _kind_of_step(aggregator: str | None) -> str:
    if aggregator is None:
        return "loss-level"
    route = uses_gramian(keras_mtl.aggregation.get(aggregator))
    return "Gramian" if route else "Jacobian"


def _one_per_kind_of_step(cases):
    if full_matrix():
        return cases
    return list({_kind_of_step(a): (w, a) for w, a in reversed(cases)}.values())


POLICY_CASES = [("mixed_float16", w, a) for w, a in CASES] + [
    ("mixed_bfloat16", w, a) for w, a in _one_per_kind_of_step(CASES)
]


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy("float32")


def _model(weighting, aggregator=None, optimizer=None):
    net = build_net(hidden=16)
    model = keras_mtl.MultiTaskModel(
        net, weighting=weighting_for(weighting), aggregator=aggregator_for(aggregator)
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=dict(TASK_LOSSES),
        jit_compile=False,
    )
    return model


def _state(model):
    return [np.array(v.numpy(), dtype="float64") for v in model.variables]


@pytest.mark.parametrize(
    "policy, weighting, aggregator",
    POLICY_CASES,
    ids=[f"{p}-{w}" if a is None else f"{p}-{w}+{a}" for p, w, a in POLICY_CASES],
    indirect=["policy"],
)
def test_every_method_trains_in_float32_maths(policy, weighting, aggregator, digits):
    model = _model(weighting, aggregator)
    # The net computes in the low precision; the method's maths does not.
    assert model.net.get_layer("hidden").compute_dtype != "float32"
    assert model.weighting.compute_dtype == "float32"
    if aggregator is not None:
        assert model.aggregator.compute_dtype == "float32"
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    # Variables (weights, method state) stay float32 (or integer counters).
    for variable in model.variables:
        assert variable.dtype not in ("float16", "bfloat16"), variable.path

    before = _state(model)
    history = model.fit(
        digits.x[:128],
        {k: v[:128] for k, v in digits.y.items()},
        epochs=3,
        batch_size=64,
        shuffle=False,
        verbose=0,
    )
    logs = history.history
    for key in ("loss", "digit_loss", "parity_loss", "digit_weight", "parity_weight"):
        assert np.all(np.isfinite(logs[key])), (key, logs[key])
    for task in ("digit", "parity"):
        assert logs[f"{task}_loss"][-1] < logs[f"{task}_loss"][0], (task, logs)
    after = _state(model)
    assert all(np.all(np.isfinite(v)) for v in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert int(model.train_steps.numpy()) == 6
    assert int(model.skipped_steps.numpy()) == 0


@pytest.mark.backend_neutral  # the loss-scaling paths, on JAX too
@pytest.mark.parametrize("aggregator", ["gradvac", "pcgrad"])
def test_loss_scale_overflow_lowers_the_scale_and_skips(aggregator, digits):
    """An overflowing loss scale: the float16 per-task gradients are
    infinite; the optimizer must see that (the aggregator alone would zero
    them), halve the scale and skip, and no state may change."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam(1e-2), initial_scale=2.0**60
        )
        model = _model("dwa", aggregator, optimizer=optimizer)
        x, y = digits.batch()
        model.train_on_batch(x, y)  # builds everything; overflows
        assert float(optimizer.dynamic_scale.numpy()) == 2.0**59
        before = _state(model)
        weighting_before = _state(model.weighting)
        model.train_on_batch(x, y)
        assert float(optimizer.dynamic_scale.numpy()) == 2.0**58
        after = _state(model)
        # Only the model's step counter moved.
        changed = [
            v.path
            for v, a, b in zip(model.variables, before, after)
            if not np.array_equal(a, b)
        ]
        assert changed == [model.train_steps.path], changed
        for a, b in zip(weighting_before, _state(model.weighting)):
            np.testing.assert_array_equal(a, b)
        assert int(optimizer.iterations.numpy()) == 0

        # A workable scale: the step is taken.
        optimizer.dynamic_scale.assign(2.0**8)
        model.train_on_batch(x, y)
        assert int(optimizer.iterations.numpy()) == 1
        moved = [not np.array_equal(a, b) for a, b in zip(after, _state(model))]
        assert sum(moved) > 2
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.backend_neutral  # the loss-scaling paths, on JAX too
def test_aggregated_update_under_loss_scaling_equals_float32(digits):
    """With an exact float32 net (`float32` layers) under a loss-scale
    optimizer, the scaled-then-unscaled per-task gradients give the update
    of plain float32 training: the loss scale cancels out."""
    batch = digits.batch()
    results = []
    for scaled in (False, True):
        optimizer = keras.optimizers.SGD(0.1)
        if scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, 2.0**10)
        model = _model("uncertainty", "upgrad", optimizer=optimizer)
        model.train_on_batch(*batch)
        results.append(_state(model))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.backend_neutral  # the loss-scaling paths, on JAX too
@pytest.mark.parametrize("policy", POLICIES, indirect=True)
@pytest.mark.parametrize("alias", ["bmtl", "adaptive"])
def test_exponential_weightings_never_overflow(policy, alias):
    """Low-precision losses far past exp's float32 range (exp(89) is
    infinite): the weights put everything on the largest loss, finitely."""
    weighting = keras_mtl.weighting.get(alias)
    dtype = "float16" if policy == "mixed_float16" else "bfloat16"
    losses = keras.ops.convert_to_tensor([60000.0, 1.0, 500.0], dtype=dtype)
    objective, weights = weighting(losses)
    assert keras.backend.standardize_dtype(weights.dtype) == "float32"
    weights = keras.ops.convert_to_numpy(weights)
    assert np.all(np.isfinite(weights)) and np.isfinite(float(objective))
    # K * softmax(L / T): the largest loss takes the whole weight K = 3.
    np.testing.assert_allclose(weights, [3.0, 0.0, 0.0], atol=1e-6)

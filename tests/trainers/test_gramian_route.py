"""The Gramian route: a Gramian-weighted aggregator's training step, which
never forms the `[K, D]` Jacobian (the Gramian summed over the shared
variables' per-task gradients, the weights from it, each variable's rows
combined by them), updates and logs as the same aggregator given the
Jacobian."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TASK_LOSSES, build_net, full_matrix

import keras_mtl
from keras_mtl import gradients
from keras_mtl.aggregation.base import GramianWeightedAggregator, uses_gramian

pytestmark = pytest.mark.backend_neutral

_PERFORMANCE = Path(__file__).parents[2] / "benchmarks" / "performance.py"

# Every Gramian-weighted aggregator; Nash-MTL with its stored weights and
# clipping, FairGrad with a fractional scale degree, PCGrad and GradVac
# seeded (the route and the Jacobian draw the same orders), GradVac with
# targets that move fast and GradNorm and MoDo with weights that do.
GRAMIAN_WEIGHTED = {
    "sum": {},
    "mean": {},
    "upgrad": {},
    "mgda": {},
    "dualproj": {},
    "imtl_g": {},
    "aligned_mtl": {},
    "cagrad": {},
    "nash_mtl": {"update_every": 2, "max_norm": 1.5},
    "fairgrad": {"alpha": 0.5},
    "pcgrad": {"seed": 7},
    "gradvac": {"beta": 0.5, "seed": 7},
    "config": {},
    "grad_norm": {"learning_rate": 0.2},
    "modo": {"gamma": 0.05},
}


def _jacobian_kept(aggregator: GramianWeightedAggregator):
    """The same aggregator made to take the Jacobian: a subclass that
    overrides `aggregate` (as one that records the Jacobian would)."""
    cls = type(aggregator)

    def aggregate(self, jacobian, training=True):
        return cls.aggregate(self, jacobian, training)

    subclass = type(f"JacobianKept{cls.__name__}", (cls,), {"aggregate": aggregate})
    return subclass.from_config(aggregator.get_config())


def test_which_aggregators_take_the_gramian_route():
    for name, kwargs in GRAMIAN_WEIGHTED.items():
        aggregator = keras_mtl.aggregation.get(name, **kwargs)
        assert uses_gramian(aggregator), name
        assert not uses_gramian(_jacobian_kept(aggregator)), name
    # Sign masks and moving averages of the gradients need the Jacobian
    # itself.
    for name in ("graddrop", "moco", "db_mtl", "excess_mtl"):
        assert not uses_gramian(keras_mtl.aggregation.get(name)), name


def _train(aggregator, digits, loss_scale=1.0, steps=3):
    net = build_net(seed=3)
    model = keras_mtl.MultiTaskModel(net, aggregator=aggregator)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1 / loss_scale),
        loss=TASK_LOSSES,
        loss_weights={"digit": loss_scale, "parity": loss_scale},
    )
    logs = [
        model.train_on_batch(*digits.batch(64 * i), return_dict=True)
        for i in range(steps)
    ]
    return [np.array(v) for v in model.trainable_variables], logs


def _assert_same_training(route, kept):
    (route_values, route_logs), (kept_values, kept_logs) = route, kept
    for a, b in zip(route_values, kept_values):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)
    for a, b in zip(route_logs, kept_logs):
        for key in ("digit_weight", "parity_weight", "grad_cosine_min"):
            # The Jacobian's effective weights are a least-squares fit.
            np.testing.assert_allclose(a[key], b[key], rtol=2e-3, atol=1e-5)


# The route is the same keras.ops code for every Gramian-weighted
# aggregator and on both backends (only the rows' origin differs); what
# differs between aggregators is `gramian_weights`, checked for each
# against its direction from the Jacobian in
# tests/aggregation/test_gramian_weights_name.py. So five train here by
# default: FairGrad (a fractional scale degree), GradVac (a random draw and
# a state update inside the route), GradNorm (an update that reads the
# losses and the Gramian's scale), MoDo (weights of no scale degree, read
# at the Gramian's scale), Nash-MTL (stored weights, clipping) and UPGrad
# (a solver); KERAS_MTL_FULL_MATRIX=1 trains every one.
ROUTE_CHECKS = (
    sorted(GRAMIAN_WEIGHTED)
    if full_matrix()
    else ["fairgrad", "grad_norm", "gradvac", "modo", "nash_mtl", "upgrad"]
)


@pytest.mark.parametrize("name", ROUTE_CHECKS)
def test_route_trains_as_the_jacobian(digits, name):
    aggregator = keras_mtl.aggregation.get(name, **GRAMIAN_WEIGHTED[name])
    kept = _jacobian_kept(aggregator)
    _assert_same_training(_train(aggregator, digits), _train(kept, digits))


# Gradients of ~1e22 overflow a float32 Gramian, of ~1e-15 underflow it:
# the route's rescaled branch (the largest entry scaled to 1) runs then.
# GradNorm's update steps by the gradient norms and MoDo's by gamma times
# the Gramian, which they must read at their scale (the Gramian's `unit`),
# not the rescaled Gramian's: their step sizes are set for that scale
# (read at the rescaled Gramian's they would move nothing, or everything).
@pytest.mark.parametrize(
    "name, loss_scale",
    [
        (name, scale)
        for name in ("fairgrad", "nash_mtl", "upgrad")
        for scale in (1e22, 1e-15)
    ]
    + [("grad_norm", 1e22), ("modo", 1e-15)],
)
def test_route_rescales_overflowing_and_underflowing_gramians(digits, name, loss_scale):
    kwargs = dict(GRAMIAN_WEIGHTED[name])
    if name == "grad_norm":
        kwargs["learning_rate"] = 0.2 / loss_scale
    if name == "modo":  # gamma (G + rho) as at scale 1 with gamma 0.05, rho 0.1
        kwargs.update(gamma=0.05 / loss_scale**2, rho=0.1 * loss_scale**2)
    aggregator = keras_mtl.aggregation.get(name, **kwargs)
    kept = _jacobian_kept(aggregator)
    route = _train(aggregator, digits, loss_scale, steps=2)
    for log in route[1]:
        assert np.isfinite(log["loss"]) and np.isfinite(log["digit_weight"])
    _assert_same_training(route, _train(kept, digits, loss_scale, steps=2))
    if name == "grad_norm":  # the weights moved
        weights = keras.ops.convert_to_numpy(aggregator.task_weights)
        assert np.abs(weights - 1.0).max() > 0.01, weights
    if name == "modo":  # the weights moved, not to a vertex
        weights = keras.ops.convert_to_numpy(aggregator.lambdas)
        assert 1e-3 < np.abs(weights - 0.5).max() < 0.49, weights


def _representation_model(aggregator, jit_compile="auto"):
    trunk = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="relu")], name="trunk"
    )
    inputs = keras.Input((16,))
    heads = keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(10, activation="softmax")(inputs),
            "parity": keras.layers.Dense(1, activation="sigmoid")(inputs),
        },
        name="heads",
    )
    model = keras_mtl.MultiTaskModel(trunk=trunk, heads=heads, aggregator=aggregator)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=TASK_LOSSES, jit_compile=jit_compile
    )
    return model


def _train_representation(aggregator, digits, steps=3):
    model = _representation_model(aggregator)
    logs = [
        model.train_on_batch(*digits.batch(64 * i), return_dict=True)
        for i in range(steps)
    ]
    return [np.array(v) for v in model.trainable_variables], logs


def test_route_in_representation_mode_trains_as_the_jacobian(digits):
    # The rows are the gradients of the trunk's output z, [K, B * R].
    aggregator = keras_mtl.aggregation.get("upgrad")
    keras.utils.set_random_seed(5)
    route = _train_representation(aggregator, digits)
    keras.utils.set_random_seed(5)
    kept = _train_representation(_jacobian_kept(aggregator), digits)
    _assert_same_training(route, kept)


def test_route_in_representation_mode_with_a_run_time_batch_size(digits):
    # `fit` on a tf.data pipeline with a remainder batch: the step is traced
    # with the batch size unknown, so the representation's rows `[B * R]`
    # have no static size, and the route must not need one.
    import tensorflow as tf

    x, y = digits.batch(0, 200)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    assert data.element_spec[0].shape[0] is None
    aggregator = keras_mtl.aggregation.get("upgrad")
    trained = []
    for agg in (aggregator, _jacobian_kept(aggregator)):
        keras.utils.set_random_seed(5)
        model = _representation_model(agg, jit_compile=True)
        history = model.fit(data, epochs=2, verbose=0, shuffle=False).history
        assert np.all(np.isfinite(history["loss"])), history
        trained.append([np.array(v) for v in model.trainable_variables])
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)


@pytest.mark.parametrize("scale", [1.0, 1e25, 1e-25])
def test_safe_gramian_is_the_gramian_of_the_rows_over_its_divisor(scale):
    rng = np.random.default_rng(0)
    # A large block too: its Gramian is summed pair by pair on JAX, and on
    # TensorFlow at K <= 3 (aggregation._linalg.takes_pairwise).
    rows = [rng.normal(size=(3, 7)), rng.normal(size=(3, 4, 2))]
    rows.append(rng.normal(size=(3, 70_000)))
    blocks = [
        list(keras.ops.convert_to_tensor((r * scale).reshape(3, -1), "float32"))
        for r in rows
    ]
    gramian, divisor = gradients.safe_gramian(blocks)
    jacobian = np.concatenate([r.reshape(3, -1) for r in rows], axis=1)
    expected = jacobian @ jacobian.T  # float64, of the unscaled rows
    divisor = float(keras.ops.convert_to_numpy(divisor))
    got = keras.ops.convert_to_numpy(gramian) * (divisor / scale) ** 2
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if scale == 1.0:  # the raw Gramian when it is representable
        assert divisor == 1.0
    else:  # else rescaled, by the largest absolute entry
        np.testing.assert_allclose(divisor, np.abs(jacobian).max() * scale, rtol=1e-6)


def test_narrow_rows_are_rescaled_always_on_tensorflow_only():
    """Rows of fewer than `_linalg.PAIRWISE_FROM` columns in all: on
    TensorFlow the rescaled Gramian without a branch (`rescales_always`),
    elsewhere the raw one; the same Gramian of the rows either way."""
    from keras_mtl.aggregation import _linalg

    rng = np.random.default_rng(1)
    rows = rng.normal(size=(3, 300)) * 4.0
    blocks = [list(keras.ops.convert_to_tensor(rows, "float32"))]
    assert not gradients.rescales_always(_linalg.PAIRWISE_FROM)
    assert not gradients.rescales_always(None)
    gramian, divisor = gradients.safe_gramian(blocks)
    divisor = float(keras.ops.convert_to_numpy(divisor))
    if keras.backend.backend() == "tensorflow":
        assert gradients.rescales_always(300)
        np.testing.assert_allclose(divisor, np.abs(rows).max(), rtol=1e-6)
    else:
        assert not gradients.rescales_always(300) and divisor == 1.0
    got = keras.ops.convert_to_numpy(gramian) * divisor**2
    np.testing.assert_allclose(got, rows @ rows.T, rtol=1e-5, atol=1e-4)


# A small block and a large one (its products taken pair by pair on JAX,
# and on TensorFlow at K <= 3).
@pytest.mark.parametrize("columns", [5, 70_000])
def test_safe_gramian_of_non_finite_rows_is_finite(columns):
    block = np.ones((2, columns), "float32")
    block[1, 3] = np.inf
    block[0, 1] = np.nan
    gramian, _ = gradients.safe_gramian([list(keras.ops.convert_to_tensor(block))])
    # The non-finite entries count as 0, as `Aggregator.call` does.
    n = columns
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gramian),
        [[n - 1, n - 2], [n - 2, n - 1]],
        rtol=1e-6,
    )


# The performance suite's MLP (width 128, three trunk layers) with K = 6
# tasks and `a:sum`, one XLA training step.
_MANY_TASKS = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("performance", sys.argv[1])
performance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(performance)
runner = performance.Runner(
    performance.build("a:sum", "mlp", 128, 6, True), performance.dataset("mlp", 6)
)
logs = runner.step()
runner.sync(logs)
assert np.isfinite(float(np.asarray(logs["loss"])))
print("trained")
"""


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow's XLA; a process of its own, run from the TensorFlow pass",
)
def test_many_tasks_compile_under_xla_defaults():
    """A Gramian-route step with K = 6 tasks compiles and runs under XLA
    with its default (LLVM) optimisation. Rescaling the Gramian row by row
    once made TensorFlow's LLVM compile grow exponentially with K (over 3
    minutes at K = 4, 20+ at K = 8, against seconds now). scripts/test.sh
    turns LLVM's optimisations off, which hides such a blow-up, so this
    runs in a process without that setting; the timeout only stops a
    compile that does not end."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run(
        [sys.executable, "-c", _MANY_TASKS, str(_PERFORMANCE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained" in done.stdout

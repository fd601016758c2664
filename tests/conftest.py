"""Shared fixtures: real offline data (scikit-learn digits) and tiny nets.

Two tasks on the 8x8 digit images: "digit" (10 classes, sparse categorical
cross-entropy) and "parity" (the digit is odd, binary cross-entropy).
"""

import gc
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_mtl  # noqa: E402

# Python's cyclic collector, in each pytest process: a full collection
# walks every object alive, the backends' modules and every model built so
# far, ~0.4-1.5 s each late in a pass. Measured in the TensorFlow pass
# (gc.callbacks): 59 s of its two workers' 772 s of CPU, 49 full
# collections. The imported modules are moved out of its reach (`freeze`)
# and it runs less often; cycles are still collected. Then: 27 s in 22 full
# collections, and the same peak memory (four test files: 3.15 GB against
# 3.18 GB).
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 20, 100)

NUM_SAMPLES = 512  # 8 batches of 64: a few epochs take well under a second
BATCH_SIZE = 64
TASKS = ["digit", "parity"]
TASK_LOSSES = {
    "digit": "sparse_categorical_crossentropy",
    "parity": "binary_crossentropy",
}
TASK_METRICS = {"digit": ["accuracy"], "parity": ["accuracy"]}


class Digits:
    """The digits data: `x` float32 `(N, 64)` in [0, 1], `y` a dict of targets."""

    def __init__(self, num_samples: int = NUM_SAMPLES) -> None:
        data = load_digits()
        self.x = (data.data[:num_samples] / 16.0).astype("float32")
        labels = data.target[:num_samples]
        self.y = {
            "digit": labels.astype("int32"),
            "parity": (labels % 2).astype("float32"),
        }

    def batch(self, start: int = 0, size: int = BATCH_SIZE):
        """One fixed batch `(x, y)`."""
        end = start + size
        return self.x[start:end], {k: v[start:end] for k, v in self.y.items()}


def pytest_collection_modifyitems(config, items):
    """Under a backend other than TensorFlow only the tests marked
    `backend_neutral` run (the rest use TensorFlow itself: tf.function,
    GradientTape, tf.distribute), but for their hypothesis property tests;
    `scripts/test.sh` runs them under JAX."""
    if keras.backend.backend() == "tensorflow":
        return

    def runs_here(item) -> bool:
        # Hypothesis property tests check the maths, the same keras.ops code
        # on every backend: they run in the TensorFlow pass only (on JAX
        # each example compiles afresh: 12 min against 4 for the rest).
        return item.get_closest_marker("backend_neutral") is not None and not getattr(
            getattr(item, "obj", None), "is_hypothesis_test", False
        )

    keep = [item for item in items if runs_here(item)]
    dropped = [item for item in items if not runs_here(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


@pytest.fixture(scope="session")
def digits() -> Digits:
    return Digits()


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def build_net(
    hidden: int = 32,
    outputs: str = "dict",
    kernel_regularizer=None,
    seed: int = 0,
    regression: bool = False,
) -> keras.Model:
    """A tiny functional net `(N, 64) -> {digit, parity}`.

    `outputs`: "dict" (outputs keyed by task) or "list" ([digit, parity],
    named by their layers). `regression=True` gives both heads one linear
    unit (for "mse" on integer targets).
    """
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(
        hidden,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        kernel_regularizer=kernel_regularizer,
        name="hidden",
    )(inputs)
    init = keras.initializers.GlorotUniform(seed=seed + 1)
    if regression:
        digit = keras.layers.Dense(1, kernel_initializer=init, name="digit")(h)
        parity = keras.layers.Dense(1, kernel_initializer=init, name="parity")(h)
    else:
        digit = keras.layers.Dense(
            10, activation="softmax", kernel_initializer=init, name="digit"
        )(h)
        parity = keras.layers.Dense(
            1, activation="sigmoid", kernel_initializer=init, name="parity"
        )(h)
    if outputs == "list":
        return keras.Model(inputs, [digit, parity], name="list_net")
    return keras.Model(inputs, {"digit": digit, "parity": parity}, name="dict_net")


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class SubclassedNet(keras.Model):
    """A subclassed (not functional) net: its outputs are unknown before a call."""

    def __init__(self, hidden: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden, activation="relu")
        self.digit = keras.layers.Dense(10, activation="softmax")
        self.parity = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x):
        h = self.hidden(x)
        return {"digit": self.digit(h), "parity": self.parity(h)}


def one_alias_per_class(registry) -> list[str]:
    """The aliases of a registry module (`keras_mtl.weighting` or
    `keras_mtl.aggregation`), one per class (GradNorm has two aliases):
    every-method tests run each method once."""
    return sorted({registry.ALIASES[n]: n for n in registry.names()}.values())


# The methods without variables that stand for all of them in the full
# matrix of `environment_cases` (the two the project was founded on, and
# UPGrad).
STATELESS_STAND_INS = ("adaptive", "bmtl", "upgrad")
# The weightings that `environment_cases` also trains alone (the loss-level
# step, no aggregator): the stand-ins, and Uncertainty, whose learned
# parameters get their gradient from the loss-level objective itself.
LOSS_LEVEL_CASES = ("adaptive", "bmtl", "uncertainty")

# The suites that train methods in an environment (tf.distribute,
# kill-and-resume, mixed precision, JAX data parallelism, the TensorFlow/JAX
# parity) train by default one method per path of `step_paths` (what the
# step and its state handling do differently for a method), and every
# method with KERAS_MTL_FULL_MATRIX=1 (`full_matrix`). These take every
# path between them (`uncovered_paths` is empty for them; checked by the
# suites): Adaptive (no variables, epoch hooks), Uncertainty (trainable
# variables), DWA (state, an epoch history) and RLW (a random stream);
# PCGrad (the Gramian route with a random stream), GradNorm (the Gramian
# route with state, reading the task losses), DB-MTL (the Jacobian route
# with state of the Jacobian's width and transformed task terms) and
# GradDrop (the Jacobian route with a random stream).
PATH_WEIGHTINGS = ("adaptive", "uncertainty", "dwa", "rlw")
PATH_AGGREGATORS = ("pcgrad", "gradnorm", "db_mtl", "graddrop")
# `environment_cases` by default: each path aggregator with a path
# weighting, a weighting with trainable variables beside an aggregator (its
# gradient is then the heads' objective's, not the loss-level step's), and
# the loss-level step with a weighting with trainable variables (their
# gradient is divided among replicas, as the net's is).
PATH_CASES = (
    ("uncertainty", None),
    ("adaptive", "gradnorm"),
    ("dwa", "db_mtl"),
    ("rlw", "graddrop"),
    ("uncertainty", "pcgrad"),
)


def full_matrix() -> bool:
    """Whether KERAS_MTL_FULL_MATRIX=1: the environment suites then train
    every method (see `PATH_WEIGHTINGS`), not one per path of the step,
    and tests/test_zoo.py runs its whole matrix."""
    return os.environ.get("KERAS_MTL_FULL_MATRIX", "") == "1"


def step_paths(alias: str) -> set[str]:
    """The paths a method (a weighting's or an aggregator's alias) takes
    through the training step and its state handling, e.g. "Gramian
    route: state".

    A weighting: its trainable variables (learned through the objective),
    other state (rolled back on a skipped step, kept for an absent task),
    a random stream (a seed generator saved with the weights), epoch hooks
    (`EpochDriver`) and an epoch history (`EpochLossHistory`, with its own
    task axes). An aggregator: its route (the Gramian route for a
    `uses_gramian` aggregator, else the Jacobian) and, on that route, its
    state, random stream, state of the Jacobian's width, transformed task
    terms (`task_terms`) and whether it reads the task losses.
    """
    from keras_mtl._compat import flatten_layers
    from keras_mtl.aggregation.base import Aggregator, uses_gramian
    from keras_mtl.weighting._epoch_history import EpochLossHistory
    from keras_mtl.weighting.base import Weighting

    if alias in keras_mtl.weighting.ALIASES:
        method = weighting_for(alias)
        method.build((2,))
        part, paths = "weighting", set()
        if type(method).on_epoch_begin is not Weighting.on_epoch_begin:
            paths.add("epoch hooks")
        sublayers = flatten_layers(method, include_self=False)
        if any(isinstance(layer, EpochLossHistory) for layer in sublayers):
            paths.add("epoch history")
    else:
        method = keras_mtl.aggregation.get(alias)
        method.build((2, 8))
        part = "Gramian route" if uses_gramian(method) else "Jacobian route"
        paths = {""}
        if method.state_has_jacobian_width:
            paths.add("state of width D")
        if type(method).task_terms is not Aggregator.task_terms:
            paths.add("transformed task terms")
        if method.needs_losses:
            paths.add("reads the losses")
    generator = getattr(method, "seed_generator", None)
    seed_state = set() if generator is None else {id(generator.state)}
    if generator is not None:
        paths.add("random stream")
    if method.trainable_variables:
        paths.add("trainable variables")
    if any(id(v) not in seed_state for v in method.non_trainable_variables):
        paths.add("state")
    return {f"{part}: {p}" if p else part for p in paths}


def uncovered_paths(aliases, among=None) -> dict[str, str]:
    """The paths of `step_paths` that a method of `among` (default: one
    alias per class of both registries) takes and none of `aliases` does,
    each with such a method (empty if they take every path)."""
    taken = set().union(*(step_paths(alias) for alias in aliases))
    if among is None:
        among = [
            alias
            for registry in (keras_mtl.weighting, keras_mtl.aggregation)
            for alias in one_alias_per_class(registry)
        ]
    missing = {}
    for alias in among:
        for path in sorted(step_paths(alias) - taken):
            missing.setdefault(path, alias)
    return missing


def _has_variables(method, shape) -> bool:
    method.build(shape)
    return bool(method.variables)


def environment_cases(full: bool | None = None) -> list[tuple[str, str | None]]:
    """The (weighting, aggregator) cases of the suites that train methods in
    an environment: `tf.distribute`, kill-and-resume, mixed precision.

    By default `PATH_CASES`: one method per path of `step_paths`, which is
    what the environment can treat differently. Every other method is a
    function of the task losses or gradients and of variables like those
    of a method in the cases; the model computes its inputs (all-reduced
    across replicas, cast to float32), applies its result and saves,
    restores and rolls back its variables by the same code for every
    method, so the path's method stands for it. Each method's maths has
    its own tests on both backends.

    With `full` (default: `full_matrix()`, KERAS_MTL_FULL_MATRIX=1) every
    method that owns variables (histories, counters, learned parameters,
    random-generator states) trains in a case: each aggregator with a
    weighting (cycling through all of them, so each weighting with
    variables is in a pair), and `LOSS_LEVEL_CASES` alone, for the
    loss-level step (a weighting with variables left out of the pairs
    would train alone too); of the methods without variables only
    `STATELESS_STAND_INS`; then the default cases not among those. A
    weighting's state is updated by the same code with or without an
    aggregator, so its pair covers it.
    """
    weightings = one_alias_per_class(keras_mtl.weighting)
    aggregators = one_alias_per_class(keras_mtl.aggregation)
    assert set(STATELESS_STAND_INS) <= set(weightings) | set(aggregators)
    assert set(LOSS_LEVEL_CASES) <= set(weightings)
    path_methods = {m for case in PATH_CASES for m in case if m is not None}
    missing = uncovered_paths(path_methods)
    assert not missing, f"no case of PATH_CASES takes these paths: {missing}"
    if not (full_matrix() if full is None else full):
        return list(PATH_CASES)

    def kept(alias: str, method, shape) -> bool:
        return alias in STATELESS_STAND_INS or _has_variables(method, shape)

    cycle = itertools.cycle(weightings)
    pairs = [
        (next(cycle), a)
        for a in aggregators
        if kept(a, keras_mtl.aggregation.get(a), (2, 8))
    ]
    paired = {w for w, _ in pairs}
    alone = [
        (w, None)
        for w in weightings
        if w in LOSS_LEVEL_CASES
        or (w not in paired and kept(w, weighting_for(w), (2,)))
    ]
    cases = alone + pairs
    return cases + [case for case in PATH_CASES if case not in cases]


def aggregator_for(alias: str | None):
    """An aggregator from its alias (None stays None), with the arguments the
    environment suites need.

    SDMGrad with LibMTL's step (5, momentum 0.5) does not converge within
    its 20 warm-started iterations: its iterate oscillates, and the different
    float32 rounding of a 2-replica reduction (or of XLA against op-by-op
    kernels) grows over the steps into different weights (0.55 apart after
    six steps). The suites check the environment, not that sensitivity, so
    they run it with a step at which the iterate converges."""
    if alias == "sdmgrad":
        return keras_mtl.aggregation.get("sdmgrad", step_size=1.0)
    return alias


def weighting_for(alias: str):
    """A weighting from its alias, with the arguments it needs."""
    if alias == "fixed":
        return keras_mtl.weighting.get("fixed", weights=[1.0, 0.5])
    if alias == "rlw":
        return keras_mtl.weighting.get("rlw", seed=7)
    return keras_mtl.weighting.get(alias)


def build_model(
    weighting="equal",
    net=None,
    optimizer=None,
    loss=None,
    metrics=None,
    on_nonfinite: str = "raise",
    jit_compile=False,
    **compile_kwargs,
) -> keras_mtl.MultiTaskModel:
    """A compiled MultiTaskModel around `net` (default: `build_net()`)."""
    if isinstance(weighting, str):
        weighting = weighting_for(weighting)
    model = keras_mtl.MultiTaskModel(
        net if net is not None else build_net(),
        weighting=weighting,
        on_nonfinite=on_nonfinite,
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=loss or dict(TASK_LOSSES),
        metrics=metrics,
        jit_compile=jit_compile,
        **compile_kwargs,
    )
    return model


@pytest.fixture
def task_losses() -> dict:
    """The compile loss dict of the two digit tasks (a fresh copy)."""
    return dict(TASK_LOSSES)


@pytest.fixture
def task_metrics() -> dict:
    return {k: list(v) for k, v in TASK_METRICS.items()}


@pytest.fixture
def make_net():
    return build_net


@pytest.fixture
def make_subclassed_net():
    return SubclassedNet


@pytest.fixture
def make_model():
    return build_model


def variable_values(variables) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


@pytest.fixture
def values_of():
    """`values_of(variables)`: numpy copies of the variables' values."""
    return variable_values

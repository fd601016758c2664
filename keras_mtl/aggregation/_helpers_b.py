"""Shared pieces of the conflict-surgery and stateful aggregators (PCGrad,
GradDrop, GradVac, ConFIG, Nash-MTL, FairGrad, MoCo, DB-MTL, ExcessMTL).

Private: argument checks, scale-safe row arithmetic, an aggregator base with
a saved random stream, and an aggregator base whose state lives in the
Jacobian's own (un-normalised) units.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras
from keras import ops

from keras_mtl._seed_state import SavesSeedGeneratorState
from keras_mtl.aggregation.base import Aggregator


def check_number(
    value: Any,
    name: str,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in `[low, high]` (ends open when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a number; got {value!r}.")
    number = float(value)
    bad = not math.isfinite(number)
    if low is not None:
        bad = bad or number < low or (low_open and number == low)
    if high is not None:
        bad = bad or number > high or (high_open and number == high)
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{'-inf' if low is None else low}, "
        bounds += f"{'inf' if high is None else high}{right}"
        raise ValueError(
            f"{owner}: {name} must be a finite number in {bounds}; got {value!r}."
        )
    return number


def check_int(value: Any, name: str, owner: str, low: int = 1) -> int:
    """An int `>= low`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}: {name} must be an int >= {low}; got {value!r}.")
    if int(value) < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}; got {value!r}.")
    return int(value)


def check_seed(seed: Any, owner: str) -> int | None:
    """An int seed or None."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{owner}: seed must be an int or None; got {seed!r}.")
    return int(seed)


def clean_jacobian(jacobian: Any) -> Any:
    """float32, non-finite entries replaced by 0 (as `Aggregator.call`)."""
    jacobian = ops.cast(jacobian, "float32")
    return ops.where(ops.isfinite(jacobian), jacobian, 0.0)


def positive_or_one(x: Any) -> Any:
    """`x` where it is > 0, else 1 (a safe divisor)."""
    return ops.where(x > 0.0, x, 1.0)


def safe_divide(numerator: Any, denominator: Any) -> Any:
    """`numerator / denominator` where the denominator is > 0, else 0."""
    return ops.where(denominator > 0.0, numerator / positive_or_one(denominator), 0.0)


def row_norms(matrix: Any) -> Any:
    """Euclidean norms of the rows of `[K, D]` without overflow or underflow:
    each row is divided by its largest absolute entry first."""
    peak = ops.max(ops.abs(matrix), axis=1)
    scaled = matrix / positive_or_one(peak)[:, None]
    return peak * ops.sqrt(ops.sum(scaled * scaled, axis=1))


def unit_rows(matrix: Any) -> Any:
    """The rows of `[K, D]` divided by their norms (zero rows stay zero)."""
    peak = ops.max(ops.abs(matrix), axis=1, keepdims=True)
    scaled = matrix / positive_or_one(peak)
    norms = ops.sqrt(ops.sum(scaled * scaled, axis=1, keepdims=True))
    return safe_divide(scaled, norms)


def uniform_noise(shape: Any, seed_generator: Any) -> Any:
    """float32 i.i.d. U(0, 1) noise of `shape`, advancing `seed_generator`
    once: `keras.random.uniform(shape, seed=seed_generator)`, except on
    TensorFlow, where the Philox algorithm is named. TensorFlow's default
    (`auto_select`) under XLA on the CPU drew 2.2M numbers in 1086 ms,
    Philox in 16-19 ms (GradDrop at width 1024: 12.5 ideal steps, 2.3
    without the draw). XLA lays out Philox's counters its own way, so a seed
    gives other (equally valid) noise with XLA than without."""
    if keras.backend.backend() != "tensorflow":
        return keras.random.uniform(shape, dtype="float32", seed=seed_generator)
    import tensorflow as tf

    # As `keras.random.uniform` does: one draw from the generator, cast to
    # the int32 seed the stateless ops take.
    seed = seed_generator.next()
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32, alg="philox")


def random_orders(num_tasks: int, seed_generator: Any) -> Any:
    """`[K, K]` int32: row i is a uniformly random permutation of the tasks
    (argsort of i.i.d. uniform noise; ties have probability ~0)."""
    noise = uniform_noise((num_tasks, num_tasks), seed_generator)
    return ops.cast(ops.argsort(noise, axis=-1), "int32")


def fixed_orders(num_tasks: int) -> Any:
    """`[K, K]` int32: every row is `0, 1, ..., K-1`."""
    row = ops.arange(num_tasks, dtype="int32")
    return ops.tile(row[None, :], (num_tasks, 1))


class SeededAggregator(SavesSeedGeneratorState, Aggregator):
    """An aggregator that draws from a `keras.random.SeedGenerator`.

    Keras saves a layer's own variables but not the state of its seed
    generators; the random stream is part of a run, so it is saved with the
    weights (`model.save`, `save_weights`, `BackupAndRestore`) and a resumed
    run continues it (as `RandomLossWeighting` does). A file without the
    generator state loads the other variables and keeps the current stream.
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = check_seed(seed, type(self).__name__)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def task_orders(self, num_tasks: int, training: bool) -> Any:
        """`[K, K]` int32 orders in which each task meets the others: random
        (from the seed generator) in training, `0..K-1` in evaluation, so
        evaluation neither draws nor advances the stream."""
        if training:
            return random_orders(num_tasks, self.seed_generator)
        return fixed_orders(num_tasks)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


class RawStateAggregator(Aggregator):
    """An aggregator whose state (moving averages of gradients) is kept in
    the units of the Jacobian itself.

    `Aggregator.call` rescales each Jacobian by its own largest entry, which
    changes from step to step, so a running average of normalised Jacobians
    would mix different units. These aggregators get the (cleaned) Jacobian
    unscaled in `aggregate` and guard their arithmetic against overflow
    themselves (convex combinations, norms through `row_norms`).
    """

    def call(self, jacobian: Any, training: bool = True) -> Any:
        return self.aggregate(clean_jacobian(jacobian), training=training)

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        if dim is None:
            raise ValueError(
                f"{type(self).__name__} keeps per-task gradient state and needs "
                "the Jacobian's number of columns D at build time; got None."
            )

    def step_variable(self) -> Any:
        """A saved int32 counter of training calls (created once)."""
        return self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="step",
        )

"""Bases of the aggregators that keep state between calls: a random
stream saved with the weights (`SeededAggregator`), or moving averages in
the Jacobian's own units (`RawStateAggregator`)."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._seed_state import SavesSeedGeneratorState
from keras_mtl._validation import check_seed
from keras_mtl.aggregation._linalg import clean_jacobian
from keras_mtl.aggregation._random_streams import fixed_orders, random_orders
from keras_mtl.aggregation.base import Aggregator


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

    Their state has the Jacobian's width D, so they need it at build time
    (`state_has_jacobian_width`; not usable in representation mode).
    """

    state_has_jacobian_width = True

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

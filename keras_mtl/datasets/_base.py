"""What every dataset returns: `TaskSpec` per task and `MultiTaskData`.

Shared pipeline helpers (batching, seeded shuffling, argument checks) live here
too, so every dataset module builds its `tf.data` pipelines the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

KINDS = ("multiclass", "binary", "multilabel", "regression")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task's target: its kind, its number of outputs and label names.

    Targets as the `tf.data` pipelines yield them:

    - `"multiclass"`: int32 class index, shape `()` per example;
    - `"binary"`: float32 0/1, shape `(1,)` (`num_classes == 1`);
    - `"multilabel"`: float32 multi-hot, shape `(num_classes,)`;
    - `"regression"`: float32 real values, shape `(num_classes,)`
      (`num_classes` is then the number of outputs).

    `label_names`: one name per class (multiclass, multilabel), or for binary
    tasks `None` or two names `(negative, positive)`.
    """

    kind: str
    num_classes: int
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"TaskSpec.kind must be one of {KINDS}; got {self.kind!r}."
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(
                f"TaskSpec.num_classes must be an int; got {self.num_classes!r}."
            )
        if self.kind == "binary" and self.num_classes != 1:
            raise ValueError(
                f"A binary task has num_classes=1 (one sigmoid output); "
                f"got {self.num_classes}."
            )
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(
                f"A multiclass task needs num_classes >= 2; got {self.num_classes}."
            )
        if self.kind in ("multilabel", "regression") and self.num_classes < 1:
            raise ValueError(
                f"A {self.kind} task needs num_classes >= 1; got {self.num_classes}."
            )
        if self.label_names is not None:
            names = tuple(str(name) for name in self.label_names)
            expected = 2 if self.kind == "binary" else self.num_classes
            if len(names) != expected:
                raise ValueError(
                    f"TaskSpec.label_names: expected {expected} names for a "
                    f"{self.kind} task with num_classes={self.num_classes}; "
                    f"got {len(names)}."
                )
            object.__setattr__(self, "label_names", names)

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one example's target: `()`, `(1,)` or `(num_classes,)`."""
        if self.kind == "multiclass":
            return ()
        return (self.num_classes,)

    @property
    def target_dtype(self) -> str:
        """`"int32"` for multiclass, `"float32"` otherwise."""
        return "int32" if self.kind == "multiclass" else "float32"

    @property
    def activation(self) -> str:
        """The output activation that fits the targets: softmax, sigmoid or
        linear (regression)."""
        if self.kind == "regression":
            return "linear"
        return "softmax" if self.kind == "multiclass" else "sigmoid"

    @property
    def loss(self) -> str:
        """The Keras loss name that fits the targets (on probabilities; mean
        squared error for regression)."""
        if self.kind == "multiclass":
            return "sparse_categorical_crossentropy"
        if self.kind == "regression":
            return "mean_squared_error"
        return "binary_crossentropy"


@dataclasses.dataclass(frozen=True)
class MultiTaskData:
    """A multi-task dataset: three batched, prefetched `tf.data` pipelines.

    Each pipeline yields `(x, {task: y})` with the targets described by
    `tasks[task]` (see `TaskSpec`). `tasks` is in task order. `info` holds
    dataset-specific facts (input shape or kind, example counts, sources).
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    tasks: dict[str, TaskSpec]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        """The task names in order."""
        return list(self.tasks)

    def __repr__(self) -> str:
        tasks = ", ".join(
            f"{name}: {spec.kind}({spec.num_classes})"
            for name, spec in self.tasks.items()
        )
        return f"MultiTaskData(name={self.name!r}, tasks={{{tasks}}})"


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    """Raise `ValueError` unless `value` is a positive int (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {kind}; got {value!r}.")


def check_seed(seed: Any) -> None:
    """Raise `ValueError` unless `seed` is a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}.")


def epoch_permutations(size: int, seed: int) -> tf.data.Dataset:
    """The indices `0..size-1` (int64), in a new order at every iteration.

    The k-th iteration of the returned dataset object (k = 0, 1, ...; Keras
    starts one per epoch) yields the stateless permutation seeded by
    `(seed, k)`: the same on every run and machine, whatever TensorFlow's
    global seed. The epoch counter is a `tf.Variable` captured by the
    pipeline, so the dataset cannot be serialized (e.g. for tf.data service).
    """
    if size < 1:
        raise ValueError(f"Cannot permute {size} examples.")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    pair_seed = tf.constant(int(seed), tf.int64)

    def permutation(_: tf.Tensor) -> tf.data.Dataset:
        current = epoch.assign_add(1, read_value=True) - 1
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size, dtype=tf.int64), seed=tf.stack([pair_seed, current])
        )
        return tf.data.Dataset.from_tensor_slices(order)

    dataset = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    dataset = dataset.flat_map(permutation)
    return dataset.apply(tf.data.experimental.assert_cardinality(size))


def seeded_shuffle(
    dataset: tf.data.Dataset, buffer_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffle a streamed dataset with `seed`, in a new order each epoch.

    For datasets too large to index (tfds streams). TensorFlow combines the
    op seed with its global seed *at the time this is called*, so the order
    is a function of `seed` and of the global seed
    (`keras.utils.set_random_seed` before loading): fix both to repeat it.
    In-memory datasets use `epoch_permutations` instead (`seed` alone).
    """
    return dataset.shuffle(
        max(1, int(buffer_size)), seed=seed, reshuffle_each_iteration=True
    )


def finish(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Batch (keeping the last partial batch) and prefetch."""
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def task_specs(tasks: Mapping[str, TaskSpec]) -> dict[str, TaskSpec]:
    """A plain, ordered dict copy of `tasks`."""
    return {str(name): spec for name, spec in tasks.items()}

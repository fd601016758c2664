"""The MultiMNIST construction shared by `multi_digits` and `multi_mnist`.

Sener & Koltun (NeurIPS 2018) build each MultiMNIST image from two digits: one
placed at the top left and one at the bottom right of a larger canvas, so
that they overlap, combined pixel-wise with `max`. Tasks: classify the left
digit and classify the right digit.

Here: the source images are split into train/validation/test *before* any
pair is drawn, and pairs are drawn within one split only, so no source image
of the test split ever appears in a training pair. Pairs are stored as index
pairs and composed on the fly, batch by batch, inside the `tf.data` pipeline
(MNIST at 36x36 would otherwise take ~300 MB of float32 per 60,000 pairs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from keras_mtl.datasets._base import (
    MultiTaskData,
    TaskSpec,
    check_positive_int,
    check_seed,
    epoch_permutations,
)

SPLITS = ("train", "validation", "test")
DIGIT_NAMES = tuple(str(digit) for digit in range(10))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the two digits go: canvas `(H, W)`, digit `(h, w)`, and the
    top-left corners `(row, col)` of the left and the right digit."""

    canvas: tuple[int, int]
    digit: tuple[int, int]
    left_origin: tuple[int, int]
    right_origin: tuple[int, int]

    def __post_init__(self) -> None:
        for origin in (self.left_origin, self.right_origin):
            for axis in (0, 1):
                if not 0 <= origin[axis] <= self.canvas[axis] - self.digit[axis]:
                    raise ValueError(
                        f"A {self.digit} digit at {origin} does not fit in a "
                        f"{self.canvas} canvas."
                    )

    def paddings(self, origin: tuple[int, int]) -> list[list[int]]:
        """`tf.pad` paddings placing a batch of digits `(B, h, w)` at `origin`."""
        (height, width), (h, w) = self.canvas, self.digit
        return [
            [0, 0],
            [origin[0], height - h - origin[0]],
            [origin[1], width - w - origin[1]],
        ]


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], seed: int
) -> dict[str, np.ndarray]:
    """Split example indices into train/validation/test, class by class.

    `fractions`: (validation, test) fractions; the rest is train. Each class
    contributes `round(fraction * class_count)` examples to each held-out
    split. Returns sorted index arrays, disjoint and covering all examples.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_val = int(round(fractions[0] * len(members)))
        num_test = int(round(fractions[1] * len(members)))
        parts["validation"].append(members[:num_val])
        parts["test"].append(members[num_val : num_val + num_test])
        parts["train"].append(members[num_val + num_test :])
    return {split: np.sort(np.concatenate(parts[split])) for split in SPLITS}


def draw_pairs(
    pool: np.ndarray, num_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`num_pairs` (left, right) index pairs drawn uniformly from `pool`.

    The two digits of a pair are always two different source images.
    """
    pool = np.asarray(pool)
    if len(pool) < 2:
        raise ValueError(f"Need at least 2 source images to pair; got {len(pool)}.")
    left = rng.integers(0, len(pool), size=num_pairs)
    right = (left + rng.integers(1, len(pool), size=num_pairs)) % len(pool)
    return pool[left].astype(np.int64), pool[right].astype(np.int64)


def pair_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    layout: Layout,
    max_value: float,
    batch_size: int,
    shuffle_seed: int | None = None,
    sum_parity: bool = False,
) -> tf.data.Dataset:
    """A batched, prefetched pipeline of composed pairs.

    `images`: `(N, h, w)` source digits (any numeric dtype, values in
    `[0, max_value]`); `labels`: `(N,)` digit labels; `left`/`right`: indices
    into `images`. Yields `(x, {"left", "right"[, "sum_parity"]})` with `x`
    float32 `(B, H, W, 1)` in [0, 1], the two digits combined with `max`.
    With `shuffle_seed` the pairs come in a new order each epoch (epoch k:
    the permutation seeded by `(shuffle_seed, k)`, see `epoch_permutations`).
    """
    if images.ndim != 3 or tuple(images.shape[1:]) != layout.digit:
        raise ValueError(
            f"Expected source images of shape (N, {layout.digit[0]}, "
            f"{layout.digit[1]}); got {images.shape}."
        )
    source = tf.constant(images)
    digit_labels = tf.constant(np.asarray(labels, dtype=np.int32))
    left_pad = layout.paddings(layout.left_origin)
    right_pad = layout.paddings(layout.right_origin)
    scale = 1.0 / float(max_value)

    def compose(
        left_index: tf.Tensor, right_index: tf.Tensor
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        left_digits = tf.pad(tf.gather(source, left_index), left_pad)
        right_digits = tf.pad(tf.gather(source, right_index), right_pad)
        pixels = tf.cast(tf.maximum(left_digits, right_digits), tf.float32)
        x = tf.clip_by_value(pixels * scale, 0.0, 1.0)[..., tf.newaxis]
        left_label = tf.gather(digit_labels, left_index)
        right_label = tf.gather(digit_labels, right_index)
        targets = {"left": left_label, "right": right_label}
        if sum_parity:
            parity = tf.math.floormod(left_label + right_label, 2)
            targets["sum_parity"] = tf.cast(parity, tf.float32)[:, tf.newaxis]
        return x, targets

    pair_left = tf.constant(np.asarray(left, np.int64))
    pair_right = tf.constant(np.asarray(right, np.int64))
    if shuffle_seed is not None:
        order = epoch_permutations(len(left), shuffle_seed)
    else:
        order = tf.data.Dataset.range(len(left))
    dataset = order.batch(batch_size).map(
        lambda index: compose(
            tf.gather(pair_left, index), tf.gather(pair_right, index)
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def build_multi_digit(
    name: str,
    sources: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    counts: Mapping[str, int],
    layout: Layout,
    max_value: float,
    batch_size: int,
    seed: int,
    split_seed: int,
    sum_parity: bool,
    info: Mapping[str, object],
) -> MultiTaskData:
    """Draw the pairs of every split and build the `MultiTaskData`.

    `sources[split]`: `(images, labels, pool)`, `pool` the indices into
    `images` that this split may use. Training pairs are drawn with `seed`;
    validation and test pairs with `split_seed`, so that every training seed
    is evaluated on the same pairs. `info["pairs"][split]` holds the
    `(left, right)` indices into that split's `images`.
    """
    check_seed(seed)
    check_seed(split_seed)
    check_positive_int(batch_size, "batch_size")
    for split in SPLITS:
        check_positive_int(counts[split], f"num_{split}")
    pipelines: dict[str, tf.data.Dataset] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for offset, split in enumerate(SPLITS):
        # Independent streams per split: counts of one split never change the
        # pairs of another.
        stream = [seed if split == "train" else split_seed, offset]
        rng = np.random.default_rng(stream)
        images, labels, pool = sources[split]
        left, right = draw_pairs(pool, counts[split], rng)
        pairs[split] = (left, right)
        pipelines[split] = pair_dataset(
            images,
            labels,
            left,
            right,
            layout,
            max_value,
            batch_size,
            shuffle_seed=seed if split == "train" else None,
            sum_parity=sum_parity,
        )
    tasks = {
        "left": TaskSpec("multiclass", 10, DIGIT_NAMES),
        "right": TaskSpec("multiclass", 10, DIGIT_NAMES),
    }
    if sum_parity:
        tasks["sum_parity"] = TaskSpec("binary", 1, ("even", "odd"))
    full_info = {
        "input_shape": (*layout.canvas, 1),
        "layout": dataclasses.asdict(layout),
        "num_examples": {split: int(counts[split]) for split in SPLITS},
        "pairs": pairs,
        **info,
    }
    return MultiTaskData(
        name=name,
        train=pipelines["train"],
        validation=pipelines["validation"],
        test=pipelines["test"],
        tasks=tasks,
        info=full_info,
    )

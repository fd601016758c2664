"""MultiDigits: a small, offline MultiMNIST built from scikit-learn's digits.

Source: the 1,797 real 8x8 handwritten digits scikit-learn ships
(`sklearn.datasets.load_digits`, the UCI "Optical Recognition of Handwritten
Digits" test set; Alpaydin & Kaynak, 1998), so nothing is downloaded.

Construction (after MultiMNIST in Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018):

1. The 1,797 source images are split first, class by class, into train (60%),
   validation (20%) and test (20%) with `split_seed`.
2. Pairs of two different source images are drawn uniformly *within* each
   split: train pairs with `seed`, validation and test pairs with
   `split_seed` (fixed evaluation pairs across training seeds). No test image
   ever appears in a training pair.
3. Each pair is drawn on a 12x16 canvas: the left digit at rows 0-7, columns
   2-9 (shifted up), the right digit at rows 4-11, columns 6-13 (shifted
   down); they overlap on a 4x4 block and are combined with pixel-wise max.
   Pixels are scaled from 0..16 to float32 [0, 1]; `x` is `(12, 16, 1)`.

The training pipeline yields its pairs in a new order each epoch: the k-th
iteration of `data.train` uses the permutation seeded by `(seed, k)`, the
same on every run whatever TensorFlow's global seed.

Tasks: "left" (10 classes), "right" (10 classes) and "sum_parity" (binary:
`(left + right) % 2`, 1 = odd), a task that needs both digits.
"""

from __future__ import annotations

import numpy as np

from keras_mtl.datasets._base import MultiTaskData
from keras_mtl.datasets._pairs import (
    SPLITS,
    Layout,
    build_multi_digit,
    stratified_split,
)

LAYOUT = Layout(canvas=(12, 16), digit=(8, 8), left_origin=(0, 2), right_origin=(4, 6))
SOURCE_FRACTIONS = {"validation": 0.2, "test": 0.2}  # the rest is train


def source_split(split_seed: int = 0) -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of the source images of each split.

    Disjoint, sorted, together all 1,797 images; the same for the same
    `split_seed` on every machine.
    """
    from sklearn.datasets import load_digits

    labels = load_digits().target
    return stratified_split(
        labels, (SOURCE_FRACTIONS["validation"], SOURCE_FRACTIONS["test"]), split_seed
    )


def load_multi_digits(
    num_train: int = 10000,
    num_validation: int = 2000,
    num_test: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
    split_seed: int = 0,
    max_examples: int | None = None,
) -> MultiTaskData:
    """Load MultiDigits (see the module docstring for the construction).

    Args:
        num_train, num_validation, num_test: number of pairs per split.
        batch_size: batch size of the three pipelines (last batch partial).
        seed: draws the training pairs and the per-epoch training order.
        split_seed: splits the source images and draws the validation/test
            pairs; keep it fixed to compare training seeds on equal terms.
        max_examples: if given, caps the number of pairs of every split
            (quick runs).

    Returns:
        `MultiTaskData` with tasks left/right (multiclass, 10) and sum_parity
        (binary). `info["source_indices"][split]`: indices into
        `load_digits()` usable by that split; `info["pairs"][split]`:
        `(left, right)` indices into `load_digits()` of every pair, in
        dataset order (the training pipeline reshuffles them each epoch).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    labels = digits.target.astype(np.int32)
    indices = stratified_split(
        labels, (SOURCE_FRACTIONS["validation"], SOURCE_FRACTIONS["test"]), split_seed
    )
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int):
            raise ValueError(f"max_examples must be an int >= 1; got {max_examples!r}.")
        if max_examples < 1:
            raise ValueError(f"max_examples must be >= 1; got {max_examples!r}.")
        counts = {split: min(n, max_examples) for split, n in counts.items()}
    return build_multi_digit(
        name="multi_digits",
        sources={split: (images, labels, indices[split]) for split in SPLITS},
        counts=counts,
        layout=LAYOUT,
        max_value=16.0,
        batch_size=batch_size,
        seed=seed,
        split_seed=split_seed,
        sum_parity=True,
        info={
            "source": "sklearn.datasets.load_digits (8x8, 1,797 images)",
            "source_indices": indices,
            "seed": seed,
            "split_seed": split_seed,
        },
    )

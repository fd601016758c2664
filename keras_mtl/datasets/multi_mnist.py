"""MultiMNIST: two overlapping MNIST digits per image, one task per digit.

Source: MNIST (LeCun, Bottou, Bengio & Haffner, 1998) through
`tensorflow_datasets.load("mnist")`. The construction follows Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018: one
28x28 digit at the top left and another at the bottom right of a 36x36
canvas (an 8-pixel shift in both directions, so they overlap on 20x20
pixels), combined with pixel-wise max. (Sener & Koltun then resize to 28x28;
here the 36x36 image is kept.)

Splits: the source images are split first, then pairs are drawn within each
split (the same shared construction as `multi_digits`):

- train pairs from MNIST `train[:90%]` (54,000 images), drawn with `seed`;
- validation pairs from MNIST `train[90%:]` (6,000 images), drawn with
  `split_seed`;
- test pairs from MNIST `test` (10,000 images), drawn with `split_seed`.

Tasks: "left" and "right" (10 classes each). `x`: float32 `(36, 36, 1)` in
[0, 1].

Offline: `tfds.load` needs the prepared MNIST files in `data_dir` (or the
default `~/tensorflow_datasets`); without them and with `download=True` it
tries the network. Tests use `tfds.testing.mock_data`.
"""

from __future__ import annotations

import numpy as np

from keras_mtl.datasets._base import MultiTaskData, check_positive_int
from keras_mtl.datasets._pairs import SPLITS, Layout, build_multi_digit

LAYOUT = Layout(
    canvas=(36, 36), digit=(28, 28), left_origin=(0, 0), right_origin=(8, 8)
)
SOURCE_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}


def _load_mnist_split(
    split: str, data_dir: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One tfds MNIST split as numpy: uint8 images `(N, 28, 28)`, labels `(N,)`."""
    import tensorflow_datasets as tfds

    dataset = tfds.load(
        "mnist",
        split=split,
        as_supervised=True,
        data_dir=data_dir,
        download=download,
    )
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(10000):
        images.append(image_batch.numpy()[..., 0])
        labels.append(label_batch.numpy())
    if not images:
        raise ValueError(f"MNIST split {split!r} is empty.")
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(
        np.int32
    )


def load_multi_mnist(
    num_train: int = 60000,
    num_validation: int = 10000,
    num_test: int = 10000,
    batch_size: int = 128,
    seed: int = 0,
    split_seed: int = 0,
    data_dir: str | None = None,
    download: bool = True,
) -> MultiTaskData:
    """Load MultiMNIST (see the module docstring for the construction).

    Args:
        num_train, num_validation, num_test: number of pairs per split.
        batch_size: batch size of the three pipelines (last batch partial).
        seed: draws the training pairs and the per-epoch training order.
        split_seed: draws the validation/test pairs (fixed by default).
        data_dir: tfds data directory (default: tfds' own default).
        download: let tfds download and prepare MNIST if it is missing.

    Returns:
        `MultiTaskData` with tasks left/right (multiclass, 10).
        `info["pairs"][split]`: `(left, right)` indices into that split's
        source images (`info["source_splits"][split]` of tfds MNIST).
    """
    check_positive_int(batch_size, "batch_size")
    for name, value in (
        ("num_train", num_train),
        ("num_validation", num_validation),
        ("num_test", num_test),
    ):
        check_positive_int(value, name)
    sources = {}
    for split in SPLITS:
        images, labels = _load_mnist_split(SOURCE_SPLITS[split], data_dir, download)
        sources[split] = (images, labels, np.arange(len(images)))
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    return build_multi_digit(
        name="multi_mnist",
        sources=sources,
        counts=counts,
        layout=LAYOUT,
        max_value=255.0,
        batch_size=batch_size,
        seed=seed,
        split_seed=split_seed,
        sum_parity=False,
        info={
            "source": "tfds:mnist",
            "source_splits": dict(SOURCE_SPLITS),
            "source_sizes": {split: len(sources[split][0]) for split in SPLITS},
            "seed": seed,
            "split_seed": split_seed,
        },
    )

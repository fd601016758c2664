"""GoEmotions: Reddit comments with three multi-label emotion taxonomies.

Source: Demszky, Movshovitz-Attias, Ko, Cowen, Nemade & Ravi, "GoEmotions: A
Dataset of Fine-Grained Emotions", ACL 2020 (Google Research, CC BY 4.0):
58k English Reddit comments labelled with 27 emotions + neutral. The paper's
repository also maps the 28 labels onto Ekman's 6 basic emotions (+ neutral)
and onto sentiment groups (positive / negative / ambiguous + neutral):
`EKMAN_MAPPING` and `SENTIMENT_MAPPING` below.

Three multi-label tasks on the same comment (one text encoder, three heads):

- "group" (4): ambiguous, negative, neutral, positive;
- "ekman" (7): anger, disgust, fear, joy, neutral, sadness, surprise;
- "original" (28): the 27 emotions + neutral.

`x`: the raw comment as a tf.string scalar; targets float32 multi-hot.

Where the data comes from, first match wins:

1. a local directory in the layout of the files redistributed by
   monologg/GoEmotions-pytorch: `<taxonomy>/{train,dev,test}.tsv` and
   `<taxonomy>/labels.txt` for taxonomy in group/ekman/original, rows
   `text<TAB>comma-separated label ids<TAB>comment id` (train 43,410, dev
   5,426, test 5,427 rows). `data_dir` if given; else the environment variable
   `KERAS_MTL_GOEMOTIONS_DIR`; else `../shared/data/goemotions` relative to
   the working directory, then relative to the repository root. If the
   `group`/`ekman` folders are missing they are derived from `original` with
   the mappings.
2. otherwise `tfds.load("goemotions")` (downloads; 28 boolean columns), mapped
   to group/ekman with `SENTIMENT_MAPPING`/`EKMAN_MAPPING`. On the local
   files this mapping reproduces the files' group and ekman labels on every
   row of every split (tested), including multi-label rows (the union of the
   mapped labels) and "neutral" (kept as its own label, also when it
   co-occurs with emotions).

For a vocabulary (e.g. `keras_hub.tokenizers.compute_word_piece_vocabulary`)
use `load_goemotions_texts(split="train")`: a plain list of the training
comments, read without going through `tf.data`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_mtl.datasets._base import (
    MultiTaskData,
    TaskSpec,
    check_positive_int,
    check_seed,
    epoch_permutations,
    finish,
    seeded_shuffle,
)

logger = logging.getLogger(__name__)

ENV_VAR = "KERAS_MTL_GOEMOTIONS_DIR"
TAXONOMIES = ("group", "ekman", "original")
SPLITS = ("train", "validation", "test")
_SPLIT_FILES = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}
_TFDS_SPLITS = {
    "train": "train",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
}

ORIGINAL_LABELS = (
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
)
EKMAN_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
GROUP_LABELS = ("ambiguous", "negative", "neutral", "positive")

# google-research/goemotions data/ekman_mapping.json, plus neutral -> neutral.
EKMAN_MAPPING: dict[str, tuple[str, ...]] = {
    "anger": ("anger", "annoyance", "disapproval"),
    "disgust": ("disgust",),
    "fear": ("fear", "nervousness"),
    "joy": (
        "joy",
        "amusement",
        "approval",
        "excitement",
        "gratitude",
        "love",
        "optimism",
        "relief",
        "pride",
        "admiration",
        "desire",
        "caring",
    ),
    "neutral": ("neutral",),
    "sadness": ("sadness", "disappointment", "embarrassment", "grief", "remorse"),
    "surprise": ("surprise", "realization", "confusion", "curiosity"),
}
# google-research/goemotions data/sentiment_mapping.json, plus neutral.
SENTIMENT_MAPPING: dict[str, tuple[str, ...]] = {
    "ambiguous": ("realization", "surprise", "curiosity", "confusion"),
    "negative": (
        "fear",
        "nervousness",
        "remorse",
        "embarrassment",
        "disappointment",
        "sadness",
        "grief",
        "disgust",
        "anger",
        "annoyance",
        "disapproval",
    ),
    "neutral": ("neutral",),
    "positive": (
        "amusement",
        "excitement",
        "joy",
        "love",
        "desire",
        "optimism",
        "caring",
        "pride",
        "admiration",
        "gratitude",
        "relief",
        "approval",
    ),
}
MAPPINGS = {"group": SENTIMENT_MAPPING, "ekman": EKMAN_MAPPING}
LABELS = {"group": GROUP_LABELS, "ekman": EKMAN_LABELS, "original": ORIGINAL_LABELS}


def mapping_matrix(
    taxonomy: str, original_labels: tuple[str, ...] = ORIGINAL_LABELS
) -> np.ndarray:
    """`(28, K)` 0/1 matrix: original label `i` belongs to coarse label `j`.

    A multi-hot original target `y` maps to `minimum(y @ M, 1)`: the union of
    the coarse labels of its emotions.
    """
    if taxonomy == "original":
        return np.eye(len(original_labels), dtype=np.float32)
    mapping = MAPPINGS[taxonomy]
    coarse = LABELS[taxonomy]
    matrix = np.zeros((len(original_labels), len(coarse)), dtype=np.float32)
    for j, name in enumerate(coarse):
        for emotion in mapping[name]:
            matrix[original_labels.index(emotion), j] = 1.0
    return matrix


def map_original(
    taxonomy: str,
    original: np.ndarray,
    original_labels: tuple[str, ...] = ORIGINAL_LABELS,
) -> np.ndarray:
    """Map multi-hot original targets `(N, 28)` to `taxonomy` `(N, K)`."""
    matrix = mapping_matrix(taxonomy, original_labels)
    return np.minimum(np.asarray(original, np.float32) @ matrix, 1.0)


def _is_goemotions_dir(path: Path) -> bool:
    return (path / "original" / "train.tsv").is_file()


def find_goemotions_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local GoEmotions directory, or None (then tfds is the fallback).

    An explicit `data_dir` or `KERAS_MTL_GOEMOTIONS_DIR` must hold the files
    (else `FileNotFoundError`); the default locations are tried in order:
    `../shared/data/goemotions` relative to the working directory, then
    relative to the repository root.
    """
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not _is_goemotions_dir(path):
            source = "data_dir" if data_dir is not None else ENV_VAR
            raise FileNotFoundError(
                f"{source}={str(explicit)!r} does not hold the GoEmotions files "
                f"(expected original/train.tsv and the like)."
            )
        return path
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (
        Path.cwd() / ".." / "shared" / "data" / "goemotions",
        repo_root / ".." / "shared" / "data" / "goemotions",
    ):
        if _is_goemotions_dir(candidate):
            return candidate.resolve()
    return None


def _read_labels(path: Path) -> tuple[str, ...]:
    return tuple(
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    )


def _read_tsv(
    path: Path, num_labels: int, max_examples: int | None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, multi-hot `(N, num_labels)` float32 and comment ids of one file."""
    texts: list[str] = []
    ids: list[str] = []
    rows: list[list[int]] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if max_examples is not None and len(texts) >= max_examples:
                break
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 3:
                raise ValueError(
                    f"{path}:{number}: expected 3 tab-separated fields "
                    f"(text, label ids, comment id); got {len(fields)}."
                )
            text, label_ids, comment_id = fields
            labels = [int(item) for item in label_ids.split(",")]
            if any(not 0 <= label < num_labels for label in labels):
                raise ValueError(
                    f"{path}:{number}: label ids {labels} out of range "
                    f"[0, {num_labels})."
                )
            texts.append(text)
            rows.append(labels)
            ids.append(comment_id)
    multi_hot = np.zeros((len(rows), num_labels), dtype=np.float32)
    for row, labels in enumerate(rows):
        multi_hot[row, labels] = 1.0
    return texts, multi_hot, ids


def read_goemotions_split(
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    max_examples: int | None = None,
) -> tuple[list[str], dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """Read one split of the local files (no `tf.data`).

    `split`: "train", "validation" (or "dev") or "test". Returns the texts
    (file order, first `max_examples` rows), the float32 multi-hot targets
    `{taxonomy: (N, K)}` and the label names `{taxonomy: names}`.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"Unknown split {split!r}; valid: {list(_SPLIT_FILES)}.")
    check_positive_int(max_examples, "max_examples", allow_none=True)
    root = find_goemotions_dir(data_dir)
    if root is None:
        raise FileNotFoundError(
            "GoEmotions files not found (pass data_dir or set "
            f"{ENV_VAR}); see keras_mtl.datasets.goemotions."
        )
    filename = f"{_SPLIT_FILES[split]}.tsv"
    label_names = {"original": _read_labels(root / "original" / "labels.txt")}
    texts, original, ids = _read_tsv(
        root / "original" / filename, len(label_names["original"]), max_examples
    )
    targets = {"original": original}
    for taxonomy in ("group", "ekman"):
        folder = root / taxonomy
        if (folder / filename).is_file() and (folder / "labels.txt").is_file():
            label_names[taxonomy] = _read_labels(folder / "labels.txt")
            other_texts, multi_hot, other_ids = _read_tsv(
                folder / filename, len(label_names[taxonomy]), max_examples
            )
            if other_ids != ids or other_texts != texts:
                raise ValueError(
                    f"{folder / filename} does not list the same comments in the "
                    f"same order as {root / 'original' / filename}."
                )
            targets[taxonomy] = multi_hot
        else:
            label_names[taxonomy] = LABELS[taxonomy]
            targets[taxonomy] = map_original(
                taxonomy, original, label_names["original"]
            )
    order = {taxonomy: targets[taxonomy] for taxonomy in TAXONOMIES}
    names = {taxonomy: label_names[taxonomy] for taxonomy in TAXONOMIES}
    return texts, order, names


def load_goemotions_texts(
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    max_examples: int | None = None,
    download: bool = True,
) -> list[str]:
    """The comments of one split as a list of str, e.g. for a vocabulary.

    Reads the local files (same lookup as `load_goemotions`); without them,
    iterates tfds' "goemotions" split. Same order as the unshuffled split.
    """
    root = find_goemotions_dir(data_dir)
    if root is not None:
        return read_goemotions_split(root, split, max_examples)[0]
    if split not in _TFDS_SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid: {list(_TFDS_SPLITS)}.")
    dataset = _tfds_split(_TFDS_SPLITS[split], download)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    return [
        text.decode("utf-8")
        for text in dataset.map(lambda ex: ex["comment_text"]).as_numpy_iterator()
    ]


def _tfds_split(split: str, download: bool) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    return tfds.load("goemotions", split=split, download=download)


def _tfds_pipeline(split: str, download: bool) -> tf.data.Dataset:
    """tfds GoEmotions as `(text, {group, ekman, original})` examples."""
    matrices = {
        taxonomy: tf.constant(mapping_matrix(taxonomy)) for taxonomy in TAXONOMIES
    }

    def convert(example: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        original = tf.cast(
            tf.stack([example[name] for name in ORIGINAL_LABELS]), tf.float32
        )
        targets = {
            taxonomy: tf.minimum(
                tf.linalg.matvec(matrices[taxonomy], original, transpose_a=True), 1.0
            )
            for taxonomy in TAXONOMIES
        }
        return example["comment_text"], targets

    return _tfds_split(split, download).map(
        convert, num_parallel_calls=tf.data.AUTOTUNE
    )


def _indexed_pipeline(
    texts: list[str],
    targets: dict[str, np.ndarray],
    batch_size: int,
    shuffle_seed: int | None,
) -> tf.data.Dataset:
    """In-memory examples, batched by index (shuffled each epoch if seeded)."""
    text_table = tf.constant(texts, dtype=tf.string)
    target_tables = {name: tf.constant(value) for name, value in targets.items()}
    if shuffle_seed is not None:
        order = epoch_permutations(len(texts), shuffle_seed)
    else:
        order = tf.data.Dataset.range(len(texts))

    def gather(index: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        return tf.gather(text_table, index), {
            name: tf.gather(table, index) for name, table in target_tables.items()
        }

    dataset = order.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_goemotions(
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> MultiTaskData:
    """Load GoEmotions as three multi-label tasks: group, ekman, original.

    Args:
        data_dir: local directory in the layout described in the module
            docstring; default: `KERAS_MTL_GOEMOTIONS_DIR`, then
            `../shared/data/goemotions` (working directory, repository root),
            then `tfds.load("goemotions")`.
        batch_size: batch size of the three pipelines (last batch partial).
        max_examples: keep the first `max_examples` rows of each split (file
            order, before shuffling), for quick runs.
        seed: shuffles the training split, a new order each epoch (local
            files: epoch k uses the permutation seeded by `(seed, k)`,
            independent of TensorFlow's global seed; tfds fallback: a
            shuffle buffer seeded by `seed` and the global seed).
        download: for the tfds fallback only.

    Returns:
        `MultiTaskData`: `x` tf.string scalar (raw text); targets float32
        multi-hot `(4,)`, `(7,)`, `(28,)`. `info["source"]` says where the
        data came from.
    """
    check_positive_int(batch_size, "batch_size")
    check_positive_int(max_examples, "max_examples", allow_none=True)
    check_seed(seed)
    root = find_goemotions_dir(data_dir)
    pipelines: dict[str, tf.data.Dataset] = {}
    counts: dict[str, int | None] = {}
    if root is not None:
        source = str(root)
        label_names: dict[str, tuple[str, ...]] = {}
        for split in SPLITS:
            texts, targets, label_names = read_goemotions_split(
                root, split, max_examples
            )
            counts[split] = len(texts)
            pipelines[split] = _indexed_pipeline(
                texts, targets, batch_size, seed if split == "train" else None
            )
    else:
        source = "tfds:goemotions"
        logger.warning(
            "GoEmotions files not found locally (data_dir, %s, "
            "../shared/data/goemotions); falling back to tfds.load('goemotions'), "
            "which downloads.",
            ENV_VAR,
        )
        label_names = dict(LABELS)
        for split in SPLITS:
            dataset = _tfds_pipeline(_TFDS_SPLITS[split], download)
            if max_examples is not None:
                dataset = dataset.take(max_examples)
            if split == "train":
                dataset = seeded_shuffle(dataset, 10000, seed)
            counts[split] = None
            pipelines[split] = finish(dataset, batch_size)
    tasks = {
        taxonomy: TaskSpec(
            "multilabel", len(label_names[taxonomy]), label_names[taxonomy]
        )
        for taxonomy in TAXONOMIES
    }
    return MultiTaskData(
        name="goemotions",
        train=pipelines["train"],
        validation=pipelines["validation"],
        test=pipelines["test"],
        tasks=tasks,
        info={
            "input": "text",
            "label_names": {name: spec.label_names for name, spec in tasks.items()},
            "source": source,
            "num_examples": counts,
            "seed": seed,
            "max_examples": max_examples,
        },
    )

"""The benchmark's networks: a small CNN for images (a shared bottom, or
MTAN-style task attention on its trunk), a small Transformer text encoder
and, for vector inputs (MMoE's synthetic data), an MLP whose bottom is one
of the multi-task architectures of `keras_mtl.layers`; each with one head
per task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras

from keras_mtl.datasets import TaskSpec

# The bottoms `vector_mlp` builds (`--architectures` of the benchmark).
ARCHITECTURES = ("shared_bottom", "mmoe", "cgc", "ple", "dselect_k", "cross_stitch")
# The networks `image_cnn` builds.
IMAGE_ARCHITECTURES = ("shared_bottom", "task_attention")
# The architectures of each kind of input (a dataset's `info["input"]`; the
# image datasets do not set it).
ARCHITECTURES_BY_INPUT = {
    "vector": ARCHITECTURES,
    "image": IMAGE_ARCHITECTURES,
    "text": ("shared_bottom",),
}
# Every architecture some dataset takes, in a stable order.
ALL_ARCHITECTURES = tuple(
    dict.fromkeys(a for names in ARCHITECTURES_BY_INPUT.values() for a in names)
)
# The input of each dataset the benchmark trains networks on, known without
# loading it (the command line checks `--architectures` before any work).
DATASET_INPUTS = {
    "multi_digits": "image",
    "multi_mnist": "image",
    "celeb_a": "image",
    "goemotions": "text",
    "mmoe_synthetic": "vector",
    "toy": "params",  # two parameters, no network: shared_bottom only
}


def check_architecture(architecture: str, dataset: str, input_kind: str) -> None:
    """Raises `ValueError` naming `architecture`, `dataset` and the
    architectures valid for it, unless the dataset's networks (by its
    `input_kind`: "vector", "image" or "text") include `architecture`."""
    valid = ARCHITECTURES_BY_INPUT.get(input_kind, ("shared_bottom",))
    if architecture in valid:
        return
    if architecture not in ALL_ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; valid for dataset {dataset!r}: "
            f"{', '.join(valid)}."
        )
    elsewhere = [
        f"{kind} inputs ({', '.join(d for d, k in DATASET_INPUTS.items() if k == kind)})"
        for kind, names in ARCHITECTURES_BY_INPUT.items()
        if architecture in names
    ]
    raise ValueError(
        f"Architecture {architecture!r} is not available for dataset {dataset!r} "
        f"({input_kind} inputs); valid for it: {', '.join(valid)}. "
        f"{architecture!r} applies to datasets of {' and '.join(elsewhere)}."
    )


def task_head(spec: TaskSpec, name: str, features: Any) -> Any:
    """The output layer of one task: softmax for multiclass, linear for
    regression, sigmoid otherwise."""
    if spec.kind == "regression":
        return keras.layers.Dense(spec.num_classes, name=name)(features)
    if spec.kind == "multiclass":
        return keras.layers.Dense(spec.num_classes, activation="softmax", name=name)(
            features
        )
    return keras.layers.Dense(spec.num_classes, activation="sigmoid", name=name)(
        features
    )


def task_loss(spec: TaskSpec) -> str:
    """The loss of one task, by its kind."""
    if spec.kind == "regression":
        return "mean_squared_error"
    if spec.kind == "multiclass":
        return "sparse_categorical_crossentropy"
    return "binary_crossentropy"


def image_cnn(
    input_shape: tuple[int, ...],
    tasks: Mapping[str, TaskSpec],
    width: int = 32,
    architecture: str = "shared_bottom",
) -> keras.Model:
    """A small CNN (as in MultiMNIST benchmarks) and one head per task.

    The trunk is two blocks of a 3x3 ReLU convolution (`width`, then
    `2 * width` filters) and a 2x2 max pooling. By `architecture`:

    - `shared_bottom`: the trunk's map flattened into one shared
      Dense(`4 * width`) ReLU layer (named `"shared"`) that every head reads;
    - `task_attention`: MTAN-style (Liu et al., CVPR 2019): one
      `keras_mtl.layers.TaskAttention` on the second convolution's map
      (named `"shared"`, before its pooling) gives each task its own
      attended `width`-channel map (masks of `width` channels); per task a
      2x2 max pooling (MTAN pools after each task convolution), a flatten
      and a Dense(`width`) ReLU tower (`"<task>_tower"`) before the head.

    Either way the layer named `"shared"` is the one tensor every task reads
    (for `MultiTaskModel(representation="shared")`). With `width=32` on
    MultiDigits' 12x16 images the two have about the same size: 119,957 and
    125,973 parameters for its three tasks (125,205 trainable; the rest are
    batch-normalisation statistics).
    """
    if architecture not in IMAGE_ARCHITECTURES:
        raise ValueError(
            f"image_cnn: unknown architecture {architecture!r}; valid: "
            f"{', '.join(IMAGE_ARCHITECTURES)}."
        )
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    if architecture == "task_attention":
        from keras_mtl.layers import TaskAttention

        shared = keras.layers.Conv2D(
            2 * width, 3, padding="same", activation="relu", name="shared"
        )(h)
        attended = TaskAttention(
            len(tasks), filters=width, mask_filters=width, name="task_attention"
        )(shared)
        outputs = {}
        for (name, spec), features in zip(tasks.items(), attended):
            t = keras.layers.MaxPooling2D(name=f"{name}_pool")(features)
            t = keras.layers.Flatten(name=f"{name}_flatten")(t)
            t = keras.layers.Dense(width, activation="relu", name=f"{name}_tower")(t)
            outputs[name] = task_head(spec, name, t)
        return keras.Model(inputs, outputs, name="task_attention_cnn")
    h = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu", name="shared")(h)
    outputs = {name: task_head(spec, name, h) for name, spec in tasks.items()}
    return keras.Model(inputs, outputs, name="image_cnn")


def word_piece_tokenizer(
    texts: Iterable[str], vocabulary_size: int = 8000, sequence_length: int = 64
) -> Any:
    """A WordPiece tokenizer whose vocabulary is computed locally from `texts`
    (no preset, nothing downloaded)."""
    import keras_nlp
    import tensorflow as tf

    vocabulary = keras_nlp.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(list(texts)).batch(1024),
        vocabulary_size=vocabulary_size,
        lowercase=True,
        reserved_tokens=["[PAD]", "[UNK]"],
    )
    return keras_nlp.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        sequence_length=sequence_length,
        lowercase=True,
        oov_token="[UNK]",
    )


def text_transformer(
    vocabulary_size: int,
    sequence_length: int,
    tasks: Mapping[str, TaskSpec],
    embedding_dim: int = 64,
    num_heads: int = 2,
    intermediate_dim: int = 128,
) -> keras.Model:
    """Token + position embedding, one Transformer encoder block, mean pooling
    over non-padding tokens, and one head per task. Input: token ids."""
    import warnings

    import keras_nlp

    # keras-nlp's position embedding warns that it drops the padding mask;
    # the mask of the token embedding is still what the encoder receives.
    warnings.filterwarnings("ignore", message=".*does not support masking.*")
    tokens = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    h = keras_nlp.layers.TokenAndPositionEmbedding(
        vocabulary_size, sequence_length, embedding_dim, mask_zero=True
    )(tokens)
    h = keras_nlp.layers.TransformerEncoder(intermediate_dim, num_heads)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(embedding_dim, activation="relu", name="shared")(h)
    outputs = {name: task_head(spec, name, h) for name, spec in tasks.items()}
    return keras.Model(tokens, outputs, name="text_transformer")


def architecture_bottom(
    architecture: str,
    features: Any,
    num_tasks: int,
    hidden_units: int = 128,
    num_experts: int = 8,
) -> list[Any]:
    """One feature tensor per task from `features` (`(batch, d)`), by the
    multi-task `architecture` (one of `ARCHITECTURES`).

    The sizes follow MMoE's synthetic experiments in spirit: every bottom
    has `hidden_units` ReLU units in all (the mixtures split them into
    `num_experts` experts of `hidden_units // num_experts` units), so the
    architectures differ in how units are shared, not in how many there are:

    - `shared_bottom`: one Dense layer of `hidden_units` for all tasks;
    - `mmoe`: `MMoE` with `num_experts` experts and one gate per task;
    - `cgc`: `CGC` with half the experts shared and the rest split evenly
      among the tasks;
    - `ple`: `PLE` with two such levels (twice CGC's units);
    - `dselect_k`: `DSelectK` with `num_experts` experts, 2 selected per gate;
    - `cross_stitch`: one Dense column of `hidden_units // num_tasks` per
      task, mixed by a `CrossStitch` unit.
    """
    from keras_mtl import layers

    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}."
        )
    expert_units = (max(1, hidden_units // num_experts),)
    if architecture == "shared_bottom":
        shared = keras.layers.Dense(hidden_units, activation="relu", name="shared")
        return [shared(features)] * num_tasks
    if architecture == "mmoe":
        return layers.MMoE(
            num_tasks, num_experts=num_experts, expert_units=expert_units, name="mmoe"
        )(features)
    if architecture == "dselect_k":
        return layers.DSelectK(
            num_tasks,
            num_experts=num_experts,
            num_selected=2,
            expert_units=expert_units,
            name="dselect_k",
        )(features)
    if architecture in ("cgc", "ple"):
        num_shared = max(1, num_experts // 2)
        per_task = max(1, (num_experts - num_shared) // num_tasks)
        kwargs = {
            "num_task_experts": per_task,
            "num_shared_experts": num_shared,
            "expert_units": expert_units,
        }
        if architecture == "cgc":
            return layers.CGC(num_tasks, name="cgc", **kwargs)(features)
        return layers.PLE(num_tasks, num_levels=2, name="ple", **kwargs)(features)
    columns = [
        keras.layers.Dense(
            max(1, hidden_units // num_tasks), activation="relu", name=f"column_{k}"
        )(features)
        for k in range(num_tasks)
    ]
    return layers.CrossStitch(num_tasks, name="cross_stitch")(columns)


def vector_mlp(
    input_dim: int,
    tasks: Mapping[str, TaskSpec],
    architecture: str = "shared_bottom",
    hidden_units: int = 128,
    num_experts: int = 8,
    tower_units: int = 8,
) -> keras.Model:
    """A multi-task MLP on vectors: the `architecture`'s bottom (see
    `architecture_bottom`), then per task a tower of `tower_units` ReLU
    units and the task's head."""
    inputs = keras.Input((input_dim,), name="features")
    bottoms = architecture_bottom(
        architecture, inputs, len(tasks), hidden_units, num_experts
    )
    outputs = {}
    for (name, spec), bottom in zip(tasks.items(), bottoms):
        tower = keras.layers.Dense(tower_units, activation="relu", name=f"{name}_tower")
        outputs[name] = task_head(spec, name, tower(bottom))
    return keras.Model(inputs, outputs, name=f"{architecture}_mlp")

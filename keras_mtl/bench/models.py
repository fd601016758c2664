"""The benchmark's networks: a small CNN for digit images and a small
Transformer text encoder, each with one head per task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras

from keras_mtl.datasets import TaskSpec


def task_head(spec: TaskSpec, name: str, features: Any) -> Any:
    """The output layer of one task: softmax for multiclass, sigmoid otherwise."""
    if spec.kind == "multiclass":
        return keras.layers.Dense(spec.num_classes, activation="softmax", name=name)(
            features
        )
    return keras.layers.Dense(spec.num_classes, activation="sigmoid", name=name)(
        features
    )


def task_loss(spec: TaskSpec) -> str:
    """The loss of one task, by its kind."""
    if spec.kind == "multiclass":
        return "sparse_categorical_crossentropy"
    return "binary_crossentropy"


def image_cnn(
    input_shape: tuple[int, ...], tasks: Mapping[str, TaskSpec], width: int = 32
) -> keras.Model:
    """A small shared CNN trunk (as in MultiMNIST benchmarks) and one head per task."""
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
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

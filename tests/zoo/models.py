"""The zoo's models: each builder makes a tiny net from config with random
weights (no preset, nothing downloaded) and a batch of random data for it.

A `ZooModel` holds a builder, the compile losses, the name of the layer
whose output is the shared representation (None where the net has none:
representation mode then does not apply) and a data builder. Every data
builder is seeded, so a batch can be rebuilt in another process.

- `bert`: a keras-hub `BertBackbone` (dict inputs `token_ids`,
  `padding_mask`, `segment_ids`, written in that unsorted order) called as a
  nested model; its pooled output feeds three sigmoid heads.
- `image`: a one-block keras-hub `ResNetBackbone` (convolutions and
  BatchNorm) on 16x16 images, with a 3-class and a sigmoid head.
- `nested`: a Sequential trunk holding a functional block, in a
  functional net.
- `subclassed`: a subclassed net (no representation layer).
- `multi_input`: a functional MLP whose input dict is `{"z": ..., "a": ...}`
  (not sorted).
- `recommender`: three categorical features; the item embedding is shared
  by a click tower (with the user embedding) and a conversion tower (with
  the category embedding). The towers read features of their own besides
  the shared embedding, so no single layer's output is a representation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

BATCH = 16
SEQUENCE = 8
VOCABULARY = 40


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], keras.Model]
    data: Callable[[int, int], tuple[Any, dict[str, np.ndarray]]]
    losses: dict[str, str]
    representation: str | None
    # A nested model or layer name for `shared=` (None: the net has none).
    shared: str | None = None


def _binary(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, size=(n, 1)).astype("float32")


# ------------------------------------------------------------------- bert
BERT_TASKS = ("toxic", "spam", "question")


def build_bert() -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
        dropout=0.0,  # deterministic steps: the saved and loaded model agree
        name="bert_backbone",  # explicit: Keras uniquifies default names
    )
    # Written in an unsorted order; Keras keeps `net.inputs` sorted.
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "padding_mask": keras.Input((None,), dtype="int32", name="padding_mask"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
    }
    pooled = backbone(inputs)["pooled_output"]
    z = keras.layers.Identity(name="representation")(pooled)
    outputs = {
        task: keras.layers.Dense(1, activation="sigmoid", name=task)(z)
        for task in BERT_TASKS
    }
    return keras.Model(inputs, outputs, name="bert_classifier")


def bert_data(n: int = BATCH, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SEQUENCE + 1, size=(n, 1))
    mask = (np.arange(SEQUENCE)[None, :] < lengths).astype("int32")
    x = {
        "token_ids": (rng.integers(1, VOCABULARY, (n, SEQUENCE)) * mask).astype(
            "int32"
        ),
        "padding_mask": mask,
        "segment_ids": np.zeros((n, SEQUENCE), "int32"),
    }
    return x, {task: _binary(rng, n) for task in BERT_TASKS}


# ------------------------------------------------------------------ image
def build_image() -> keras.Model:
    import keras_hub

    # The smallest keras-hub ResNet (its first stack must have 64 filters).
    # keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32,
    # 3), minimalistic=True, alpha=0.75) trains too, but its ~100 layers
    # took 23-47 s per XLA-compiled fit on TensorFlow: too slow for CI.
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(16, 16, 3),
        name="res_net_backbone",
    )
    inputs = keras.Input((16, 16, 3), name="image")
    features = backbone(inputs)
    z = keras.layers.GlobalAveragePooling2D(name="representation")(features)
    outputs = {
        "shape": keras.layers.Dense(3, activation="softmax", name="shape")(z),
        "bright": keras.layers.Dense(1, activation="sigmoid", name="bright")(z),
    }
    return keras.Model(inputs, outputs, name="image_net")


def image_data(n: int = BATCH, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, 16, 16, 3)).astype("float32")
    y = {
        "shape": rng.integers(0, 3, n).astype("int32"),
        "bright": (x.mean(axis=(1, 2, 3)) > 0.5).astype("float32")[:, None],
    }
    return x, y


# ----------------------------------------------------------------- nested
def build_nested() -> keras.Model:
    block_in = keras.Input((16,), name="block_in")
    block_out = keras.layers.Dense(16, activation="relu", name="block_dense")(block_in)
    block = keras.Model(block_in, block_out, name="block")
    trunk = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu", name="trunk_dense"),
            block,
        ],
        name="trunk",
    )
    inputs = keras.Input((12,), name="features")
    z = trunk(inputs)
    outputs = {
        "left": keras.layers.Dense(1, name="left")(z),
        "right": keras.layers.Dense(1, activation="sigmoid", name="right")(z),
    }
    return keras.Model(inputs, outputs, name="nested_net")


def nested_data(n: int = BATCH, seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, {"left": x[:, :1] * 2.0, "right": (x[:, 1:2] > 0).astype("float32")}


# ------------------------------------------------------------- subclassed
@keras.saving.register_keras_serializable(package="keras_mtl_zoo")
class ZooSubclassedNet(keras.Model):
    """A subclassed net: its variables and outputs exist after a call only."""

    def __init__(self, hidden: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = hidden
        self.body = keras.layers.Dense(hidden, activation="relu", name="body")
        self.left = keras.layers.Dense(1, name="left")
        self.right = keras.layers.Dense(1, activation="sigmoid", name="right")

    def call(self, x: Any) -> dict[str, Any]:
        h = self.body(x)
        return {"left": self.left(h), "right": self.right(h)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden": self.hidden}


def build_subclassed() -> keras.Model:
    return ZooSubclassedNet(name="subclassed_net")


# ------------------------------------------------------------ multi_input
def build_multi_input() -> keras.Model:
    # Not sorted ("z" before "a"): a flat list in `net.inputs` order would
    # feed "a" where "z" is expected.
    inputs = {
        "z": keras.Input((6,), name="z"),
        "a": keras.Input((3,), name="a"),
    }
    h = keras.layers.Concatenate(name="join")([inputs["z"], inputs["a"]])
    z = keras.layers.Dense(16, activation="relu", name="representation")(h)
    outputs = {
        "amount": keras.layers.Dense(1, name="amount")(z),
        "flag": keras.layers.Dense(1, activation="sigmoid", name="flag")(z),
    }
    return keras.Model(inputs, outputs, name="multi_input_net")


def multi_input_data(
    n: int = BATCH, seed: int = 0
) -> tuple[Any, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = {
        "z": rng.normal(size=(n, 6)).astype("float32"),
        "a": rng.normal(size=(n, 3)).astype("float32"),
    }
    y = {
        "amount": x["z"][:, :1] + x["a"][:, :1],
        "flag": (x["a"][:, 1:2] > 0).astype("float32"),
    }
    return x, y


# ------------------------------------------------------------ recommender
USERS, ITEMS, CATEGORIES = 20, 30, 5


def build_recommender() -> keras.Model:
    inputs = {
        "user_id": keras.Input((), dtype="int32", name="user_id"),
        "item_id": keras.Input((), dtype="int32", name="item_id"),
        "category": keras.Input((), dtype="int32", name="category"),
    }
    item = keras.layers.Embedding(ITEMS, 8, name="item_embedding")(inputs["item_id"])
    user = keras.layers.Embedding(USERS, 8, name="user_embedding")(inputs["user_id"])
    category = keras.layers.Embedding(CATEGORIES, 4, name="category_embedding")(
        inputs["category"]
    )
    click = keras.layers.Concatenate(name="click_features")([user, item])
    click = keras.layers.Dense(8, activation="relu", name="click_tower")(click)
    conversion = keras.layers.Concatenate(name="conversion_features")([item, category])
    conversion = keras.layers.Dense(8, activation="relu", name="conversion_tower")(
        conversion
    )
    outputs = {
        "click": keras.layers.Dense(1, activation="sigmoid", name="click")(click),
        "conversion": keras.layers.Dense(1, activation="sigmoid", name="conversion")(
            conversion
        ),
    }
    return keras.Model(inputs, outputs, name="recommender")


def recommender_data(
    n: int = BATCH, seed: int = 0
) -> tuple[Any, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = {
        "user_id": rng.integers(0, USERS, n).astype("int32"),
        "item_id": rng.integers(0, ITEMS, n).astype("int32"),
        "category": rng.integers(0, CATEGORIES, n).astype("int32"),
    }
    click = ((x["user_id"] + x["item_id"]) % 2).astype("float32")[:, None]
    y = {"click": click, "conversion": click * (x["category"] < 2)[:, None]}
    return x, y


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "bert",
            build_bert,
            bert_data,
            {task: "binary_crossentropy" for task in BERT_TASKS},
            representation="representation",
            shared="bert_backbone",
        ),
        ZooModel(
            "image",
            build_image,
            image_data,
            {
                "shape": "sparse_categorical_crossentropy",
                "bright": "binary_crossentropy",
            },
            representation="representation",
            shared="res_net_backbone",
        ),
        ZooModel(
            "nested",
            build_nested,
            nested_data,
            {"left": "mse", "right": "binary_crossentropy"},
            representation="trunk",
            shared="block",
        ),
        ZooModel(
            "subclassed",
            build_subclassed,
            nested_data,
            {"left": "mse", "right": "binary_crossentropy"},
            representation=None,
            shared="body",
        ),
        ZooModel(
            "multi_input",
            build_multi_input,
            multi_input_data,
            {"amount": "mse", "flag": "binary_crossentropy"},
            representation="representation",
            shared="representation",
        ),
        ZooModel(
            "recommender",
            build_recommender,
            recommender_data,
            {"click": "binary_crossentropy", "conversion": "binary_crossentropy"},
            representation=None,
            shared="item_embedding",
        ),
    )
}

# The balancing methods each model is trained with: a loss-level weighting,
# a parameter-mode aggregator, and representation mode (where the net has a
# representation layer).
METHODS = ("loss", "parameter", "representation")


def method_kwargs(model: ZooModel, method: str) -> dict[str, Any]:
    """The `MultiTaskModel` arguments of `method` for `model`."""
    if method == "loss":
        return {"weighting": "uncertainty"}
    if method == "parameter":
        return {"weighting": "uncertainty", "aggregator": "nash_mtl"}
    if method == "representation":
        if model.representation is None:
            raise ValueError(f"{model.name!r} has no representation layer.")
        return {"aggregator": "upgrad", "representation": model.representation}
    raise ValueError(f"Unknown method {method!r}; one of {METHODS}.")


def build_model(name: str, method: str, jit_compile: Any = True) -> keras.Model:
    """A compiled `MultiTaskModel` of zoo model `name` with `method`."""
    import keras_mtl

    spec = MODELS[name]
    keras.utils.set_random_seed(0)
    net = spec.build()
    model = keras_mtl.MultiTaskModel(net, **method_kwargs(spec, method))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=dict(spec.losses),
        jit_compile=jit_compile,
    )
    return model

"""What the backend parity workers share (backend_worker.py for TensorFlow
and JAX, torch_parity_worker.py for torch), without importing TensorFlow:
the method specifications they train, the data and the net.

A specification is a benchmark method (`adaptive`, `pcgrad:seed=7`,
`adaptive+upgrad`; `key=value` arguments read as Python literals, else as
strings; an aggregator alone has equal weighting), as
`keras_mtl.bench.runner.parse_method` reads it (which imports TensorFlow
for the benchmark's data pipelines), followed by options: `@k2` the first
two tasks only, `@trunk` representation mode at the layer "trunk", `@reg`
regularisers (an L2 kernel and an L2 activity regulariser on the trunk, an
L1 activity regulariser on the digit head).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from sklearn.datasets import load_digits

import keras_mtl

NUM_SAMPLES = 256
BATCH_SIZE = 64
TASK_LOSSES = {
    "digit": "sparse_categorical_crossentropy",
    "parity": "binary_crossentropy",
    "ink": "mse",
}


@dataclass(frozen=True)
class ParitySpec:
    """A parsed specification: the method's aliases and arguments and the
    options after `@`."""

    weighting: str
    weighting_kwargs: dict[str, Any]
    aggregator: str | None
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()

    @property
    def tasks(self) -> list[str]:
        return list(TASK_LOSSES)[:2] if "k2" in self.options else list(TASK_LOSSES)

    @property
    def regularized(self) -> bool:
        """Whether the net has its regularisers (`@reg`, `build_net`)."""
        return "reg" in self.options

    def build(self) -> dict[str, Any]:
        """Fresh `weighting=` and `aggregator=` (and, with `@trunk`,
        `representation=`) arguments for `MultiTaskModel`."""
        kwargs: dict[str, Any] = {
            "weighting": keras_mtl.weighting.get(
                self.weighting, **self.weighting_kwargs
            ),
            "aggregator": None
            if self.aggregator is None
            else keras_mtl.aggregation.get(self.aggregator, **self.aggregator_kwargs),
        }
        if "trunk" in self.options:
            kwargs["representation"] = "trunk"
        return kwargs


def _name_and_arguments(part: str) -> tuple[str, dict[str, Any]]:
    name, *pairs = [piece.strip() for piece in part.split(":")]
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value after ':', got {pair!r}")
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return name.lower(), kwargs


def parse(spec: str) -> ParitySpec:
    """The specification `spec`. Its arguments are checked now by building
    the method once, as the benchmark's `parse_method` does (so a method
    seeded from Keras' global seed draws the same seed after it)."""
    method, *options = spec.split("@")
    parsed = [_name_and_arguments(part) for part in method.split("+")]
    if len(parsed) == 1 and parsed[0][0] in keras_mtl.aggregation.names():
        parsed.insert(0, ("equal", {}))
    if len(parsed) > 2:
        raise ValueError(f"{spec!r}: expected 'weighting', 'aggregator' or both")
    (weighting, weighting_kwargs), *rest = parsed
    aggregator, aggregator_kwargs = rest[0] if rest else (None, {})
    parsed_spec = ParitySpec(
        weighting, weighting_kwargs, aggregator, aggregator_kwargs, tuple(options)
    )
    parsed_spec.build()
    return parsed_spec


def data(tasks: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first `NUM_SAMPLES` scikit-learn digits and their three tasks'
    targets (`tasks` of them)."""
    digits = load_digits()
    x = (digits.data[:NUM_SAMPLES] / 16.0).astype("float32")
    labels = digits.target[:NUM_SAMPLES]
    y = {
        "digit": labels.astype("int32"),
        "parity": (labels % 2).astype("float32")[:, None],
        "ink": (x.mean(axis=1, keepdims=True) * 4.0).astype("float32"),
    }
    return x, {t: y[t] for t in tasks}


def build_net(tasks: list[str], regularized: bool = False) -> keras.Model:
    """A dense trunk (`"trunk"`) and one head per task, with the same
    initial values on every backend (numpy, in the order of `net.weights`)."""
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(
        16,
        activation="tanh",
        name="trunk",
        kernel_regularizer=keras.regularizers.L2(1e-3) if regularized else None,
        activity_regularizer=keras.regularizers.L2(1e-3) if regularized else None,
    )(inputs)
    heads = {
        "digit": keras.layers.Dense(
            10,
            activation="softmax",
            name="digit",
            activity_regularizer=keras.regularizers.L1(1e-3) if regularized else None,
        ),
        "parity": keras.layers.Dense(1, activation="sigmoid", name="parity"),
        # A head's weights regularised too: its gradient has a regulariser's
        # term (the softmax head's L1 activity term has none: it is 1).
        "ink": keras.layers.Dense(
            1,
            name="ink",
            kernel_regularizer=keras.regularizers.L2(1e-2) if regularized else None,
        ),
    }
    outputs = {t: heads[t](hidden) for t in tasks}
    net = keras.Model(inputs, outputs, name="net")
    # The same initial values on every backend (their RNGs differ).
    rng = np.random.RandomState(0)
    for variable in net.weights:
        value = rng.uniform(-0.3, 0.3, size=tuple(variable.shape))
        variable.assign(value.astype("float32"))
    return net

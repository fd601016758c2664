"""Building blocks shared by the mixture-of-experts layers (private).

`ExpertStack` holds E expert MLPs as stacked kernels (one einsum per depth
instead of E small matmuls); the helpers check arguments and keep the gate
statistics (`gate_utilization`) that `keras_mtl.layers.gate_utilization`
reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return value


def check_units(name: str, units: Any) -> tuple[int, ...]:
    """A non-empty tuple of positive layer sizes (an int is one layer)."""
    if isinstance(units, int) and not isinstance(units, bool):
        units = (units,)
    if not isinstance(units, Sequence) or not units:
        raise ValueError(
            f"`{name}` must be a positive int or a non-empty list of them; "
            f"got {units!r}."
        )
    for u in units:
        check_positive_int(name, u)
    return tuple(int(u) for u in units)


def check_rank2(layer_name: str, shape: Any) -> int:
    """The feature size of a `(batch, features)` input."""
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            f"{layer_name} takes `(batch, features)` inputs with a known feature "
            f"size; got shape {tuple(shape)}. Flatten or pool the features first."
        )
    return int(shape[-1])


class ExpertStack(keras.layers.Layer):
    """E independent MLPs on one input: `(batch, d) -> (batch, E, units[-1])`.

    Expert e at depth l computes `act(h @ W_l[e] + b_l[e])`; every depth,
    the last included, has the activation (the experts' outputs are hidden
    features that the gates mix). Each `W_l[e]` is Glorot-uniform for its
    own `(fan_in, fan_out)`: Keras' Glorot on the stacked 3-D kernel would
    count E in both fans.
    """

    def __init__(
        self,
        num_experts: int,
        units: Sequence[int],
        activation: Any = "relu",
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.units = tuple(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def build(self, input_shape: Any) -> None:
        fan_in = check_rank2(self.name, input_shape)
        self.kernels, self.biases = [], []
        for depth, fan_out in enumerate(self.units):
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            self.kernels.append(
                self.add_weight(
                    shape=(self.num_experts, fan_in, fan_out),
                    initializer=keras.initializers.RandomUniform(-limit, limit),
                    name=f"kernel_{depth}",
                )
            )
            if self.use_bias:
                self.biases.append(
                    self.add_weight(
                        shape=(self.num_experts, fan_out),
                        initializer="zeros",
                        name=f"bias_{depth}",
                    )
                )
            fan_in = fan_out

    def call(self, x: Any) -> Any:
        h = ops.einsum("bd,edu->beu", x, self.kernels[0])
        for depth, kernel in enumerate(self.kernels):
            if depth:
                h = ops.einsum("beu,euv->bev", h, kernel)
            if self.use_bias:
                h = h + self.biases[depth]
            h = self.activation(h)
        return h

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], self.num_experts, self.units[-1])


def add_gate_statistics(
    layer: keras.layers.Layer, name: str, shape: tuple[int, ...]
) -> Any:
    """A non-trainable float32 variable for batch-mean gate weights, uniform
    at first (nothing is known before the first training batch)."""
    return layer.add_weight(
        shape=shape,
        initializer=keras.initializers.Constant(1.0 / shape[-1]),
        trainable=False,
        dtype="float32",
        name=name,
    )


def record_gates(variable: Any, gates: Any, training: Any) -> None:
    """Stores the batch mean of `gates` (`(batch, ..., E)`) when training.

    An assignment in `call` is state: on TensorFlow it runs in the step's
    graph (XLA included), on JAX Keras threads non-trainable variables
    through the stateless step, so the value after `fit` is the last
    training batch's.
    """
    if training:
        variable.assign(ops.cast(ops.mean(gates, axis=0), "float32"))


def mix(gates: Any, experts: Any) -> Any:
    """`sum_e gates[b, e] * experts[b, e, :]`."""
    return ops.einsum("be,beu->bu", gates, experts)


def base_config(layer: keras.layers.Layer, **own: Any) -> dict[str, Any]:
    """The layer's config plus its own arguments (activations serialised)."""
    config = keras.layers.Layer.get_config(layer)
    for key, value in own.items():
        if callable(value):
            value = keras.activations.serialize(value)
        config[key] = list(value) if isinstance(value, tuple) else value
    return config

"""WeightedTaskLoss: any weighting as a layer for plain Keras models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_mtl import weighting as weighting_lib


@keras.saving.register_keras_serializable(package="keras_mtl")
class WeightedTaskLoss(keras.layers.Layer):
    """Combines K task losses into one objective with a weighting method.

    For a plain Keras model trained without `MultiTaskModel`: the layer
    takes the task losses (a list or dict of scalars, or a `[K]` tensor),
    returns the weighting's objective and, with `add_loss=True`, adds it to
    the model's losses so `compile(loss=None)` + `fit` minimise it. Any
    trainable state of the method (e.g. uncertainty log-variances) is a
    weight of this layer and is trained with the model.

    Build it into a *training* model only: the inference model (inputs to
    predictions) does not contain it, so exports never carry it.

    Args:
        weighting: a weighting alias, class instance or config (see
            `keras_mtl.weighting.get`).
        add_loss: add the objective to the model's losses.
        **kwargs: base layer arguments.

    Example:

    ```python
    x = keras.Input((8,)); y_a = keras.Input((1,)); y_b = keras.Input((1,))
    h = keras.layers.Dense(16, activation="relu")(x)
    pred_a, pred_b = keras.layers.Dense(1)(h), keras.layers.Dense(1)(h)
    loss_a = keras.ops.mean(keras.ops.square(y_a - pred_a))
    loss_b = keras.ops.mean(keras.ops.square(y_b - pred_b))
    objective = keras_mtl.layers.WeightedTaskLoss("uncertainty")([loss_a, loss_b])
    trainer = keras.Model([x, y_a, y_b], objective)
    trainer.compile(optimizer="adam")          # the layer added the loss
    trainer.fit([xs, ya, yb], epochs=5)
    predictor = keras.Model(x, [pred_a, pred_b])  # inference: no loss layer
    ```
    """

    def __init__(
        self, weighting: Any = "uncertainty", add_loss: bool = True, **kwargs: Any
    ) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.weighting = weighting_lib.get(weighting)
        self.add_loss_to_model = bool(add_loss)

    @staticmethod
    def _as_vector(losses: Any) -> Any:
        if isinstance(losses, Mapping):
            losses = list(losses.values())
        if isinstance(losses, (list, tuple)):
            return ops.stack([ops.reshape(ops.cast(v, "float32"), ()) for v in losses])
        return ops.cast(losses, "float32")

    def build(self, input_shape: Any) -> None:
        if isinstance(input_shape, Mapping):
            num_tasks = len(input_shape)
        elif isinstance(input_shape, (list, tuple)) and (
            not input_shape or isinstance(input_shape[0], (list, tuple))
        ):
            num_tasks = len(input_shape)
        else:
            num_tasks = input_shape[-1]
        if not self.weighting.built:
            self.weighting.build((num_tasks,))
        self.built = True

    def call(self, losses: Any, training: bool | None = None) -> Any:
        objective, _ = self.weighting(self._as_vector(losses), training=bool(training))
        if self.add_loss_to_model:
            self.add_loss(objective)
        return objective

    def compute_output_spec(self, losses: Any, training: bool | None = None) -> Any:
        return keras.KerasTensor((), dtype="float32")

    def task_weights(self, losses: Any) -> Any:
        """The effective task weights for `losses`, changing no state."""
        _, weights = self.weighting(self._as_vector(losses), training=False)
        return weights

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "weighting": weighting_lib.serialize(self.weighting),
                "add_loss": self.add_loss_to_model,
            }
        )
        return config

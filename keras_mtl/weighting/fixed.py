"""Fixed weighting: a user-given constant weight per task."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from keras_mtl.weighting.base import Weighting


@keras.saving.register_keras_serializable(package="keras_mtl")
class FixedWeighting(Weighting):
    """Fixed weighting: a constant, user-chosen weight per task.

    $$\\mathcal{L} = \\sum_{i=1}^{K} c_i L_i, \\qquad w_i = c_i.$$

    The weights live in a (non-trainable) variable: a callback or a plain
    `weighting.weights_variable.assign(...)` changes them between steps
    without retracing the compiled step. (In a `MultiTaskModel`,
    `keras_mtl.callbacks.TaskWeightScheduler` writes the model's
    `task_loss_weights` instead, which multiply these.)

    Args:
        weights: one non-negative finite number per task, as a sequence in
            task order or a dict `{task_name: weight}` (tasks missing from
            the dict are an error).

    Example:

    ```python
    w = keras_mtl.weighting.get("fixed", weights=[1.0, 0.1])
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # objective == 0.7, weights == [1.0, 0.1]
    ```
    """

    def __init__(
        self, weights: Sequence[float] | Mapping[str, float], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(weights, Mapping):
            self.weights_spec: Any = {str(k): float(v) for k, v in weights.items()}
            values = list(self.weights_spec.values())
        else:
            try:
                self.weights_spec = [float(v) for v in weights]
            except (TypeError, ValueError):
                raise ValueError(
                    f"FixedWeighting: weights must be numbers; got {weights!r}."
                ) from None
            values = self.weights_spec
        for v in values:
            if not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"FixedWeighting: weights must be finite and >= 0; got {weights!r}."
                )

    def _ordered_weights(self, num_tasks: int) -> list[float]:
        spec = self.weights_spec
        if isinstance(spec, dict):
            if self.task_names is None:
                raise ValueError(
                    "FixedWeighting: weights were given by task name "
                    f"{sorted(spec)} but the task names are unknown; use it in a "
                    "MultiTaskModel or call set_task_names()."
                )
            unknown = sorted(set(spec) - set(self.task_names))
            missing = [t for t in self.task_names if t not in spec]
            if unknown or missing:
                raise ValueError(
                    f"FixedWeighting: weights name unknown tasks {unknown} and miss "
                    f"tasks {missing}; the tasks are {self.task_names}."
                )
            return [spec[t] for t in self.task_names]
        if len(spec) != num_tasks:
            raise ValueError(
                f"FixedWeighting: got {len(spec)} weights {spec} for {num_tasks} tasks."
            )
        return list(spec)

    def build_state(self, num_tasks: int) -> None:
        values = self._ordered_weights(num_tasks)
        self.weights_variable = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(values),
            trainable=False,
            name="task_weights",
        )

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        weights = ops.convert_to_tensor(self.weights_variable)
        return ops.sum(weights * losses), weights

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": self.weights_spec}

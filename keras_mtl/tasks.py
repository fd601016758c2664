"""Per-task loss resolution: what `compile(loss=...)` accepts, one loss per task."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops


def _resolve_loss(identifier: Any, task: str) -> keras.losses.Loss:
    """A `keras.losses.Loss` for one task from a string, function or Loss.

    `keras.losses.get("mse")` returns a bare function with no
    `sample_weight` and no reduction; wrapping it in `LossFunctionWrapper`
    adds both and the rank fix (targets `(N,)` against outputs `(N, 1)`).
    """
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if isinstance(identifier, (str, dict)):
        try:
            resolved = keras.losses.get(identifier)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Task '{task}': unknown loss {identifier!r} ({error})."
            ) from None
        if resolved is None:
            raise ValueError(f"Task '{task}': unknown loss {identifier!r}.")
        if isinstance(resolved, keras.losses.Loss):
            return resolved
        identifier = resolved
    if callable(identifier):
        name = getattr(identifier, "__name__", None) or f"{task}_loss"
        return FunctionLoss(identifier, name=name)
    raise ValueError(
        f"Task '{task}': a loss must be a string, a function or a "
        f"keras.losses.Loss; got {identifier!r}."
    )


def match_rank(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Targets `(N,)` against outputs `(N, 1)` (or the reverse): add the
    missing trailing axis of size 1, as Keras does for its own losses."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank + 1 == pred_rank and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1)
    elif pred_rank + 1 == true_rank and y_true.shape[-1] == 1:
        y_pred = ops.expand_dims(y_pred, -1)
    return y_true, y_pred


@keras.saving.register_keras_serializable(package="keras_mtl")
class FunctionLoss(keras.losses.Loss):
    """A `keras.losses.Loss` around a bare `fn(y_true, y_pred)`.

    Adds what a bare function lacks: `sample_weight`, the batch reduction
    and the rank fix of `match_rank`.
    """

    def __init__(self, fn: Any, name: str | None = None, **kwargs: Any) -> None:
        if isinstance(fn, (str, dict)):
            fn = keras.saving.deserialize_keras_object(fn)
        super().__init__(name=name, **kwargs)
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        y_true, y_pred = match_rank(y_true, y_pred)
        return self.fn(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "fn": keras.saving.serialize_keras_object(self.fn),
        }


def _per_task(
    value: Any, tasks: list[str], what: str, allow_single: bool = True
) -> dict[str, Any]:
    """Maps a dict / list / single value onto the task names, strictly."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in tasks]
        if unknown:
            raise ValueError(
                f"{what} names unknown task(s) {unknown}; the tasks are {tasks}."
            )
        missing = [t for t in tasks if t not in value]
        if missing:
            raise ValueError(f"{what} has no entry for task(s) {missing}.")
        return {t: value[t] for t in tasks}
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(tasks):
            raise ValueError(
                f"{what} is a list of {len(value)} entries for {len(tasks)} tasks "
                f"{tasks}; give one per task, in task order, or a dict."
            )
        return dict(zip(tasks, value))
    if not allow_single:
        raise ValueError(
            f"{what} must be a dict keyed by task or a list; got {value!r}."
        )
    return {t: value for t in tasks}


class TaskLosses:
    """The K unweighted task losses of a batch, as one float32 `[K]` tensor.

    Args:
        tasks: task names, in the order of the loss vector.
        loss: a dict `{task: loss}` covering every task, a list in task
            order, or one loss for all tasks. Each loss is a string, a
            function `fn(y_true, y_pred)` or a `keras.losses.Loss`.
    """

    def __init__(self, tasks: list[str], loss: Any) -> None:
        if loss is None:
            raise ValueError(
                f"compile() needs a loss for every task; the tasks are {tasks}, e.g. "
                "loss={" + ", ".join(f"'{t}': ..." for t in tasks) + "}."
            )
        self.tasks = list(tasks)
        per_task = _per_task(loss, self.tasks, "loss")
        for task, identifier in per_task.items():
            if identifier is None:
                raise ValueError(f"Task '{task}' has no loss (got None).")
        self.losses = {t: _resolve_loss(v, t) for t, v in per_task.items()}

    def structure(self, values: Any, what: str) -> dict[str, Any]:
        """Targets or predictions as a dict keyed by task, checked strictly."""
        if isinstance(values, Mapping):
            unknown = [k for k in values if k not in self.tasks]
            if unknown:
                raise ValueError(
                    f"{what} has entries {unknown} that are not tasks; the tasks are "
                    f"{self.tasks}."
                )
            missing = [t for t in self.tasks if t not in values or values[t] is None]
            if missing:
                raise ValueError(f"{what} is missing task(s) {missing}.")
            return dict(values)
        if isinstance(values, (list, tuple)):
            if len(values) != len(self.tasks):
                raise ValueError(
                    f"{what} has {len(values)} entries for {len(self.tasks)} tasks "
                    f"{self.tasks}; pass a dict keyed by task name."
                )
            return dict(zip(self.tasks, values))
        raise ValueError(
            f"{what} must be a dict keyed by task name {self.tasks}; got a single "
            f"{type(values).__name__}."
        )

    def sample_weights(self, sample_weight: Any) -> dict[str, Any]:
        if sample_weight is None:
            return {t: None for t in self.tasks}
        if isinstance(sample_weight, (Mapping, list, tuple)):
            if isinstance(sample_weight, Mapping):
                unknown = [k for k in sample_weight if k not in self.tasks]
                if unknown:
                    raise ValueError(
                        f"sample_weight names unknown task(s) {unknown}; the tasks are "
                        f"{self.tasks}."
                    )
                return {t: sample_weight.get(t) for t in self.tasks}
            return self.structure(sample_weight, "sample_weight")
        return {t: sample_weight for t in self.tasks}

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        targets = self.structure(y_true, "The targets (y)")
        predictions = self.structure(y_pred, "The model outputs")
        weights = self.sample_weights(sample_weight)
        values = []
        for task in self.tasks:
            value = self.losses[task](targets[task], predictions[task], weights[task])
            values.append(ops.cast(value, "float32"))
        return ops.stack(values)


def loss_weight_vector(loss_weights: Any, tasks: list[str]) -> list[float]:
    """Static per-task multipliers from `compile(loss_weights=...)`."""
    if loss_weights is None:
        return [1.0] * len(tasks)
    per_task = _per_task(loss_weights, tasks, "loss_weights", allow_single=False)
    out = []
    for task, value in per_task.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"loss_weights['{task}'] must be a number; got {value!r}."
            ) from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(
                f"loss_weights['{task}'] must be finite and >= 0; got {value!r}."
            )
        out.append(number)
    return out

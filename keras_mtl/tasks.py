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

    def __init__(self, tasks: list[str], loss: Any, missing_label: Any = None) -> None:
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
        self.missing_label = missing_label_values(missing_label, self.tasks)

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
        """The K task losses, each the mean over the task's labelled examples."""
        losses, counts, sizes = self.masked(y_true, y_pred, sample_weight)
        # The scale first: exactly 1 when every example is labelled.
        return losses * (sizes / ops.maximum(counts, 1.0))

    def masked(
        self, y_true: Any, y_pred: Any, sample_weight: Any = None
    ) -> tuple[Any, Any, Any]:
        """`(losses, counts, sizes)`, each float32 `[K]`: each task's loss
        (as its Keras loss reduces it, missing labels given weight 0, NaN
        and ignored labels replaced by 0 so that no NaN reaches the
        gradient), the number of its labelled examples and the batch size.
        `losses * sizes / counts` is the mean over the labelled examples."""
        targets = self.structure(y_true, "The targets (y)")
        predictions = self.structure(y_pred, "The model outputs")
        weights = self.sample_weights(sample_weight)
        values, counts, sizes = [], [], []
        for task in self.tasks:
            check_label_dtype(task, targets[task])
            target, weight, labelled = self._labelled(
                task, targets[task], weights[task]
            )
            value = self._task_loss(task, target, predictions[task], weight)
            values.append(ops.cast(value, "float32"))
            size = ops.cast(ops.shape(target)[0], "float32")
            sizes.append(size)
            counts.append(size if labelled is None else ops.sum(labelled))
        return ops.stack(values), ops.stack(counts), ops.stack(sizes)

    def may_be_missing(self, y_true: Any, sample_weight: Any = None) -> list[bool]:
        """Per task, whether a batch of this structure can leave it without
        a labelled example, known when the step is traced: it has a sample
        weight, float labels (NaN) or a `missing_label` value. Integer
        labels without either are always labelled."""
        targets = self.structure(y_true, "The targets (y)")
        weights = self.sample_weights(sample_weight)
        return [
            weights[task] is not None
            or _is_float(targets[task])
            or task in self.missing_label
            for task in self.tasks
        ]

    def metric_inputs(
        self, y_true: Any, sample_weight: Any, masks_only: bool
    ) -> tuple[dict[str, Any], Any]:
        """Targets and per-task sample weights for the compiled metrics:
        missing labels replaced by 0 and given weight 0 (the weight is the
        labelled mask alone with `masks_only`, else the sample weight times
        it). Where nothing can be missing, the sample weight as given
        (None with `masks_only`)."""
        targets = self.structure(y_true, "The targets (y)")
        given = self.sample_weights(None if masks_only else sample_weight)
        weights: dict[str, Any] = {}
        for task in self.tasks:
            targets[task], weights[task], _ = self._labelled(
                task, targets[task], given[task]
            )
        if all(w is None for w in weights.values()):
            return targets, None if masks_only else sample_weight
        return targets, weights

    def check_labels(self, y: Any) -> None:
        """Raises a `ValueError` naming the task if a task's labels (arrays
        given to `fit`/`evaluate`/`*_on_batch`) are strings: Keras' data
        adapter would fail first, without the task's name."""
        if not isinstance(y, (Mapping, list, tuple)):
            return
        if not isinstance(y, Mapping) and len(y) != len(self.tasks):
            return
        targets = y if isinstance(y, Mapping) else dict(zip(self.tasks, y))
        for task in self.tasks:
            if targets.get(task) is not None:
                check_label_dtype(task, targets[task])

    def _task_loss(self, task: str, target: Any, output: Any, weight: Any) -> Any:
        """One task's loss, Keras' shape and dtype errors (at trace time)
        re-raised with the task's name, shapes and dtypes."""
        loss = self.losses[task]
        target = ops.convert_to_tensor(target)
        output_tensor = ops.convert_to_tensor(output)
        described = (
            f"Task {task!r}: the loss {_loss_name(loss)} got labels of shape "
            f"{tuple(target.shape)} ({keras.backend.standardize_dtype(target.dtype)})"
            f" and outputs of shape {tuple(output_tensor.shape)} "
            f"({keras.backend.standardize_dtype(output_tensor.dtype)})"
        )
        if getattr(loss, "fn", None) in _elementwise_losses():
            # These broadcast a label of the wrong width against the output
            # silently (labels (N, 2) against an output (N, 1) give (N, 2)).
            labels, outputs = match_rank(target, output_tensor)
            if not _same_shape(labels.shape, outputs.shape):
                raise ValueError(
                    f"{described}, which it compares element by element: give "
                    "labels of the output's shape (or one dimension less when "
                    "the output's last is 1)."
                )
        try:
            return loss(target, output, weight)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{described}: {error}") from error

    def _labelled(self, task: str, target: Any, weight: Any) -> tuple[Any, Any, Any]:
        """The target with missing labels replaced, the sample weight with
        0 on them, and the float32 `[N]` indicator of labelled examples
        (None when nothing can be missing: the batch is all labelled)."""
        target = ops.convert_to_tensor(target)
        labelled = None
        if weight is not None:
            weight = ops.convert_to_tensor(weight)
            per_example = ops.cast(weight, "float32") != 0.0
            labelled = _per_example(per_example, ops.any)
        missing = None
        if _is_float(target):
            missing = ops.isnan(target)
        ignore = self.missing_label.get(task)
        if ignore is not None:
            hit = ops.equal(target, ops.cast(ignore, target.dtype))
            missing = hit if missing is None else ops.logical_or(missing, hit)
        if missing is not None:
            # An example with any missing entry is unlabelled; the entries
            # are replaced (0 x NaN would be NaN in the loss and gradient).
            target = ops.where(missing, ops.zeros_like(target), target)
            present = ops.logical_not(_per_example(missing, ops.any))
            labelled = (
                present if labelled is None else ops.logical_and(labelled, present)
            )
        if labelled is None:
            return target, weight, None
        mask = ops.cast(labelled, "float32")
        if weight is None:
            weight = mask
        else:
            shape = (-1,) + (1,) * (len(weight.shape) - 1)
            weight = ops.cast(weight, "float32") * ops.reshape(mask, shape)
        return target, weight, mask


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


def check_label_dtype(task: str, target: Any) -> None:
    """Raises a `ValueError` naming the task if its labels are strings (or
    Python objects): a loss takes numbers."""
    dtype = getattr(target, "dtype", None)
    if dtype is None:
        return
    name = str(getattr(dtype, "name", dtype))
    if getattr(dtype, "kind", None) in ("U", "S", "O") or name in ("string", "object"):
        raise ValueError(
            f"Task {task!r}: the labels have dtype {name} (shape "
            f"{tuple(target.shape)}); a loss needs numbers (class indices "
            "for a sparse crossentropy, floats otherwise). Encode them first, "
            "e.g. with keras.layers.StringLookup."
        )


def _loss_name(loss: Any) -> str:
    return repr(getattr(loss, "name", None) or type(loss).__name__)


def _same_shape(a: Any, b: Any) -> bool:
    """Equal shapes, an unknown dimension matching any."""
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _elementwise_losses() -> set[Any]:
    """Keras' loss functions that take labels of the output's shape."""
    names = (
        "mean_squared_error",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_logarithmic_error",
        "huber",
        "log_cosh",
        "binary_crossentropy",
        "binary_focal_crossentropy",
        "categorical_crossentropy",
        "categorical_focal_crossentropy",
        "kl_divergence",
        "poisson",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
    )
    return {getattr(keras.losses, n) for n in names if hasattr(keras.losses, n)}


def _is_float(target: Any) -> bool:
    """Whether labels are floats (which mark a missing label by NaN)."""
    dtype = getattr(target, "dtype", None)
    if dtype is None:
        dtype = ops.convert_to_tensor(target).dtype
    return "float" in keras.backend.standardize_dtype(dtype)


def _per_example(flags: Any, reduce: Any) -> Any:
    """`[N]` from a boolean tensor `[N, ...]`, reducing its trailing axes."""
    if len(flags.shape) <= 1:
        return flags
    return reduce(ops.reshape(flags, (ops.shape(flags)[0], -1)), axis=1)


def missing_label_values(value: Any, tasks: list[str]) -> dict[str, Any]:
    """`missing_label` as `{task: ignore value}` (tasks without one left
    out): a dict keyed by task, or one number for every task."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in tasks]
        if unknown:
            raise ValueError(
                f"missing_label names unknown task(s) {unknown}; the tasks are {tasks}."
            )
        per_task = {t: v for t, v in value.items() if v is not None}
    else:
        per_task = {t: value for t in tasks}
    for task, ignore in per_task.items():
        if isinstance(ignore, bool) or not isinstance(ignore, (int, float)):
            raise ValueError(
                f"missing_label[{task!r}] must be a number (the label value that "
                f"marks a missing label, e.g. -1); got {ignore!r}."
            )
        if isinstance(ignore, float) and math.isnan(ignore):
            raise ValueError(
                f"missing_label[{task!r}] is NaN: NaN labels are always treated "
                "as missing; leave it out."
            )
    return per_task

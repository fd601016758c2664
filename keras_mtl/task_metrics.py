"""Per-task epoch means and the log helpers of `MultiTaskModel`.

`_TaskMean` logs `<task>_loss` and `<task>_weight` (the 2K trackers share
one pair of variables), `_EpochMean` the objective (`loss`), NaN when every
step of an epoch was skipped; `_SkippedEpochWarning` says so at the end of
such an epoch.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import keras
from keras import ops

from keras_mtl import _compat


class _TaskMean(_compat.metrics_list_base()):
    """The epoch mean of one per-task value (`<task>_loss`, `<task>_weight`):
    what a `keras.metrics.Mean` of that name logs, bit for bit, but the 2K
    trackers of a model share one pair of variables, held by the first of
    the group: the weighted totals `[2K]` and the counts `[2K + 1]` (one per
    tracker, as a task's values are counted only on the steps that observed
    it, and the number of updates, so a tracker updated only with weight 0
    logs NaN, not 0). Each variable costs a
    fixed time per step (TensorFlow's XLA launch handles every variable
    separately: 4K scalars measured about 8% of a step at K = 8; see
    docs/performance.md, Profile)."""

    # A `MetricsList` of itself only so that Keras' callbacks in mode
    # "auto" find it by name and read its `_direction` (they look inside
    # such lists only): "down" for a `<task>_loss`.
    @property
    def metrics(self) -> list[Any]:
        return [self]

    def __init__(
        self, name: str, index: int = 0, size: int | None = None, owner: Any = None
    ) -> None:
        keras.metrics.Metric.__init__(self, name=name)
        self._index = index
        if name.endswith("_loss"):
            _compat.set_metric_direction(self, "down")
        if owner is None:
            self.total = self.add_variable(
                shape=(size,), initializer="zeros", name="total"
            )
            self.count = self.add_variable(
                shape=(size + 1,), initializer="zeros", name="count"
            )
        # A weak reference, not tracked (and no cycle for object walkers):
        # the group's variables belong to its first tracker only.
        object.__setattr__(
            self, "_owner_ref", None if owner is None else weakref.ref(owner)
        )

    def _owner(self) -> _TaskMean:
        # A method, not a property: Keras' saving walks every attribute
        # and would recurse into the tracker itself.
        return self if self._owner_ref is None else self._owner_ref()

    @classmethod
    def group(cls, names: list[str]) -> list[_TaskMean]:
        """One tracker per name, sharing the first one's variables."""
        first = cls(names[0], 0, size=len(names))
        return [first] + [
            cls(name, i, owner=first) for i, name in enumerate(names) if i > 0
        ]

    def update_group(self, values: Any, sample_weight: Any) -> None:
        """Adds `values` (one per tracker of the group, in order) with
        `sample_weight` (a scalar, or one per tracker), as each tracker's
        `Mean.update_state` would."""
        owner = self._owner()
        size = owner.total.shape[0]
        weight = ops.cast(sample_weight, "float32")
        weight = ops.broadcast_to(weight, (size,))
        owner.total.assign_add(ops.cast(values, "float32") * weight)
        owner.count.assign_add(ops.concatenate([weight, ops.ones((1,), "float32")]))

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "Per-task trackers are updated together, with `update_group`."
        )

    def result(self) -> Any:
        owner = self._owner()
        count = owner.count[self._index]
        mean = ops.divide_no_nan(owner.total[self._index], count)
        # Updated, but never with a positive weight: nothing was observed.
        empty = ops.logical_and(count == 0.0, owner.count[-1] > 0.0)
        return ops.where(empty, float("nan"), mean)

    def reset_state(self) -> None:
        if self._owner_ref is None:
            self.total.assign(ops.zeros(self.total.shape, "float32"))
            self.count.assign(ops.zeros(self.count.shape, "float32"))

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "index": self._index}


class _EpochMean(keras.metrics.Mean):
    """`keras.metrics.Mean` that logs NaN, not 0, when every update had
    weight 0 (an epoch whose every step was skipped). The number of updates
    is the per-task trackers' (`_TaskMean`, updated at every step): no
    variable of its own."""

    def __init__(self, name: str, group: _TaskMean) -> None:
        super().__init__(name=name)
        object.__setattr__(self, "_group_ref", weakref.ref(group))

    def result(self) -> Any:
        group = self._group_ref()._owner()
        empty = ops.logical_and(self.count == 0.0, group.count[-1] > 0.0)
        return ops.where(empty, float("nan"), super().result())


class _SkippedEpochWarning(keras.callbacks.Callback):
    """Warns at the end of an epoch in which every training step was
    skipped (`on_nonfinite="skip"`): its logs are NaN, nothing trained."""

    def _counts(self) -> tuple[int, int]:
        model = self.model
        return (
            int(ops.convert_to_numpy(model.train_steps)),
            int(ops.convert_to_numpy(model.skipped_steps)),
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = self._counts()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        steps, skipped = (a - b for a, b in zip(self._counts(), self._start))
        if steps > 0 and skipped == steps:
            warnings.warn(
                f"Epoch {epoch + 1}: all {skipped} training steps were skipped "
                "(non-finite loss or gradient, on_nonfinite='skip'); nothing "
                "was trained and the epoch's losses are logged as NaN.",
                UserWarning,
                stacklevel=2,
            )


def _python_numbers(logs: Any) -> Any:
    """`train_on_batch`/`test_on_batch` results with Python floats, as Keras
    3.14+ returns them (before 3.14: 0-d numpy arrays)."""

    def number(value: Any) -> Any:
        return float(value) if getattr(value, "shape", None) == () else value

    if isinstance(logs, dict):
        return {key: number(value) for key, value in logs.items()}
    if isinstance(logs, list):
        return [number(value) for value in logs]
    return number(logs)


def metrics_for_keras(metrics: Any, weighted_metrics: Any) -> tuple[Any, Any, bool]:
    """`(metrics, weighted_metrics, masks_only)` to give Keras' `compile` for
    the user's: Keras gives `metrics` no sample weight, so given alone
    they go to Keras as weighted metrics (their names stay the same) and
    the step feeds them the missing-label mask only (`masks_only`; see
    `MultiTaskStep.compute_metrics`). Given both, they stay as they are
    and a warning says that `metrics` count missing labels."""
    if metrics is not None and weighted_metrics is None:
        return None, metrics, True
    if metrics is not None:
        warnings.warn(
            "compile(metrics=..., weighted_metrics=...): Keras gives `metrics` "
            "no sample weight, so with both they count every example, "
            "including those whose labels are missing (replaced by 0 for "
            "them). Pass only `weighted_metrics` (or only `metrics`) for "
            "metrics over each task's labelled examples.",
            UserWarning,
            stacklevel=3,
        )
    return metrics, weighted_metrics, False

"""What `MultiTaskModel` adds around Keras' `evaluate`, `train_on_batch`
and `test_on_batch` (a mixin before the backend's trainer; `fit`, which
adds the weighting's callbacks, is `MultiTaskModel.fit`): string labels
checked before Keras' data adapter, evaluation logs without the training
step's weights and cosine, one-batch calls that log that batch alone as
Python numbers, and `train_on_batch`'s non-finite check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from keras import ops

from keras_mtl.task_metrics import _python_numbers


class MultiTaskLoops:
    """The evaluation and one-batch wrappers of `MultiTaskModel` (see the
    module docstring); each calls Keras' own through `super()`."""

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        self._check_labels(args, kwargs)
        with self._evaluating():
            return super().evaluate(*args, **kwargs)

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Evaluation logs hold losses and metrics only (see
        `get_metrics_result`)."""
        before = getattr(self, "_in_evaluation", False)
        object.__setattr__(self, "_in_evaluation", True)
        try:
            yield
        finally:
            object.__setattr__(self, "_in_evaluation", before)

    def get_metrics_result(self) -> dict[str, Any]:
        logs = super().get_metrics_result()
        if getattr(self, "_in_evaluation", False) and self.task_names:
            # A weight and a gradient cosine belong to a training step.
            dropped = {f"{t}_weight" for t in self.task_names} | {"grad_cosine_min"}
            logs = {k: v for k, v in logs.items() if k not in dropped}
        return logs

    def train_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        before = int(ops.convert_to_numpy(self.skipped_steps)) if self.task_names else 0
        self._check_labels(args, kwargs)
        self._reset_metrics_for_one_batch()
        logs = super().train_on_batch(*args, **kwargs)
        if self.on_nonfinite == "raise":
            self.check_nonfinite(before)
        return _python_numbers(logs)

    def test_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        self._check_labels(args, kwargs)
        self._reset_metrics_for_one_batch()
        with self._evaluating():
            return _python_numbers(super().test_on_batch(*args, **kwargs))

    def _check_labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """String labels passed as arrays fail in Keras' data adapter,
        before the step, without the task's name: checked here first."""
        y = kwargs.get("y", args[1] if len(args) > 1 else None)
        if y is not None and self._task_losses is not None:
            self._task_losses.check_labels(y)

    def _reset_metrics_for_one_batch(self) -> None:
        # `train_on_batch`/`test_on_batch` log this batch alone: Keras 3.15
        # resets the metrics first, Keras before 3.15 logged running means
        # over every earlier call (and the last fit/evaluate epoch).
        if getattr(self, "compiled", False):
            self.reset_metrics()

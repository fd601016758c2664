"""Coordinate-wise trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_int
from keras_mtl.aggregation.base import Aggregator

# Up to this many tasks the trimmed values are selected by elementwise
# minimum and maximum of whole rows (`middle_rows`), which the compilers
# fuse into one pass over the Jacobian; above it, by a sort along the task
# axis. On the CPU, XLA's sort of the short axis of a [3, 2.2M] Jacobian
# made TrimmedMean's step 3.3-9.8 times the ideal step (docs/performance.md).
_SELECTION_MAX_TASKS = 8


def middle_rows(rows: list[Any], trim: int) -> list[Any]:
    """The K rows with, in every coordinate, the `trim` largest values moved
    to the last `trim` rows and the `trim` smallest to the first: returns
    the K - 2 * trim rows between them (their values in each coordinate are
    that coordinate's middle values, in no particular order).

    `trim` passes of a bubble sort in each direction, as compare-exchanges
    of whole rows (`ops.minimum` / `ops.maximum`: exact, so the selected
    values are the sorted ones)."""
    rows = list(rows)
    num = len(rows)
    for p in range(trim):
        # The largest remaining value of each coordinate to row num - 1 - p,
        # then the smallest remaining one to row p.
        for i in range(p, num - 1 - p):
            _order_pair(rows, i)
        for i in range(num - 3 - p, p - 1, -1):
            _order_pair(rows, i)
    return rows[trim : num - trim]


def _order_pair(rows: list[Any], i: int) -> None:
    """Puts, in every coordinate, the smaller of rows `i` and `i + 1` in row
    `i` and the larger in row `i + 1` (in place)."""
    rows[i], rows[i + 1] = (
        ops.minimum(rows[i], rows[i + 1]),
        ops.maximum(rows[i], rows[i + 1]),
    )


@keras.saving.register_keras_serializable(package="keras_mtl")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean: in every coordinate, drop the
    `trim_number` largest and the `trim_number` smallest of the K task
    gradients' values and average the rest.

    With $J_{(1)j} \\le \\dots \\le J_{(K)j}$ the sorted values of column
    $j$ and $b$ = `trim_number`,

    $$d_j = \\frac{1}{K - 2b} \\sum_{r = b + 1}^{K - b} J_{(r)j} .$$

    Robust to up to $b$ arbitrary (adversarial, or simply huge) values in
    each coordinate. Not a combination of the rows (each coordinate keeps
    other rows), so `MultiTaskModel` forms $J$ for it; positively
    homogeneous and permutation invariant; `trim_number = 0` is the mean.
    It needs $K \\ge 2b + 1$ rows: a smaller K raises a `ValueError`
    naming `trim_number` when the aggregator is called. Same as TorchJD's
    `TrimmedMean`, with a default `trim_number` of 1.

    Reference: D. Yin, Y. Chen, K. Ramchandran and P. Bartlett,
    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018.

    Args:
        trim_number: $b \\ge 0$, the number of values removed at each end
            of every coordinate.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.TrimmedMean(trim_number=1)
    d = agg(np.array([[1.0, 9.0], [2.0, -4.0], [30.0, 0.0]]))
    # column 0: drop 1 and 30 -> 2; column 1: drop -4 and 9 -> 0
    # d == [2.0, 0.0]
    ```
    """

    scale_degree = 1

    def __init__(self, trim_number: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trim_number = check_int(trim_number, "trim_number", "TrimmedMean", low=0)

    @property
    def min_tasks(self) -> int:
        return 2 * self.trim_number + 1

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        num_tasks = jacobian.shape[0]
        trim = self.trim_number
        if num_tasks < 2 * trim + 1:
            raise ValueError(
                f"TrimmedMean: trim_number={trim} needs at least 2 * trim_number "
                f"+ 1 = {2 * trim + 1} tasks (rows of the Jacobian); got {num_tasks}."
            )
        if trim == 0:
            return ops.mean(jacobian, axis=0)
        if num_tasks > _SELECTION_MAX_TASKS:
            ordered = ops.sort(jacobian, axis=0)
            return ops.mean(ordered[trim : num_tasks - trim], axis=0)
        middle = middle_rows([jacobian[i] for i in range(num_tasks)], trim)
        total = middle[0]
        for row in middle[1:]:
            total = total + row
        return total / len(middle)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "trim_number": self.trim_number}

"""`sum_rows`: the sum over the K rows of a `[K, D]` matrix, fast on both
backends."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def sum_rows(matrix: Any) -> Any:
    """`ops.sum(matrix, axis=0)` for a `[K, D]` matrix with a known K.

    On JAX as K - 1 row additions instead: XLA on the CPU (jaxlib 0.10)
    reduces the leading axis of such a short, wide matrix 10 to 30 times
    slower than it adds the rows (an `[8, 41344]` Jacobian: 6.4 ms against
    0.13 ms; `[40, 41344]`: 35 ms against 1.1 ms; see docs/performance.md,
    Profile). The additions fuse into one loop; the sum is the same up to
    float rounding (the order of the additions). On TensorFlow, `ops.sum`.
    """
    num = matrix.shape[0]
    if keras.backend.backend() != "jax" or num is None:
        return ops.sum(matrix, axis=0)
    total = matrix[0]
    for i in range(1, num):
        total = total + matrix[i]
    return total


def mean_rows(matrix: Any) -> Any:
    """`ops.mean(matrix, axis=0)`, on JAX as `sum_rows(matrix) / K`."""
    if keras.backend.backend() != "jax" or matrix.shape[0] is None:
        return ops.mean(matrix, axis=0)
    return sum_rows(matrix) / matrix.shape[0]

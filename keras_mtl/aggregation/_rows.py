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


def combine_rows(weights: Any, matrix: Any) -> Any:
    """`weights @ matrix`, the combination `sum_i w_i m_i` of the K rows
    of a `[K, D]` matrix with a known K (or of a list of K rows), for
    weights `[K]`.

    On JAX and torch as K weighted row additions. XLA on the CPU (jaxlib
    0.10) runs the `[1, K] @ [K, D]` dot of a short, wide matrix about 10
    times slower (`[8, 2.2M]`: 106 ms against 11 ms; docs/performance.md,
    Profile); torch, eager, first stacks a list of rows (a copy of them):
    `[3, 1M]` 1.27 ms against 0.93 ms. On torch each addition is in place
    (`addcmul_`: one pass over a row, no product written out; `[3, 1M]`
    0.18 ms against 0.37 ms). On TensorFlow, one `ops.matmul` (a list is
    stacked first).
    """
    rows = isinstance(matrix, (list, tuple))
    num = len(matrix) if rows else matrix.shape[0]
    backend = keras.backend.backend()
    if backend == "tensorflow" or num is None:
        return ops.matmul(weights[None, :], ops.stack(matrix) if rows else matrix)[0]
    weights = ops.cast(weights, matrix[0].dtype)
    total = weights[0] * matrix[0]  # a new tensor: the rows stay as they are
    for i in range(1, num):
        if backend == "torch":
            total.addcmul_(matrix[i], weights[i])
        else:
            total = total + weights[i] * matrix[i]
    return total

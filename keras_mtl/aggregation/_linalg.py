"""The linear algebra the aggregators share, each piece written once:
cleaning a Jacobian, scale-safe division and scaling, row norms, the
Gramian and its normalisation, the projection onto the simplex and the
regularised gradient step on simplex weights (MoCo, MoDo).

All of it is `keras.ops` (traceable, XLA-compatible, float32 in, float32
out for float32 inputs), through `_small_ops`: on torch, the same torch
functions without Keras' per-call conversions.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.aggregation import _small_ops as small


def clean_jacobian(jacobian: Any) -> Any:
    """float32, non-finite entries replaced by 0, so they cannot poison the
    solvers (a model skips such steps anyway: its loss or gradient check
    fails)."""
    jacobian = small.cast(jacobian, "float32")
    return small.where(small.isfinite(jacobian), jacobian, 0.0)


def positive_or_one(x: Any) -> Any:
    """`x` where it is > 0, else 1 (a safe divisor)."""
    return small.where(x > 0.0, x, 1.0)


def safe_divide(numerator: Any, denominator: Any) -> Any:
    """`numerator / denominator` where the denominator is > 0, else 0."""
    return small.where(denominator > 0.0, numerator / positive_or_one(denominator), 0.0)


def max_abs_scaled(matrix: Any, axis: int | None = None) -> tuple[Any, Any]:
    """`(matrix / s, s)` for `s` the largest absolute entry of `matrix` (of
    each slice along `axis`, kept as an axis of length 1), or 1 where that
    is 0: the scaled matrix has entries in [-1, 1], so its squares neither
    overflow nor all underflow in float32."""
    keepdims = axis is not None
    scale = positive_or_one(small.max(small.abs(matrix), axis=axis, keepdims=keepdims))
    return matrix / scale, scale


def row_norms(matrix: Any) -> Any:
    """Euclidean norms of the rows of `[K, D]` without overflow or underflow:
    each row is divided by its largest absolute entry first."""
    scaled, peak = max_abs_scaled(matrix, axis=1)
    return peak[:, 0] * small.sqrt(small.sum(scaled * scaled, axis=1))


def unit_rows(matrix: Any) -> Any:
    """The rows of `[K, D]` divided by their norms (zero rows stay zero)."""
    scaled, _ = max_abs_scaled(matrix, axis=1)
    norms = small.sqrt(small.sum(scaled * scaled, axis=1, keepdims=True))
    return safe_divide(scaled, norms)


# A matrix of at least this many columns gets its Gramian as K(K+1)/2
# fused multiply-and-sum loops over its rows instead of one
# `[K, n] @ [n, K]` dot. Measured on XLA's CPU backend (docs/performance.md,
# Profile):
# - JAX (jaxlib 0.10): the dot is 6x slower at K = 3, n = 1M, 3x at K = 8
#   and 2x at K = 40, n = 262k (memory-bound), but 4x faster at K = 40,
#   n = 16k (in cache);
# - TensorFlow (2.21): at n = 1M the pairwise sums take 3-9 ms against
#   11-13 ms for the dot at K = 2 and 3, and the dot's sums are less
#   accurate (largest error 5e-4 of the largest entry, against 6e-8, of a
#   float64 reference); from K = 4 XLA runs the dot faster (6 ms at K = 4)
#   while the pairs grow as K^2, so TensorFlow takes pairs only up to
#   `TENSORFLOW_PAIRWISE_ROWS` rows.
# - torch (2.13, eager): the pairs as BLAS dots of two rows (`ops.dot`),
#   which write nothing out: at K = 3, n = 1M, 0.68 ms, against 1.36 ms to
#   stack the rows and multiply once and 1.68 ms for products written out
#   and summed (quiet machine; under load the written-out products were
#   10x slower than one dot, 76 against 7.6 ms).
PAIRWISE_FROM = 65536
TENSORFLOW_PAIRWISE_ROWS = 3


def takes_pairwise(num_rows: int, columns: int | None) -> bool:
    """Whether `gramian` sums a `[num_rows, columns]` matrix's Gramian pair
    by pair: on TensorFlow up to `TENSORFLOW_PAIRWISE_ROWS` rows, wide
    ones or rows whose length is known only at run time (representation
    mode's rows, their batch size unknown: the dot of three `[262144]` rows
    took 3.7 ms, their six tiled sums well under 1 ms); elsewhere rows of a
    column count known when tracing and large enough."""
    if keras.backend.backend() == "tensorflow":
        return is_wide(columns) and num_rows <= TENSORFLOW_PAIRWISE_ROWS
    return columns is not None and columns >= PAIRWISE_FROM


def is_wide(columns: int | None) -> bool:
    """Rows of at least `PAIRWISE_FROM` columns, or of a count known only
    at run time: where TensorFlow takes pairs (`takes_pairwise`) and the raw
    Gramian with its branch (`gradients.rescales_always`)."""
    return columns is None or columns >= PAIRWISE_FROM


def gramian(jacobian: Any) -> Any:
    """`J @ J.T` in float32, of a `[K, n]` matrix or of its K rows (a list
    of `[n]` tensors, which need not be stacked): one dot, or its
    K(K+1)/2 entries as sums of products of two rows (`takes_pairwise`).
    Exactly symmetric either way."""
    listed = isinstance(jacobian, (list, tuple))
    num = len(jacobian) if listed else jacobian.shape[0]
    columns = jacobian[0].shape[0] if listed else jacobian.shape[1]
    if num is None or not takes_pairwise(num, columns):
        matrix = small.stack(list(jacobian)) if listed else jacobian
        matrix = small.cast(matrix, "float32")
        # A BLAS dot need not round entry (i, j) as it rounds (j, i) (torch's
        # on AMD EPYC does not); averaging the two costs K^2 operations.
        return symmetric_part(small.matmul(matrix, small.transpose(matrix)))
    rows = [small.cast(jacobian[i], "float32") for i in range(num)]
    # XLA fuses the multiply-and-sum (JAX) or sums the product tile by tile
    # (TensorFlow, `_sum_of_products`); torch runs ops one by one, and its
    # dot of two rows writes nothing out.
    product = small.dot if keras.backend.backend() == "torch" else _sum_of_products
    entries: list[list[Any]] = [[None] * num for _ in range(num)]
    for i in range(num):
        for j in range(i, num):
            entries[i][j] = entries[j][i] = product(rows[i], rows[j])
    return small.stack([small.stack(row) for row in entries])


# TensorFlow's XLA CPU backend sums a long vector slowly (about 0.6 ms a
# million entries, whatever shape it is given) and multiplies a matrix by a
# vector at memory speed: the six sums of products of three `[1M]` rows
# took 3.8-4.5 ms as flat sums and 0.9-1.1 ms as `[n / 256, 256] @
# ones(256)`, and were more accurate so (the partial sums are short; largest
# error 5-7e-8 of the largest entry, against 1.2-1.8e-7, of a float64
# reference; docs/performance.md, Profile).
TENSORFLOW_SUM_TILE = 256


def _sum_of_products(a: Any, b: Any) -> Any:
    """`sum(a * b)` of two `[n]` rows; on TensorFlow tile by tile as a
    matrix-vector product (`TENSORFLOW_SUM_TILE`), the product padded with
    zeros to whole tiles (n may be known only at run time)."""
    product = a * b
    if keras.backend.backend() != "tensorflow":
        return small.sum(product)
    tile = TENSORFLOW_SUM_TILE
    padded = small.pad(product, [[0, (-small.shape(product)[0]) % tile]])
    tiles = small.reshape(padded, (-1, tile))
    return small.sum(small.matmul(tiles, small.ones((tile,), "float32")))


def symmetric_part(matrix: Any) -> Any:
    """`(M + M.T) / 2`: a Gramian made exactly symmetric (a summed or
    rescaled one may differ from its transpose by rounding)."""
    # A tensor first: on torch a numpy array plus a tensor raises.
    matrix = small.convert_to_tensor(matrix)
    return 0.5 * (matrix + small.transpose(matrix))


def normalized_gramian(gramian: Any) -> tuple[Any, Any]:
    """`G / n**2` and `n`, for `n` the largest row norm of the Jacobian
    (`n**2 = max_i G_ii`; `n = 1` for a zero Gramian)."""
    gramian = small.cast(gramian, "float32")
    safe = positive_or_one(small.max(small.diagonal(gramian)))
    return gramian / safe, small.sqrt(safe)


def rescaled(weights: Any, norm: Any, exponent: float | None) -> Any:
    """`weights * norm ** exponent` (`weights` for an exponent of 0 or
    `None`, the latter for an aggregator of no scale degree)."""
    if exponent is None or exponent == 0:
        return weights
    if exponent == -1:
        return weights / norm
    return weights * small.power(norm, exponent)


def project_onto_simplex(v: Any) -> Any:
    """Euclidean projection of `v` (`[K]`) onto the probability simplex,
    by the sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al.
    2008): fixed cost, no iteration, traceable."""
    num = v.shape[0]
    # Shifting by a constant does not change the projection; shifting by the
    # maximum keeps huge inputs from losing the simplex to rounding.
    v = v - small.max(v)
    u = small.flip(small.sort(v), axis=0)
    cumulative = small.cumsum(u) - 1.0
    index = small.arange(1, num + 1, dtype="float32")
    condition = u - cumulative / index > 0
    rho = small.maximum(small.max(small.where(condition, index, 0.0)), 1.0)
    theta = small.take(cumulative, small.cast(rho, "int32") - 1) / rho
    return small.relu(v - theta)


# The largest effective step gamma * max|M|^2 of `regularised_gramian_step`:
# a larger one only overflows, the projection onto the simplex that follows
# being a vertex or an edge then.
MAX_GRAMIAN_STEP = 1e6


def regularised_gramian_step(matrix: Any, lambdas: Any, gamma: Any, rho: Any) -> Any:
    """`lambdas - gamma (G lambdas + rho lambdas)`, one gradient step of
    size `gamma` on `1/2 l^T G l + rho/2 |l|^2` for the Gramian `G` of
    `matrix` (`[K, D]`), before the projection onto the simplex (MoCo,
    MoDo). `G = s^2 Gn` with `Gn` the Gramian of `matrix / s`, `s` its
    largest absolute entry (no overflow): `gamma s^2` is capped at
    `MAX_GRAMIAN_STEP` (`s^2` may be inf); a zero `matrix` has `s = 1` and
    `G = 0`, so no step from it."""
    unit, scale = max_abs_scaled(matrix)
    return scaled_gramian_step(gramian(unit), scale, lambdas, gamma, rho)


def scaled_gramian_step(
    normalized: Any, scale: Any, lambdas: Any, gamma: Any, rho: Any
) -> Any:
    """`regularised_gramian_step` for the Gramian `G = scale^2 normalized`
    given as `normalized` and `scale` (MoDo on the Gramian route):
    `gamma scale^2` capped at `MAX_GRAMIAN_STEP`."""
    step = small.minimum(gamma * scale * scale, MAX_GRAMIAN_STEP)
    return lambdas - (step * small.matmul(normalized, lambdas) + gamma * rho * lambdas)

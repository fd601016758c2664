"""`keras.ops` for the solvers' small tensors (`[K]`, `[K, K]`), with little
dispatch cost on torch.

On TensorFlow and JAX every name here is the `keras.ops` function itself:
the solvers are traced once into the compiled step, so what an op costs to
dispatch is paid once. On torch the solvers run op by op at every step
(eagerly, and left out of `torch.compile`, see `trainers/torch_trainer.py`),
a few hundred operations on `[K]` tensors a step, and Keras' torch ops
convert and check every argument: 7-17 µs an operation, against 1-5 µs
for torch's own function (measured on this project's 2-core CPU machine;
docs/performance.md, "The solvers' operations on torch"). So on torch the
operations the solvers repeat call torch directly when their arguments
are float32 (or, for the logical operations, bool) torch tensors, with
the same torch function Keras' op calls, so the numbers are the same; any
other argument goes to `keras.ops`. Every name not defined here is
`keras.ops`' own (module `__getattr__`). One name is not a `keras.ops`
function: `unchanged(after, before)`, a Python bool for the op-by-op
loops' stopping test.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = [
    "abs",
    "all",
    "cast",
    "cumsum",
    "diagonal",
    "equal",
    "flip",
    "isfinite",
    "logical_and",
    "logical_not",
    "logical_or",
    "matmul",
    "max",
    "maximum",
    "min",
    "minimum",
    "relu",
    "sort",
    "sqrt",
    "stack",
    "sum",
    "take",
    "where",
]


def __getattr__(name: str) -> Any:
    return getattr(ops, name)


def unchanged(after: Any, before: Any) -> bool:
    """Whether two concrete tensors of one shape are equal entry by entry
    (NaN is not equal to NaN), as a Python bool: `ops.all(ops.equal(...))`
    read out, or on torch `torch.equal`, one call instead of three (the
    op-by-op loops test this twice an iteration)."""
    if keras.backend.backend() == "torch":
        import torch

        if isinstance(after, torch.Tensor) and isinstance(before, torch.Tensor):
            return torch.equal(after, before)
    return bool(ops.all(ops.equal(after, before)))


if keras.backend.backend() != "torch":
    from keras.ops import (  # noqa: F401 (re-exported)
        abs,
        all,
        cast,
        cumsum,
        diagonal,
        equal,
        flip,
        isfinite,
        logical_and,
        logical_not,
        logical_or,
        matmul,
        max,
        maximum,
        min,
        minimum,
        relu,
        sort,
        sqrt,
        stack,
        sum,
        take,
        where,
    )
else:
    import builtins

    import torch

    _FLOAT32 = torch.float32
    _BOOL = torch.bool
    _SCALARS = (float, int)
    _DTYPES = {"float32": torch.float32, "bool": torch.bool, "int32": torch.int32}

    def _float32(x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.dtype == _FLOAT32

    def _boolean(x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.dtype == _BOOL

    def _float32_or_scalar(x: Any) -> bool:
        # A Python float or int takes the tensor's dtype in torch's
        # promotion, as in Keras' result_type. Exactly those types: a bool
        # is an int, and NumPy's float64 a float, which Keras promotes to.
        return _float32(x) or type(x) in _SCALARS

    def _named(op: Any, keras_op: Any, on: str) -> Any:
        op.__name__ = keras_op.__name__
        op.__doc__ = f"`keras.ops.{keras_op.__name__}` (torch's own on {on})."
        return op

    def _unary(keras_op: Any, torch_op: Any, accepts: Any = _float32) -> Any:
        def op(x: Any) -> Any:
            return torch_op(x) if accepts(x) else keras_op(x)

        return _named(op, keras_op, "float32" if accepts is _float32 else "bool")

    def _both(keras_op: Any, torch_op: Any, accepts: Any = _float32) -> Any:
        def op(x1: Any, x2: Any) -> Any:
            if accepts(x1) and accepts(x2):
                return torch_op(x1, x2)
            return keras_op(x1, x2)

        return _named(op, keras_op, "float32" if accepts is _float32 else "bool")

    def _with_scalars(keras_op: Any, torch_op: Any) -> Any:
        # As `_both`, and a Python number beside a float32 tensor too.
        def op(x1: Any, x2: Any) -> Any:
            if _float32(x1) and _float32(x2):
                return torch_op(x1, x2)
            if _float32(x1) and _float32_or_scalar(x2):
                return torch_op(x1, torch.tensor(x2, dtype=_FLOAT32, device=x1.device))
            if _float32(x2) and _float32_or_scalar(x1):
                return torch_op(torch.tensor(x1, dtype=_FLOAT32, device=x2.device), x2)
            return keras_op(x1, x2)

        return _named(op, keras_op, "float32")

    def _reduction(
        keras_op: Any, whole: Any, along: Any, accepts: Any = _float32
    ) -> Any:
        # Over every entry or along one axis. Anything else (an empty
        # tensor, a tuple of axes, `initial`) is Keras' op.
        def op(x: Any, axis: Any = None, keepdims: bool = False, **other: Any) -> Any:
            if other or not (accepts(x) and x.numel() > 0):
                return keras_op(x, axis=axis, keepdims=keepdims, **other)
            if axis is None and not keepdims:
                return whole(x)
            if isinstance(axis, int):
                return along(x, dim=axis, keepdim=keepdims)
            return keras_op(x, axis=axis, keepdims=keepdims)

        return _named(op, keras_op, "float32" if accepts is _float32 else "bool")

    abs = _unary(ops.abs, torch.abs)  # noqa: A001
    sqrt = _unary(ops.sqrt, torch.sqrt)
    relu = _unary(ops.relu, torch.relu)
    isfinite = _unary(ops.isfinite, torch.isfinite)
    logical_not = _unary(ops.logical_not, torch.logical_not, _boolean)
    matmul = _both(ops.matmul, torch.matmul)
    equal = _both(ops.equal, torch.eq)
    logical_and = _both(ops.logical_and, torch.logical_and, _boolean)
    logical_or = _both(ops.logical_or, torch.logical_or, _boolean)
    maximum = _with_scalars(ops.maximum, torch.maximum)
    minimum = _with_scalars(ops.minimum, torch.minimum)
    sum = _reduction(ops.sum, torch.sum, torch.sum)  # noqa: A001
    max = _reduction(ops.max, torch.max, torch.amax)  # noqa: A001
    min = _reduction(ops.min, torch.min, torch.amin)  # noqa: A001
    all = _reduction(ops.all, torch.all, torch.all, _boolean)  # noqa: A001

    def where(condition: Any, x1: Any = None, x2: Any = None) -> Any:
        if (
            _boolean(condition)
            and _float32_or_scalar(x1)
            and _float32_or_scalar(x2)
            and (_float32(x1) or _float32(x2))
        ):
            return torch.where(condition, x1, x2)
        return ops.where(condition, x1, x2)

    def cast(x: Any, dtype: Any) -> Any:
        target = _DTYPES.get(dtype) if isinstance(dtype, str) else None
        if target is not None and (_float32(x) or _boolean(x)):
            return x.to(target)
        return ops.cast(x, dtype)

    def cumsum(x: Any, axis: Any = None, dtype: Any = None) -> Any:
        if _float32(x) and isinstance(axis, int) and dtype is None:
            return torch.cumsum(x, dim=axis)
        return ops.cumsum(x, axis=axis, dtype=dtype)

    def sort(x: Any, axis: int = -1) -> Any:
        if _float32(x) and isinstance(axis, int):
            return torch.sort(x, dim=axis).values
        return ops.sort(x, axis=axis)

    def stack(x: Any, axis: int = 0) -> Any:
        if builtins.all(_float32(e) for e in x):
            return torch.stack(list(x), dim=axis)
        return ops.stack(x, axis=axis)

    def diagonal(x: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Any:
        if _float32(x):
            return torch.diagonal(x, offset=offset, dim1=axis1, dim2=axis2)
        return ops.diagonal(x, offset=offset, axis1=axis1, axis2=axis2)

    def flip(x: Any, axis: Any = None) -> Any:
        if _float32(x) and isinstance(axis, int):
            return torch.flip(x, dims=(axis,))
        return ops.flip(x, axis=axis)

    def take(x: Any, indices: Any, axis: Any = None) -> Any:
        # One entry of a vector by a 0-d integer index, negative counting
        # from the end (Keras' rule on torch).
        if (
            _float32(x)
            and x.ndim == 1
            and axis is None
            and isinstance(indices, torch.Tensor)
            and indices.ndim == 0
            and not indices.is_floating_point()
        ):
            index = indices.long()
            return x[torch.where(index < 0, index + x.shape[0], index)]
        return ops.take(x, indices, axis=axis)

"""`aggregation._small_ops`: `keras.ops` itself on TensorFlow and JAX; on
torch, torch's own function for float32 (and bool) tensors, with the same
values, dtype and shape as the Keras op, and the Keras op for anything
else (NumPy arrays, Python numbers in both places, other dtypes)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_mtl.aggregation import _small_ops as small

pytestmark = pytest.mark.backend_neutral

_RNG = np.random.default_rng(0)
_V = _RNG.normal(size=5).astype("float32")
_W = _RNG.normal(size=5).astype("float32")
_M = _RNG.normal(size=(4, 4)).astype("float32")
_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], "float32")
_MASK = _V > 0.0


def _t(x):
    return ops.convert_to_tensor(x)


# (name, args as built from the NumPy arrays above, keyword arguments)
CASES = [
    ("sum", lambda: (_t(_M),), {}),
    ("sum", lambda: (_t(_M),), {"axis": 1, "keepdims": True}),
    ("sum", lambda: (_t(_M),), {"axis": -1}),
    ("max", lambda: (_t(_SPECIAL),), {}),
    ("max", lambda: (_t(_M),), {"axis": 0, "keepdims": True}),
    ("min", lambda: (_t(_V),), {}),
    ("min", lambda: (_t(_M),), {"axis": 1}),
    ("maximum", lambda: (_t(_V), _t(_W)), {}),
    ("maximum", lambda: (_t(_SPECIAL), 1e-12), {}),
    ("maximum", lambda: (0.0, _t(_SPECIAL)), {}),
    ("minimum", lambda: (_t(_V), 0.5), {}),
    ("minimum", lambda: (_t(_SPECIAL), _t(_W)), {}),
    ("matmul", lambda: (_t(_M), _t(_M[0])), {}),
    ("matmul", lambda: (_t(_M), _t(_M)), {}),
    ("where", lambda: (_t(_MASK), _t(_V), 0.0), {}),
    ("where", lambda: (_t(_MASK), 1.0, _t(_W)), {}),
    ("where", lambda: (_t(_MASK), _t(_V), _t(_SPECIAL)), {}),
    ("abs", lambda: (_t(_SPECIAL),), {}),
    ("sqrt", lambda: (_t(_V),), {}),  # negative entries: NaN on every backend
    ("relu", lambda: (_t(_SPECIAL),), {}),
    ("isfinite", lambda: (_t(_SPECIAL),), {}),
    ("logical_not", lambda: (_t(_MASK),), {}),
    ("logical_and", lambda: (_t(_MASK), _t(_W > 0.0)), {}),
    ("logical_or", lambda: (_t(_MASK), _t(_W > 0.0)), {}),
    ("equal", lambda: (_t(_SPECIAL), _t(_SPECIAL)), {}),
    ("all", lambda: (_t(_MASK),), {}),
    ("all", lambda: (_t(_M > -5.0),), {"axis": 0, "keepdims": True}),
    ("all", lambda: (_t(_M > 0.0),), {"keepdims": True}),
    ("sum", lambda: (_t(_M),), {"keepdims": True}),
    ("max", lambda: (_t(np.zeros((0,), "float32")),), {"initial": 1.0}),
    ("cast", lambda: (_t(_MASK), "float32"), {}),
    ("cast", lambda: (_t(_V), "int32"), {}),
    ("cast", lambda: (_t(_V), "bool"), {}),
    ("cumsum", lambda: (_t(_V),), {"axis": 0}),
    ("sort", lambda: (_t(_V),), {}),
    ("sort", lambda: (_t(_M),), {"axis": 0}),
    ("stack", lambda: ([_t(_V), _t(_W)],), {"axis": 1}),
    ("flip", lambda: (_t(_V),), {"axis": 0}),
    ("diagonal", lambda: (_t(_M),), {}),
    ("take", lambda: (_t(_V), ops.convert_to_tensor(3, "int32")), {}),
    ("take", lambda: (_t(_V), ops.convert_to_tensor(-1, "int32")), {}),
    # Not float32 tensors: the Keras op on every backend.
    ("sum", lambda: (_M,), {"axis": 0}),
    ("sum", lambda: (_t(_MASK),), {}),
    ("maximum", lambda: (_t(np.arange(5)), 2), {}),
    ("where", lambda: (_MASK, _V, 0.0), {}),
    ("where", lambda: (_t(_MASK), 1.0, 0.0), {}),
    ("maximum", lambda: (_t(_V), np.float64(0.5)), {}),
    ("minimum", lambda: (_t(_V), True), {}),
    ("sqrt", lambda: (np.float64(2.0),), {}),
    ("sort", lambda: (_t(np.array([3, 1, 2], "int32")),), {}),
    ("stack", lambda: ([_V, _t(_W)],), {}),
    ("take", lambda: (_t(_M), ops.convert_to_tensor([0, 2], "int32")), {"axis": 0}),
]


@pytest.mark.parametrize(
    "name, build, kwargs",
    CASES,
    ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)],
)
def test_each_op_gives_what_the_keras_op_gives(name, build, kwargs):
    got = getattr(small, name)(*build(), **kwargs)
    expected = getattr(ops, name)(*build(), **kwargs)
    assert keras.backend.standardize_dtype(got.dtype) == (
        keras.backend.standardize_dtype(expected.dtype)
    )
    assert tuple(got.shape) == tuple(expected.shape)
    # Bit for bit: the same function on the same inputs (NaN where NaN).
    np.testing.assert_array_equal(
        ops.convert_to_numpy(got), ops.convert_to_numpy(expected)
    )


def test_every_op_named_is_covered_and_the_rest_is_keras_ops():
    assert set(small.__all__) == {name for name, _, _ in CASES}
    # Not defined here: keras.ops' own function.
    assert small.eye is ops.eye
    assert small.linalg is ops.linalg
    if keras.backend.backend() != "torch":
        assert all(getattr(small, name) is getattr(ops, name) for name in small.__all__)


_SAME_OBJECT = object()


@pytest.mark.parametrize(
    "after, before, expected",
    [
        (_V, _V.copy(), True),
        (_V, _W, False),
        (_M, _M + 0.0, True),
        (_SPECIAL[1:], _SPECIAL[1:].copy(), True),  # infinities, signed zeros
        (_SPECIAL, _SPECIAL.copy(), False),  # NaN is not equal to NaN
        (_SPECIAL, _SAME_OBJECT, False),  # not even to itself
    ],
)
def test_unchanged_is_entrywise_equality_as_a_python_bool(after, before, expected):
    """The op-by-op loops' stopping test (not a `keras.ops` name)."""
    after = _t(after)
    before = after if before is _SAME_OBJECT else _t(before)
    result = small.unchanged(after, before)
    assert type(result) is bool and result is expected

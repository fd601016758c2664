"""`aggregation._linalg.gramian`: one dot for a small matrix, sums of
products of two rows for a wide one (`takes_pairwise`); the same Gramian
either way, of a stacked matrix or of its rows."""

import keras
import numpy as np
import pytest

from keras_mtl.aggregation import _linalg

pytestmark = pytest.mark.backend_neutral


@pytest.mark.parametrize("num_rows", [2, 3, 5])
@pytest.mark.parametrize("columns", [40, _linalg.PAIRWISE_FROM + 3])
def test_gramian_of_a_matrix_and_of_its_rows_is_the_float64_gramian(num_rows, columns):
    rng = np.random.default_rng(num_rows * columns)
    # Rows of different sizes and signs, so the entries differ in scale.
    matrix = rng.normal(size=(num_rows, columns)) * np.arange(1, num_rows + 1)[:, None]
    stacked = keras.ops.convert_to_tensor(matrix, "float32")
    rows = [keras.ops.convert_to_tensor(r, "float32") for r in matrix]
    expected = matrix.astype(np.float32).astype(np.float64)
    expected = expected @ expected.T
    # Any order of summing n float32 products is within n * eps of the sum
    # of their absolute values (Higham, Accuracy and Stability of Numerical
    # Algorithms, 3.1), itself at most sqrt(G_ii G_jj) (Cauchy-Schwarz).
    norms = np.sqrt(np.diag(expected))
    bound = columns * np.finfo(np.float32).eps * np.outer(norms, norms)
    for given in (stacked, rows):
        got = keras.ops.convert_to_numpy(_linalg.gramian(given)).astype(np.float64)
        assert got.shape == (num_rows, num_rows)
        np.testing.assert_array_equal(got, got.T)
        assert np.all(np.abs(got - expected) <= bound), np.abs(got - expected) / bound


def test_which_matrices_take_pairs():
    wide = _linalg.PAIRWISE_FROM
    backend = keras.backend.backend()
    # A column count known only at run time (representation mode on
    # TensorFlow): pairs there, of tiles of any length.
    assert _linalg.takes_pairwise(3, None) == (backend == "tensorflow")
    assert not _linalg.takes_pairwise(3, wide - 1)
    assert _linalg.takes_pairwise(3, wide)
    # JAX's dot and torch's stacked rows are slower at every K measured;
    # TensorFlow's dot from K = 4 is faster than K^2 pairs.
    many = _linalg.TENSORFLOW_PAIRWISE_ROWS + 1
    assert _linalg.takes_pairwise(many, wide) == (backend != "tensorflow")


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="rows of a length known only at run time: TensorFlow's",
)
@pytest.mark.parametrize("columns", [1000, 70_001])
def test_gramian_of_rows_of_a_run_time_length_under_xla(columns):
    """Representation mode's rows on TensorFlow (batch size unknown when
    tracing): summed pair by pair in tiles padded with zeros, within the
    float32 summation bound of the float64 Gramian."""
    import tensorflow as tf

    rng = np.random.default_rng(columns)
    matrix = rng.normal(size=(3, columns)) * np.array([[1.0], [-30.0], [1e-3]])
    spec = [tf.TensorSpec([None], tf.float32)] * 3
    traced = tf.function(lambda *rows: _linalg.gramian(list(rows)), jit_compile=True)
    got = traced.get_concrete_function(*spec)(
        *[tf.constant(r, tf.float32) for r in matrix]
    ).numpy()
    expected = matrix.astype(np.float32).astype(np.float64)
    expected = expected @ expected.T
    norms = np.sqrt(np.diag(expected))
    bound = columns * np.finfo(np.float32).eps * np.outer(norms, norms)
    np.testing.assert_array_equal(got, got.T)
    assert np.all(np.abs(got - expected) <= bound), np.abs(got - expected) / bound

"""MultiMNIST through tfds' mock data (offline): structure, tasks, shapes."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_mtl.datasets import load
from keras_mtl.datasets.multi_mnist import LAYOUT, SOURCE_SPLITS, load_multi_mnist

NUM_MOCK = 12


@pytest.fixture(scope="module")
def mocked():
    """The MultiMNIST data and the mock MNIST test images it was built from."""
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        data = load_multi_mnist(
            num_train=40, num_validation=10, num_test=20, batch_size=8, seed=0
        )
        raw = [
            (x.numpy()[..., 0], int(y))
            for x, y in tfds.load("mnist", split="test", as_supervised=True)
        ]
    images = np.stack([image for image, _ in raw])
    labels = np.array([label for _, label in raw])
    return data, images, labels


def test_structure(mocked):
    data, _, _ = mocked
    assert data.name == "multi_mnist"
    assert list(data.tasks) == ["left", "right"]
    for spec in data.tasks.values():
        assert spec.kind == "multiclass" and spec.num_classes == 10
    assert data.info["input_shape"] == (36, 36, 1)
    assert data.info["source_splits"] == SOURCE_SPLITS
    assert data.info["num_examples"] == {"train": 40, "validation": 10, "test": 20}
    assert LAYOUT.canvas == (36, 36) and LAYOUT.right_origin == (8, 8)


def test_shapes_and_ranges(mocked):
    data, _, _ = mocked
    for split, count in (("train", 40), ("validation", 10), ("test", 20)):
        total = 0
        for x, y in getattr(data, split):
            assert x.dtype == tf.float32 and x.shape[1:] == (36, 36, 1)
            assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0
            assert set(y) == {"left", "right"}
            assert y["left"].dtype == tf.int32 and y["left"].shape == (x.shape[0],)
            total += x.shape[0]
        assert total == count


def test_pairs_are_composed_from_the_source(mocked):
    data, images, labels = mocked
    left, right = data.info["pairs"]["test"]
    assert np.all(left != right)
    assert left.max() < NUM_MOCK and right.max() < NUM_MOCK
    xs, ys = [], []
    for x, y in data.test:
        xs.append(x.numpy())
        ys.append((y["left"].numpy(), y["right"].numpy()))
    x = np.concatenate(xs)
    np.testing.assert_array_equal(np.concatenate([a for a, _ in ys]), labels[left])
    np.testing.assert_array_equal(np.concatenate([b for _, b in ys]), labels[right])
    expected = np.zeros((len(left), 36, 36), np.float32)
    a, b = expected.copy(), expected.copy()
    a[:, 0:28, 0:28] = images[left]
    b[:, 8:36, 8:36] = images[right]
    np.testing.assert_allclose(x[..., 0], np.maximum(a, b) / 255.0, atol=1e-6)


def test_through_load_and_errors():
    with tfds.testing.mock_data(num_examples=4):
        data = load(
            "multi-mnist", num_train=8, num_validation=4, num_test=4, batch_size=4
        )
        assert list(data.tasks) == ["left", "right"]
        with pytest.raises(ValueError, match="num_test"):
            load_multi_mnist(num_test=0)
    with pytest.raises(TypeError, match="image_size"):
        load("multi_mnist", image_size=28)

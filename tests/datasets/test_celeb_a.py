"""CelebA through tfds' mock data (offline): 40 binary tasks, subsets, errors."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_mtl.datasets import CELEB_A_ATTRIBUTES, TaskSpec, load
from keras_mtl.datasets.celeb_a import load_celeb_a

NUM_MOCK = 6


@pytest.fixture(scope="module")
def mock():
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        yield


def test_all_40_attributes(mock):
    data = load_celeb_a(batch_size=4)
    assert data.name == "celeb_a"
    assert tuple(data.tasks) == CELEB_A_ATTRIBUTES and len(data.tasks) == 40
    assert all(
        spec == TaskSpec("binary", 1, ("no", "yes")) for spec in data.tasks.values()
    )
    assert data.info["input_shape"] == (64, 64, 3)
    for split in ("train", "validation", "test"):
        total = 0
        for x, y in getattr(data, split):
            assert x.dtype == tf.float32 and x.shape[1:] == (64, 64, 3)
            assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
            assert set(y) == set(CELEB_A_ATTRIBUTES)
            for value in y.values():
                assert value.dtype == tf.float32 and value.shape == (x.shape[0], 1)
                assert set(np.unique(value.numpy())) <= {0.0, 1.0}
            total += x.shape[0]
        assert total == NUM_MOCK


def test_attribute_names_match_tfds(mock):
    features = tfds.builder("celeb_a").info.features["attributes"]
    assert tuple(features.keys()) == CELEB_A_ATTRIBUTES


def test_subset_targets_and_size(mock):
    chosen = ["Smiling", "Male", "Eyeglasses"]
    data = load("celeb_a", attributes=chosen, image_size=32, batch_size=NUM_MOCK)
    assert list(data.tasks) == chosen
    assert data.info["input_shape"] == (32, 32, 3)
    x, y = next(iter(data.validation))
    assert x.shape == (NUM_MOCK, 32, 32, 3)
    assert set(y) == set(chosen)
    # Unshuffled split: targets equal the raw attributes, in order.
    raw = list(tfds.load("celeb_a", split="validation"))
    for name in chosen:
        expected = np.array([float(ex["attributes"][name]) for ex in raw])
        np.testing.assert_array_equal(y[name].numpy()[:, 0], expected)
    # The image is the raw JPEG, decoded, resized and scaled. (With
    # SkipDecoding the mock serves other random pixels than the decoded mock,
    # so compare with the encoded bytes.)
    encoded = list(
        tfds.load(
            "celeb_a",
            split="validation",
            decoders={"image": tfds.decode.SkipDecoding()},
        )
    )
    image = tf.io.decode_jpeg(encoded[0]["image"], channels=3)
    resized = tf.image.resize(image, (32, 32), antialias=True) / 255.0
    np.testing.assert_allclose(x[0].numpy(), resized.numpy(), atol=1e-5)


def test_max_examples(mock):
    data = load_celeb_a(attributes=["Young"], max_examples=3, batch_size=2)
    assert sum(int(x.shape[0]) for x, _ in data.train) == 3
    assert sum(int(x.shape[0]) for x, _ in data.test) == 3


def test_errors():
    with pytest.raises(ValueError, match="Unknown CelebA attribute.*Smiling"):
        load_celeb_a(attributes=["Smiling", "Wearing_Monocle"])
    with pytest.raises(ValueError, match="at least one"):
        load_celeb_a(attributes=[])
    with pytest.raises(ValueError, match="Duplicate"):
        load_celeb_a(attributes=["Male", "Male"])
    with pytest.raises(ValueError, match="image_size"):
        load_celeb_a(image_size=0)
    with pytest.raises(TypeError, match="attrs"):
        load("celeb_a", attrs=["Male"])

"""MultiDigits: the offline MultiMNIST built from scikit-learn's 8x8 digits."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from keras_mtl.datasets import TaskSpec, load
from keras_mtl.datasets.multi_digits import LAYOUT, load_multi_digits, source_split

SMALL = dict(num_train=300, num_validation=100, num_test=120, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def data():
    return load_multi_digits(seed=0, **SMALL)


def compose(digits, left, right):
    """Expected image of a pair, built independently with numpy."""
    canvas = np.zeros((12, 16), np.float32)
    a = canvas.copy()
    a[0:8, 2:10] = digits.images[left]
    b = canvas.copy()
    b[4:12, 6:14] = digits.images[right]
    return (np.maximum(a, b) / 16.0)[..., None]


def collect(dataset):
    xs, ys = [], {}
    for x, y in dataset:
        xs.append(x.numpy())
        for name, value in y.items():
            ys.setdefault(name, []).append(value.numpy())
    return np.concatenate(xs), {k: np.concatenate(v) for k, v in ys.items()}


def test_tasks_and_info(data):
    assert data.name == "multi_digits"
    assert list(data.tasks) == ["left", "right", "sum_parity"]
    assert data.tasks["left"] == TaskSpec("multiclass", 10, tuple("0123456789"))
    assert data.tasks["right"].num_classes == 10
    assert data.tasks["sum_parity"].kind == "binary"
    assert data.tasks["sum_parity"].num_classes == 1
    assert data.info["input_shape"] == (12, 16, 1)
    assert data.info["num_examples"] == {"train": 300, "validation": 100, "test": 120}


def test_shapes_dtypes_ranges(data):
    for split, count in (("train", 300), ("validation", 100), ("test", 120)):
        dataset = getattr(data, split)
        x_spec, y_spec = dataset.element_spec
        assert x_spec.shape.as_list() == [None, 12, 16, 1]
        assert x_spec.dtype == tf.float32
        assert y_spec["left"].dtype == tf.int32 and y_spec["left"].shape.rank == 1
        assert y_spec["sum_parity"].dtype == tf.float32
        assert y_spec["sum_parity"].shape.as_list() == [None, 1]
        x, y = collect(dataset)
        assert x.shape == (count, 12, 16, 1)
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() == 1.0
        for task in ("left", "right"):
            assert y[task].shape == (count,)
            assert set(np.unique(y[task])) <= set(range(10))
        assert y["sum_parity"].shape == (count, 1)
        assert set(np.unique(y["sum_parity"])) <= {0.0, 1.0}
    first_x, _ = next(iter(data.train))
    assert first_x.shape[0] == 64


def test_label_consistency(data):
    for dataset in (data.train, data.validation, data.test):
        _, y = collect(dataset)
        np.testing.assert_array_equal(
            y["sum_parity"][:, 0], (y["left"] + y["right"]) % 2
        )


def test_images_contain_both_digits(data, digits):
    # Unshuffled splits: the i-th image is the i-th pair, pixel for pixel.
    for split in ("validation", "test"):
        x, y = collect(getattr(data, split))
        left, right = data.info["pairs"][split]
        np.testing.assert_array_equal(y["left"], digits.target[left])
        np.testing.assert_array_equal(y["right"], digits.target[right])
        for i in range(len(x)):
            np.testing.assert_allclose(
                x[i], compose(digits, left[i], right[i]), atol=1e-6
            )
        # The left-only block (top-left) holds the left digit's top-left
        # corner, the right-only block (bottom-right) the right digit's.
        np.testing.assert_allclose(
            x[:, 0:4, 2:6, 0], digits.images[left][:, 0:4, 0:4] / 16.0, atol=1e-6
        )
        np.testing.assert_allclose(
            x[:, 8:12, 10:14, 0], digits.images[right][:, 4:8, 4:8] / 16.0, atol=1e-6
        )
    # Shuffled training split: every image is one of the listed training pairs.
    x, y = collect(data.train)
    left, right = data.info["pairs"]["train"]
    expected = {
        compose(digits, a, b).tobytes(): (digits.target[a], digits.target[b])
        for a, b in zip(left, right)
    }
    for i in range(len(x)):
        key = x[i].astype(np.float32).tobytes()
        assert key in expected
        assert expected[key] == (y["left"][i], y["right"][i])


def test_split_disjoint_no_test_image_in_training(data, digits):
    indices = data.info["source_indices"]
    train, val, test = (
        set(indices[s].tolist()) for s in ("train", "validation", "test")
    )
    assert not train & test and not train & val and not val & test
    assert len(train | val | test) == len(digits.target) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=10)
    for split, pool in (("train", train), ("validation", val), ("test", test)):
        left, right = data.info["pairs"][split]
        assert set(left.tolist()) <= pool and set(right.tolist()) <= pool
        assert np.all(left != right)
    # Stratified: every digit in every source split.
    for split in ("train", "validation", "test"):
        assert set(digits.target[indices[split]]) == set(range(10))
    # The split is a function of split_seed only.
    again = source_split(0)
    for split in indices:
        np.testing.assert_array_equal(again[split], indices[split])
    other = source_split(1)
    assert not np.array_equal(other["test"], indices["test"])


def first_batches(data, epochs=2):
    return [next(iter(data.train)) for _ in range(epochs)]


def test_deterministic_given_seed(data):
    tf.random.set_seed(1)  # TensorFlow's global seed plays no part
    same = load_multi_digits(seed=0, **SMALL)
    tf.random.set_seed(2)
    again = load_multi_digits(seed=0, **SMALL)
    other = load_multi_digits(seed=1, **SMALL)
    batches_same, batches_again = first_batches(same), first_batches(again)
    batches_other = first_batches(other)
    for (x0, y0), (x1, y1) in zip(batches_same, batches_again):
        np.testing.assert_array_equal(x0.numpy(), x1.numpy())
        for task in y0:
            np.testing.assert_array_equal(y0[task].numpy(), y1[task].numpy())
    for (x0, _), (x2, _) in zip(batches_same, batches_other):
        assert not np.array_equal(x0.numpy(), x2.numpy())
    for split in ("train", "validation", "test"):
        for a, b in zip(data.info["pairs"][split], same.info["pairs"][split]):
            np.testing.assert_array_equal(a, b)
    # The training pairs follow `seed`; evaluation pairs stay fixed.
    assert not np.array_equal(
        data.info["pairs"]["train"][0], other.info["pairs"]["train"][0]
    )
    for split in ("validation", "test"):
        for a, b in zip(data.info["pairs"][split], other.info["pairs"][split]):
            np.testing.assert_array_equal(a, b)
    xv0, _ = next(iter(same.validation))
    xv2, _ = next(iter(other.validation))
    np.testing.assert_array_equal(xv0.numpy(), xv2.numpy())
    moved = load_multi_digits(seed=0, split_seed=3, **SMALL)
    assert not np.array_equal(
        moved.info["pairs"]["test"][0], data.info["pairs"]["test"][0]
    )


def test_training_order_reshuffles_each_epoch(data):
    first = [y["left"].numpy() for _, y in data.train]
    second = [y["left"].numpy() for _, y in data.train]
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    assert sorted(np.concatenate(first)) == sorted(np.concatenate(second))


def test_through_load_and_errors():
    data = load(
        "multi_digits", num_train=10, num_validation=5, num_test=5, batch_size=4
    )
    assert data.info["num_examples"]["train"] == 10
    assert data.info["layout"]["canvas"] == LAYOUT.canvas
    with pytest.raises(ValueError, match="num_train"):
        load_multi_digits(num_train=0)
    with pytest.raises(ValueError, match="batch_size"):
        load_multi_digits(batch_size=0)
    with pytest.raises(ValueError, match="seed"):
        load_multi_digits(seed=-1)
    with pytest.raises(TypeError, match="num_pairs"):
        load("multi_digits", num_pairs=10)


def test_trains_with_keras(data):
    import keras

    inputs = keras.Input((12, 16, 1))
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    outputs = {
        name: keras.layers.Dense(
            spec.num_classes, activation=spec.activation, name=name
        )(h)
        for name, spec in data.tasks.items()
    }
    model = keras.Model(inputs, outputs)
    model.compile("adam", loss={name: spec.loss for name, spec in data.tasks.items()})
    history = model.fit(
        data.train, validation_data=data.validation, epochs=2, verbose=0, shuffle=False
    )
    assert np.all(np.isfinite(history.history["loss"]))

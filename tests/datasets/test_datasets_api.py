"""The registry (`load`, `names`) and the shared types."""

import dataclasses

import pytest

from keras_mtl import datasets
from keras_mtl.datasets import MultiTaskData, TaskSpec, load, names


def test_names():
    assert names() == [
        "multi_digits",
        "multi_mnist",
        "celeb_a",
        "goemotions",
        "mmoe_synthetic",
        "toy",
    ]
    assert datasets.DEFAULT == names()[0]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        load("imagenet")
    for name in names():
        assert name in str(info.value)
    with pytest.raises(ValueError):
        load(None)


def test_unknown_kwargs_are_rejected_before_loading():
    with pytest.raises(TypeError) as info:
        load("multi_digits", batchsize=4)
    message = str(info.value)
    assert "batchsize" in message and "batch_size" in message and "num_train" in message


def test_name_normalisation():
    data = load("Multi-Digits", num_train=8, num_validation=4, num_test=4, batch_size=4)
    assert isinstance(data, MultiTaskData) and data.name == "multi_digits"
    assert "left: multiclass(10)" in repr(data)
    assert data.task_names == ["left", "right", "sum_parity"]


def test_task_spec():
    spec = TaskSpec("multilabel", 3, ["a", "b", "c"])
    assert spec.label_names == ("a", "b", "c")
    assert spec.target_shape == (3,) and spec.target_dtype == "float32"
    assert spec.activation == "sigmoid" and spec.loss == "binary_crossentropy"
    multiclass = TaskSpec("multiclass", 10)
    assert multiclass.target_shape == () and multiclass.target_dtype == "int32"
    assert multiclass.activation == "softmax"
    assert multiclass.loss == "sparse_categorical_crossentropy"
    binary = TaskSpec("binary", 1)
    assert binary.target_shape == (1,) and binary.label_names is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 4
    with pytest.raises(ValueError, match="kind"):
        TaskSpec("ordinal", 1)
    with pytest.raises(ValueError, match="num_classes=1"):
        TaskSpec("binary", 2)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        TaskSpec("multiclass", 1)
    with pytest.raises(ValueError, match="expected 3 names"):
        TaskSpec("multilabel", 3, ("a", "b"))
    with pytest.raises(ValueError, match="expected 2 names"):
        TaskSpec("binary", 1, ("yes",))

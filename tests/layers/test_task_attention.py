"""TaskAttention (MTAN): the forward pass against numpy, shapes, saving, training."""

import keras
import numpy as np
import pytest
from _layer_checks import (
    assert_keras_round_trip,
    fit_multitask,
    heads_net,
    random_inputs,
    to_numpy,
)

import keras_mtl

pytestmark = pytest.mark.backend_neutral


def np_conv(conv, x):
    """A stride-1 "same" Conv2D in numpy (odd kernel), channels last."""
    kernel, bias = to_numpy(conv.kernel), to_numpy(conv.bias)
    size = kernel.shape[0]
    pad = size // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for i in range(size):
        for j in range(size):
            out += np.einsum(
                "bhwc,cf->bhwf", padded[:, i : i + h, j : j + w], kernel[i, j]
            )
    return out + bias


def np_batch_norm(bn, x):
    """Inference-mode batch normalisation (the moving statistics)."""
    mean, var = to_numpy(bn.moving_mean), to_numpy(bn.moving_variance)
    return to_numpy(bn.gamma) * (x - mean) / np.sqrt(var + bn.epsilon) + to_numpy(
        bn.beta
    )


def randomise_batch_norms(layer, seed=0):
    """Non-trivial moving statistics, scales and offsets (else BN is ~identity)."""
    rng = np.random.default_rng(seed)
    for bn in [
        s
        for s in layer._flatten_layers()
        if isinstance(s, keras.layers.BatchNormalization)
    ]:
        for v in (bn.moving_mean, bn.gamma, bn.beta):
            v.assign(rng.normal(size=v.shape).astype("float32"))
        bn.moving_variance.assign(
            rng.uniform(0.5, 2.0, size=bn.moving_variance.shape).astype("float32")
        )


@pytest.mark.parametrize("with_previous", [False, True])
def test_forward_pass_matches_numpy(with_previous):
    layer = keras_mtl.layers.TaskAttention(2, filters=3, mask_filters=5)
    shared = random_inputs((2, 4, 4, 6))
    previous = [random_inputs((2, 4, 4, 3), seed=s) for s in (1, 2)]
    inputs = [shared, *previous] if with_previous else shared
    layer(inputs)
    randomise_batch_norms(layer)
    outputs = layer(inputs, training=False)
    masks = layer.attention_masks(inputs, training=False)
    s = shared.astype("float64")
    for k in range(2):
        (conv0, bn0, conv1, bn1), (conv, bn) = layer.masks[k], layer.convs[k]
        h = np.concatenate([s, previous[k]], -1) if with_previous else s
        h = np.maximum(np_batch_norm(bn0, np_conv(conv0, h)), 0)
        mask = 1 / (1 + np.exp(-np_batch_norm(bn1, np_conv(conv1, h))))
        out = np.maximum(np_batch_norm(bn, np_conv(conv, mask * s)), 0)
        assert mask.shape == shared.shape and outputs[k].shape == (2, 4, 4, 3)
        np.testing.assert_allclose(to_numpy(masks[k]), mask, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(to_numpy(outputs[k]), out, rtol=1e-5, atol=1e-5)


def test_defaults_keep_the_channels():
    outputs = keras_mtl.layers.TaskAttention(num_tasks=3)(keras.Input((8, 8, 5)))
    assert [tuple(o.shape) for o in outputs] == [(None, 8, 8, 5)] * 3


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="height, width, channels"):
        keras_mtl.layers.TaskAttention(2)(keras.Input((8,)))
    with pytest.raises(ValueError, match="height and width"):
        keras_mtl.layers.TaskAttention(2)(
            [keras.Input((8, 8, 2)), keras.Input((4, 4, 2)), keras.Input((4, 4, 2))]
        )
    with pytest.raises(ValueError, match="kernel_size"):
        keras_mtl.layers.TaskAttention(2, kernel_size=0)


def attention_net():
    images = keras.Input((6, 6, 2))
    shared = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(images)
    tasks = keras_mtl.layers.TaskAttention(2, filters=4)(shared)
    shared = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(shared)
    tasks = keras_mtl.layers.TaskAttention(2, filters=2)([shared, *tasks])
    pooled = [keras.layers.GlobalAveragePooling2D()(t) for t in tasks]
    return heads_net(images, pooled)


def image_data(num=64):
    x = random_inputs((num, 6, 6, 2), seed=4)
    y = {"a": x[..., 0].mean((1, 2))[:, None], "b": x[..., 1].std((1, 2))[:, None]}
    return x, y


def test_keras_round_trip(tmp_path):
    x, _ = image_data(8)
    assert_keras_round_trip(attention_net(), x, tmp_path)


def test_fit_with_xla_and_uncertainty_lowers_the_loss():
    x, y = image_data()
    _, logs = fit_multitask(attention_net(), x, y, weighting="uncertainty", epochs=8)
    for task in ("a", "b"):
        assert logs[f"{task}_loss"][-1] < 0.8 * logs[f"{task}_loss"][0], logs

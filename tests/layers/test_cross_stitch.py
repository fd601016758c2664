"""CrossStitch: the initial matrix, the forward pass, saving, training."""

import keras
import numpy as np
import pytest
from _layer_checks import (
    ATOL,
    RTOL,
    assert_keras_round_trip,
    fit_multitask,
    heads_net,
    random_inputs,
    regression_data,
    to_numpy,
)

import keras_mtl

pytestmark = pytest.mark.backend_neutral


def test_two_tasks_start_at_the_papers_values():
    layer = keras_mtl.layers.CrossStitch(num_tasks=2)
    layer([keras.Input((4,)), keras.Input((4,))])
    np.testing.assert_allclose(
        to_numpy(layer.alpha), [[0.9, 0.1], [0.1, 0.9]], atol=1e-7
    )


@pytest.mark.parametrize("per_channel", [False, True])
def test_k_tasks_start_with_rows_summing_to_one(per_channel):
    layer = keras_mtl.layers.CrossStitch(4, alpha_same=0.7, per_channel=per_channel)
    layer([keras.Input((3, 5))] * 4)
    alpha = to_numpy(layer.alpha)
    assert alpha.shape == ((4, 4, 5) if per_channel else (4, 4))
    if per_channel:
        assert np.allclose(alpha, alpha[..., :1])
        alpha = alpha[..., 0]
    np.testing.assert_allclose(np.diag(alpha), 0.7, atol=1e-7)
    np.testing.assert_allclose(alpha[~np.eye(4, dtype=bool)], 0.1, atol=1e-7)
    np.testing.assert_allclose(alpha.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_pass_matches_numpy(per_channel):
    layer = keras_mtl.layers.CrossStitch(3, per_channel=per_channel)
    xs = [random_inputs((2, 4, 4, 5), seed=s) for s in range(3)]
    layer(xs)  # build, then move alpha away from its symmetric start
    alpha = random_inputs(tuple(layer.alpha.shape), seed=9)
    layer.alpha.assign(alpha)
    outputs = layer(xs)
    stacked = np.stack(xs).astype("float64")
    for i, got in enumerate(outputs):
        if per_channel:
            want = np.einsum("jc,jbhwc->bhwc", alpha[i], stacked)
        else:
            want = np.einsum("j,jbhwc->bhwc", alpha[i], stacked)
        np.testing.assert_allclose(to_numpy(got), want, rtol=RTOL, atol=ATOL)


def test_bad_inputs_and_arguments():
    with pytest.raises(ValueError, match="alpha_same"):
        keras_mtl.layers.CrossStitch(2, alpha_same=1.5)
    with pytest.raises(ValueError, match="num_tasks"):
        keras_mtl.layers.CrossStitch(1)
    with pytest.raises(ValueError, match="list of 3"):
        keras_mtl.layers.CrossStitch(3)([keras.Input((4,))] * 2)
    with pytest.raises(ValueError, match="one shape"):
        keras_mtl.layers.CrossStitch(2)([keras.Input((4,)), keras.Input((5,))])


def stitched_net(per_channel=False):
    inputs = keras.Input((8,))
    a = keras.layers.Dense(8, activation="relu")(inputs)
    b = keras.layers.Dense(8, activation="relu")(inputs)
    a, b = keras_mtl.layers.CrossStitch(2, per_channel=per_channel)([a, b])
    return heads_net(inputs, [a, b])


def test_keras_round_trip(tmp_path):
    x, _ = regression_data(num=8)
    assert_keras_round_trip(stitched_net(per_channel=True), x, tmp_path)


def test_upgrad_treats_the_unit_as_shared():
    x, y = regression_data()
    model, logs = fit_multitask(
        stitched_net(), x, y, weighting="uncertainty", aggregator="upgrad"
    )
    shared = {v.path for v in model._shared_variables}
    assert any(p.endswith("alpha") for p in shared), shared
    for task in ("a", "b"):
        assert logs[f"{task}_loss"][-1] < 0.8 * logs[f"{task}_loss"][0], logs

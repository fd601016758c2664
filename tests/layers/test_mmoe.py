"""MMoE: shapes, the forward pass against numpy, gates, saving, training."""

import keras
import numpy as np
import pytest
from _layer_checks import (
    ATOL,
    RTOL,
    assert_keras_round_trip,
    fit_multitask,
    heads_net,
    np_dense,
    np_experts,
    np_softmax,
    random_inputs,
    regression_data,
    to_numpy,
)

import keras_mtl

pytestmark = pytest.mark.backend_neutral


def test_defaults_from_num_tasks_alone():
    features = keras.Input((16,))
    layer = keras_mtl.layers.MMoE(num_tasks=3)
    outputs = layer(features)
    assert len(outputs) == 3
    assert all(tuple(o.shape) == (None, 64) for o in outputs)
    assert tuple(layer.experts.kernels[0].shape) == (8, 16, 64)
    assert tuple(layer.gate_utilization.shape) == (3, 8)
    assert not layer.gate_utilization.trainable


def test_forward_pass_matches_numpy():
    layer = keras_mtl.layers.MMoE(num_tasks=2, num_experts=3, expert_units=(5, 4))
    x = random_inputs((6, 7))
    outputs = layer(x)
    experts = np_experts(layer.experts, x.astype("float64"))
    for k, output in enumerate(outputs):
        gates = np_softmax(np_dense(layer.gates[k], x.astype("float64")))
        expected = np.einsum("be,beu->bu", gates, experts)
        assert output.shape == (6, 4)
        np.testing.assert_allclose(to_numpy(output), expected, rtol=RTOL, atol=ATOL)


def test_gates_sum_to_one():
    layer = keras_mtl.layers.MMoE(num_tasks=2, num_experts=5, expert_units=4)
    gates = to_numpy(layer.gate_weights(random_inputs((9, 3)) * 10))
    assert gates.shape == (9, 2, 5)
    assert (gates >= 0).all()
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_tasks": 1}, "num_tasks"),
        ({"num_tasks": 2, "num_experts": 0}, "num_experts"),
        ({"num_tasks": 2, "expert_units": []}, "expert_units"),
        ({"num_tasks": 2, "expert_units": (8, -1)}, "expert_units"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        keras_mtl.layers.MMoE(**kwargs)


def test_rank3_input_is_rejected():
    with pytest.raises(ValueError, match="batch, features"):
        keras_mtl.layers.MMoE(num_tasks=2)(keras.Input((4, 5)))


def test_keras_round_trip(tmp_path):
    x, _ = regression_data(num=8)
    inputs = keras.Input((8,))
    layer = keras_mtl.layers.MMoE(2, num_experts=3, expert_units=(6, 5), use_bias=False)
    net = heads_net(inputs, layer(inputs))
    loaded = assert_keras_round_trip(net, x, tmp_path)
    restored = [lay for lay in loaded.layers if isinstance(lay, keras_mtl.layers.MMoE)]
    assert restored[0].get_config() == layer.get_config()


def test_fit_with_xla_uncertainty_and_upgrad_treats_the_experts_as_shared():
    x, y = regression_data()
    inputs = keras.Input((8,))
    net = heads_net(
        inputs, keras_mtl.layers.MMoE(2, num_experts=4, expert_units=8)(inputs)
    )
    model, logs = fit_multitask(net, x, y, weighting="uncertainty", aggregator="upgrad")
    shared = {v.path for v in model._shared_variables}
    # Experts feed both tasks; each gate and head only its own.
    assert any("experts/kernel_0" in p for p in shared), shared
    assert not any("gate_" in p or p.startswith(("a/", "b/")) for p in shared), shared
    for task in ("a", "b"):
        assert logs[f"{task}_loss"][-1] < 0.8 * logs[f"{task}_loss"][0], logs

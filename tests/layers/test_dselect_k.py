"""DSelectK: the smooth-step, the gate against numpy, k-sparsity, saving, training."""

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
from keras_mtl.layers.dselect_k import smooth_step

pytestmark = pytest.mark.backend_neutral


def np_smooth_step(t, gamma):
    cubic = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
    return np.where(t <= -gamma / 2, 0.0, np.where(t >= gamma / 2, 1.0, cubic))


def np_gates(layer, x):
    """Each task's DSelect-k gate in numpy, from the paper's definition."""
    m, k = layer.num_bits, layer.num_selected
    gates = []
    for t in range(layer.num_tasks):
        z = np_dense(layer.selector_logits[t], x).reshape(-1, k, m)
        s = np_smooth_step(z, layer.gamma)
        r = np.ones((x.shape[0], k, layer.num_experts))
        for expert in range(layer.num_experts):
            for j in range(m):
                bit = (expert >> j) & 1
                r[:, :, expert] *= s[:, :, j] if bit else 1 - s[:, :, j]
        w = (
            np_softmax(np_dense(layer.selector_weights[t], x))
            if k > 1
            else np.ones((x.shape[0], 1))
        )
        gates.append(np.einsum("bi,bie->be", w, r))
    return gates


def test_smooth_step():
    t = np.linspace(-1.5, 1.5, 61).astype("float32")
    for gamma in (0.5, 1.0, 2.0):
        got = to_numpy(smooth_step(keras.ops.convert_to_tensor(t), gamma))
        np.testing.assert_allclose(got, np_smooth_step(t, gamma), atol=1e-6)
        assert got[0] == 0.0 and got[-1] == 1.0
        # Continuous at the ends of the cubic (S(±gamma/2) = 0, 1).
        ends = np.array([-gamma / 2, gamma / 2], "float32")
        np.testing.assert_allclose(
            to_numpy(smooth_step(keras.ops.convert_to_tensor(ends), gamma)), [0, 1]
        )


def test_defaults_from_num_tasks_alone():
    layer = keras_mtl.layers.DSelectK(num_tasks=2)
    outputs = layer(keras.Input((16,)))
    assert [tuple(o.shape) for o in outputs] == [(None, 64)] * 2
    assert (layer.num_experts, layer.num_selected, layer.num_bits) == (8, 2, 3)


def test_forward_pass_matches_numpy():
    layer = keras_mtl.layers.DSelectK(
        3, num_experts=4, num_selected=3, gamma=2.0, expert_units=(5, 4)
    )
    x = random_inputs((6, 7))
    layer.build(x.shape)
    # Logits spread over the smooth-step's cubic and both flat parts.
    for dense in layer.selector_logits:
        dense.kernel.assign(random_inputs(tuple(dense.kernel.shape), seed=3))
    outputs = layer(x)
    x64 = x.astype("float64")
    experts = np_experts(layer.experts, x64)
    gates = np_gates(layer, x64)
    for gate, got in zip(gates, outputs):
        want = np.einsum("be,beu->bu", gate, experts)
        np.testing.assert_allclose(to_numpy(got), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        to_numpy(layer.gate_weights(x)), np.stack(gates, 1), rtol=RTOL, atol=ATOL
    )
    # A power of two experts: every gate is a distribution.
    np.testing.assert_allclose(np.stack(gates, 1).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("num_experts, k", [(8, 2), (4, 3), (5, 1)])
def test_saturated_gate_is_exactly_k_sparse(num_experts, k):
    layer = keras_mtl.layers.DSelectK(2, num_experts=num_experts, num_selected=k)
    x = random_inputs((16, 6))
    layer.build(x.shape)
    # Logits of size >= gamma / 2 saturate every smooth-step: each selector
    # is one-hot and the gate has at most k non-zeros, exactly zero elsewhere.
    for dense in layer.selector_logits:
        dense.kernel.assign(3.0 * random_inputs(tuple(dense.kernel.shape), seed=5))
        dense.bias.assign(np.where(np.arange(dense.bias.shape[0]) % 2, 1.0, -1.0))
    z = to_numpy(keras.ops.stack([d(x) for d in layer.selector_logits]))
    saturated = np.abs(z) >= layer.gamma / 2
    gates = to_numpy(layer.gate_weights(x))
    r, _ = layer.selectors(x)
    for b in range(x.shape[0]):
        for t in range(2):
            if not saturated[t, b].all():
                continue
            assert np.count_nonzero(gates[b, t]) <= k
            selectors = to_numpy(r)[b, t]
            assert set(np.unique(selectors)) <= {0.0, 1.0}
    assert saturated.all(axis=-1).any()  # the check above ran


def test_entropy_regularisation_is_added_as_a_loss():
    x = random_inputs((4, 6))
    plain = keras_mtl.layers.DSelectK(2, num_experts=4)
    plain(x)
    assert not plain.losses
    layer = keras_mtl.layers.DSelectK(2, num_experts=4, entropy_reg=0.5)
    layer(x)
    r, _ = layer.selectors(x)
    r = to_numpy(r)
    entropy = -(r * np.log(r + 1e-6)).sum(-1).sum((1, 2)).mean()
    (loss,) = layer.losses
    np.testing.assert_allclose(to_numpy(loss), 0.5 * entropy, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_tasks": 2, "num_experts": 1}, "num_experts"),
        ({"num_tasks": 2, "num_experts": 4, "num_selected": 5}, "num_selected"),
        ({"num_tasks": 2, "gamma": 0.0}, "gamma"),
        ({"num_tasks": 2, "entropy_reg": -1.0}, "entropy_reg"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        keras_mtl.layers.DSelectK(**kwargs)


def test_keras_round_trip(tmp_path):
    x, _ = regression_data(num=8)
    inputs = keras.Input((8,))
    layer = keras_mtl.layers.DSelectK(2, num_experts=5, gamma=0.5, expert_units=6)
    net = heads_net(inputs, layer(inputs))
    loaded = assert_keras_round_trip(net, x, tmp_path)
    restored = [
        lay for lay in loaded.layers if isinstance(lay, keras_mtl.layers.DSelectK)
    ]
    assert restored[0].get_config() == layer.get_config()


def test_upgrad_fit_with_xla_and_entropy_regularisation():
    x, y = regression_data()
    inputs = keras.Input((8,))
    layer = keras_mtl.layers.DSelectK(
        2, num_experts=4, entropy_reg=0.01, expert_units=8
    )
    net = heads_net(inputs, layer(inputs))
    model, logs = fit_multitask(net, x, y, weighting="uncertainty", aggregator="upgrad")
    shared = {v.path for v in model._shared_variables}
    assert any("experts/kernel_0" in p for p in shared), shared
    assert not any("selector" in p for p in shared), shared
    for task in ("a", "b"):
        assert logs[f"{task}_loss"][-1] < 0.8 * logs[f"{task}_loss"][0], logs

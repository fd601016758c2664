"""CGC and PLE: shapes, the forward pass against numpy, gates, saving, training."""

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


def np_cgc(layer, xs):
    """A CGC level in numpy on K + 1 inputs (tasks, then shared)."""
    shared = np_experts(layer.shared_experts, xs[-1])
    own = [np_experts(layer.task_experts[k], xs[k]) for k in range(layer.num_tasks)]
    outputs = []
    for k in range(layer.num_tasks):
        gate = np_softmax(np_dense(layer.gates[k], xs[k]))
        outputs.append(
            np.einsum("be,beu->bu", gate, np.concatenate([own[k], shared], 1))
        )
    if layer.return_shared:
        gate = np_softmax(np_dense(layer.shared_gate, xs[-1]))
        everything = np.concatenate([*own, shared], 1)
        outputs.append(np.einsum("be,beu->bu", gate, everything))
    return outputs


def test_defaults_from_num_tasks_alone():
    features = keras.Input((16,))
    cgc = keras_mtl.layers.CGC(num_tasks=2)
    assert [tuple(o.shape) for o in cgc(features)] == [(None, 64)] * 2
    assert tuple(cgc.gate_utilization.shape) == (2, 2)  # 1 own + 1 shared expert
    ple = keras_mtl.layers.PLE(num_tasks=3)
    assert [tuple(o.shape) for o in ple(features)] == [(None, 64)] * 3
    assert [level.return_shared for level in ple.levels] == [True, False]


@pytest.mark.parametrize("return_shared", [False, True])
def test_cgc_forward_pass_matches_numpy(return_shared):
    layer = keras_mtl.layers.CGC(
        3, num_task_experts=2, num_shared_experts=3, expert_units=(5, 4),
        return_shared=return_shared,
    )  # fmt: skip
    x = random_inputs((6, 7))
    outputs = layer(x)
    expected = np_cgc(layer, [x.astype("float64")] * 4)
    assert len(outputs) == 3 + return_shared
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(to_numpy(got), want, rtol=RTOL, atol=ATOL)
    gates = to_numpy(layer.gate_weights(x))
    assert gates.shape == (6, 3, 5)
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-6)


def test_cgc_with_separate_task_and_shared_inputs():
    layer = keras_mtl.layers.CGC(2, expert_units=3)
    xs = [random_inputs((4, 5), seed=s) for s in range(3)]
    outputs = layer(xs)
    expected = np_cgc(layer, [x.astype("float64") for x in xs])
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(to_numpy(got), want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="list of 3"):
        keras_mtl.layers.CGC(2)(xs[:2])


def test_ple_forward_pass_matches_numpy():
    layer = keras_mtl.layers.PLE(
        2, num_levels=3, num_task_experts=2, num_shared_experts=2, expert_units=4
    )
    x = random_inputs((5, 6))
    outputs = layer(x)
    xs = [x.astype("float64")] * 3
    for level in layer.levels:
        xs = np_cgc(level, xs)
    assert len(outputs) == 2 and len(xs) == 2
    for got, want in zip(outputs, xs):
        np.testing.assert_allclose(to_numpy(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        ("CGC", {"num_tasks": 1}, "num_tasks"),
        ("CGC", {"num_tasks": 2, "num_shared_experts": 0}, "num_shared_experts"),
        ("PLE", {"num_tasks": 2, "num_levels": 0}, "num_levels"),
        ("PLE", {"num_tasks": 2, "num_task_experts": 1.5}, "num_task_experts"),
    ],
)
def test_bad_arguments_name_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        getattr(keras_mtl.layers, cls)(**kwargs)


def test_keras_round_trip(tmp_path):
    x, _ = regression_data(num=8)
    inputs = keras.Input((8,))
    layer = keras_mtl.layers.PLE(2, num_levels=2, num_task_experts=2, expert_units=5)
    net = heads_net(inputs, layer(inputs))
    loaded = assert_keras_round_trip(net, x, tmp_path)
    restored = [lay for lay in loaded.layers if isinstance(lay, keras_mtl.layers.PLE)]
    assert restored[0].get_config() == layer.get_config()


def test_ple_upgrad_shares_the_shared_experts_only():
    x, y = regression_data()
    inputs = keras.Input((8,))
    net = heads_net(inputs, keras_mtl.layers.PLE(2, expert_units=8)(inputs))
    model, logs = fit_multitask(net, x, y, weighting="uncertainty", aggregator="upgrad")
    shared = {v.path.split("/", 1)[1] for v in model._shared_variables}
    # Level 0's shared gate mixes every expert into the shared input of
    # level 1, which both tasks read; level 1's task experts and gates are
    # their own task's.
    assert "level_1/shared_experts/kernel_0" in shared, shared
    assert "level_0/task_experts_0/kernel_0" in shared, shared
    assert "level_0/shared_gate/kernel" in shared, shared
    assert not any(
        p.startswith(("level_1/task_experts", "level_1/gate")) for p in shared
    )
    for task in ("a", "b"):
        assert logs[f"{task}_loss"][-1] < 0.8 * logs[f"{task}_loss"][0], logs

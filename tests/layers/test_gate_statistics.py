"""Gate statistics: the recorded batch means and the epoch-log callback."""

import keras
import numpy as np
import pytest
from _layer_checks import fit_multitask, heads_net, regression_data, to_numpy

import keras_mtl
from keras_mtl.layers.gate_statistics import normalized_entropy

pytestmark = pytest.mark.backend_neutral


def gated_net():
    inputs = keras.Input((8,))
    mmoe = keras_mtl.layers.MMoE(2, num_experts=4, expert_units=4, name="mmoe")
    ple = keras_mtl.layers.PLE(2, num_task_experts=2, expert_units=4, name="ple")
    features = [
        keras.layers.Concatenate()([m, p]) for m, p in zip(mmoe(inputs), ple(inputs))
    ]
    return heads_net(inputs, features), mmoe, ple


def test_uniform_before_training_and_not_recorded_outside_training():
    net, mmoe, ple = gated_net()
    stats = keras_mtl.layers.gate_utilization(net)
    assert sorted(stats) == ["mmoe", "ple/level_0", "ple/level_0/shared", "ple/level_1"]
    np.testing.assert_allclose(stats["mmoe"], 0.25)
    np.testing.assert_allclose(stats["ple/level_0"], 1 / 3)  # 2 own + 1 shared
    np.testing.assert_allclose(stats["ple/level_0/shared"], 1 / 5)
    x, _ = regression_data(num=8)
    net(x, training=False)
    np.testing.assert_allclose(to_numpy(mmoe.gate_utilization), 0.25)


def test_fit_records_the_last_batch_mean_and_logs_entropies():
    x, y = regression_data(num=96)
    net, mmoe, ple = gated_net()
    logger = keras_mtl.layers.GateUtilizationLogger(tasks=["a", "b"])
    # A zero learning rate keeps the weights: the last batch's gates can
    # then be recomputed after fit.
    model, logs = fit_multitask(
        net, x, y, epochs=2, learning_rate=0.0, callbacks=[logger], weighting="equal"
    )
    last = x[64:]  # batches of 32, not shuffled
    stats = keras_mtl.layers.gate_utilization(model)
    want = to_numpy(mmoe.gate_weights(last)).mean(0)
    # float32 means of 32 softmax outputs: a few ulps of 1.
    np.testing.assert_allclose(stats["mmoe"], want, atol=1e-6)
    assert not np.allclose(stats["mmoe"], 0.25)
    level0 = to_numpy(ple.levels[0].gate_weights(last)).mean(0)
    np.testing.assert_allclose(stats["ple/level_0"], level0, atol=1e-6)
    for name, weights in stats.items():
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5, err_msg=name)
    for task in ("a", "b"):
        row = 0 if task == "a" else 1
        entropy = logs[f"mmoe_gate_entropy_{task}"]
        assert len(entropy) == 2
        np.testing.assert_allclose(
            entropy[-1], normalized_entropy(stats["mmoe"][row]), rtol=1e-6
        )
        assert 0.0 < entropy[-1] <= 1.0
        assert f"ple_level_1_gate_entropy_{task}" in logs
    assert "ple_level_0_shared_gate_entropy" in logs


def test_normalized_entropy():
    np.testing.assert_allclose(normalized_entropy(np.full((2, 4), 0.25)), [1.0, 1.0])
    np.testing.assert_allclose(normalized_entropy(np.array([0.0, 1.0, 0.0])), 0.0)


def test_logger_rejects_wrong_task_names():
    net, _, _ = gated_net()
    logger = keras_mtl.layers.GateUtilizationLogger(tasks=["a", "b", "c"])
    logger.set_model(net)
    with pytest.raises(ValueError, match="3 tasks"):
        logger.on_epoch_end(0, {})

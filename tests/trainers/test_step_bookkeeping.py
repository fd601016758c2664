"""The training step's bookkeeping in its cheaper form (docs/performance.md,
Profile): per-task trackers sharing one pair of variables log what
`keras.metrics.Mean` trackers would, and the effective-weight and
min-cosine logs computed together equal the two separate functions."""

import keras
import numpy as np
import pytest

from keras_mtl import gradients
from keras_mtl.task_metrics import _TaskMean

pytestmark = pytest.mark.backend_neutral


def test_grouped_task_trackers_equal_separate_means():
    names = ["a_loss", "b_loss", "a_weight", "b_weight"]
    group = _TaskMean.group(names)
    means = [keras.metrics.Mean(name=n) for n in names]
    rng = np.random.default_rng(0)
    for step in range(6):
        values = rng.standard_normal(4).astype("float32") * 10.0**step
        keep = np.float32(step != 3)  # a skipped step counts nothing
        group[0].update_group(values, sample_weight=keep)
        for mean, value in zip(means, values):
            mean.update_state(value, sample_weight=keep)
    for tracker, mean in zip(group, means):
        assert tracker.name == mean.name
        assert float(tracker.result()) == float(mean.result())  # bit for bit
    # One pair of variables for the group, held by its first tracker.
    assert [len(t.variables) for t in group] == [2, 0, 0, 0]
    for tracker in group:
        tracker.reset_state()
    assert [float(t.result()) for t in group] == [0.0] * 4


def test_model_logs_and_metrics_keep_their_names(digits, make_net, task_losses):
    import keras_mtl

    model = keras_mtl.MultiTaskModel(make_net(), aggregator="upgrad")
    model.compile(optimizer="sgd", loss=task_losses)
    logs = model.train_on_batch(*digits.batch(), return_dict=True)
    names = ["loss", "digit_loss", "parity_loss", "digit_weight", "parity_weight"]
    assert model.metrics_names == names + ["grad_cosine_min"]
    assert sorted(logs) == sorted(names + ["grad_cosine_min"])
    # The per-task trackers hold 2 variables (not 2 per tracker).
    assert len(model.metrics_variables) == 2 + 2 + 2


def test_combined_logging_equals_the_separate_functions():
    rng = np.random.default_rng(1)
    for k, d in [(2, 7), (3, 50), (8, 300)]:
        jacobian = keras.ops.convert_to_tensor(
            rng.standard_normal((k, d)).astype("float32") * 1e3
        )
        direction = keras.ops.sum(jacobian, axis=0)
        weights, cosine = gradients.combination_weights_and_min_cosine(
            jacobian, direction
        )
        np.testing.assert_array_equal(
            np.asarray(weights),
            np.asarray(gradients.combination_weights(jacobian, direction)),
        )
        assert float(cosine) == float(gradients.min_cosine(jacobian))
        np.testing.assert_allclose(np.asarray(weights), np.ones(k), rtol=1e-4)

"""Keras' TensorBoard callback writes the per-task logs of a real `fit`
(task losses and weights as scalars)."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.backend_neutral


def test_tensorboard_writes_task_weight_scalars(digits, make_model, tmp_path):
    # tf.summary's implementation comes from the `tensorboard` package, which
    # TensorFlow 2.21 no longer installs.
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    model = make_model("dwa")
    history = model.fit(
        digits.x,
        digits.y,
        epochs=3,
        batch_size=64,
        verbose=0,
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path))],
    )
    files = glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
    assert files
    scalars = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, {})[event.step] = number
    for tag in (
        "epoch_loss",
        "epoch_digit_loss",
        "epoch_parity_loss",
        "epoch_digit_weight",
        "epoch_parity_weight",
    ):
        assert tag in scalars, sorted(scalars)
    logged = [scalars["epoch_digit_weight"][step] for step in range(3)]
    np.testing.assert_allclose(logged, history.history["digit_weight"], rtol=1e-6)

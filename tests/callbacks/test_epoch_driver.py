"""`EpochDriver` (keras_mtl/callbacks/epoch_driver.py) through a real
`fit`."""

import numpy as np
import pytest

from keras_mtl.callbacks import EpochDriver

pytestmark = pytest.mark.backend_neutral


def test_epoch_driver_drives_dwa(digits, make_model):
    model = make_model("dwa")
    history = model.fit(digits.x, digits.y, epochs=4, batch_size=64, verbose=0)
    digit = np.array(history.history["digit_weight"])
    parity = np.array(history.history["parity_weight"])
    # Exactly 1 until two epochs have completed.
    np.testing.assert_array_equal(digit[:2], 1.0)
    np.testing.assert_array_equal(parity[:2], 1.0)
    assert np.all(np.abs(digit[2:] - 1.0) > 1e-4)
    # Epoch 3 uses 2 * softmax(r / T), r = the ratio of the epoch means of
    # epochs 2 and 1, which are the logged `<task>_loss`.
    ratios = np.array(
        [
            history.history[f"{task}_loss"][1] / history.history[f"{task}_loss"][0]
            for task in ("digit", "parity")
        ]
    )
    temperature = model.weighting.temperature
    expected = 2.0 * np.exp(ratios / temperature) / np.sum(np.exp(ratios / temperature))
    np.testing.assert_allclose([digit[2], parity[2]], expected, rtol=1e-4)


def test_epoch_driver_is_added_once(digits, make_model):
    class CountingDriver(EpochDriver):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            type(self).epochs.append(epoch)
            super().on_epoch_begin(epoch, logs)

    model = make_model("dwa")
    model.fit(
        digits.x[:128],
        {k: v[:128] for k, v in digits.y.items()},
        epochs=3,
        batch_size=64,
        verbose=0,
        callbacks=[CountingDriver()],
    )
    assert CountingDriver.epochs == [0, 1, 2]
    assert int(model.weighting.epoch_history.epoch.numpy()) == 2

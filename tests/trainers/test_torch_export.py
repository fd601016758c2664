"""Export from the torch backend: ONNX there, and the documented route to a
SavedModel (save the `.keras` file, load it on TensorFlow, export), each
serving the model's predictions. Runs in the torch pass of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import TASK_LOSSES, build_net

import keras_mtl

pytestmark = [
    pytest.mark.backend_neutral,
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch export"),
]


@pytest.fixture(scope="module")
def trained(digits_module) -> keras_mtl.MultiTaskModel:
    keras.utils.set_random_seed(0)
    model = keras_mtl.MultiTaskModel(
        build_net(), weighting="uncertainty", aggregator="upgrad"
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=dict(TASK_LOSSES))
    x, y = digits_module
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def digits_module() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from conftest import Digits

    data = Digits(256)
    return data.x, data.y


def test_onnx_export_serves_the_predictions(trained, digits_module, tmp_path):
    runtime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    x = digits_module[0][:40]
    expected = trained.predict(x, verbose=0)
    path = str(tmp_path / "model.onnx")
    trained.export(path, format="onnx", verbose=False)
    session = runtime.InferenceSession(path)
    (feed,) = session.get_inputs()
    outputs = session.run(None, {feed.name: x})
    # The inference net's outputs, in its order (the task dict's).
    assert len(outputs) == len(trained.task_names)
    for task, got in zip(trained.task_names, outputs):
        np.testing.assert_allclose(got, expected[task], rtol=1e-5, atol=1e-6)


def test_a_saved_model_export_names_the_routes(trained, tmp_path):
    with pytest.raises(
        NotImplementedError, match="format='onnx'.*KERAS_BACKEND=tensorflow"
    ):
        trained.export(str(tmp_path / "saved"), verbose=False)


_SERVE_ON_TENSORFLOW = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import tensorflow as tf
    import keras_mtl

    source, exported, inputs, out = sys.argv[1:]
    model = keras.saving.load_model(source)
    model.export(exported, verbose=False)
    served = tf.saved_model.load(exported)
    got = served.serve(tf.constant(np.load(inputs)))
    np.savez(out, **{task: value.numpy() for task, value in got.items()})
    """
)


def test_the_saved_model_route_through_tensorflow(trained, digits_module, tmp_path):
    x = digits_module[0][:40]
    expected = trained.predict(x, verbose=0)
    trained.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE_ON_TENSORFLOW,
            str(tmp_path / "model.keras"),
            str(tmp_path / "saved"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "served.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.load(tmp_path / "served.npz")
    assert sorted(served.files) == sorted(trained.task_names)
    for task in trained.task_names:
        np.testing.assert_allclose(served[task], expected[task], rtol=1e-5, atol=1e-6)

"""Shared checks of the architecture layers' tests (tests/layers/)."""

import keras
import numpy as np

import keras_mtl

# float32 forward passes of a few small matmuls compared with float64
# numpy: a relative error of a few ulps per op (~1e-7 each) over tens of ops.
RTOL, ATOL = 1e-5, 1e-6


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


def np_experts(layer, x):
    """An `ExpertStack`'s forward pass in numpy (ReLU experts): (B, E, u)."""
    h = np.broadcast_to(x[:, None, :], (x.shape[0], layer.num_experts, x.shape[1]))
    for depth, kernel in enumerate(layer.kernels):
        h = np.einsum("beu,euv->bev", h, to_numpy(kernel))
        if layer.use_bias:
            h = h + to_numpy(layer.biases[depth])
        h = np.maximum(h, 0.0)
    return h


def np_dense(dense, x):
    out = x @ to_numpy(dense.kernel)
    return out + to_numpy(dense.bias) if dense.use_bias else out


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def random_inputs(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def assert_keras_round_trip(model, inputs, tmp_path):
    """`.keras` save and load: same class, same outputs."""
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected = model.predict(inputs, verbose=0)
    got = loaded.predict(inputs, verbose=0)
    flat_e, flat_g = keras.tree.flatten(expected), keras.tree.flatten(got)
    assert len(flat_e) == len(flat_g)
    for e, g in zip(flat_e, flat_g):
        # Same weights and ops in one process: only op fusion may differ.
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    return loaded


def regression_data(num=96, dim=8, seed=0):
    """Two related regression tasks on Gaussian features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, dim)).astype("float32")
    w = rng.normal(size=(dim, 2)).astype("float32") / np.sqrt(dim)
    y = {"a": np.sin(x @ w[:, :1]), "b": (x @ w[:, 1:]) ** 2}
    return x, {k: v.astype("float32") for k, v in y.items()}


def heads_net(inputs, task_features, name="net"):
    """A functional net with one linear head per task (outputs "a", "b")."""
    outputs = {
        task: keras.layers.Dense(1, name=task)(keras.layers.Flatten()(h))
        for task, h in zip(["a", "b"], task_features)
    }
    return keras.Model(inputs, outputs, name=name)


def fit_multitask(
    net, x, y, epochs=6, learning_rate=1e-2, callbacks=None, **model_kwargs
):
    """Trains `net` in a MultiTaskModel (jit_compile=True): (model, history)."""
    model = keras_mtl.MultiTaskModel(net, **model_kwargs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={"a": "mse", "b": "mse"},
        jit_compile=True,
    )
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )
    return model, history.history

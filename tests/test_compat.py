"""Every private Keras/TensorFlow/JAX touchpoint of `keras_mtl._compat`
against the installed versions.

One test per function: it exercises what keras_mtl relies on (the
attribute exists and behaves as the callers assume, on a tiny model) and
fails with the installed Keras version in its message when an upgrade
changes it. Tests marked `backend_neutral` run again under JAX; the others
need TensorFlow itself (`tf.distribute`), or start JAX in a subprocess.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_mtl import _compat

pytestmark = pytest.mark.backend_neutral

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="a TensorFlow trainer or tf.distribute touchpoint"
)
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="a JAX trainer touchpoint")


def broken(touchpoint: str, detail: str) -> str:
    """The failure message: the touchpoint, what changed, the versions."""
    return (
        f"{touchpoint} changed in {_compat.installed_versions()} (keras_mtl was "
        f"tested with {_compat.TESTED_WITH}): {detail}. Update keras_mtl/_compat.py."
    )


class _Holder(keras.layers.Layer):
    """A layer with its own trainable and non-trainable variables and two
    sublayers held as attributes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(2, name="first")
        self.second = keras.layers.Dense(1, name="second")

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )
        self.first.build(input_shape)
        self.second.build((*input_shape[:-1], 2))

    def call(self, x):
        return self.second(self.first(x)) * self.scale


class _Subclassed(keras.Model):
    def __init__(self, units=3, **kwargs):
        # A default name without the class's leading underscore, which is
        # not a valid TensorFlow root name scope.
        kwargs.setdefault("name", "subclassed")
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(inputs)


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 1)).astype(
        "float32"
    )


# ------------------------------------------------------------------ errors
def test_a_missing_touchpoint_raises_naming_it_and_the_keras_version():
    message = str(_compat._unsupported("keras.Thing._gone", "why we need it"))
    assert "keras.Thing._gone" in message and keras.version() in message, message
    with pytest.raises(_compat.UnsupportedVersionError, match=keras.version()):
        _compat._attribute(object(), "_gone", "object._gone", "a test")
    # Not an AttributeError: callers that catch one must not swallow it.
    assert not issubclass(_compat.UnsupportedVersionError, AttributeError)
    assert _compat.installed_versions().startswith(f"Keras {keras.version()}")


# ------------------------------------------------------------------ layers
def test_own_variables_are_the_variables_keras_saves_for_a_layer():
    layer = _Holder()
    layer.build((None, 3))
    own = _compat.own_variables(layer)
    assert [id(v) for v in own] == [id(layer.scale), id(layer.count)], broken(
        "Layer._trainable_variables/_non_trainable_variables",
        f"a layer's own variables are {[v.path for v in own]}",
    )
    store = {}
    keras.layers.Layer.save_own_variables(layer, store)
    assert len(store) == len(own), broken(
        "Layer.save_own_variables", f"it saved {len(store)} variables, not {len(own)}"
    )


def test_direct_sublayers_in_tracking_order():
    layer = _Holder()
    names = [sub.name for sub in _compat.direct_sublayers(layer)]
    assert names == ["first", "second"], broken(
        "Layer._layers", f"the direct sublayers are {names}"
    )
    model = keras.Sequential([keras.Input((3,)), layer])
    assert layer in _compat.direct_sublayers(model), broken(
        "Layer._layers", "a Sequential's layers are not among its sublayers"
    )
    assert _compat.direct_sublayers(object()) == []


class _Outer(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = _Holder(name="inner")


def test_flatten_layers_walks_nested_layers_once():
    outer = _Outer(name="outer")
    top = [
        x.name
        for x in _compat.flatten_layers(outer, include_self=False, recursive=False)
    ]
    assert top == ["inner"], broken("Layer._flatten_layers", f"top level {top}")
    every = [x.name for x in _compat.flatten_layers(outer)]
    # Each once, self first; the order of deeper layers is not relied on.
    assert every[:2] == ["outer", "inner"] and sorted(every[2:]) == [
        "first",
        "second",
    ], broken("Layer._flatten_layers", f"recursive walk {every}")


def test_clear_activity_losses_forgets_the_losses_of_earlier_calls():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(
        2, activity_regularizer=keras.regularizers.L2(1.0), name="dense"
    )(inputs)
    model = keras.Model(inputs, outputs)
    x = np.ones((2, 3), "float32")
    with keras.StatelessScope(collect_losses=True) as scope:
        model(x)
        assert len(model.losses) == 1 and len(scope.losses) == 1
        _compat.clear_activity_losses(model)
        assert model.losses == [], broken(
            "Layer._clear_losses", f"{len(model.losses)} losses kept"
        )
    # Outside a scope: the eager losses list is emptied too.
    model(x)
    assert len(model.losses) == 1
    _compat.clear_activity_losses(model)
    assert model.losses == [], broken("Layer._clear_losses", "eager losses kept")


def test_build_shapes_of_a_subclassed_net_after_its_first_call():
    net = _Subclassed()
    assert _compat.build_shapes(net) is None, broken(
        "Layer._build_shapes_dict", "it is set before the first call"
    )
    net(np.zeros((2, 4), "float32"))
    shapes = _compat.build_shapes(net)
    assert isinstance(shapes, dict) and len(shapes) == 1, broken(
        "Layer._build_shapes_dict", f"after one call it is {shapes!r}"
    )
    assert tuple(next(iter(shapes.values())))[1:] == (4,), broken(
        "Layer._build_shapes_dict", f"the recorded shape is {shapes!r}"
    )


class _Scaled(keras.layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor


def test_auto_config_records_serialisable_constructor_arguments():
    assert _compat.auto_config(_Scaled(factor=2.5)) == {"factor": 2.5}, broken(
        "Operation._auto_config", "the constructor arguments are not recorded"
    )
    assert _compat.auto_config(_Scaled(factor=object())) is None, broken(
        "Operation._auto_config", "non-serialisable arguments are recorded"
    )
    recorded = _compat.auto_config(_Subclassed(units=5))
    assert isinstance(recorded, dict) and "units" in recorded, broken(
        "Operation._auto_config", f"a Model subclass records {recorded!r}"
    )


# ------------------------------------------------------- functional graphs
def test_inbound_nodes_and_nodes_by_depth_of_a_functional_graph():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="representation")
    hidden = dense(inputs)
    net = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    # The same layer in a second graph: a node of its own.
    other_inputs = keras.Input((4,))
    keras.Model(other_inputs, dense(other_inputs))

    nodes = _compat.layer_inbound_nodes(dense)
    assert len(nodes) == 2, broken(
        "Operation._inbound_nodes", f"{len(nodes)} nodes for 2 calls"
    )
    graph = {
        id(n) for ns in _compat.functional_nodes_by_depth(net).values() for n in ns
    }
    mine = [n for n in nodes if id(n) in graph]
    assert len(mine) == 1 and mine[0].output_tensors[0] is hidden, broken(
        "Functional._nodes_by_depth / Node.output_tensors",
        "the layer's call in this graph is not found with its output",
    )
    with pytest.raises(AttributeError):
        _compat.functional_nodes_by_depth(_Subclassed())


def test_keras_tensor_operation_is_the_layer_that_made_it():
    inputs = keras.Input((4,))
    output = keras.layers.Dense(1, name="digit")(inputs)
    operation = _compat.keras_tensor_operation(output)
    assert getattr(operation, "name", None) == "digit", broken(
        "KerasTensor._keras_history", f"the output's operation is {operation!r}"
    )
    assert _compat.keras_tensor_operation(np.zeros(2)) is None


# ---------------------------------------------------------------- trainers
def _compiled(model=None, **kwargs):
    model = model if model is not None else _Subclassed(units=1)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", **kwargs)
    return model


def test_compile_config_is_what_the_model_saves():
    model = _Subclassed(units=1)
    with pytest.raises(ValueError, match="not compiled"):
        _compat.compile_config(model)
    _compiled(model)
    config = _compat.compile_config(model)
    assert config.get("loss") == "mse", broken(
        "Model._compile_config.config", f"after compile it is {config!r}"
    )
    config["loss"] = {"digit": "mae"}
    saved = model.get_compile_config()
    assert saved.get("loss") == {"digit": "mae"}, broken(
        "Model._compile_config", f"get_compile_config ignores it: {saved!r}"
    )


class _CountingMean(keras.metrics.Mean):
    def __init__(self, name="loss"):
        super().__init__(name=name)
        self.updates = 0

    def update_state(self, *args, **kwargs):
        self.updates += 1
        return super().update_state(*args, **kwargs)


def test_set_loss_tracker_replaces_the_metric_logged_as_loss():
    model = _compiled()
    tracker = _CountingMean()
    _compat.set_loss_tracker(model, tracker)
    assert model.metrics[0] is tracker, broken(
        "Model._loss_tracker", "it is not the first of model.metrics"
    )
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert tracker.updates >= 1, broken(
        "Model._loss_tracker", "the training step does not update it"
    )
    assert sum(m is tracker for m in model.metrics) == 1
    np.testing.assert_allclose(
        history.history["loss"][-1],
        float(keras.ops.convert_to_numpy(tracker.result())),
        rtol=1e-6,
        err_msg=broken("Model._loss_tracker", "the logged loss is not its result"),
    )


def test_model_distribute_strategy():
    model = _Subclassed()
    assert _compat.model_distribute_strategy(model) is None, broken(
        "Model._distribute_strategy", "a model made outside any strategy has one"
    )
    if BACKEND != "tensorflow":
        return
    import tensorflow as tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        scoped = _Subclassed()
    assert _compat.model_distribute_strategy(scoped) is strategy, broken(
        "Model._distribute_strategy", "a model made in a strategy's scope lacks it"
    )


def test_requested_jit_compile_is_the_compile_argument():
    assert _compat.requested_jit_compile(_Subclassed()) is None, broken(
        "Model._jit_compile", "an uncompiled model has a setting"
    )
    model = _compiled(jit_compile=True)
    assert _compat.requested_jit_compile(model) is True, broken(
        "Model._jit_compile", "jit_compile=True is not recorded as True"
    )
    model.jit_compile = False
    assert _compat.requested_jit_compile(model) is False, broken(
        "Model._jit_compile", "the public setter does not write it"
    )


def _monitored(direction):
    class Listed(_compat.metrics_list_base()):
        """A `MetricsList` of itself, as keras_mtl's per-task trackers are."""

        def __init__(self, name):
            keras.metrics.Metric.__init__(self, name=name)

        @property
        def metrics(self):
            return [self]

        def result(self):
            return 0.0

    listed = Listed("task_loss")
    if direction is not None:
        _compat.set_metric_direction(listed, direction)
    model = _Subclassed()
    model.tracker = listed
    callback = keras.callbacks.EarlyStopping(monitor="task_loss", patience=5)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0, {"task_loss": 1.0})
    callback.on_epoch_end(1, {"task_loss": 2.0})
    return callback


def test_metrics_list_members_tell_callbacks_their_direction():
    assert issubclass(_compat.metrics_list_base(), keras.metrics.Metric), broken(
        "compile_utils.MetricsList", "it is no longer a Metric"
    )
    up, down = _monitored("up"), _monitored("down")
    assert (float(up.best), up.wait) == (2.0, 0), broken(
        "MetricsList / Metric._direction", "direction 'up' is not read"
    )
    assert (float(down.best), down.wait) == (1.0, 1), broken(
        "MetricsList / Metric._direction", "direction 'down' is not read"
    )
    with pytest.raises(ValueError, match="direction"):
        _compat.set_metric_direction(keras.metrics.Mean(), "sideways")


class _BuildRecorder(_Subclassed):
    def __init__(self, **kwargs):
        super().__init__(units=1, **kwargs)
        self.calls = []

    def _symbolic_build(self, iterator=None, data_batch=None):
        self.calls.append("_symbolic_build")
        return _compat.base_symbolic_build(
            _BuildRecorder, self, iterator=iterator, data_batch=data_batch
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        self.calls.append("_maybe_symbolic_build")
        return _compat.base_maybe_symbolic_build(
            _BuildRecorder, self, iterator=iterator, data_batch=data_batch
        )


def test_symbolic_build_hooks_run_before_the_first_step():
    if BACKEND == "tensorflow":
        import tensorflow as tf

        # The TensorFlow trainer builds symbolically under a strategy only
        # (`_maybe_symbolic_build`); otherwise when the step is traced.
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            model = _compiled(_BuildRecorder())
    else:
        model = _compiled(_BuildRecorder())
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert "_symbolic_build" in model.calls, broken(
        "Trainer._symbolic_build", f"fit called the hooks {model.calls}"
    )
    if BACKEND == "tensorflow":
        assert model.calls[0] == "_maybe_symbolic_build", broken(
            "TensorFlowTrainer._maybe_symbolic_build", f"fit called {model.calls}"
        )
    assert model.optimizer.built and np.isfinite(model.evaluate(x, y, verbose=0))


class _PurgeRecorder(_Subclassed):
    def __init__(self, **kwargs):
        super().__init__(units=1, **kwargs)
        self.purges = []
        self.raw_after_purge = []

    def _purge_model_variables(self, *args, **kwargs):
        self.purges.append(kwargs)
        _compat.base_purge_model_variables(_PurgeRecorder, self, *args, **kwargs)
        kernel = self.trainable_variables[0]
        self.raw_after_purge.append(_compat.variable_raw_value(kernel))


class _SeesJaxState(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.state = _compat.jax_trainer_state(self.model)


@jax_only
def test_jax_trainer_purges_variables_and_holds_the_state_while_it_loops():
    model = _compiled(_PurgeRecorder())
    seen = _SeesJaxState()
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[seen], verbose=0)
    assert model.purges and model.purges[0].get("trainable_variables"), broken(
        "JAXTrainer._purge_model_variables", f"fit purged {model.purges}"
    )
    assert model.raw_after_purge[0] is None, broken(
        "Variable._value", "a purged variable keeps its value"
    )
    assert seen.state, broken(
        "JAXTrainer._jax_state", "it is empty while the JAX trainer loops"
    )
    assert _compat.jax_trainer_state(model) is None, broken(
        "JAXTrainer._jax_state", "it is kept after the loop"
    )
    assert _compat.variable_raw_value(model.trainable_variables[0]) is not None


def test_variable_raw_value_round_trip():
    variable = keras.Variable(np.array([1.0, 2.0], "float32"))
    raw = _compat.variable_raw_value(variable)
    assert raw is not None, broken("Variable._value", "a new variable has none")
    if BACKEND != "jax":
        return  # The JAX trainer's detach and restore only happen on JAX.
    import jax.numpy as jnp

    variable._value = None
    _compat.restore_variable_value(variable, jnp.array([3.0, 4.0]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(variable),
        [3.0, 4.0],
        err_msg=broken("Variable._value", "a restored value is not read back"),
    )


# ---------------------------------------------------------------------- JAX
def test_dce_jaxpr_finds_the_inputs_each_output_needs():
    jax = pytest.importorskip("jax")
    traced = jax.make_jaxpr(lambda a, b, c: (a * 2.0, a + b))(1.0, 2.0, 3.0)
    _, first = _compat.dce_jaxpr(traced.jaxpr, [True, False])
    _, second = _compat.dce_jaxpr(traced.jaxpr, [False, True])
    assert (first, second) == ([True, False, False], [True, True, False]), broken(
        "jax partial_eval.dce_jaxpr", f"used inputs {first} and {second}"
    )


def test_is_jax_tracer_inside_and_outside_a_trace():
    jax = pytest.importorskip("jax")
    seen = []

    @jax.jit
    def traced(x):
        seen.append(_compat.is_jax_tracer(x))
        return x

    traced(jax.numpy.ones(2))
    assert seen == [True], broken("jax.core.Tracer", "a jit argument is not one")
    assert not _compat.is_jax_tracer(jax.numpy.ones(2))
    assert not _compat.is_jax_tracer(np.ones(2))


# --------------------------------------------------------------- TensorFlow
@tensorflow_only
def test_strategy_supports_no_merge_call():
    import tensorflow as tf

    assert _compat.strategy_supports_no_merge_call() is True, broken(
        "tf.__internal__.distribute.strategy_supports_no_merge_call",
        "the default strategy needs merge_call",
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    inside = strategy.run(
        lambda: tf.constant(_compat.strategy_supports_no_merge_call())
    )
    assert not bool(inside), broken(
        "tf.__internal__.distribute.strategy_supports_no_merge_call",
        "MirroredStrategy no longer needs merge_call",
    )


def test_switch_with_symbolic_inputs_is_ops_switch():
    x = keras.ops.convert_to_tensor(np.array([1.0, 2.0, 3.0], "float32"))
    branches = [lambda: x * 2.0, lambda: x + 1.0, lambda: -x]
    for i, expected in enumerate([[2, 4, 6], [2, 3, 4], [-1, -2, -3]]):
        got = _compat.switch_with_symbolic_inputs(
            keras.ops.convert_to_tensor(i), branches
        )
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), expected)


@tensorflow_only
def test_switch_with_symbolic_inputs_unmarks_the_xla_case_op():
    import tensorflow as tf

    name = "_xla_propagate_compile_time_consts"

    def marks(switch):
        @tf.function(jit_compile=True)
        def f(i, x):
            return switch(i, [lambda: tf.reduce_sum(x * x), lambda: tf.reduce_sum(x)])

        graph = f.get_concrete_function(
            tf.TensorSpec([], tf.int32), tf.TensorSpec([8], tf.float32)
        ).graph
        cases = [op for op in graph.get_operations() if "Case" in op.type]
        assert len(cases) == 1, [op.type for op in graph.get_operations()]
        attr = cases[0].node_def.attr
        return attr[name].b if name in attr else None

    assert marks(keras.ops.switch) is True, broken(
        f"tf.switch_case's {name}", "a Case op in XLA is no longer marked"
    )
    assert marks(_compat.switch_with_symbolic_inputs) is False


@tensorflow_only
def test_mirrored_collective_keys_are_the_ones_tensorflow_draws():
    import tensorflow as tf

    assert _compat.mirrored_collective_keys(tf.distribute.get_strategy()) == []
    assert _compat.mirrored_collective_keys(None) == []
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    found = _compat.mirrored_collective_keys(strategy)
    assert found, broken(
        "MirroredExtended._collective_keys / CollectiveKeys._instance_key_table",
        "a MirroredStrategy has no collective keys",
    )
    start = 3 << 20
    for keys in found:
        _compat.advance_collective_instance_keys(keys, start)
        # Never moved back: an earlier start leaves the keys where they are.
        _compat.advance_collective_instance_keys(keys, 200)
        for group, devices in keys._instance_key_table.items():
            for device in devices:
                drawn = keys.get_instance_key(group, device)
                assert drawn == start, broken(
                    "CollectiveKeys._instance_key_table",
                    f"TensorFlow drew instance key {drawn}, not {start}",
                )


# ------------------------------------------------------- lazy TensorFlow
# Starts JAX itself: runs once, in the TensorFlow pass.
_tensorflow_pass_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="starts a JAX process itself; runs once"
)

_TF_IMPORTERS = """
import builtins, sys
importers = []
real_import = builtins.__import__

def recording_import(name, globals=None, *args, **kwargs):
    importer = (globals or {}).get("__name__", "")
    if name.split(".")[0] == "tensorflow" and importer.startswith("keras_mtl"):
        importers.append(importer)
    return real_import(name, globals, *args, **kwargs)

builtins.__import__ = recording_import
import keras_mtl
print("tensorflow" in sys.modules, sorted(set(importers)))
"""


@_tensorflow_pass_only
def test_importing_keras_mtl_on_jax_does_not_import_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", _TF_IMPORTERS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported, importers = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert imported == "False", (
        f"`import keras_mtl` on JAX imported TensorFlow (importers in keras_mtl: "
        f"{importers}); import it inside the functions that use it."
    )


# ---------------------------------------------------------------- torch
def test_torch_compile_without_donated_buffers_turns_the_flag_off_inside():
    pytest.importorskip("torch")
    from torch._functorch import config

    before = config.donated_buffer
    with _compat.torch_compile_without_donated_buffers():
        assert config.donated_buffer is False, broken(
            "torch._functorch.config.donated_buffer", "the patch did not set it"
        )
    assert config.donated_buffer == before


def test_portable_optimizer_config_names_the_public_class():
    torch_sgd = {
        "module": "keras.src.backend.torch.optimizers.torch_sgd",
        "class_name": "SGD",
        "config": {"learning_rate": 0.5},
        "registered_name": None,
    }
    scaled = {
        "module": "keras.optimizers",
        "class_name": "LossScaleOptimizer",
        "config": {"inner_optimizer": torch_sgd},
        "registered_name": None,
    }
    ported = _compat.portable_optimizer_config({"optimizer": scaled, "loss": None})
    inner = ported["optimizer"]["config"]["inner_optimizer"]
    assert inner["module"] == "keras.optimizers" and inner["class_name"] == "SGD"
    assert torch_sgd["module"].startswith("keras.src")  # the input is not changed
    optimizer = keras.saving.deserialize_keras_object(inner)
    assert type(optimizer).__name__ == "SGD" and optimizer.learning_rate == 0.5
    # Another backend's own config, or a custom optimizer, is left as it is.
    custom = {"module": "my_project", "class_name": "Mine", "config": {}}
    assert _compat.portable_optimizer_config(custom) == custom


@pytest.mark.skipif(BACKEND != "torch", reason="a torch trainer touchpoint")
def test_keras_serialises_a_torch_optimizer_under_its_torch_module():
    serialized = keras.saving.serialize_keras_object(keras.optimizers.Adam(0.1))
    assert serialized["module"].startswith(_compat.TORCH_OPTIMIZER_MODULES), broken(
        "the module Keras records for a torch optimizer", str(serialized["module"])
    )
    ported = _compat.portable_optimizer_config(serialized)
    assert ported["module"] == "keras.optimizers"

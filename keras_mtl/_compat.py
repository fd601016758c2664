"""Every private Keras, TensorFlow and JAX API keras_mtl relies on.

keras_mtl extends Keras' trainers and reads a few of their internals that
have no public equivalent. Each such touchpoint is one function here, with
what it relies on and why, so an upgrade is checked in one place:
`tests/test_compat.py` exercises every function against the installed
versions and fails with the Keras version in its message when one breaks.

A touchpoint a version lacks raises `UnsupportedVersionError`, naming the
touchpoint and the installed versions, unless the caller deliberately does
nothing without it (said in the function's docstring). TensorFlow and JAX
are imported inside the functions that need them, never here at the top:
importing keras_mtl on the JAX backend must not import TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

# The versions these touchpoints were last checked against.
TESTED_WITH = "Keras 3.15.1, TensorFlow 2.21.0, JAX 0.10.2"


class UnsupportedVersionError(RuntimeError):
    """A private Keras/TensorFlow/JAX API keras_mtl needs is missing or
    changed in the installed version.

    A `RuntimeError`, not an `AttributeError`: callers that treat an
    `AttributeError` as "not this kind of object" must not swallow it."""


def installed_versions() -> str:
    """`"Keras 3.15.1, TensorFlow 2.21.0, JAX 0.10.2"`: Keras' version and
    those of TensorFlow and JAX if already imported (this does not import
    them)."""
    parts = [f"Keras {keras.version()}"]
    for module_name, label in (("tensorflow", "TensorFlow"), ("jax", "JAX")):
        module = sys.modules.get(module_name)
        if module is not None:
            parts.append(f"{label} {getattr(module, '__version__', 'unknown')}")
    return ", ".join(parts)


def _unsupported(touchpoint: str, why: str) -> UnsupportedVersionError:
    return UnsupportedVersionError(
        f"keras_mtl relies on {touchpoint} ({why}), which is missing or changed "
        f"in the installed {installed_versions()}. keras_mtl was tested with "
        f"{TESTED_WITH}; install those or report this with the versions above."
    )


def _attribute(obj: Any, name: str, touchpoint: str, why: str) -> Any:
    """`getattr(obj, name)`, or a loud `UnsupportedVersionError`."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _unsupported(touchpoint, why) from None


def _private_import(module: str, name: str, why: str) -> Any:
    """`name` from the private `module`, or a loud `UnsupportedVersionError`."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise _unsupported(f"{module}.{name}", why) from None


# --------------------------------------------------------------- layers
def own_variables(layer: keras.layers.Layer) -> list[Any]:
    """The variables `layer` created itself, trainable ones first, without
    those of its sublayers.

    Relies on `Layer._trainable_variables` and `_non_trainable_variables`,
    the lists Keras' own `Layer.save_own_variables` writes. Needed to save
    a layer's random-generator state after exactly the variables Keras
    saves for it (`_seed_state.SavesSeedGeneratorState`)."""
    why = "the variables a layer created itself, as Keras saves them"
    return [
        variable
        for name in ("_trainable_variables", "_non_trainable_variables")
        for variable in _attribute(layer, name, f"keras.layers.Layer.{name}", why)
    ]


def direct_sublayers(layer: Any) -> list[Any]:
    """The sublayers `layer` tracks directly (its attributes' layers, a
    model's layers), in tracking order, possibly with repeats.

    Relies on `Layer._layers`. Needed to walk nested layers (the gated
    layers of `gate_utilization`); there is no public list of a layer's
    direct sublayers. An object that is not a Keras layer has none (an
    empty list, as before this module); a Keras layer without `_layers`
    raises."""
    if not isinstance(layer, keras.layers.Layer):
        return list(getattr(layer, "_layers", []))
    why = "the direct sublayers of a layer"
    return list(_attribute(layer, "_layers", "keras.layers.Layer._layers", why))


def clear_activity_losses(layer: keras.layers.Layer) -> None:
    """Forgets the activity losses (`add_loss`) `layer` and its sublayers
    recorded, as Keras does at the start of an outermost layer call.

    Relies on `Layer._clear_losses()`. Needed on JAX: in a stateless scope
    a layer's `losses` are the scope's losses whose `id` it recorded, and
    those ids outlive the tensors. A step that calls only part of the model
    (representation mode: the trunk, then the heads, each an outermost
    call) leaves the other part's layers with ids of freed tensors, which
    Python may give to this pass's losses: `model.losses` then counts a
    loss twice."""
    why = "the reset of the activity losses a layer recorded"
    _attribute(layer, "_clear_losses", "keras.layers.Layer._clear_losses", why)()


def flatten_layers(
    layer: keras.layers.Layer, include_self: bool = True, recursive: bool = True
) -> list[keras.layers.Layer]:
    """Keras' own walk of the layers tracked under `layer`, each once.

    Relies on `Layer._flatten_layers(include_self, recursive)`. Needed to
    find the sublayers of a layer that are not in `Model.layers` (layers
    held as attributes of a layer, nested sub-models): a weighting's epoch
    history, the shared-parameter names of `MultiTaskModel(shared=...)`."""
    why = "Keras' walk of the layers tracked under a layer"
    walk = _attribute(
        layer, "_flatten_layers", "keras.layers.Layer._flatten_layers", why
    )
    return list(walk(include_self=include_self, recursive=recursive))


def build_shapes(layer: keras.layers.Layer) -> dict[str, Any] | None:
    """The input shapes `layer` was first called (built) with, keyed by
    its `call` arguments; None before that.

    Relies on `Layer._build_shapes_dict`, which Keras sets when a layer is
    built by its first call. Needed for a zero batch (and an export
    signature) of a subclassed net, which declares no inputs."""
    why = "the input shapes a subclassed net was first called with"
    name = "_build_shapes_dict"
    return _attribute(layer, name, f"keras.layers.Layer.{name}", why)


def auto_config(layer: keras.layers.Layer) -> dict[str, Any] | None:
    """The constructor arguments Keras recorded for `layer`, or None when
    it did not record them (an argument was not serialisable).

    Relies on `Operation._auto_config` (a `SerializableDict`), set by
    `Operation.__new__`. Needed so a subclass of `MultiTaskModel` saves
    its own constructor arguments in `get_config`. None on a layer without
    it (today's behaviour: the subclass's arguments are then left out) as
    long as Keras still sets it on a new operation; if it does not, this
    raises. For a `keras.Model` subclass Keras 3.15 records the
    constructor's default values, not those passed (`Model.__new__` calls
    `Operation.__new__` without the arguments)."""
    why = "the constructor arguments of a subclassed model, for get_config"
    recorded = getattr(layer, "_auto_config", None)
    if recorded is None:
        # `__new__` alone: no `__init__`, so no name is taken from Keras'
        # counters of default names.
        probe = keras.Operation.__new__(keras.Operation)
        if not hasattr(probe, "_auto_config"):
            raise _unsupported("keras.Operation._auto_config", why)
        return None
    touchpoint = "keras.Operation._auto_config.config"
    return dict(_attribute(recorded, "config", touchpoint, why))


# ----------------------------------------------------- functional graphs
def layer_inbound_nodes(layer: keras.layers.Layer) -> list[Any]:
    """The nodes (calls in functional graphs) of `layer`, each with
    `output_tensors`.

    Relies on `Operation._inbound_nodes` and `Node.output_tensors`. Needed
    to split a functional net at one layer's output (representation
    mode)."""
    why = "the calls of a layer in functional graphs"
    return list(
        _attribute(layer, "_inbound_nodes", "keras.Operation._inbound_nodes", why)
    )


def functional_nodes_by_depth(net: Any) -> dict[int, list[Any]]:
    """The nodes of a functional net's graph, by depth.

    Relies on `Functional._nodes_by_depth`. Needed to keep, of a layer's
    calls, those of this net's graph (a layer may be called in several
    graphs). A net that is not functional raises `AttributeError`, as the
    attribute access did before (callers report "needs a functional net");
    a functional net without it raises `UnsupportedVersionError`."""
    nodes = getattr(net, "_nodes_by_depth", None)
    if nodes is not None:
        return dict(nodes)
    if _is_functional(net):
        raise _unsupported(
            "keras.src.models.functional.Functional._nodes_by_depth",
            "the nodes of a functional graph, to split it at a layer",
        )
    raise AttributeError(f"{type(net).__name__} is not a functional model.")


def _is_functional(net: Any) -> bool:
    functional = _private_import(
        "keras.src.models.functional", "Functional", "the class of functional models"
    )
    return isinstance(net, functional)


def keras_tensor_operation(tensor: Any) -> Any | None:
    """The layer (operation) whose call produced a symbolic `tensor`, or
    None for a tensor without that history (deliberately: callers then
    name the output by its position).

    Relies on `KerasTensor._keras_history.operation`. Needed to name the
    tasks of a functional net with list outputs after their layers. A
    `KerasTensor` made by a layer call without it raises."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    touchpoint = "keras.KerasTensor._keras_history.operation"
    return _attribute(history, "operation", touchpoint, "the layer that made it")


# ------------------------------------------------------------- trainers
def compile_config(model: keras.Model) -> dict[str, Any]:
    """The mutable dict of `compile` arguments a compiled `model` saves
    (`get_compile_config`) and `compile_from_config` gets back on load.

    Relies on `Trainer._compile_config.config`. Needed to save the
    per-task losses and loss weights `MultiTaskModel.compile` takes
    (Keras' own `compile` gets `loss=None`)."""
    if not getattr(model, "compiled", False):
        raise ValueError(f"The model {model.name!r} is not compiled.")
    why = "the compile arguments saved with a model"
    config = _attribute(model, "_compile_config", "keras.Model._compile_config", why)
    return _attribute(config, "config", "keras.Model._compile_config.config", why)


def set_loss_tracker(model: keras.Model, tracker: keras.metrics.Metric) -> None:
    """Makes `tracker` the metric `model` logs as `"loss"` (first in
    `model.metrics`), untracked as Keras' own is.

    Relies on `Trainer._loss_tracker`, which `compile` sets and `metrics`
    lists first. Needed so the logged loss is NaN, not 0, for an epoch of
    skipped steps (`MultiTaskModel.compile`)."""
    why = "the metric a model logs as its loss"
    _attribute(model, "_loss_tracker", "keras.Model._loss_tracker", why)
    # `object.__setattr__`: through Keras' `__setattr__` it would be
    # tracked, and then listed twice in `model.metrics`.
    object.__setattr__(model, "_loss_tracker", tracker)


def model_distribute_strategy(model: keras.Model) -> Any | None:
    """The `tf.distribute` strategy `model` was created under, or None
    (none, or not the TensorFlow backend).

    Relies on the TensorFlow trainer's `_distribute_strategy` (the public
    `distribute_strategy` returns the default strategy instead of None).
    Needed to tell a model built in a strategy's scope apart. On another
    backend there is none (deliberately None)."""
    if keras.backend.backend() != "tensorflow":
        return None
    return _attribute(
        model,
        "_distribute_strategy",
        "the TensorFlow trainer's Model._distribute_strategy",
        "the tf.distribute strategy a model was created under",
    )


def requested_jit_compile(model: keras.Model) -> Any:
    """`model`'s `jit_compile` as `compile` left it (`True`, `False`, or
    None before it is resolved), without resolving `"auto"`.

    Relies on `Trainer._jit_compile` (the public `jit_compile` property
    resolves an unset value). Needed to turn off an explicit
    `jit_compile=True` where XLA is known to fail; turning it off goes
    through the public setter (`model.jit_compile = False`)."""
    why = "the jit_compile setting a model was compiled with"
    return _attribute(model, "_jit_compile", "keras.Model._jit_compile", why)


def metrics_list_base() -> type:
    """Keras' `MetricsList`, the metric container whose members Keras'
    monitoring callbacks (`EarlyStopping`, `ModelCheckpoint`, ...) search
    for a metric's direction in mode `"auto"`.

    Relies on `keras.src.trainers.compile_utils.MetricsList`. Needed for
    the per-task trackers (`<task>_loss`) to be found by those callbacks."""
    return _private_import(
        "keras.src.trainers.compile_utils",
        "MetricsList",
        "the metric list Keras' callbacks search in mode 'auto'",
    )


METRIC_DIRECTIONS = ("up", "down")


def set_metric_direction(metric: keras.metrics.Metric, direction: str) -> None:
    """Tells Keras' monitoring callbacks in mode `"auto"` whether `metric`
    improves `"up"` or `"down"`.

    Relies on `Metric._direction`, which those callbacks read from the
    members of a `MetricsList` (see `metrics_list_base`)."""
    if direction not in METRIC_DIRECTIONS:
        raise ValueError(
            f"direction must be one of {METRIC_DIRECTIONS}; got {direction!r}."
        )
    metric._direction = direction


def _base_hook(owner: type, model: keras.Model, name: str, why: str) -> Any:
    """The method `name` of `model`'s classes after `owner` (what
    `super()` gives inside `owner`), or a loud error if Keras has none."""
    return _attribute(super(owner, model), name, f"keras.Model.{name}", why)


def base_symbolic_build(
    owner: type, model: keras.Model, iterator: Any = None, data_batch: Any = None
) -> Any:
    """Calls Keras' `_symbolic_build(iterator=, data_batch=)` of `model`
    from an override in class `owner` (its `super()` call).

    Relies on `Trainer._symbolic_build`, which every backend's `fit`,
    `evaluate` and `*_on_batch` call to build the model, metrics and
    optimizer before the first step is traced. Overridden to create the
    aggregator's variables there (a JAX step cannot create variables)."""
    hook = _base_hook(
        owner, model, "_symbolic_build", "the build before the first step is traced"
    )
    return hook(iterator=iterator, data_batch=data_batch)


def base_maybe_symbolic_build(
    owner: type, model: keras.Model, iterator: Any = None, data_batch: Any = None
) -> Any:
    """Calls the TensorFlow trainer's `_maybe_symbolic_build(iterator=,
    data_batch=)` of `model` from an override in class `owner`.

    Relies on that hook, which the TensorFlow trainer calls (instead of
    `_symbolic_build`) with a strategy-reduced first batch. Overridden so
    a `MultiWorkerMirroredStrategy` is given one replica's batch (its
    `reduce` rejects nested targets)."""
    hook = _base_hook(
        owner,
        model,
        "_maybe_symbolic_build",
        "the TensorFlow trainer's build from a strategy's first batch",
    )
    return hook(iterator=iterator, data_batch=data_batch)


def base_purge_model_variables(
    owner: type, model: keras.Model, *args: Any, **kwargs: Any
) -> None:
    """Calls the JAX trainer's `_purge_model_variables(...)` of `model`
    from an override in class `owner`.

    Relies on that hook: the JAX trainer detaches every variable's value
    (`_value = None`) while it loops and `jax_state_sync` puts them back.
    Overridden to keep the values first, so an error in the loop does not
    leave the variables empty."""
    hook = _base_hook(
        owner,
        model,
        "_purge_model_variables",
        "the JAX trainer's detaching of variable values during a loop",
    )
    hook(*args, **kwargs)


def jax_trainer_state(model: keras.Model) -> Any | None:
    """The state the JAX trainer's loop holds (the latest variable values,
    which `model.jax_state_sync()` writes back), or None outside a loop.

    Relies on the JAX trainer's `_jax_state`, set while `fit`, `evaluate`
    and `predict` loop. None also when a model never looped (Keras sets
    it only then), which keeps today's behaviour: the values from before
    the loop are restored instead."""
    return getattr(model, "_jax_state", None)


def variable_raw_value(variable: keras.Variable) -> Any:
    """The value a Keras variable holds, None while the JAX trainer has
    detached it (see `base_purge_model_variables`); reading it never
    raises, unlike `variable.value`.

    Relies on `Variable._value`."""
    return _attribute(
        variable, "_value", "keras.Variable._value", "a variable's stored value"
    )


def restore_variable_value(variable: keras.Variable, value: Any) -> None:
    """Puts `value` back into `variable` as its stored value, as the JAX
    trainer's `jax_state_sync` does, without `assign` (which needs a value
    to be present and runs through the variable's scope).

    Relies on `Variable._value`."""
    variable_raw_value(variable)  # fails loudly without `_value`
    variable._value = value


# ------------------------------------------------------------------ JAX
def dce_jaxpr(jaxpr: Any, used_outputs: Sequence[bool]) -> tuple[Any, list[bool]]:
    """Dead-code elimination of a jaxpr: `(pruned_jaxpr, used_inputs)`,
    `used_inputs[i]` whether input `i` is needed for the outputs marked in
    `used_outputs`.

    Relies on JAX's `partial_eval.dce_jaxpr` (private; re-exported by
    `jax.interpreters.partial_eval`). Needed to find the parameters two or
    more task outputs depend on: JAX differentiates an unconnected
    parameter to zeros, so dependence is read from the program."""
    why = "which inputs of a traced program each output depends on"
    try:
        function = _private_import("jax.interpreters.partial_eval", "dce_jaxpr", why)
    except UnsupportedVersionError:
        # Where the public module no longer re-exports it.
        function = _private_import(
            "jax._src.interpreters.partial_eval", "dce_jaxpr", why
        )
    pruned, used_inputs = function(jaxpr, list(used_outputs))
    return pruned, [bool(u) for u in used_inputs]


def is_jax_tracer(value: Any) -> bool:
    """Whether `value` is a JAX tracer (inside `jit`, `grad`, `vmap`...).

    Relies on `jax.core.Tracer` (the `jax.core` module is being made
    private piece by piece). Needed to run an eager aggregator call
    through a cached `jax.jit` only outside a trace."""
    import jax

    tracer = getattr(getattr(jax, "core", None), "Tracer", None)
    if not isinstance(tracer, type):
        raise _unsupported("jax.core.Tracer", "the class of traced JAX values")
    return isinstance(value, tracer)


# ----------------------------------------------------------- TensorFlow
def strategy_supports_no_merge_call() -> bool:
    """Whether the current `tf.distribute` strategy runs an optimizer
    update without `merge_call` (True outside any strategy).

    Relies on `tf.__internal__.distribute.strategy_supports_no_merge_call`,
    as Keras' `LossScaleOptimizer` does. Needed to take a step's
    apply-if-finite `cond` in replica context only where that is
    allowed."""
    import tensorflow as tf

    try:
        function = tf.__internal__.distribute.strategy_supports_no_merge_call
    except AttributeError:
        raise _unsupported(
            "tf.__internal__.distribute.strategy_supports_no_merge_call",
            "whether an update may be applied without merge_call",
        ) from None
    return bool(function())


def mirrored_collective_keys(strategy: Any) -> list[Any]:
    """The collective-key allocators (`CollectiveKeys`) of a local
    `MirroredStrategy`, each once: the strategy's and its cross-device
    ops'. Empty for any other strategy, and, deliberately, for a
    TensorFlow version without them (the keys are then left as they are,
    as before this module).

    Relies on `MirroredExtended._collective_keys`,
    `_cross_device_ops._collective_keys` and `CollectiveKeys.
    _instance_key_table` (a dict). Needed to give each strategy its own
    instance keys: see `_replicas.isolate_collective_keys`."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MirroredStrategy):
        return []
    extended = strategy.extended
    found: dict[int, Any] = {}
    for keys in (
        getattr(extended, "_collective_keys", None),
        getattr(getattr(extended, "_cross_device_ops", None), "_collective_keys", None),
    ):
        if isinstance(getattr(keys, "_instance_key_table", None), dict):
            found[id(keys)] = keys
    return list(found.values())


def advance_collective_instance_keys(keys: Any, start: int) -> None:
    """Makes the next instance key of every group and device of `keys` (a
    `CollectiveKeys` of `mirrored_collective_keys`) `start`, or the
    group's largest next key if that is larger: the same next key on every
    device (replicas trace their collectives in the same order), never an
    earlier one.

    Relies on `CollectiveKeys._lock` and `_instance_key_table`
    (`{group: {device: next key}}`), from which `get_instance_key`
    draws."""
    why = "the next collective instance key of each device"
    lock = _attribute(keys, "_lock", "tf CollectiveKeys._lock", why)
    table = _attribute(
        keys, "_instance_key_table", "tf CollectiveKeys._instance_key_table", why
    )
    with lock:
        for group in table.values():
            following = max([start, *group.values()])
            for device in group:
                group[device] = following


def switch_with_symbolic_inputs(index: Any, branches: list[Callable[[], Any]]) -> Any:
    """`ops.switch(index, branches)`; on TensorFlow in XLA, without the mark
    `_xla_propagate_compile_time_consts` on its `Case` op (relies on
    `Operation._set_attr`). With it XLA's bridge evaluates every input of
    the op in its HLO interpreter: 35 of a 45 s compile for a Gramian of
    rows of a million entries. Our branches take no constant from outside
    (their shapes are Python ints)."""
    if keras.backend.backend() != "tensorflow":
        return ops.switch(index, branches)
    import tensorflow as tf

    graph = tf.compat.v1.get_default_graph()  # eagerly: a graph nothing joins
    before = len(graph.get_operations())
    result = ops.switch(index, branches)
    name = "_xla_propagate_compile_time_consts"
    for op in graph.get_operations()[before:]:
        if op.type in ("Case", "StatelessCase") and name in op.node_def.attr:
            set_attr = _attribute(
                op, "_set_attr", "tf Operation._set_attr", "an XLA Case's inputs"
            )
            set_attr(name, tf.compat.v1.AttrValue(b=False))
    return result


# ---------------------------------------------------------------- torch
def torch_compile_without_donated_buffers() -> Any:
    """A context manager in which `torch.compile` compiles backward
    functions without donated buffers (restored on exit).

    Relies on `torch._functorch.config.donated_buffer` and the config
    module's `patch` (private; the flag is read when AOTAutograd compiles
    a graph, which happens inside the compiled call). Needed for
    `jit_compile=True` on torch: a backward function compiled with donated
    buffers frees the forward's saved tensors on its first run, so it
    refuses `retain_graph=True`, and the multi-task step differentiates
    one forward pass several times (a gradient per task)."""
    try:
        from torch._functorch import config
    except ImportError:
        config = None
    patch = getattr(config, "patch", None)
    if patch is None or not hasattr(config, "donated_buffer"):
        import torch

        raise _unsupported(
            "torch._functorch.config.donated_buffer",
            "compiled backward functions that allow retain_graph=True; torch "
            f"{torch.__version__}",
        )
    return patch(donated_buffer=False)


TORCH_OPTIMIZER_MODULES = "keras.src.backend.torch.optimizers."


def portable_optimizer_config(config: Any) -> Any:
    """`config` (a serialised compile config, or any part of one) with each
    optimizer that Keras serialised under its torch implementation's module
    named by the public class instead (`keras.optimizers.SGD`), so that the
    `.keras` file compiles with that backend's own optimizer when loaded on
    TensorFlow or JAX.

    Relies on Keras' torch backend replacing a built-in optimizer by a
    subclass in `keras.src.backend.torch.optimizers.torch_<name>` (same
    class name) and `serialize_keras_object` recording that module. Needed
    because Keras 3.15 loads such a file on another backend, where torch
    is installed, with the torch optimizer, whose first update fails
    ("expected Tensor as element 0 in argument 0, but got
    ResourceVariable"), stock Keras models included. A config without such
    an optimizer is returned unchanged (deliberately: nothing to port)."""
    if isinstance(config, list):
        return [portable_optimizer_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    ported = {key: portable_optimizer_config(value) for key, value in config.items()}
    module = ported.get("module")
    name = ported.get("class_name")
    if (
        isinstance(module, str)
        and module.startswith(TORCH_OPTIMIZER_MODULES)
        and isinstance(getattr(keras.optimizers, str(name), None), type)
    ):
        ported["module"] = "keras.optimizers"
        ported["registered_name"] = None
    return ported

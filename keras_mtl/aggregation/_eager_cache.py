"""Eager calls of aggregators through compiled functions cached per instance.

The solvers run fixed loops of small ops (hundreds of iterations), which
eagerly cost a Python round trip each (about a second a call). So an eager
call (not inside a `tf.function` or JAX trace) runs through a compiled
function cached per instance and configuration: on JAX a `jax.jit` of
`stateless_call` (the new state is then assigned), on TensorFlow a
`tf.function` (`reduce_retracing=True`: a second D retraces once with an
unknown D). A call that cannot be traced (it converts the Jacobian to
numpy, say) falls back to op by op, for that key from then on. See
`Aggregator` for the contract these calls keep.
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
from keras import ops

from keras_mtl import _compat

# Per-instance compiled functions, kept outside the layer: a function
# attribute would be tracked and exported with the model as a SavedModel.
EAGER_FUNCTIONS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = (
    weakref.WeakKeyDictionary()
)

# Returned by `run_cached` (and the calls below) when the call cannot be
# traced: the caller runs it op by op.
OP_BY_OP = object()


def run_cached(functions: dict[Any, Any], key: Any, args: list[Any]) -> Any:
    """`functions[key](*args)`, or `OP_BY_OP` (from then on, for this key)
    when tracing fails: code that needs eager values (`np.array` of the
    Jacobian, as in a recording subclass under `run_eagerly=True`) keeps
    working op by op, and a genuine error is raised by that op-by-op call.
    Errors of a traced run (`tf.errors.OpError`) are not retried."""
    function = functions[key]
    if function is None:
        return OP_BY_OP
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        runtime_errors: tuple[type[BaseException], ...] = (tf.errors.OpError,)
    else:
        runtime_errors = ()
    try:
        return function(*args)
    except runtime_errors:
        raise
    except Exception:  # noqa: BLE001 - a failed trace; rerun op by op
        functions[key] = None
        return OP_BY_OP


def runs_op_by_op(tensor: Any) -> bool:
    """Whether `tensor` is a concrete tensor of a backend running op by op:
    not symbolic, not inside a trace (`jax.jit`, grad or vmap on JAX,
    `tf.function` on TensorFlow, `torch.compile` on torch)."""
    if isinstance(tensor, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        return not _compat.is_jax_tracer(tensor)
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    import tensorflow as tf

    return tf.executing_eagerly()


def use_eager_function(layer: Any, tensor: Any, training: Any) -> bool:
    """Whether a call of `layer` on `tensor` should go through a cached
    function: it is enabled, `training` is a Python bool, the backend
    compiles (TensorFlow, JAX) and the call runs op by op (inside a trace it
    is compiled anyway)."""
    if not layer.eager_function or not isinstance(training, bool):
        return False
    return keras.backend.backend() in ("jax", "tensorflow") and runs_op_by_op(tensor)


def eager_call(layer: Any, jacobian: Any, training: bool, losses: Any) -> Any:
    """`layer(jacobian, training, losses)` through a cached compiled
    function (same result and state updates as the op-by-op call, without
    the per-op overhead), or `OP_BY_OP`. The compiled function runs the
    layer's `_keras_call` (Keras' `Layer.__call__`)."""
    if keras.backend.backend() == "jax":
        return _jax_eager_call(layer, jacobian, training, losses)
    import tensorflow as tf

    jacobian = tf.cast(tf.convert_to_tensor(jacobian), tf.float32)
    if not layer.built:
        # Variables are created here, eagerly, never inside the trace.
        layer.build(tuple(jacobian.shape))
    functions = EAGER_FUNCTIONS.setdefault(layer, {})
    # The trace bakes in the Python attributes: a changed argument
    # (e.g. `agg.max_norm = 2.0`) must get a new function, not the old
    # graph.
    key = (training, repr(layer.get_config()))
    if key not in functions:
        # A weak reference: the cache must not keep the layer alive.
        ref = weakref.ref(layer)

        # Inside a graph the layer's name scope must be a valid TF name;
        # as a root scope a layer name with a leading underscore (the
        # default name of a private class) is not, and Keras' scope
        # stack is left corrupted by the failure. Nested, it is valid.
        if layer.needs_losses:

            def run(jac: Any, task_losses: Any) -> Any:
                with tf.name_scope("aggregator"):
                    return ref()._keras_call(jac, training, task_losses)

        else:

            def run(jac: Any) -> Any:
                with tf.name_scope("aggregator"):
                    return ref()._keras_call(jac, training, None)

        functions[key] = tf.function(run, reduce_retracing=True, autograph=False)
    args = [jacobian]
    if layer.needs_losses:
        args.append(tf.cast(tf.convert_to_tensor(losses), tf.float32))
    return run_cached(functions, key, args)


def _jax_eager_call(layer: Any, jacobian: Any, training: bool, losses: Any) -> Any:
    """`eager_call` on JAX: `jax.jit` of the layer's `stateless_call`
    (state in, new state out), cached per instance and configuration;
    the new state is then assigned, as a plain call would."""
    import jax

    jacobian = ops.cast(ops.convert_to_tensor(jacobian), "float32")
    if not layer.built:
        layer.build(tuple(jacobian.shape))
    functions = EAGER_FUNCTIONS.setdefault(layer, {})
    key = ("jax", training, repr(layer.get_config()))
    if key not in functions:
        ref = weakref.ref(layer)

        def run(trainable: Any, state: Any, jac: Any, *task_losses: Any) -> Any:
            kwargs = {"losses": task_losses[0]} if task_losses else {}
            return ref().stateless_call(
                trainable, state, jac, training=training, **kwargs
            )

        functions[key] = jax.jit(run)
    args = [
        [v.value for v in layer.trainable_variables],
        [v.value for v in layer.non_trainable_variables],
        jacobian,
    ]
    if layer.needs_losses:
        args.append(ops.cast(ops.convert_to_tensor(losses), "float32"))
    result = run_cached(functions, key, args)
    if result is OP_BY_OP:
        return result
    direction, state = result
    for variable, value in zip(layer.non_trainable_variables, state):
        variable.assign(value)
    return direction


def eager_gramian_weights(layer: Any, gramian: Any) -> Any:
    """`layer.gramian_weights(gramian)` through a cached compiled function
    (op by op when it cannot be traced). Weights that read the state
    (GradVac's targets) use zeros before the layer is built: a new
    function once it is."""
    functions = EAGER_FUNCTIONS.setdefault(layer, {})
    ref = weakref.ref(layer)
    if keras.backend.backend() == "jax":
        import jax

        key = ("jax_gramian_weights", layer.built, repr(layer.get_config()))
        if key not in functions:

            def run(state: Any, g: Any) -> Any:
                # The state as an argument: `jax.jit` would bake the
                # variables' current values into the function.
                mapping = list(zip(ref().non_trainable_variables, state))
                with keras.StatelessScope(state_mapping=mapping):
                    return ref().gramian_weights(g)

            functions[key] = jax.jit(run)
        gramian = ops.cast(ops.convert_to_tensor(gramian), "float32")
        state = [v.value for v in layer.non_trainable_variables]
        result = run_cached(functions, key, [state, gramian])
        return layer.gramian_weights(gramian) if result is OP_BY_OP else result
    import tensorflow as tf

    key = ("gramian_weights", layer.built, repr(layer.get_config()))
    if key not in functions:
        functions[key] = tf.function(
            lambda g: ref().gramian_weights(g),
            reduce_retracing=True,
            autograph=False,
        )
    gramian = tf.cast(tf.convert_to_tensor(gramian), tf.float32)
    result = run_cached(functions, key, [gramian])
    return layer.gramian_weights(gramian) if result is OP_BY_OP else result

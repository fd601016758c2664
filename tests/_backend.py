"""Backend-neutral helpers for the unit tests of the weightings and the
aggregators: the same test runs under `KERAS_BACKEND=tensorflow`,
`KERAS_BACKEND=jax` and `KERAS_BACKEND=torch`.

- `to_numpy(x)`: a numpy array of a tensor or a Keras variable.
- `tensor(value, dtype)`: a backend tensor (`tf.constant` on TensorFlow).
- `dtype_of(x)`: the standardised dtype name (`"float32"`).
- `value_and_gradient(layer, x)`: the outputs of `layer(x)` and the
  gradient of its first output (the objective) by `tf.GradientTape` on
  TensorFlow, `jax.value_and_grad` on JAX.
- `compiled(fn, state=layer)`: `fn` compiled by the backend's compiler,
  `tf.function` on TensorFlow, `jax.jit` on JAX, with the layer's state
  updated after each call as a traced TensorFlow call updates it.
- `stateless_normal` / `stateless_uniform`: the backend's stateless draw
  for a seed pair, i.e. the draw a `keras.random.SeedGenerator` makes when
  its state is that pair.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
TENSORFLOW = BACKEND == "tensorflow"
JAX = BACKEND == "jax"
TORCH = BACKEND == "torch"


def tensorflow_only(reason: str) -> Any:
    """Skips a test on every backend but TensorFlow, with `reason`."""
    return pytest.mark.skipif(not TENSORFLOW, reason=f"TensorFlow only: {reason}")


def not_on_torch(reason: str) -> Any:
    """Skips a test on the torch backend, with `reason`."""
    return pytest.mark.skipif(TORCH, reason=f"Not on torch: {reason}")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array (a copy for a variable) of a tensor, a Keras
    variable or an array-like (`x.numpy()` on TensorFlow)."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def _float64_unavailable() -> bool:
    if not JAX:
        return False
    import jax

    return not jax.config.jax_enable_x64


def tensor(value: Any, dtype: Any = None) -> Any:
    """A backend tensor of `value` (`tf.constant(value, dtype)` on
    TensorFlow). On JAX without 64-bit mode a float64 tensor cannot
    exist: a float64 request gives a float64 numpy array, the float64
    input a JAX user can pass."""
    if dtype is not None:
        dtype = keras.backend.standardize_dtype(dtype)
        if dtype == "float64" and _float64_unavailable():
            return np.asarray(value, np.float64)
    return keras.ops.convert_to_tensor(value, dtype=dtype)


def dtype_of(x: Any) -> str:
    """The standardised dtype name of a tensor or variable ("float32")."""
    return keras.backend.standardize_dtype(x.dtype)


def _layers(state: Any) -> list[Any]:
    if state is None:
        return []
    if isinstance(state, (list, tuple)):
        return list(state)
    return [state]


def _build(layers: list[Any], args: tuple[Any, ...]) -> None:
    """Builds unbuilt layers from the first argument's shape (what a first
    call would do), so that their variables exist before a trace."""
    for layer in layers:
        if not layer.built:
            layer.build(tuple(np.shape(args[0])))


def _variables(layers: list[Any]) -> list[Any]:
    """Every variable of the layers (seed-generator states included), once."""
    seen, out = set(), []
    for layer in layers:
        for variable in layer.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append(variable)
    return out


def value_and_gradient(
    layer: Any, x: Any, variables: Any = (), **kwargs: Any
) -> tuple[Any, Any, list[Any]]:
    """Calls `layer(x, **kwargs)` and differentiates its first output (a
    scalar: the objective of a weighting) with respect to `x` and to each
    of `variables` (trainable variables of `layer`).

    Returns `(outputs, gradient of x, [gradient of each variable])`; the
    layer's state is updated as by a plain call. TensorFlow: a
    `tf.GradientTape` watching `x`. JAX: `jax.value_and_grad` of the call
    in a `keras.StatelessScope` over the layer's variables (as the JAX
    train step does), the new values assigned afterwards. Also works inside
    `compiled(..., state=layer)`.
    """
    variables = list(variables)
    if TENSORFLOW:
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, **kwargs)
        grads = tape.gradient(outputs[0], [x] + [v.value for v in variables])
        return outputs, grads[0], grads[1:]
    if TORCH:
        return _torch_value_and_gradient(layer, x, variables, **kwargs)

    import jax

    x = keras.ops.convert_to_tensor(x)
    _build([layer], (x,))
    wanted = {id(v) for v in variables}
    others = [v for v in _variables([layer]) if id(v) not in wanted]

    def objective(x_value: Any, values: Any, other_values: Any) -> tuple[Any, Any]:
        mapping = list(zip(variables, values)) + list(zip(others, other_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = layer(x_value, **kwargs)
        updates = [scope.get_current_value(v) for v in variables + others]
        return outputs[0], (outputs, updates)

    (_, (outputs, updates)), (grad_x, grad_values) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True
    )(x, [v.value for v in variables], [v.value for v in others])
    for variable, value in zip(variables + others, updates):
        variable.assign(value)
    return outputs, grad_x, list(grad_values)


def _torch_value_and_gradient(
    layer: Any, x: Any, variables: list[Any], **kwargs: Any
) -> tuple[Any, Any, list[Any]]:
    """`value_and_gradient` on torch: `torch.autograd.grad` of the first
    output of an eager call (`None` for what it does not reach, as the
    tape gives)."""
    import torch

    x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = layer(x, **kwargs)
        sources = [x] + [v.value for v in variables]
        wanted = [i for i, s in enumerate(sources) if s.requires_grad]
        grads: list[Any] = [None] * len(sources)
        if outputs[0].requires_grad:
            found = torch.autograd.grad(
                outputs[0], [sources[i] for i in wanted], allow_unused=True
            )
            for i, g in zip(wanted, found):
                grads[i] = g
    # Values, as the tape's: cut from the graph.
    outputs = keras.tree.map_structure(
        lambda t: t.detach() if isinstance(t, torch.Tensor) else t, outputs
    )
    return outputs, grads[0], grads[1:]


def compiled(
    fn: Any,
    state: Any = None,
    jit_compile: Any = None,
    input_shapes: Any = None,
    autograph: bool = True,
) -> Any:
    """`fn` compiled by the backend's compiler.

    TensorFlow: `tf.function(fn, jit_compile=jit_compile, ...)` (XLA with
    `jit_compile=True`; `input_shapes`, a list of float32 shapes with
    `None` for a dynamic size, gives the input signature). JAX: `jax.jit`
    (always XLA; one trace per input shape, `input_shapes` is ignored).
    torch: `fn` itself, eager (Keras runs a torch step eagerly unless
    `jit_compile=True`).

    `state`: the layer (or list of layers) whose variables `fn` reads or
    assigns. On JAX their values go into the compiled function through a
    `keras.StatelessScope` (as in `Layer.stateless_call` and the JAX train
    step) and their new values are assigned after each call: the state
    evolves as under a `tf.function`, an `assign` between calls is seen
    without a retrace and no tracer leaks into a variable. Unbuilt layers
    are built from the first argument's shape at the first call.
    """
    layers = _layers(state)
    if TENSORFLOW:
        import tensorflow as tf

        signature = None
        if input_shapes is not None:
            signature = [tf.TensorSpec(shape, tf.float32) for shape in input_shapes]
        return tf.function(
            fn,
            jit_compile=jit_compile,
            input_signature=signature,
            autograph=autograph,
        )

    if TORCH:
        return fn

    import jax

    cache: dict[str, Any] = {}

    def pure(values: Any, args: Any, kwargs: Any) -> tuple[Any, Any]:
        variables = cache["variables"]
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            out = fn(*args, **kwargs)
        return out, [scope.get_current_value(v) for v in variables]

    def call(*args: Any, **kwargs: Any) -> Any:
        if "jitted" not in cache:
            _build(layers, args)
            cache["variables"] = _variables(layers)
            cache["jitted"] = jax.jit(pure)
        variables = cache["variables"]
        out, new = cache["jitted"]([v.value for v in variables], args, kwargs)
        for variable, value in zip(variables, new):
            variable.assign(value)
        return out

    return call


def stateless_normal(shape: Any, seed: Any) -> np.ndarray:
    """The backend's standard normal float32 draw for the seed pair
    `seed`: what `keras.random.normal(shape, seed=generator)` draws when
    the generator's state is `seed` (`tf.random.stateless_normal` on
    TensorFlow, `jax.random.normal` with the raw key `seed` on JAX)."""
    if TENSORFLOW:
        import tensorflow as tf

        return tf.random.stateless_normal(shape, seed=seed).numpy()
    if TORCH:
        return _torch_draw("normal", shape, seed)
    import jax

    key = jax.numpy.asarray(seed, dtype="uint32")
    return np.asarray(jax.random.normal(key, shape=shape, dtype="float32"))


def stateless_uniform(shape: Any, seed: Any) -> np.ndarray:
    """The backend's uniform [0, 1) float32 draw for the seed pair `seed`
    (see `stateless_normal`)."""
    if TENSORFLOW:
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=seed).numpy()
    if TORCH:
        return _torch_draw("uniform", shape, seed)
    import jax

    key = jax.numpy.asarray(seed, dtype="uint32")
    return np.asarray(jax.random.uniform(key, shape=shape, dtype="float32"))


def _torch_draw(kind: str, shape: Any, seed: Any) -> np.ndarray:
    """Keras' torch draw for the seed pair `seed`: a `torch.Generator`
    seeded with the pair's sum (modulo 2**32), as
    `keras.src.backend.torch.random.torch_seed_generator` seeds it."""
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(np.sum(np.asarray(seed, np.int64))) & 0xFFFFFFFF)
    if kind == "normal":
        draw = torch.normal(0.0, 1.0, size=tuple(shape), generator=generator)
    else:
        draw = torch.rand(size=tuple(shape) or (1,), generator=generator)
        draw = draw.reshape(tuple(shape))
    return draw.numpy()

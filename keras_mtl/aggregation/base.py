"""Base classes of gradient-level methods: aggregators and Gramian weightings."""

from __future__ import annotations

import weakref
from typing import Any

import keras
from keras import ops

from keras_mtl.aggregation._rows import combine_rows

# Per-instance `tf.function`s of eager calls (see `Aggregator.__call__`),
# kept outside the layer: a function attribute would be tracked and
# exported with the model as a SavedModel.
_EAGER_FUNCTIONS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = (
    weakref.WeakKeyDictionary()
)

# Returned by `_run_cached` when the call cannot be traced.
_OP_BY_OP = object()


def _run_cached(functions: dict[Any, Any], key: Any, args: list[Any]) -> Any:
    """`functions[key](*args)`, or `_OP_BY_OP` (from then on, for this key)
    when tracing fails: code that needs eager values (`np.array` of the
    Jacobian, as in a recording subclass under `run_eagerly=True`) keeps
    working op by op, and a genuine error is raised by that op-by-op call.
    Errors of a traced run (`tf.errors.OpError`) are not retried."""
    function = functions[key]
    if function is None:
        return _OP_BY_OP
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
        return _OP_BY_OP


class Aggregator(keras.layers.Layer):
    """Maps the Jacobian of the K task losses, `J` of shape `[K, D]`, to one
    update direction `d` of shape `[D]` (the direction of steepest descent
    is `-d`; `d` plays the role of a gradient).

    ```python
    direction = aggregator(jacobian)   # numpy or tensor, eager or traced
    ```

    All maths is float32 (mixed precision never reaches it) and uses
    `keras.ops` with fixed iteration counts, so every aggregator runs inside
    an XLA-compiled training step. Stateful aggregators create Keras
    variables in `build_state(num_tasks, dim)`; `training=False` must not
    change them.

    **Scale.** Row norms of a Jacobian range over many orders of magnitude
    (1e-30 to 1e30 in the property tests) and a Gramian squares them, which
    overflows float32. So `call` divides `J` by its largest absolute entry
    `s` before `aggregate` and multiplies the result by `s ** scale_degree`:
    `scale_degree = 1` for aggregators that are positively homogeneous
    (`f(cJ) = c f(J)`: most of them), `0` for scale-invariant ones (e.g.
    Nash-MTL), another real number for `f(cJ) = c ** p f(J)` (FairGrad),
    `None` for neither (the result is not rescaled). Subclasses set the
    class attribute accordingly.

    **Losses.** Two hooks serve methods that need the task losses as well
    as their gradients. `task_terms(losses)` maps the K (weighted) task
    losses to the K scalars whose gradients form the rows of `J` (the
    identity by default; DB-MTL takes logarithms). An aggregator with
    `needs_losses = True` (GradNorm) is called as
    `aggregator(jacobian, losses=losses)` with the unweighted task losses
    `[K]` (`MultiTaskModel` passes them) and gets them as the `losses`
    argument of `call`, which hands them to `aggregate(jacobian, training,
    losses)`; calling it without them is an error. Other aggregators
    ignore `losses`.

    **Eager calls.** The solvers run fixed loops of small ops (hundreds of
    iterations), which eagerly cost a Python round trip each (about a
    second a call). So an eager call (not inside a `tf.function` or JAX
    trace) builds the layer eagerly and then runs through a compiled
    function cached per instance: on JAX a `jax.jit` of `stateless_call`,
    on TensorFlow a `tf.function` (`reduce_retracing=True`: a second
    D retraces once with an unknown D); state variables are updated as in
    a plain call. Set `eager_function = False` on an instance (or a class)
    to run op by op; an instance whose call cannot be traced (it converts
    the Jacobian to numpy, say) falls back to op by op by itself. Python
    side effects of `call` then run once per trace, as in any
    `tf.function`.

    Subclasses implement `aggregate(jacobian, training)`.
    """

    scale_degree: int = 1
    needs_losses: bool = False
    eager_function: bool = True

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        self.num_tasks: int | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 2 or input_shape[0] is None:
            raise ValueError(
                f"{type(self).__name__} expects a Jacobian of shape [K, D] with a "
                f"known number of tasks K; got shape {tuple(input_shape)}."
            )
        self.num_tasks = int(input_shape[0])
        if self.num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: the Jacobian has no rows.")
        self.build_state(self.num_tasks, input_shape[1])
        self.built = True

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        """Creates the aggregator's state variables (none by default)."""

    def __call__(
        self, jacobian: Any, training: bool = True, losses: Any = None, **kwargs: Any
    ) -> Any:
        if self.needs_losses and losses is None:
            raise ValueError(
                f"{type(self).__name__} needs the task losses: call it as "
                "`aggregator(jacobian, losses=losses)` with the K unweighted task "
                "losses (MultiTaskModel passes them); got losses=None."
            )
        if not kwargs and self._use_eager_function(jacobian, training):
            result = self._eager_call(jacobian, training, losses)
            if result is not _OP_BY_OP:
                return result
        if not self.needs_losses:
            return super().__call__(jacobian, training=training, **kwargs)
        return super().__call__(jacobian, training=training, losses=losses, **kwargs)

    def _use_eager_function(self, jacobian: Any, training: Any) -> bool:
        if not self.eager_function:
            return False
        if not isinstance(training, bool) or isinstance(jacobian, keras.KerasTensor):
            return False
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            # Not inside a trace (jit, grad, vmap): there it is compiled anyway.
            return not isinstance(jacobian, jax.core.Tracer)
        if backend != "tensorflow":
            return False
        import tensorflow as tf

        return tf.executing_eagerly()

    def _eager_call(self, jacobian: Any, training: bool, losses: Any) -> Any:
        """An eager call through a cached `tf.function` (same result and
        state updates as the op-by-op call, without the per-op overhead);
        on JAX through a cached `jax.jit` of `stateless_call`."""
        if keras.backend.backend() == "jax":
            return self._jax_eager_call(jacobian, training, losses)
        import tensorflow as tf

        jacobian = tf.cast(tf.convert_to_tensor(jacobian), tf.float32)
        if not self.built:
            # Variables are created here, eagerly, never inside the trace.
            self.build(tuple(jacobian.shape))
        functions = _EAGER_FUNCTIONS.setdefault(self, {})
        # The trace bakes in the Python attributes: a changed argument
        # (e.g. `agg.max_norm = 2.0`) must get a new function, not the old
        # graph.
        key = (training, repr(self.get_config()))
        if key not in functions:
            # A weak reference: the cache must not keep the layer alive.
            layer = weakref.ref(self)

            # Inside a graph the layer's name scope must be a valid TF name;
            # as a root scope a layer name with a leading underscore (the
            # default name of a private class) is not, and Keras' scope
            # stack is left corrupted by the failure. Nested, it is valid.
            if self.needs_losses:

                def run(jac: Any, task_losses: Any) -> Any:
                    with tf.name_scope("aggregator"):
                        return super(Aggregator, layer()).__call__(
                            jac, training=training, losses=task_losses
                        )

            else:

                def run(jac: Any) -> Any:
                    with tf.name_scope("aggregator"):
                        return super(Aggregator, layer()).__call__(
                            jac, training=training
                        )

            functions[key] = tf.function(run, reduce_retracing=True, autograph=False)
        args = [jacobian]
        if self.needs_losses:
            args.append(tf.cast(tf.convert_to_tensor(losses), tf.float32))
        return _run_cached(functions, key, args)

    def _jax_eager_call(self, jacobian: Any, training: bool, losses: Any) -> Any:
        """`_eager_call` on JAX: `jax.jit` of the layer's `stateless_call`
        (state in, new state out), cached per instance and configuration;
        the new state is then assigned, as a plain call would."""
        import jax

        jacobian = ops.cast(ops.convert_to_tensor(jacobian), "float32")
        if not self.built:
            self.build(tuple(jacobian.shape))
        functions = _EAGER_FUNCTIONS.setdefault(self, {})
        key = ("jax", training, repr(self.get_config()))
        if key not in functions:
            layer = weakref.ref(self)

            def run(trainable: Any, state: Any, jac: Any, *task_losses: Any) -> Any:
                kwargs = {"losses": task_losses[0]} if task_losses else {}
                return layer().stateless_call(
                    trainable, state, jac, training=training, **kwargs
                )

            functions[key] = jax.jit(run)
        args = [
            [v.value for v in self.trainable_variables],
            [v.value for v in self.non_trainable_variables],
            jacobian,
        ]
        if self.needs_losses:
            args.append(ops.cast(ops.convert_to_tensor(losses), "float32"))
        result = _run_cached(functions, key, args)
        if result is _OP_BY_OP:
            return result
        direction, state = result
        for variable, value in zip(self.non_trainable_variables, state):
            variable.assign(value)
        return direction

    def task_terms(self, losses: Any) -> Any:
        """The K scalars whose gradients are the rows of the Jacobian, from
        the K (loss-level weighted) task losses `[K]`, inside the model's
        gradient tape. The identity by default: it must return `losses`
        itself (the model then skips the re-weighting of the task heads)."""
        return losses

    def call(self, jacobian: Any, training: bool = True, losses: Any = None) -> Any:
        jacobian = ops.cast(jacobian, "float32")
        # Replace non-finite entries so they cannot poison the solvers; a
        # model skips such steps anyway (its loss or gradient check fails).
        jacobian = ops.where(ops.isfinite(jacobian), jacobian, 0.0)
        scale = ops.max(ops.abs(jacobian))
        safe = ops.where(scale > 0.0, scale, 1.0)
        if self.needs_losses:
            direction = self.aggregate(
                jacobian / safe, training=training, losses=ops.cast(losses, "float32")
            )
        else:
            direction = self.aggregate(jacobian / safe, training=training)
        degree = self.scale_degree
        if degree == 1:
            direction = direction * safe
        elif degree not in (0, None):
            direction = direction * ops.power(safe, degree)
        return direction

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        """The direction `[D]` for a float32 Jacobian `[K, D]` whose largest
        absolute entry is 1 (or 0)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `aggregate(jacobian, training)`."
        )

    def compute_output_spec(
        self, jacobian: Any, training: bool = True, losses: Any = None
    ) -> Any:
        return keras.KerasTensor((jacobian.shape[1],), dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)
        return config


class GramianWeights(list):
    """Keras' `Layer.weights` of a Gramian-weighted aggregator (the list of
    its variables, unchanged as a list) that can also be called:
    `aggregator.weights(gramian)` returns the task weights `[K]` of a
    Gramian `[K, K]` (`aggregator.gramian_weights(gramian)`).

    Keras reads `layer.weights` as a list (saving, `get_weights`,
    `count_params`, the model's variable collection), so the name cannot be
    a plain method; a list subclass keeps every list use intact.
    """

    def __init__(self, variables: list[Any], compute: Any) -> None:
        super().__init__(variables)
        self._compute = compute

    def __call__(self, gramian: Any) -> Any:
        return self._compute(gramian)


class GramianWeightedAggregator(Aggregator):
    """An aggregator whose direction is `d = w(G) @ J`, a combination of the
    task gradients with weights `w` that depend on the Gramian
    `G = J @ J.T` (`[K, K]`) only (TorchJD's "weighting ∘ Gramian" split).

    ```python
    weights = aggregator.weights(gramian)  # [K]; same as gramian_weights
    ```

    `aggregator.weights` is still Keras' list of the layer's variables (a
    `GramianWeights` list, callable); `aggregator.gramian_weights(gramian)`
    is the same computation under a name that is not a Keras attribute
    (called eagerly, `weights(gramian)` runs through a cached `tf.function`
    and `gramian_weights(gramian)` op by op).
    Subclasses implement `gramian_weights(gramian)`. `direction_weights`
    turns them into the weights `c` of the direction `d = c @ J` of the
    raw Jacobian (rescaled by `scale_degree`); a subclass whose direction
    is another function of the Gramian (state, clipping, random orders)
    overrides `direction_weights`, never `aggregate`.

    **The Gramian route.** Since `d` needs only `G` and the rows,
    `MultiTaskModel` never forms `J` (`[K, D]`) for these aggregators: it
    sums `G` over the shared variables' per-task gradients, gets `c` from
    `direction_weights(G)` and combines each variable's gradients with it
    (see `uses_gramian`). The same `d` as `aggregator(J)`, up to rounding.
    """

    @property
    def weights(self) -> GramianWeights:
        """The layer's variables (a list, as for any Keras layer), callable
        as `weights(gramian)` for the task weights `[K]`."""
        return GramianWeights(super().weights, self._weights_of)

    def _weights_of(self, gramian: Any) -> Any:
        # Eagerly through a cached `tf.function`, as `Aggregator.__call__`.
        if not self._use_eager_function(gramian, True):
            return self.gramian_weights(gramian)
        # Weights that read the state (GradVac's targets) use zeros before
        # the layer is built: a new function once it is.
        if keras.backend.backend() == "jax":
            import jax

            functions = _EAGER_FUNCTIONS.setdefault(self, {})
            key = ("jax_gramian_weights", self.built, repr(self.get_config()))
            if key not in functions:
                layer = weakref.ref(self)

                def run(state: Any, g: Any) -> Any:
                    # The state as an argument: `jax.jit` would bake the
                    # variables' current values into the function.
                    mapping = list(zip(layer().non_trainable_variables, state))
                    with keras.StatelessScope(state_mapping=mapping):
                        return layer().gramian_weights(g)

                functions[key] = jax.jit(run)
            gramian = ops.cast(ops.convert_to_tensor(gramian), "float32")
            state = [v.value for v in self.non_trainable_variables]
            result = _run_cached(functions, key, [state, gramian])
            return self.gramian_weights(gramian) if result is _OP_BY_OP else result
        import tensorflow as tf

        functions = _EAGER_FUNCTIONS.setdefault(self, {})
        key = ("gramian_weights", self.built, repr(self.get_config()))
        if key not in functions:
            layer = weakref.ref(self)
            functions[key] = tf.function(
                lambda g: layer().gramian_weights(g),
                reduce_retracing=True,
                autograph=False,
            )
        gramian = tf.cast(tf.convert_to_tensor(gramian), tf.float32)
        result = _run_cached(functions, key, [gramian])
        return self.gramian_weights(gramian) if result is _OP_BY_OP else result

    def gramian_weights(self, gramian: Any) -> Any:
        """Task weights `[K]` from a Gramian `[K, K]`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `gramian_weights`."
        )

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        """The weights `c` (`[K]`) of this aggregator's direction
        `d = c @ J` for any Jacobian `J` whose Gramian is `gramian`
        (finite, of any scale).

        With `n` the largest row norm of `J` (`n**2 = max_i G_ii`), the
        weighting sees the normalised Gramian `G / n**2` and
        `c = gramian_weights(G / n**2) * n ** (scale_degree - 1)`, so that
        `d(aJ) = a ** scale_degree d(J)` for every `a > 0`.
        """
        normalized, norm = normalized_gramian(gramian)
        degree = self.scale_degree
        exponent = None if degree is None else degree - 1
        return rescaled(self.gramian_weights(normalized), norm, exponent)

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        gramian = ops.matmul(jacobian, ops.transpose(jacobian))
        return combine_rows(self.direction_weights(gramian, training), jacobian)


def uses_gramian(aggregator: Any) -> bool:
    """Whether `MultiTaskModel` may compute `aggregator`'s direction by
    the Gramian route (`GramianWeightedAggregator`): it is one, needs no
    losses, has a scale degree, and no class in its hierarchy changes
    `aggregate` or `call` below the class that defines its
    `direction_weights` (a subclass that changes how the direction is
    formed from the Jacobian, to record it say, keeps the Jacobian)."""
    if not isinstance(aggregator, GramianWeightedAggregator):
        return False
    if aggregator.needs_losses or aggregator.scale_degree is None:
        return False
    mro = type(aggregator).__mro__

    def owner(name: str) -> type:
        return next(cls for cls in mro if name in vars(cls))

    weights_owner = owner("direction_weights")
    return all(issubclass(weights_owner, owner(name)) for name in ("aggregate", "call"))


def normalized_gramian(gramian: Any) -> tuple[Any, Any]:
    """`G / n**2` and `n`, for `n` the largest row norm of the Jacobian
    (`n**2 = max_i G_ii`; `n = 1` for a zero Gramian)."""
    gramian = ops.cast(gramian, "float32")
    largest = ops.max(ops.diagonal(gramian))
    safe = ops.where(largest > 0.0, largest, 1.0)
    return gramian / safe, ops.sqrt(safe)


def rescaled(weights: Any, norm: Any, exponent: float | None) -> Any:
    """`weights * norm ** exponent` (`weights` for an exponent of 0 or
    `None`, the latter for an aggregator of no scale degree)."""
    if exponent is None or exponent == 0:
        return weights
    if exponent == -1:
        return weights / norm
    return weights * ops.power(norm, exponent)


def gramian(jacobian: Any) -> Any:
    """`J @ J.T` in float32."""
    jacobian = ops.cast(jacobian, "float32")
    return ops.matmul(jacobian, ops.transpose(jacobian))


def project_onto_simplex(v: Any) -> Any:
    """Euclidean projection of `v` (`[K]`) onto the probability simplex,
    by the sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al.
    2008): fixed cost, no iteration, traceable."""
    num = v.shape[0]
    # Shifting by a constant does not change the projection; shifting by the
    # maximum keeps huge inputs from losing the simplex to rounding.
    v = v - ops.max(v)
    u = ops.flip(ops.sort(v), axis=0)
    cumulative = ops.cumsum(u) - 1.0
    index = ops.arange(1, num + 1, dtype="float32")
    condition = u - cumulative / index > 0
    rho = ops.maximum(ops.max(ops.where(condition, index, 0.0)), 1.0)
    theta = ops.take(cumulative, ops.cast(rho, "int32") - 1) / rho
    return ops.maximum(v - theta, 0.0)

"""Base classes of gradient-level methods: aggregators and Gramian weightings."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.aggregation._eager_cache import (
    OP_BY_OP,
    eager_call,
    eager_gramian_weights,
    use_eager_function,
)
from keras_mtl.aggregation._linalg import (
    clean_jacobian,
    gramian,
    max_abs_scaled,
    normalized_gramian,
    project_onto_simplex,
    rescaled,
)
from keras_mtl.aggregation._rows import combine_rows

# Re-exported: the model's step and `keras_mtl.aggregation` import them here.
__all__ = [
    "Aggregator",
    "GramianWeightedAggregator",
    "GramianWeights",
    "gramian",
    "normalized_gramian",
    "project_onto_simplex",
    "rescaled",
    "uses_gramian",
]


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
    change them. One whose state has the Jacobian's width D (so that it
    cannot be built with `dim=None`, nor balance a representation, whose D
    changes with the batch) sets `state_has_jacobian_width = True`.

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
    `tf.function` (the cache is in `_eager_cache.py`).

    Subclasses implement `aggregate(jacobian, training)`.
    """

    scale_degree: int = 1
    needs_losses: bool = False
    state_has_jacobian_width: bool = False
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
        if not kwargs and use_eager_function(self, jacobian, training):
            result = eager_call(self, jacobian, training, losses)
            if result is not OP_BY_OP:
                return result
        return self._keras_call(jacobian, training, losses, **kwargs)

    def _keras_call(
        self, jacobian: Any, training: Any, losses: Any, **kwargs: Any
    ) -> Any:
        """Keras' `Layer.__call__` (build, name scope, `call`), with the
        losses only for an aggregator that needs them."""
        if not self.needs_losses:
            return super().__call__(jacobian, training=training, **kwargs)
        return super().__call__(jacobian, training=training, losses=losses, **kwargs)

    def task_terms(self, losses: Any) -> Any:
        """The K scalars whose gradients are the rows of the Jacobian, from
        the K (loss-level weighted) task losses `[K]`, inside the model's
        gradient tape. The identity by default: it must return `losses`
        itself (the model then skips the re-weighting of the task heads)."""
        return losses

    @property
    def min_tasks(self) -> int:
        """The fewest rows (tasks) the aggregator can combine: 1 unless a
        method needs more (Krum, TrimmedMean). In a training step where
        some tasks have no labelled example, `MultiTaskModel` applies the
        aggregator to the present tasks' rows if there are at least this
        many (see docs/missing_labels.md)."""
        return 1

    def state_task_total(self, variable: Any) -> str | None:
        """How the task entries of `variable`, one of the aggregator's
        state variables, are normalised: `"one"` if they sum to 1 (weights
        on the simplex), `"tasks"` if they sum to the number of tasks,
        None if they are not (the default). In a step where only n tasks
        are present, `MultiTaskModel` gives the aggregator for n rows their
        entries rescaled to the total of n tasks, and rescales its new
        entries back to the share the present tasks had."""
        return None

    def call(self, jacobian: Any, training: bool = True, losses: Any = None) -> Any:
        scaled, safe = max_abs_scaled(clean_jacobian(jacobian))
        if self.needs_losses:
            direction = self.aggregate(
                scaled, training=training, losses=ops.cast(losses, "float32")
            )
        else:
            direction = self.aggregate(scaled, training=training)
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
        # `Layer.get_config` less its dtype entry (an aggregator computes in
        # float32 under any policy), written out: serialising the policy
        # imports TensorFlow whenever it is installed (Keras' serialization
        # checks for tf.TensorShape), ~480 MB more in a torch process that
        # copies its aggregator in `fit` (trainers/present_rows.py).
        return {"name": self.name, "trainable": self.trainable}


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
    The route may rescale the Gramian: `G` is that of `J / unit`. An
    aggregator whose weights or state update are not scale-free sets
    `reads_gramian_scale = True` and is called there as
    `direction_weights(G, training=True, unit=unit)`, returning the
    weights of `J` itself (GradNorm steps by the gradient norms, MoDo by
    `gamma * J @ J.T`); one with `needs_losses` (GradNorm) also gets
    `losses=`, the unweighted task losses `[K]`.
    """

    reads_gramian_scale: bool = False

    @property
    def weights(self) -> GramianWeights:
        """The layer's variables (a list, as for any Keras layer), callable
        as `weights(gramian)` for the task weights `[K]`."""
        return GramianWeights(super().weights, self._weights_of)

    def _weights_of(self, gramian: Any) -> Any:
        # Eagerly through a cached compiled function, as `Aggregator.__call__`.
        if not use_eager_function(self, gramian, True):
            return self.gramian_weights(gramian)
        return eager_gramian_weights(self, gramian)

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
        weights = self.direction_weights(gramian(jacobian), training)
        return combine_rows(weights, jacobian)


def uses_gramian(aggregator: Any) -> bool:
    """Whether `MultiTaskModel` may compute `aggregator`'s direction by
    the Gramian route (`GramianWeightedAggregator`): it is one, has a
    scale degree or reads the Gramian's scale itself
    (`reads_gramian_scale`), and no class in its hierarchy changes
    `aggregate` or `call` below the class that defines its
    `direction_weights` (a subclass that changes how the direction is
    formed from the Jacobian, to record it say, keeps the Jacobian)."""
    if not isinstance(aggregator, GramianWeightedAggregator):
        return False
    if aggregator.scale_degree is None and not aggregator.reads_gramian_scale:
        return False
    mro = type(aggregator).__mro__

    def owner(name: str) -> type:
        return next(cls for cls in mro if name in vars(cls))

    weights_owner = owner("direction_weights")
    return all(issubclass(weights_owner, owner(name)) for name in ("aggregate", "call"))

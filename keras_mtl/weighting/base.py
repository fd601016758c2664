"""The base class of every loss-level weighting method."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class Weighting(keras.layers.Layer):
    """Base class of loss-level multi-task weighting methods.

    A weighting maps the vector of the K unweighted task losses `L` (a 1-D
    float tensor) to a scalar training objective and the vector of effective
    task weights `w_i = d objective / d L_i`:

    ```python
    objective, weights = weighting(losses)
    ```

    It works eagerly and inside a traced or XLA-compiled step. Every piece of
    state a method keeps (learned log-variances, loss histories, epoch
    counters, random seeds) is a Keras variable of the layer, so a model that
    owns the weighting saves, restores, distributes and compiles it like any
    other weight. All arithmetic is done in float32 whatever the global dtype
    policy is (mixed precision never reaches the weighting maths).

    Subclasses implement `combine(losses, training)`; those with state create
    it in `build_state(num_tasks)`. `training=False` (used by `evaluate`)
    must not change any state.

    Args:
        name: Optional layer name.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        # The weighting maths always runs in float32 (mixed-precision safe).
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        self.num_tasks: int | None = None
        self.task_names: list[str] | None = None

    def set_task_names(self, task_names: list[str]) -> None:
        """Tells the weighting which task each loss position belongs to.

        Called by `MultiTaskModel`; it lets methods that take per-task
        arguments (such as `FixedWeighting`) accept dicts keyed by task name
        and lets error messages name tasks.
        """
        self.task_names = list(task_names)

    def task_name(self, index: int) -> str:
        """The name of task `index`, or `"task <index>"` when unnamed."""
        if self.task_names is not None and index < len(self.task_names):
            return self.task_names[index]
        return f"task {index}"

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 1 or input_shape[0] is None:
            raise ValueError(
                f"{type(self).__name__} expects a 1-D tensor of K task losses "
                f"with a known length K; got shape {tuple(input_shape)}."
            )
        num_tasks = int(input_shape[0])
        if num_tasks < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 tasks; got {num_tasks}."
            )
        if self.task_names is not None and len(self.task_names) != num_tasks:
            raise ValueError(
                f"{type(self).__name__} was given {len(self.task_names)} task "
                f"names {self.task_names} but {num_tasks} losses."
            )
        self.num_tasks = num_tasks
        self.build_state(num_tasks)
        self.built = True

    def build_state(self, num_tasks: int) -> None:
        """Creates the method's state variables (none by default)."""

    def call(
        self, losses: Any, training: bool = True, present: Any = None
    ) -> tuple[Any, Any]:
        losses = ops.cast(losses, "float32")
        if losses.shape[0] != self.num_tasks:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_tasks} tasks; "
                f"got {losses.shape[0]} losses."
            )
        if present is None:
            return self.combine(losses, training=training)
        return self.combine_present(losses, present, training=training)

    def combine_present(
        self, losses: Any, present: Any, training: bool = True
    ) -> tuple[Any, Any]:
        """`combine` in a step that observed only the tasks where `present`
        (`[K]` bool) is true: the other entries of `losses` are stand-ins
        (constants), and `MultiTaskModel` keeps those tasks' entries of the
        state (`state_task_axes`). By default `combine`; a method whose
        update of the present tasks' state reads the other tasks' losses
        (FAMO's softmax over every task) overrides it."""
        return self.combine(losses, training=training)

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        """Returns `(objective, weights)` for a float32 `[K]` loss vector."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `combine(losses, training)`."
        )

    def compute_output_spec(
        self, losses: Any, training: bool = True, present: Any = None
    ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
        return (
            keras.KerasTensor((), dtype="float32"),
            keras.KerasTensor(tuple(losses.shape), dtype="float32"),
        )

    def state_task_axes(self, variable: Any) -> tuple[int, ...]:
        """The axes of `variable` (one of this weighting's) indexed by task.

        In a training step where a task has no labelled example,
        `MultiTaskModel` keeps that task's entries along these axes as they
        were (the method did not observe it); the other entries, and
        variables without a task axis (counters), take the step's values.
        By default: axis 0 if its length is K (every axis if all are K),
        else the last axis if its length is K; an epoch history's
        `history` `[depth, K]` uses its last axis. A method whose state
        differs overrides this.
        """
        from keras_mtl._compat import flatten_layers
        from keras_mtl.weighting._epoch_history import EpochLossHistory

        for layer in flatten_layers(self, include_self=False):
            if isinstance(layer, EpochLossHistory):
                if variable is layer.history:
                    return (1,)
                if variable is layer.loss_sum:
                    # The absent task's entry gets its epoch mean so far
                    # (what the model gives the weighting), which keeps the
                    # mean of the steps that observed it.
                    return ()
        return default_task_axes(tuple(variable.shape), self.num_tasks)

    # Epoch hooks, called by `keras_mtl.callbacks.EpochDriver` (added by
    # `MultiTaskModel.fit`). They only write variables: the maths stays in
    # the traced step.
    def on_epoch_begin(self, epoch: int) -> None:
        """Marks the start of training epoch `epoch` (0-based)."""

    def on_train_end(self) -> None:
        """Marks the end of a `fit` call."""

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)  # always float32, set in __init__
        return config


def softmax_weights(scores: Any, temperature: float) -> Any:
    """`K * softmax(scores / T)`: weights that sum to the number of tasks K.

    Computed by Keras' max-shifted softmax, so large scores never overflow.
    """
    num_tasks = scores.shape[0]
    return num_tasks * ops.softmax(scores / temperature)


def weighted_sum(losses: Any, weights: Any) -> Any:
    """`sum_i stop_gradient(w_i) * L_i`: the objective of a weighting whose
    weights are treated as constants in the backward pass."""
    return ops.sum(ops.stop_gradient(weights) * losses)


def default_task_axes(shape: tuple[Any, ...], num_tasks: int | None) -> tuple[int, ...]:
    """The task axes of a state variable of shape `shape` by its lengths:
    axis 0 if it is K long (every axis if all are), else the last one if
    it is, else none."""
    if not shape or num_tasks is None:
        return ()
    if all(d == num_tasks for d in shape):
        return tuple(range(len(shape)))
    if shape[0] == num_tasks:
        return (0,)
    if shape[-1] == num_tasks:
        return (len(shape) - 1,)
    return ()

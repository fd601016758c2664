"""MultiTaskModel: one train_step / test_step for every loss-level weighting."""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import tensorflow as tf
from keras import ops
from keras.src.trainers.compile_utils import MetricsList

from keras_mtl import _replicas
from keras_mtl import aggregation as aggregation_lib
from keras_mtl import gradients as gradients_lib
from keras_mtl import weighting as weighting_lib
from keras_mtl.aggregation.base import rescaled, uses_gramian
from keras_mtl.tasks import TaskLosses, loss_weight_vector, missing_label_values

NONFINITE_MODES = ("raise", "skip")
# Constructor arguments of MultiTaskModel itself (serialised by get_config).
_MODEL_ARGS = (
    "net",
    "inputs",
    "outputs",
    "weighting",
    "aggregator",
    "tasks",
    "on_nonfinite",
    "representation",
    "shared",
    "trunk",
    "heads",
    "missing_label",
)


def _output_task_names(net: keras.Model) -> list[str] | None:
    """Task names from a built functional model's output structure."""
    if isinstance(net, _TrunkAndHeads):
        return _output_task_names(net.heads) if net.heads.built else None
    try:
        outputs = net.output
    except (AttributeError, ValueError):
        return None
    if isinstance(outputs, Mapping):
        return [str(k) for k in outputs]
    if isinstance(outputs, (list, tuple)):
        return list(net.output_names)
    return [str(net.output_names[0])] if getattr(net, "output_names", None) else None


@keras.saving.register_keras_serializable(package="keras_mtl")
class MultiTaskModel(keras.Model):
    """A Keras model that trains several tasks with a balanced objective.

    `MultiTaskModel` wraps any multi-output Keras model (dict outputs, or
    list outputs mapped to task names), or is subclassed in functional
    style. Its `train_step` computes the K unweighted task losses,
    multiplies them by the static `compile(loss_weights=...)` (1 by
    default), passes them to the weighting, and applies the gradient of the
    weighting's objective plus the model's regularisation losses (added
    once, unweighted). `fit`, `evaluate`, `predict`, callbacks,
    `jit_compile`, `save` and `export` work as for any Keras model.

    Logs: `loss` (the objective), `<task>_loss` (unweighted epoch mean),
    `<task>_weight` (the effective weight on that task's gradient, epoch
    mean), the compiled task metrics, and their `val_` versions.

    A non-finite task loss, objective or gradient never reaches the
    weights: the update (optimizer step and weighting state) is skipped.
    With `on_nonfinite="raise"` (default) training then stops with a
    `FloatingPointError` naming the task(s) and the step; with `"skip"` it
    goes on, counting skipped steps in the `skipped_steps` variable.

    Args:
        net: the multi-output model to wrap (omit when passing `inputs` and
            `outputs`, as a functional subclass does).
        weighting: a weighting alias (`"equal"`, `"fixed"`, `"uncertainty"`,
            `"dwa"`, `"adaptive"`, `"bmtl"`, `"rlw"`, `"gls"`, `"famo"`), a
            `keras_mtl.weighting.Weighting` instance or a config dict.
        aggregator: optional gradient-level method (an alias such as
            `"pcgrad"` or `"nash_mtl"`, a `keras_mtl.aggregation.Aggregator`
            or a config): the gradient of the parameters shared by two or
            more tasks is then the aggregator's direction for the Jacobian
            of the (weighted) task losses; see `docs/aggregation/index.md`.
        representation: representation mode (Sener & Koltun, NeurIPS 2018:
            MGDA-UB): the name of the layer of a functional `net` whose
            output `z` is the shared representation. The aggregator then
            balances the task gradients with respect to `z` (a Jacobian
            `[K, batch x size of z]`) and its direction is propagated
            through the trunk in one backward pass. Needs an aggregator
            whose state does not have the Jacobian's width (not `moco`,
            `db_mtl`, `excess_mtl`).
        shared: with an aggregator, the shared parameters given explicitly
            instead of found automatically (the trainable variables that two
            or more task losses depend on): a list of layer names and/or
            variable paths of `net` (`"trunk"` selects every variable under
            that layer or nested model, found at any depth, e.g. a keras-hub
            `"bert_backbone"`, or `"bert_backbone/transformer_layer_0"` by
            its path of names; `"trunk/dense/kernel"` one variable). The
            other parameters get the gradient of the objective.
        trunk, heads: instead of `net`, for any (e.g. subclassed) model:
            the net is `heads(trunk(x))` and, with an aggregator, the
            trunk's output is the representation of representation mode.
        tasks: task names in order; by default the output names of `net`.
            Needed only for a subclassed `net` whose outputs are unknown
            before it is called (else they are taken from the `compile`
            loss dict).
        on_nonfinite: `"raise"` or `"skip"`.
        missing_label: the label value that marks a missing label of an
            (integer) task, e.g. `-1`: one number for every task or a dict
            `{task: value}`. A zero sample weight and a NaN float label
            always mark a missing label. Each task's loss is the mean over
            its labelled examples; a task without one in a batch adds
            nothing, logs NaN and its weighting state is kept. Limitation:
            with an aggregator, such a step uses the plain sum of the
            present tasks' gradients, not the aggregator (which needs all K
            rows). See `docs/missing_labels.md`.
        inputs, outputs: functional-style construction, as `keras.Model`.
        **kwargs: `name`, `trainable`, `dtype` as for `keras.Model`.

    Example:

    ```python
    inputs = keras.Input((64,))
    h = keras.layers.Dense(128, activation="relu")(inputs)
    net = keras.Model(inputs, {
        "digit": keras.layers.Dense(10, activation="softmax", name="digit")(h),
        "parity": keras.layers.Dense(1, activation="sigmoid", name="parity")(h),
    })
    model = keras_mtl.MultiTaskModel(net, weighting="adaptive")
    model.compile(
        optimizer="adam",
        loss={"digit": "sparse_categorical_crossentropy",
              "parity": "binary_crossentropy"},
        metrics={"digit": ["accuracy"], "parity": ["accuracy"]},
    )
    model.fit(x, {"digit": y_digit, "parity": y_parity}, epochs=5)
    ```
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> MultiTaskModel:
        # keras.Model.__new__ drops the constructor arguments, so the
        # auto-config of a subclass (its `get_config`) would hold only the
        # defaults of its own arguments. Record them as keras.Layer does;
        # the model's own arguments are serialised by `get_config`.
        own = {k: v for k, v in kwargs.items() if k not in _MODEL_ARGS}
        return keras.layers.Layer.__new__(cls, *args, **own)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        weighting = kwargs.pop("weighting", "equal")
        aggregator = kwargs.pop("aggregator", None)
        tasks = kwargs.pop("tasks", None)
        on_nonfinite = kwargs.pop("on_nonfinite", "raise")
        representation = kwargs.pop("representation", None)
        shared = kwargs.pop("shared", None)
        trunk = kwargs.pop("trunk", None)
        heads = kwargs.pop("heads", None)
        missing_label = kwargs.pop("missing_label", None)
        net = kwargs.pop("net", None)
        inputs = kwargs.pop("inputs", None)
        outputs = kwargs.pop("outputs", None)
        if len(args) == 2 and inputs is None and outputs is None:
            inputs, outputs = args
        elif len(args) == 1 and net is None and outputs is not None:
            inputs = args[0]
        elif len(args) == 1 and net is None:
            net = args[0]
        elif args:
            raise TypeError(
                "MultiTaskModel takes a model to wrap, MultiTaskModel(net, ...), or "
                f"functional inputs and outputs; got {len(args)} positional arguments."
            )
        super().__init__(**kwargs)
        if trunk is not None or heads is not None:
            net = _net_from_trunk_and_heads(trunk, heads, net, inputs, representation)
        if net is None:
            if inputs is None or outputs is None:
                raise ValueError(
                    "MultiTaskModel needs a model to wrap (`net`) or `inputs` and "
                    "`outputs`."
                )
            if isinstance(outputs, (list, tuple)) and tasks is None:
                tasks = [_tensor_task_name(o, i) for i, o in enumerate(outputs)]
            net = keras.Model(inputs=inputs, outputs=outputs, name=f"{self.name}_net")
        elif isinstance(net, dict):
            net = keras.saving.deserialize_keras_object(net)
        if not isinstance(net, keras.layers.Layer):
            raise TypeError(
                f"MultiTaskModel: `net` must be a Keras model; got {net!r}."
            )
        if on_nonfinite not in NONFINITE_MODES:
            raise ValueError(
                f"on_nonfinite must be one of {NONFINITE_MODES}; got {on_nonfinite!r}."
            )
        self.net = net
        self.on_nonfinite = on_nonfinite
        # Checked against the task names once they are known (`_set_tasks`).
        self.missing_label = missing_label
        self.weighting = weighting_lib.get(weighting)
        self.aggregator = (
            None if aggregator is None else aggregation_lib.get(aggregator)
        )
        self.representation = _check_representation(
            representation, net, self.aggregator
        )
        # Trunk and heads of representation mode: a plain holder, so Keras
        # does not track (and save) the split models next to `net`.
        self._split: _Split | None = None
        if isinstance(net, _TrunkAndHeads):
            self._split = _Split(net.trunk, net.heads)
        elif self.representation is not None:
            self._split = _split_functional(net, self.representation)
        self._shared_variables: list[Any] | None = None
        self.shared = _check_shared(shared, self.aggregator, self.representation)
        self._task_losses: TaskLosses | None = None
        self.task_names: list[str] | None = None
        inferred = (
            _output_task_names(net)
            if net.built or isinstance(net, _TrunkAndHeads)
            else None
        )
        if tasks is not None:
            tasks = [str(t) for t in tasks]
            if inferred is not None and sorted(inferred) != sorted(tasks):
                raise ValueError(
                    f"tasks={tasks} do not match the outputs of the model {inferred}."
                )
        elif inferred is not None:
            tasks = inferred
        if tasks is not None:
            self._set_tasks(tasks)
        if net.built:
            self.built = True

    # ------------------------------------------------------------------ tasks
    def _set_tasks(self, tasks: list[str]) -> None:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"Task names must be unique; got {tasks}.")
        if len(tasks) < 2:
            raise ValueError(
                f"A multi-task model needs at least 2 tasks; got {len(tasks)}: {tasks}."
            )
        self.task_names = list(tasks)
        num_tasks = len(tasks)
        missing_label_values(self.missing_label, self.task_names)
        self.weighting.set_task_names(self.task_names)
        if not self.weighting.built:
            self.weighting.build((num_tasks,))
        elif self.weighting.num_tasks != num_tasks:
            raise ValueError(
                f"The weighting was built for {self.weighting.num_tasks} tasks; the "
                f"model has {num_tasks}: {tasks}."
            )
        # All training state of the model itself lives in variables.
        self.task_loss_weights = self.add_weight(
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
            name="task_loss_weights",
        )
        self.train_steps = self.add_weight(
            shape=(),
            dtype=_counter_dtype(),
            initializer="zeros",
            trainable=False,
            name="train_steps",
        )
        self.skipped_steps = self.add_weight(
            shape=(),
            dtype=_counter_dtype(),
            initializer="zeros",
            trainable=False,
            name="skipped_steps",
        )
        self.last_nonfinite_step = self.add_weight(
            shape=(),
            dtype=_counter_dtype(),
            initializer=keras.initializers.Constant(-1),
            trainable=False,
            name="last_nonfinite_step",
        )
        self.nonfinite_tasks = self.add_weight(
            shape=(num_tasks,),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="nonfinite_tasks",
        )
        trackers = _TaskMean.group(
            [f"{t}_loss" for t in self.task_names]
            + [f"{t}_weight" for t in self.task_names]
        )
        self._task_loss_trackers = trackers[:num_tasks]
        self._task_weight_trackers = trackers[num_tasks:]
        if self.aggregator is not None:
            self._cosine_tracker = keras.metrics.Mean(name="grad_cosine_min")
            if self.representation_mode:
                self._build_representation_aggregator()
            elif self.net.built:
                self._find_shared_variables()

    @property
    def representation_mode(self) -> bool:
        """Whether the aggregator balances gradients of the representation."""
        return self.aggregator is not None and self._split is not None

    def _build_representation_aggregator(self) -> None:
        # D = batch size x representation size changes with the batch: the
        # aggregator is built without it, which state of size D cannot be.
        if self.aggregator.built:
            return
        try:
            self.aggregator.build((len(self.task_names), None))
        except ValueError as error:
            raise ValueError(
                f"The aggregator {type(self.aggregator).__name__} keeps state of "
                "the size of the Jacobian's columns, which in representation mode "
                "is batch size x representation size and changes with the batch: "
                "it cannot be used in representation mode. Use it on the shared "
                "parameters (no `representation`/`trunk`), or choose one of "
                f"{', '.join(REPRESENTATION_AGGREGATORS)}."
            ) from error

    def _find_shared_variables(self) -> list[Any]:
        """The net's trainable variables used by two or more task losses; the
        aggregator is built for their total size. Found once the net is
        built: at construction, when loaded, or (a subclassed net creates its
        variables in its first call) in the first trace of the step. There
        the test is traced only (which gradients are None is known from the
        graph) and the aggregator's variables are created outside it."""
        if self._shared_variables is None and self.shared is not None:
            object.__setattr__(
                self, "_shared_variables", _select_shared(self.net, self.shared)
            )
            dim = sum(math.prod(v.shape) for v in self._shared_variables)
            if not self.aggregator.built:
                with tf.init_scope():
                    self.aggregator.build((len(self.task_names), dim))
        if self._shared_variables is None:
            variables = list(self.net.trainable_variables)

            def find() -> list[int]:
                feed = gradients_lib.zero_batch(self.net)
                try:
                    # Warnings about the synthetic batch (a softmax over a
                    # sequence of length 1) are not the user's to act on.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        return gradients_lib.shared_variable_indices(
                            self.net, variables, self.task_names, feed=feed
                        )
                except Exception as error:
                    # The net's own error, with what was fed and the way out.
                    shapes = keras.tree.map_structure(lambda t: tuple(t.shape), feed)
                    raise ValueError(
                        "The shared parameters are found from a forward pass of "
                        f"a zero batch shaped {shapes} (unknown dimensions set "
                        f"to 1) through the net {self.net.name!r}, which failed: "
                        f"{type(error).__name__}: {error}. Name them with "
                        "`shared=` (layer or nested model names, or variable "
                        "paths) instead."
                    ) from error

            if tf.executing_eagerly():
                indices = find()
            else:
                # In a trace: trace the test in a function of its own, never
                # run, so its forward pass is not part of the training step.
                found: list[list[int]] = []

                def probe() -> int:
                    found.append(find())
                    return 0

                tf.function(probe, autograph=False).get_concrete_function()
                indices = found[0]
            if not indices:
                raise ValueError(
                    "No parameter is shared by two or more tasks: there is nothing "
                    "for the aggregator to balance."
                )
            # Not tracked by Keras: they are the net's variables (tracked, the
            # model would own and save them twice), and this may happen in the
            # first trace, after the model is built.
            object.__setattr__(
                self, "_shared_variables", [variables[i] for i in indices]
            )
            dim = sum(math.prod(v.shape) for v in self._shared_variables)
            if not self.aggregator.built:
                with tf.init_scope():
                    self.aggregator.build((len(self.task_names), dim))
        return self._shared_variables

    @property
    def output_names(self) -> list[str]:
        return list(self.task_names or [])

    def build_from_config(self, config: dict[str, Any]) -> None:
        # Loading: build the net (Keras runs `call` on the saved input
        # shape), then the aggregator for the shared parameters it found,
        # so that its state exists before the weights are loaded.
        super().build_from_config(config)
        if self.aggregator is not None and self.task_names is not None:
            if not self.representation_mode and self.net.built:
                self._find_shared_variables()

    # ------------------------------------------------------------------ call
    def call(
        self,
        inputs: Any,
        training: bool | None = None,
        return_representation: bool = False,
    ) -> Any:
        """The task outputs (a dict); with `return_representation=True` (in
        representation mode) `(outputs, representation)`: the same
        computation, through the trunk and the heads."""
        if not return_representation:
            return self._named_outputs(self.net(inputs, training=training))
        if self._split is None:
            raise ValueError(
                "return_representation=True needs representation mode "
                "(`representation=` or `trunk=` and `heads=`)."
            )
        representation = self._split.trunk(inputs, training=training)
        outputs = self._split.heads(representation, training=training)
        return self._named_outputs(outputs), representation

    def _named_outputs(self, outputs: Any) -> dict[str, Any]:
        if isinstance(outputs, Mapping):
            return dict(outputs)
        if isinstance(outputs, (list, tuple)):
            if self.task_names is None or len(outputs) != len(self.task_names):
                raise ValueError(
                    f"The model returned {len(outputs)} outputs; the tasks are "
                    f"{self.task_names}. Pass `tasks=[...]` naming each output."
                )
            return dict(zip(self.task_names, outputs))
        raise ValueError(
            "A multi-task model must return a dict (or list) of outputs, one per task; "
            f"got a single {type(outputs).__name__}."
        )

    # --------------------------------------------------------------- compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        loss_weights: Any = None,
        metrics: Any = None,
        weighted_metrics: Any = None,
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
        jit_compile: bool | str = "auto",
        auto_scale_loss: bool = True,
    ) -> None:
        """Configures training, as `keras.Model.compile`.

        `loss` takes one loss per task (a dict keyed by task, a list in task
        order, or one loss for every task); `loss_weights` static per-task
        multipliers (dict or list) applied to the losses before the
        weighting sees them. `metrics` / `weighted_metrics` are dicts keyed
        by task, as for any multi-output Keras model.
        """
        if self.task_names is None:
            if not isinstance(loss, Mapping):
                raise ValueError(
                    "The task names of this model are unknown (its outputs are not "
                    "known before it is called): pass `tasks=[...]` to "
                    "MultiTaskModel or a loss dict keyed by task name."
                )
            self._set_tasks([str(t) for t in loss])
        tasks = self.task_names
        self._task_losses = TaskLosses(tasks, loss, self.missing_label)
        self.task_loss_weights.assign(loss_weight_vector(loss_weights, tasks))
        for what, value in (
            ("metrics", metrics),
            ("weighted_metrics", weighted_metrics),
        ):
            if isinstance(value, Mapping):
                unknown = [k for k in value if k not in tasks]
                if unknown:
                    raise ValueError(
                        f"{what} names unknown task(s) {unknown}; the tasks are {tasks}."
                    )
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        # An epoch (or evaluation) whose every step was skipped logs NaN.
        # Untracked, as Keras' own (tracked, it would be listed twice).
        object.__setattr__(
            self, "_loss_tracker", _EpochMean("loss", self._task_loss_trackers[0])
        )
        self._check_strategy_support(getattr(self, "_distribute_strategy", None))
        self._compile_config.config["loss"] = loss
        self._compile_config.config["loss_weights"] = loss_weights
        self.loss = loss

    def compile_from_config(self, config: dict[str, Any]) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------ the steps
    def _objective(
        self, y: Any, y_pred: Any, sample_weight: Any, training: bool
    ) -> tuple[Any, Any, Any]:
        """Unweighted task losses, the total objective and effective weights."""
        if self._task_losses is None:
            raise RuntimeError("Call compile() before training or evaluating.")
        raw, counts, sizes = self._task_losses.masked(y, y_pred, sample_weight)
        # Each task's mean over its labelled examples of the global batch
        # (under tf.distribute the counts are summed over the replicas; the
        # Keras loss divided by the replica's batch size and by R). The
        # scale is exactly 1 when every example is labelled.
        replicas = _replicas.num_replicas()
        total_counts = _replicas.all_reduce_sum(counts)
        present = total_counts > 0.0
        scale = (sizes * float(replicas)) / ops.maximum(total_counts, 1.0)
        losses = _replicas.global_losses(raw * scale)
        # An absent task (no labelled example) gives the weighting a
        # constant: it adds nothing to the gradient, and the state it would
        # change is kept (`_finish_step`). The constant is the task's mean so
        # far this epoch (1 before any), which leaves epoch means unchanged.
        seen = ops.where(present, losses, ops.stop_gradient(self._loss_fill()))
        static = ops.convert_to_tensor(self.task_loss_weights)
        objective, weights = self.weighting(seen * static, training=training)
        total = ops.cast(objective, "float32") + self._regularization()
        # Read by the rest of the step (same trace).
        object.__setattr__(self, "_step_present", present)
        weights = ops.where(present, weights * static, 0.0)
        return losses, total, weights

    def _loss_fill(self) -> Any:
        """Each task's epoch-mean loss so far (1 where there is none)."""
        owner = self._task_loss_trackers[0]._owner()
        num_tasks = len(self.task_names)
        count = owner.count[:num_tasks]
        mean = owner.total[:num_tasks] / ops.maximum(count, 1.0)
        return ops.where(count > 0.0, mean, 1.0)

    def _present(self) -> Any:
        """The current step's per-task presence (a labelled example in the
        global batch), `[K]` bool."""
        present = getattr(self, "_step_present", None)
        if present is None:
            return ops.ones((len(self.task_names),), "bool")
        return present

    def _aggregation_objectives(
        self, losses: Any, weights: Any, target: Any
    ) -> tuple[Any, Any, Any]:
        """What an aggregator step differentiates, on either backend: the
        task terms `w_i L_i` (weights held constant), the same after the
        aggregator's `task_terms` transform (the Jacobian's rows) and the
        heads' objective, `target` with each task's term swapped for its
        transformed one: the task heads follow the transformed losses too
        (DB-MTL trains every parameter on log L_i). `weights` is
        d target / d L, so the swap keeps the weighting's own gradient."""
        terms = ops.stop_gradient(weights) * losses
        transformed = self.aggregator.task_terms(terms)
        heads = target
        if transformed is not terms:
            heads = target + (ops.sum(transformed) - ops.sum(terms))
        return terms, transformed, heads

    def _regularization(self) -> Any:
        """The model's own losses (`model.losses`): added once, unweighted."""
        total = ops.zeros((), "float32")
        for extra in self.losses:
            total = total + ops.cast(ops.sum(extra), "float32")
        return total

    def _update_trackers(
        self,
        losses: Any,
        total: Any,
        weights: Any,
        finite: Any,
        batch_size: Any,
        training: bool = True,
    ) -> None:
        # A skipped (non-finite) step enters no epoch mean, nor does an
        # absent task (no labelled example): its mean is over the steps
        # that observed it (NaN if none did).
        keep = ops.cast(finite, "float32")
        observed = ops.logical_and(finite, self._present())
        zero = ops.zeros_like(losses)
        losses = ops.where(observed, losses, zero)
        weights = ops.where(observed, weights, zero)
        self._loss_tracker.update_state(
            ops.where(finite, total, 0.0),
            sample_weight=keep * ops.cast(batch_size, "float32"),
        )
        counts = ops.cast(observed, "float32")
        # Evaluation logs losses and metrics only: its weights stay empty.
        weight_counts = counts if training else ops.zeros_like(counts)
        counts = ops.concatenate([counts, weight_counts])
        self._task_loss_trackers[0].update_group(
            ops.concatenate(
                [ops.cast(losses, "float32"), ops.cast(weights, "float32")]
            ),
            sample_weight=counts,
        )

    def train_step(self, *args: Any) -> Any:
        """One training step: `train_step(data)` on TensorFlow; on JAX the
        stateless `train_step(state, data) -> (logs, state)` (see
        `keras_mtl._jax_step`). Both compute the same update."""
        if keras.backend.backend() == "jax":
            from keras_mtl import _jax_step

            return _jax_step.train_step(self, *args)
        return self._tf_train_step(*args)

    def _tf_train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = _replicas.num_replicas()
        # The weighting's trainable variables too: an absent task's part of
        # them is kept (see `_finish_step`).
        state = list(self.weighting.variables)
        # A copy, not `convert_to_tensor` (on TensorFlow that returns the
        # variable itself, whose value is read after the update).
        state_before = [ops.copy(v) for v in state]
        representation = None
        with tf.GradientTape(persistent=self.aggregator is not None) as tape:
            if self.representation_mode:
                y_pred, representation = self(
                    x, training=True, return_representation=True
                )
            else:
                y_pred = self(x, training=True)
            losses, total, weights = self._objective(
                y, y_pred, sample_weight, training=True
            )
            target = total
            if replicas > 1:
                # Every replica adds the same regularisation; the optimizer
                # sums the replicas' gradients.
                regularization = self._regularization()
                target = total - regularization * (1.0 - 1.0 / replicas)
            scaled = self.optimizer.scale_loss(target)
            if self.aggregator is not None:
                terms, transformed, heads = self._aggregation_objectives(
                    losses, weights, target
                )
                # Loss-scaled (mixed_float16), so small gradients survive float16.
                scaled_terms = self.optimizer.scale_loss(transformed)
                # Sliced inside the tape: a slice taken after it is not recorded.
                task_terms = [scaled_terms[k] for k in range(len(self.task_names))]
                head_objective = self.optimizer.scale_loss(heads)
                regularization = self._regularization()
        # Read after the forward pass: a subclassed net creates its variables
        # in its first call (inside the first trace of this step).
        variables = self.trainable_variables
        if self.aggregator is None:
            gradients = tape.gradient(scaled, variables)
        else:
            # Built by now; a stateful aggregator's state is rolled back too.
            if not self.representation_mode:
                self._find_shared_variables()
            aggregator_state = list(self.aggregator.non_trainable_variables)
            state = state + aggregator_state
            state_before = state_before + [ops.copy(v) for v in aggregator_state]
            gradients, weights = self._aggregated_gradients(
                tape,
                task_terms,
                head_objective,
                regularization,
                variables,
                weights,
                losses=ops.cast(losses, "float32"),
                representation=representation,
            )
            if transformed is not terms:
                # Effective weight on grad L_i: d term_i / d (w_i L_i) too.
                weights = weights * tape.gradient(transformed, terms)
            del tape
        if replicas > 1:
            gradients = self._replica_share(gradients, variables, replicas)

        def apply_if(finite: Any, gradients: list[Any], variables: list[Any]) -> None:
            _replicas.apply_if(finite, self.optimizer.apply, gradients, variables)

        return _replicas.multi_worker_logs(
            self._finish_step(
                (x, y, y_pred, sample_weight),
                (losses, total, weights),
                gradients,
                variables,
                (state, state_before),
                apply_if,
            )
        )

    def _finish_step(
        self,
        batch: tuple[Any, Any, Any, Any],
        objective: tuple[Any, Any, Any],
        gradients: list[Any],
        variables: list[Any],
        rollback: tuple[list[Any], list[Any]],
        apply_if: Any,
    ) -> dict[str, Any]:
        """The end of a training step, on either backend: checks the losses
        and gradients, applies the update if they are finite
        (`apply_if(finite, gradients, variables)`), rolls the weighting's
        and aggregator's state (`rollback`: variables and their values
        before the step) back where it was not applied, counts skipped
        steps and updates the trackers and metrics."""
        x, y, y_pred, sample_weight = batch
        losses, total, weights = objective
        state, state_before = rollback
        finite_losses = ops.isfinite(losses)
        finite = ops.logical_and(ops.all(finite_losses), ops.isfinite(total))
        # One reduction per variable: a sum is finite iff every entry is (an
        # overflowing sum of finite values is as good a reason to skip).
        grad_sums = [
            ops.sum(ops.cast(g, "float32")) for g in gradients if g is not None
        ]
        grads_finite = ops.convert_to_tensor(True)
        if grad_sums:
            grad_total = ops.sum(ops.stack(grad_sums))
            grads_finite = _replicas.all_true(ops.isfinite(grad_total))
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It checks its (scaled) gradients itself and on overflow lowers
            # the scale and skips: it must see them. The state still rolls
            # back on such a step.
            updated = ops.logical_and(finite, grads_finite)
        else:
            finite = ops.logical_and(finite, grads_finite)
            updated = finite
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]

        if pairs:
            apply_if(finite, [g for g, _ in pairs], [v for _, v in pairs])
        # Roll the weighting's (and aggregator's) state back where the step
        # was not applied, and an absent task's part of it (its rows along
        # the task axes) where the task had no labelled example.
        present = self._present()
        for variable, before in zip(state, state_before):
            keep = ops.logical_and(updated, self._state_mask(variable, present))
            variable.assign(ops.where(keep, variable.value, before))
        step = ops.copy(self.train_steps)
        bad = ops.logical_not(finite)
        self.last_nonfinite_step.assign(
            ops.where(bad, step, self.last_nonfinite_step.value)
        )
        self.nonfinite_tasks.assign(
            ops.where(
                bad,
                ops.cast(ops.logical_not(finite_losses), "int32"),
                self.nonfinite_tasks.value,
            )
        )
        self.skipped_steps.assign_add(ops.cast(bad, self.skipped_steps.dtype))
        self.train_steps.assign_add(1)
        self._update_trackers(losses, total, weights, finite, _batch_size(x))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _state_mask(self, variable: Any, present: Any) -> Any:
        """Where `variable` (weighting or aggregator state) may take this
        step's value: along its task axes, the present tasks (the
        weighting's `state_task_axes`); all of an aggregator's state only
        if every task is present (else the aggregator was not used)."""
        weighting_ids = {id(v) for v in self.weighting.variables}
        if id(variable) not in weighting_ids:
            return ops.all(present)
        mask = ops.convert_to_tensor(True)
        rank = len(variable.shape)
        for axis in self.weighting.state_task_axes(variable):
            shape = [1] * rank
            shape[axis] = -1
            mask = ops.logical_and(mask, ops.reshape(present, shape))
        return mask

    def _replica_share(
        self, gradients: list[Any], variables: list[Any], replicas: int
    ) -> list[Any]:
        """Divides by the number of replicas the gradients that every
        replica computes alike from global-batch quantities (those of the
        weighting's parameters; an aggregator's direction is divided in
        `_aggregated_gradients`): the optimizer sums them over the replicas."""
        net_ids = {id(v) for v in self.net.trainable_variables}
        return [
            g if g is None or id(v) in net_ids else g / replicas
            for g, v in zip(gradients, variables)
        ]

    def _aggregated_gradients(
        self,
        tape: Any,
        task_terms: list[Any],
        total: Any,
        regularization: Any,
        variables: list[Any],
        weights: Any,
        losses: Any = None,
        representation: Any = None,
    ) -> tuple[list[Any], Any]:
        """Gradients with the shared parameters' part replaced by the
        aggregator's direction for the Jacobian of the (loss-level weighted)
        task terms; returns them and the effective task weights. `total` is
        the objective whose gradient the other parameters get; `losses`
        (unweighted, global-batch) go to aggregators that need them.

        The Jacobian is taken with respect to the shared parameters, or in
        representation mode with respect to the `representation` tensor
        (then the trunk's parameters are the shared ones).

        `task_terms` and `total` are loss-scaled by the optimizer (the
        identity but for a `LossScaleOptimizer`): the Jacobian is unscaled
        to float32 before the aggregator sees it, and the direction scaled
        again, so the optimizer checks and unscales it like any gradient.
        Under `tf.distribute` the Jacobian is all-reduced first: the
        aggregator sees the global batch's, on every replica alike."""
        lso = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        replicas = _replicas.num_replicas()
        if representation is not None and (lso or replicas > 1):
            # Raised at compile or fit already (`_check_strategy_support`);
            # kept for a strategy entered only around a custom loop.
            raise NotImplementedError(
                _replicas.representation_unsupported(replicas, lso)
            )
        if representation is None:
            targets = shared = self._find_shared_variables()
        else:
            targets, shared = [representation], self._trunk_variables()
        rows = [tape.gradient(term, targets) for term in task_terms]
        direction, combination, loss_scale = self._aggregate_rows(rows, targets, losses)
        if replicas > 1:
            # The same on every replica; the optimizer sums the replicas.
            direction = [d / replicas for d in direction]
        if representation is None:
            shared_grads = direction
            if self.losses:
                reg_scale = loss_scale / replicas
                for i, g in enumerate(tape.gradient(regularization, shared)):
                    if g is not None:
                        shared_grads[i] = shared_grads[i] + ops.cast(
                            g * reg_scale, g.dtype
                        )
        else:
            shared_grads = self._trunk_gradients(
                tape, representation, direction[0], regularization, shared
            )
        shared_ids = {id(v) for v in shared}
        by_id = {id(v): g for v, g in zip(shared, shared_grads)}
        others = [v for v in variables if id(v) not in shared_ids]
        # Task heads, weighting parameters, regularisation: the objective's gradient.
        other_grads = dict(zip((id(v) for v in others), tape.gradient(total, others)))
        gradients = [
            by_id[id(v)] if id(v) in shared_ids else other_grads[id(v)]
            for v in variables
        ]
        return gradients, weights * combination

    def _aggregate_rows(
        self, rows: list[list[Any]], targets: list[Any], losses: Any
    ) -> tuple[list[Any], Any, Any]:
        """The aggregator's direction for the per-task gradients `rows[k][v]`
        (task k, target v: a shared variable or the representation; `None`
        for zeros; loss-scaled), on either backend: returns it per target
        (shaped like the target, loss-scaled again), each task's effective
        weight in it and the optimizer's loss scale. Under `tf.distribute`
        the gradients are all-reduced first.

        A Gramian-weighted aggregator (`uses_gramian`) takes the Gramian
        route: the Gramian is summed over the targets' blocks, the weights
        `c` come from it and each target's direction is its rows combined
        by `c`; the `[K, D]` Jacobian is never formed and the effective
        weights are `c` itself. Any other aggregator gets the Jacobian
        (`_direction`)."""
        tensorflow = keras.backend.backend() == "tensorflow"
        if not uses_gramian(self.aggregator):
            jacobian = ops.stack([gradients_lib.flatten(r, targets) for r in rows])
            if tensorflow:
                jacobian = _replicas.all_reduce_sum(jacobian)
            direction, combination, loss_scale = self._direction(jacobian, losses)
            return gradients_lib.split_like(direction, targets), combination, loss_scale
        blocks = gradients_lib.task_blocks(rows, targets)
        if tensorflow and _replicas.num_replicas() > 1:
            # One all-reduce per block (stacked), as the Jacobian's one.
            blocks = [
                ops.unstack(_replicas.all_reduce_sum(ops.stack(b)), axis=0)
                for b in blocks
            ]
        loss_scale = ops.cast(self.optimizer.scale_loss(1.0), "float32")
        gramian, divisor = gradients_lib.safe_gramian(blocks)
        # `gramian` is that of J / unit for the unscaled Jacobian J; the
        # weights of J itself follow from the aggregator's scale degree.
        unit = divisor / loss_scale
        combination = rescaled(
            self.aggregator.direction_weights(gramian, training=True),
            unit,
            self.aggregator.scale_degree - 1,
        )
        # A task without a labelled example has a zero row, which is not a
        # gradient: the step then sums the present rows (its state is kept).
        combination = ops.where(
            ops.all(self._present()), combination, ops.ones_like(combination)
        )
        self._cosine_tracker.update_state(gradients_lib.gramian_min_cosine(gramian))
        # Loss-scaled like the rows. On overflow the rows hold inf and so
        # does the direction (c is finite): the optimizer lowers the scale.
        direction = gradients_lib.combine_blocks(combination, blocks, targets)
        return direction, combination, loss_scale

    def _direction(self, jacobian: Any, losses: Any) -> tuple[Any, Any, Any]:
        """The aggregator's direction for the (loss-scaled) Jacobian, on
        either backend: returns it (scaled again), each task's effective
        weight in it, and the optimizer's loss scale (1 but for a
        `LossScaleOptimizer`). Logs the smallest gradient cosine."""
        lso = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        loss_scale = ops.cast(self.optimizer.scale_loss(1.0), "float32")
        if lso:
            jacobian = jacobian / loss_scale
        direction = self.aggregator(jacobian, training=True, losses=losses)
        # A task without a labelled example has a zero row, which is not a
        # gradient (it would enter MGDA's hull): the step then sums the
        # present rows (and keeps the aggregator's state).
        direction = ops.where(
            ops.all(self._present()),
            direction,
            ops.sum(ops.where(ops.isfinite(jacobian), jacobian, 0.0), axis=0),
        )
        # Logged only; an overflowing (loss-scaled) step has no finite Jacobian.
        finite_jacobian = ops.where(ops.isfinite(jacobian), jacobian, 0.0)
        combination, cosine = gradients_lib.combination_weights_and_min_cosine(
            finite_jacobian, direction
        )
        self._cosine_tracker.update_state(cosine)
        if lso:
            # The aggregator zeroes non-finite entries: an overflow must
            # still reach the optimizer, which then lowers the scale.
            overflow = ops.logical_not(ops.all(ops.isfinite(jacobian)))
            direction = ops.where(overflow, float("inf"), direction) * loss_scale
        return direction, combination, loss_scale

    def _trunk_variables(self) -> list[Any]:
        """The trunk's trainable variables (read in the step: a subclassed
        trunk creates them in its first call)."""
        trunk = list(self._split.trunk.trainable_variables)
        if not trunk:
            raise ValueError(
                f"The trunk {self._split.trunk.name!r} has no trainable parameters: "
                "there is nothing for the aggregator to balance in representation "
                "mode."
            )
        trunk_ids = {id(v) for v in trunk}
        both = [
            v.path for v in self._split.heads.trainable_variables if id(v) in trunk_ids
        ]
        if both:
            raise ValueError(
                f"Variables {both} are used both before and after the "
                "representation (in the trunk and in the heads); representation "
                "mode needs them on one side only."
            )
        return trunk

    def _trunk_gradients(
        self,
        tape: Any,
        representation: Any,
        output_gradient: Any,
        regularization: Any,
        trunk: list[Any],
    ) -> list[Any]:
        """One backward pass through the trunk: the aggregated direction,
        shaped like the representation, is its output gradient (chain rule:
        d/dtheta = dz/dtheta^T d), plus the regularisation."""
        targets, output_gradients = [representation], [output_gradient]
        if self.losses:
            targets.append(regularization)
            output_gradients.append(ops.ones_like(regularization))
        return tape.gradient(targets, trunk, output_gradients=output_gradients)

    def test_step(self, *args: Any) -> Any:
        """One evaluation step; on JAX the stateless
        `test_step(state, data) -> (logs, state)`."""
        if keras.backend.backend() == "jax":
            from keras_mtl import _jax_step

            return _jax_step.test_step(self, *args)
        return self._test_body(*args)

    def _test_body(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        losses, total, weights = self._objective(
            y, y_pred, sample_weight, training=False
        )
        finite = ops.logical_and(ops.all(ops.isfinite(losses)), ops.isfinite(total))
        self._update_trackers(
            losses, total, weights, finite, _batch_size(x), training=False
        )
        return _replicas.multi_worker_logs(
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        )

    def _symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> Any:
        result = super()._symbolic_build(iterator=iterator, data_batch=data_batch)
        # A subclassed net has its variables now: build the aggregator for
        # the shared ones before a (JAX) step is traced, which cannot
        # create variables.
        if (
            self.aggregator is not None
            and not self.representation_mode
            and self.task_names is not None
            and self.net.built
        ):
            self._find_shared_variables()
        return result

    def _maybe_symbolic_build(
        self, iterator: Any = None, data_batch: Any = None
    ) -> Any:
        # Keras builds a model created in a strategy's scope from the first
        # batch, reduced as one nested structure, which
        # MultiWorkerMirroredStrategy's `reduce` rejects (a dict of targets
        # is not a tensor). Only shapes and dtypes matter here: take this
        # worker's first replica's part of the batch, leaf by leaf.
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is not None and iterator is not None and data_batch is None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # ------------------------------------------------------- fit and checks
    def fit(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        """`keras.Model.fit`, plus the callbacks the weighting needs.

        `EpochDriver` (epoch-level methods) and, with `on_nonfinite="raise"`,
        `NonFiniteGuard` are added unless already in `callbacks`.
        """
        from keras_mtl.callbacks import EpochDriver, NonFiniteGuard

        callbacks = list(callbacks or [])
        needed = [EpochDriver]
        if self.on_nonfinite == "raise":
            needed.append(NonFiniteGuard)
        if self.on_nonfinite == "skip":
            needed.append(_SkippedEpochWarning)
        self._check_labels(args, kwargs)
        for cls in reversed(needed):
            if not any(isinstance(c, cls) for c in callbacks):
                callbacks.insert(0, cls())
        with self._jax_state_kept():
            return super().fit(*args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        self._check_labels(args, kwargs)
        with self._jax_state_kept(), self._evaluating():
            return super().evaluate(*args, **kwargs)

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Evaluation logs hold losses and metrics only (see
        `get_metrics_result`)."""
        before = getattr(self, "_in_evaluation", False)
        object.__setattr__(self, "_in_evaluation", True)
        try:
            yield
        finally:
            object.__setattr__(self, "_in_evaluation", before)

    def get_metrics_result(self) -> dict[str, Any]:
        logs = super().get_metrics_result()
        if getattr(self, "_in_evaluation", False) and self.task_names:
            # A weight and a gradient cosine belong to a training step.
            dropped = {f"{t}_weight" for t in self.task_names} | {"grad_cosine_min"}
            logs = {k: v for k, v in logs.items() if k not in dropped}
        return logs

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._jax_state_kept():
            return super().predict(*args, **kwargs)

    # fit, evaluate, predict and the *_on_batch methods make their step
    # functions here, before any step is traced.
    def make_train_function(self, force: bool = False) -> Any:
        self._prepare_strategy(fitting=True)
        return super().make_train_function(force=force)

    def make_test_function(self, force: bool = False) -> Any:
        self._prepare_strategy()
        return super().make_test_function(force=force)

    def make_predict_function(self, force: bool = False) -> Any:
        self._prepare_strategy()
        return super().make_predict_function(force=force)

    def _prepare_strategy(self, fitting: bool = False) -> None:
        """Before a step function is made on TensorFlow: the strategy's
        collectives get keys of their own (`_replicas.isolate_collective_keys`)
        and, for training, the checks of `_check_strategy_support` (a model
        built outside the strategy's scope meets it only here)."""
        if keras.backend.backend() != "tensorflow":
            return
        strategy = self.distribute_strategy
        _replicas.isolate_collective_keys(strategy)
        if fitting and getattr(self, "optimizer", None) is not None:
            self._check_strategy_support(strategy)

    def _check_strategy_support(self, strategy: Any) -> None:
        """At compile and at the start of fit: representation mode's limits
        raise here, before a step is traced, and `jit_compile=True` is
        turned off where XLA is known to fail (`_replicas.xla_unsupported`)."""
        replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        if self.representation_mode:
            message = _replicas.representation_unsupported(replicas, loss_scaled)
            if message is not None:
                raise NotImplementedError(message)
        if keras.backend.backend() != "tensorflow":
            return
        if getattr(self, "_jit_compile", None) is True and _replicas.xla_unsupported(
            strategy
        ):
            warnings.warn(
                "jit_compile=True is turned off: under a tf.distribute strategy "
                f"with {replicas} replicas on CPU devices of one process, XLA "
                "fails for any Keras model (measured with TensorFlow 2.21: "
                "'Trying to access resource ... located in device CPU:1 from "
                f"device CPU:0'; this is TensorFlow {tf.__version__}). The "
                'model trains without XLA; pass jit_compile=False (or "auto") '
                "to silence this warning.",
                UserWarning,
                stacklevel=3,
            )
            self._jit_compile = False
            # Step functions made with XLA are made again without it.
            self.train_function = None
            self.test_function = None
            self.predict_function = None

    @contextlib.contextmanager
    def _jax_state_kept(self) -> Iterator[None]:
        """On JAX, Keras detaches the variables' values while it loops
        (`_purge_model_variables`) and writes them back at the end; an
        error in the loop (bad targets, a non-finite step with
        `on_nonfinite="raise"`) would leave every variable empty. Here the
        latest state, or else the values from before the loop, are put
        back before the error propagates."""
        if keras.backend.backend() != "jax":
            yield
            return
        # Not tracked by Keras (a tracked list of variables would be saved).
        object.__setattr__(self, "_values_before_purge", [])
        try:
            yield
        except BaseException:
            if getattr(self, "_jax_state", None):
                self.jax_state_sync()
            for variable, value in self._values_before_purge:
                if variable._value is None:
                    variable._value = value
            raise
        finally:
            object.__setattr__(self, "_values_before_purge", [])

    def _purge_model_variables(self, *args: Any, **kwargs: Any) -> None:
        # JAX trainer only; see `_jax_state_kept`.
        kept = getattr(self, "_values_before_purge", None)
        if kept is not None and not kept:
            variables = self.variables
            if getattr(self, "optimizer", None) is not None:
                variables = variables + list(self.optimizer.variables)
            kept.extend((v, v._value) for v in variables + self.metrics_variables)
        super()._purge_model_variables(*args, **kwargs)

    def train_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        before = int(ops.convert_to_numpy(self.skipped_steps)) if self.task_names else 0
        self._check_labels(args, kwargs)
        self._reset_metrics_for_one_batch()
        logs = super().train_on_batch(*args, **kwargs)
        if self.on_nonfinite == "raise":
            self.check_nonfinite(before)
        return _python_numbers(logs)

    def test_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        self._check_labels(args, kwargs)
        self._reset_metrics_for_one_batch()
        with self._evaluating():
            return _python_numbers(super().test_on_batch(*args, **kwargs))

    def _check_labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """String labels passed as arrays fail in Keras' data adapter,
        before the step, without the task's name: checked here first."""
        y = kwargs.get("y", args[1] if len(args) > 1 else None)
        if y is not None and self._task_losses is not None:
            self._task_losses.check_labels(y)

    def _reset_metrics_for_one_batch(self) -> None:
        # `train_on_batch`/`test_on_batch` log this batch alone: Keras 3.15
        # resets the metrics first, Keras before 3.15 logged running means
        # over every earlier call (and the last fit/evaluate epoch).
        if getattr(self, "compiled", False):
            self.reset_metrics()

    def check_nonfinite(self, skipped_before: int, where: str = "") -> int:
        """Raises `FloatingPointError` if steps were skipped since the count
        `skipped_before`; returns the current count."""
        skipped = int(ops.convert_to_numpy(self.skipped_steps))
        if skipped > skipped_before:
            mask = ops.convert_to_numpy(self.nonfinite_tasks)
            step = int(ops.convert_to_numpy(self.last_nonfinite_step))
            bad = [t for t, m in zip(self.task_names, mask) if m]
            if bad:
                what = "Task loss of " + ", ".join(f"'{t}'" for t in bad) + " is"
            else:
                what = "The objective or its gradient is"
            raise FloatingPointError(
                f"{what} NaN or infinite at training step {step}{where}. The update "
                "was skipped: no weight or weighting state was changed. Pass "
                "on_nonfinite='skip' to MultiTaskModel to skip such steps and go on."
            )
        return skipped

    # ------------------------------------------------------ save and export
    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        auto = getattr(self, "_auto_config", None)
        if type(self) is not MultiTaskModel and auto is not None:
            config.update(auto.config)  # a subclass's own constructor arguments
        config.update(
            {
                "name": self.name,
                "trainable": self.trainable,
                "weighting": weighting_lib.serialize(self.weighting),
                "aggregator": (
                    None
                    if self.aggregator is None
                    else keras.saving.serialize_keras_object(self.aggregator)
                ),
                "tasks": self.task_names,
                "on_nonfinite": self.on_nonfinite,
                "missing_label": self.missing_label,
                "representation": self.representation,
                "shared": self.shared,
            }
        )
        if type(self) is MultiTaskModel:
            config["net"] = keras.saving.serialize_keras_object(self.net)
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: Any = None
    ) -> MultiTaskModel:
        config = dict(config)
        net = config.pop("net", None)
        if net is not None:
            net = keras.saving.deserialize_keras_object(
                net, custom_objects=custom_objects
            )
            return cls(net, **config)
        return cls(**config)

    def export(
        self, filepath: str, format: str = "tf_saved_model", **kwargs: Any
    ) -> Any:
        """Exports the inference graph only (`serve` runs `predict`'s
        computation); the weighting and its training state are left out."""
        return self._inference_model().export(filepath, format=format, **kwargs)

    def _inference_model(self) -> keras.Model:
        net = self.net
        try:
            outputs = net.output
        except (AttributeError, ValueError):
            outputs = None
        if isinstance(outputs, Mapping):
            return net
        if isinstance(outputs, (list, tuple)):
            # `net.input`, not `net.inputs`: keep the input structure, so a
            # single-input net serves a tensor, not a list of one tensor.
            return keras.Model(net.input, dict(zip(self.task_names, outputs)))
        wrapper = _NamedOutputs(net, self.task_names)
        # Export needs a built, called model: call the wrapper symbolically
        # on the input shape the subclassed net recorded at its first call.
        # A trunk-and-heads net trained in representation mode is called
        # through its parts only: the model's own input shape then.
        recorded = getattr(net, "_build_shapes_dict", None) or getattr(
            self, "_build_shapes_dict", None
        )
        shapes = list((recorded or {}).values())
        if len(shapes) == 1 and all(
            isinstance(d, (int, type(None))) for d in tuple(shapes[0])
        ):
            shape = (None, *tuple(shapes[0])[1:])
            wrapper(keras.KerasTensor(shape, dtype=net.input_dtype))
        return wrapper


class _TaskMean(MetricsList):
    """The epoch mean of one per-task value (`<task>_loss`, `<task>_weight`):
    what a `keras.metrics.Mean` of that name logs, bit for bit, but the 2K
    trackers of a model share one pair of variables, held by the first of
    the group: the weighted totals `[2K]` and the counts `[2K + 1]` (one per
    tracker, as a task's values are counted only on the steps that observed
    it, and the number of updates, so a tracker updated only with weight 0
    logs NaN, not 0). Each variable costs a
    fixed time per step (TensorFlow's XLA launch handles every variable
    separately: 4K scalars measured about 8% of a step at K = 8; see
    docs/performance.md, Profile)."""

    # A `MetricsList` of itself only so that Keras' callbacks in mode
    # "auto" find it by name and read its `_direction` (they look inside
    # such lists only): "down" for a `<task>_loss`.
    @property
    def metrics(self) -> list[Any]:
        return [self]

    def __init__(
        self, name: str, index: int = 0, size: int | None = None, owner: Any = None
    ) -> None:
        keras.metrics.Metric.__init__(self, name=name)
        self._index = index
        if name.endswith("_loss"):
            self._direction = "down"
        if owner is None:
            self.total = self.add_variable(
                shape=(size,), initializer="zeros", name="total"
            )
            self.count = self.add_variable(
                shape=(size + 1,), initializer="zeros", name="count"
            )
        # A weak reference, not tracked (and no cycle for object walkers):
        # the group's variables belong to its first tracker only.
        object.__setattr__(
            self, "_owner_ref", None if owner is None else weakref.ref(owner)
        )

    def _owner(self) -> _TaskMean:
        # A method, not a property: Keras' saving walks every attribute
        # and would recurse into the tracker itself.
        return self if self._owner_ref is None else self._owner_ref()

    @classmethod
    def group(cls, names: list[str]) -> list[_TaskMean]:
        """One tracker per name, sharing the first one's variables."""
        first = cls(names[0], 0, size=len(names))
        return [first] + [
            cls(name, i, owner=first) for i, name in enumerate(names) if i > 0
        ]

    def update_group(self, values: Any, sample_weight: Any) -> None:
        """Adds `values` (one per tracker of the group, in order) with
        `sample_weight` (a scalar, or one per tracker), as each tracker's
        `Mean.update_state` would."""
        owner = self._owner()
        size = owner.total.shape[0]
        weight = ops.cast(sample_weight, "float32")
        weight = ops.broadcast_to(weight, (size,))
        owner.total.assign_add(ops.cast(values, "float32") * weight)
        owner.count.assign_add(ops.concatenate([weight, ops.ones((1,), "float32")]))

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "Per-task trackers are updated together, with `update_group`."
        )

    def result(self) -> Any:
        owner = self._owner()
        count = owner.count[self._index]
        mean = ops.divide_no_nan(owner.total[self._index], count)
        # Updated, but never with a positive weight: nothing was observed.
        empty = ops.logical_and(count == 0.0, owner.count[-1] > 0.0)
        return ops.where(empty, float("nan"), mean)

    def reset_state(self) -> None:
        if self._owner_ref is None:
            self.total.assign(ops.zeros(self.total.shape, "float32"))
            self.count.assign(ops.zeros(self.count.shape, "float32"))

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "index": self._index}


class _EpochMean(keras.metrics.Mean):
    """`keras.metrics.Mean` that logs NaN, not 0, when every update had
    weight 0 (an epoch whose every step was skipped). The number of updates
    is the per-task trackers' (`_TaskMean`, updated at every step): no
    variable of its own."""

    def __init__(self, name: str, group: _TaskMean) -> None:
        super().__init__(name=name)
        object.__setattr__(self, "_group_ref", weakref.ref(group))

    def result(self) -> Any:
        group = self._group_ref()._owner()
        empty = ops.logical_and(self.count == 0.0, group.count[-1] > 0.0)
        return ops.where(empty, float("nan"), super().result())


class _SkippedEpochWarning(keras.callbacks.Callback):
    """Warns at the end of an epoch in which every training step was
    skipped (`on_nonfinite="skip"`): its logs are NaN, nothing trained."""

    def _counts(self) -> tuple[int, int]:
        model = self.model
        return (
            int(ops.convert_to_numpy(model.train_steps)),
            int(ops.convert_to_numpy(model.skipped_steps)),
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = self._counts()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        steps, skipped = (a - b for a, b in zip(self._counts(), self._start))
        if steps > 0 and skipped == steps:
            warnings.warn(
                f"Epoch {epoch + 1}: all {skipped} training steps were skipped "
                "(non-finite loss or gradient, on_nonfinite='skip'); nothing "
                "was trained and the epoch's losses are logged as NaN.",
                UserWarning,
                stacklevel=2,
            )


def _python_numbers(logs: Any) -> Any:
    """`train_on_batch`/`test_on_batch` results with Python floats, as Keras
    3.14+ returns them (before 3.14: 0-d numpy arrays)."""

    def number(value: Any) -> Any:
        return float(value) if getattr(value, "shape", None) == () else value

    if isinstance(logs, dict):
        return {key: number(value) for key, value in logs.items()}
    if isinstance(logs, list):
        return [number(value) for value in logs]
    return number(logs)


def _counter_dtype() -> str:
    """The step counters' dtype: int64, but int32 on JAX (64-bit integers
    are off there by default; a saved int64 value loads into either)."""
    return "int32" if keras.backend.backend() == "jax" else "int64"


def _batch_size(x: Any) -> Any:
    """The batch size of the inputs `x` (their first non-None tensor)."""
    return ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


def _check_shared(shared: Any, aggregator: Any, representation: Any) -> Any:
    """Validates the `shared` argument: a list of layer names / variable paths."""
    if shared is None:
        return None
    if aggregator is None:
        raise ValueError(
            "`shared` names the parameters an aggregator balances; pass an "
            "`aggregator` too."
        )
    if representation is not None:
        raise ValueError(
            "`shared` and `representation` exclude each other: representation "
            "mode aggregates the gradients of the trunk's output."
        )
    if isinstance(shared, str):
        shared = [shared]
    shared = list(shared)
    if not shared or not all(isinstance(item, str) and item for item in shared):
        raise ValueError(
            "`shared` must be a non-empty list of layer names or variable paths; "
            f"got {shared!r}."
        )
    return shared


def _select_shared(net: keras.Model, shared: list[str]) -> list[Any]:
    """The trainable variables of `net` selected by `shared` (in the net's
    order): for each item, every variable under the layer or nested model
    of that name (a bare name anywhere in the net, or a path of names such
    as `"backbone/encoder"`), else the variable of that path or every
    variable whose path starts with it."""
    variables = list(net.trainable_variables)
    layers = _named_layers(net)
    selected: set[int] = set()
    for item in shared:
        matches = _layer_matches(net, shared, item, layers, variables)
        if not matches:
            matches = [
                i
                for i, v in enumerate(variables)
                if v.path == item or v.path.startswith(item.rstrip("/") + "/")
            ]
        if not matches:
            candidates = ", ".join(
                repr(path)
                for path, layer in layers
                if layer.trainable_variables
                and ("/" not in path or isinstance(layer, keras.Model))
            )
            example = variables[0].path if variables else "layer/kernel"
            raise ValueError(
                f"shared={shared}: {item!r} is neither a layer of the net with "
                "trainable variables nor a variable path. Layers and nested "
                f"models of the net {net.name!r} with trainable variables: "
                f"{candidates}; a variable path looks like {example!r}."
            )
        selected.update(matches)
    if len(selected) == len(variables):
        raise ValueError(
            f"shared={shared} selects every trainable variable of the net: the "
            "task heads must not be shared."
        )
    return [variables[i] for i in sorted(selected)]


def _named_layers(net: keras.layers.Layer) -> list[tuple[str, Any]]:
    """Every layer under `net`, each once, with its path of names from the
    net (`"backbone/encoder"`), outer layers first. Variable paths do not
    give this nesting: a layer of a functional model is built outside the
    model's name scope, so its variables' paths leave the model's name out
    (`"pooled_dense/kernel"` inside `"bert_backbone"`)."""
    found: list[tuple[str, Any]] = []
    seen = {id(net)}

    def walk(layer: Any, prefix: str) -> None:
        # `_flatten_layers` is Keras' own walk of the tracked sublayers
        # (nested models and the layers a layer holds as attributes).
        children = layer._flatten_layers(include_self=False, recursive=False)
        for child in children:
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = prefix + child.name
            found.append((path, child))
            walk(child, path + "/")

    walk(net, "")
    return found


def _layer_matches(
    net: keras.layers.Layer,
    shared: list[str],
    item: str,
    layers: list[tuple[str, Any]],
    variables: list[Any],
) -> list[int]:
    """Indices in `variables` of the trainable variables under the layer
    that `item` names (its path, or its name anywhere in the net); empty if
    no layer with trainable variables has that name."""
    named = [
        (path, layer)
        for path, layer in layers
        if (path == item or layer.name == item) and layer.trainable_variables
    ]
    if not named:
        return []
    distinct = {
        frozenset(id(v) for v in layer.trainable_variables) for _, layer in named
    }
    if len(distinct) > 1:
        paths = ", ".join(repr(path) for path, _ in named)
        raise ValueError(
            f"shared={shared}: {item!r} names {len(named)} different layers of the "
            f"net {net.name!r}: {paths}. Give the path of the one meant."
        )
    ids = set(next(iter(distinct)))
    return [i for i, v in enumerate(variables) if id(v) in ids]


def _tensor_task_name(tensor: Any, index: int) -> str:
    history = getattr(tensor, "_keras_history", None)
    if history is not None:
        return history.operation.name
    return f"output_{index}"


class _NamedOutputs(keras.Model):
    """Inference-only view of a subclassed net with task-named dict outputs."""

    def __init__(self, net: keras.Model, tasks: list[str]) -> None:
        super().__init__(name=f"{net.name}_inference")
        self.net = net
        self.tasks = list(tasks)

    def call(self, inputs: Any) -> dict[str, Any]:
        outputs = self.net(inputs, training=False)
        if isinstance(outputs, Mapping):
            return dict(outputs)
        return dict(zip(self.tasks, outputs))


# Aliases of the aggregators that can balance the gradients of a
# representation (their state, if any, does not have the Jacobian's width,
# which there is batch size x representation size).
REPRESENTATION_AGGREGATORS = (
    "aligned_mtl",
    "cagrad",
    "config",
    "cr_mogm",
    "dualproj",
    "fairgrad",
    "grad_norm",
    "graddrop",
    "gradnorm",
    "gradvac",
    "imtl_g",
    "krum",
    "mean",
    "mgda",
    "modo",
    "nash_mtl",
    "pcgrad",
    "sdmgrad",
    "sum",
    "trimmed_mean",
    "upgrad",
)


class _Split:
    """The trunk and the heads of representation mode (a plain object)."""

    def __init__(self, trunk: keras.layers.Layer, heads: keras.layers.Layer) -> None:
        self.trunk = trunk
        self.heads = heads


@keras.saving.register_keras_serializable(package="keras_mtl")
class _TrunkAndHeads(keras.Model):
    """`heads(trunk(x))`: the net of `MultiTaskModel(trunk=..., heads=...)`."""

    def __init__(
        self, trunk: keras.layers.Layer, heads: keras.layers.Layer, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.trunk = trunk
        self.heads = heads

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.heads(self.trunk(inputs, training=training), training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trunk": keras.saving.serialize_keras_object(self.trunk),
            "heads": keras.saving.serialize_keras_object(self.heads),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _TrunkAndHeads:
        config = dict(config)
        for key in ("trunk", "heads"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _net_from_trunk_and_heads(
    trunk: Any, heads: Any, net: Any, inputs: Any, representation: Any
) -> _TrunkAndHeads:
    if net is not None or inputs is not None:
        raise ValueError(
            "MultiTaskModel takes either `net` (or `inputs` and `outputs`) or "
            "`trunk` and `heads`, not both."
        )
    if representation is not None:
        raise ValueError(
            "With `trunk` and `heads` the representation is the trunk's output; "
            f"`representation` must be left out (got {representation!r})."
        )
    for name, value in (("trunk", trunk), ("heads", heads)):
        if not isinstance(value, keras.layers.Layer):
            raise TypeError(
                f"MultiTaskModel: `{name}` must be a Keras layer or model (both "
                f"`trunk` and `heads` are needed); got {value!r}."
            )
    # A name of our own: the default one (from the class name) starts with
    # "_", which TensorFlow rejects as a name scope on export.
    name = keras.backend.get_uid("trunk_and_heads")
    return _TrunkAndHeads(trunk, heads, name=f"trunk_and_heads_{name}")


def _check_representation(
    representation: Any, net: keras.layers.Layer, aggregator: Any
) -> str | None:
    if representation is None:
        return None
    if not isinstance(representation, str):
        raise TypeError(
            "`representation` must be the name of a layer of the functional net "
            f"(its output is the shared representation); got {representation!r}."
        )
    if aggregator is None:
        raise ValueError(
            f"representation={representation!r}: representation mode aggregates "
            "per-task gradients of the representation; pass an `aggregator` too."
        )
    return representation


def _split_functional(net: keras.layers.Layer, name: str) -> _Split:
    """Splits a functional net at the output of layer `name` into a trunk
    (inputs -> representation) and heads (representation -> outputs)."""
    try:
        inputs, outputs = net.input, net.output
        # The calls (nodes) of layers that make up this graph.
        graph_nodes = {id(n) for ns in net._nodes_by_depth.values() for n in ns}
    except (AttributeError, ValueError):
        raise ValueError(
            f"representation={name!r} needs a functional net (a graph of layers "
            f"to split at that layer); {net.name!r} is not one. For a subclassed "
            "net pass `trunk=` and `heads=` instead of `net`."
        ) from None
    try:
        layer = net.get_layer(name)
    except ValueError:
        names = [layer.name for layer in net.layers]
        raise ValueError(
            f"representation={name!r}: the net {net.name!r} has no layer of that "
            f"name. Its layers are {names}."
        ) from None
    # A layer can be called several times (and a nested model has a node of
    # its own graph): keep the calls that belong to this net's graph.
    nodes = [node for node in layer._inbound_nodes if id(node) in graph_nodes]
    if len(nodes) != 1:
        raise ValueError(
            f"representation={name!r}: the layer is called {len(nodes)} times in "
            f"the net {net.name!r}; the representation must be the output of a "
            "layer called once."
        )
    tensors = nodes[0].output_tensors
    if len(tensors) != 1:
        raise ValueError(
            f"representation={name!r}: the layer has {len(tensors)} outputs; the "
            "representation must be a single tensor."
        )
    representation = tensors[0]
    trunk = keras.Model(inputs, representation, name=f"{net.name}_trunk")
    try:
        heads = keras.Model(representation, outputs, name=f"{net.name}_heads")
    except ValueError as error:
        raise ValueError(
            f"representation={name!r}: the task outputs of {net.name!r} do not "
            "depend on the net's inputs through that layer's output alone (a skip "
            "connection around it, or a task head that does not read it?); the heads "
            f"may use only the representation. Keras: {error}"
        ) from None
    return _Split(trunk, heads)

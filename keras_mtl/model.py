"""MultiTaskModel: construction, `compile`, `call`, config and export.

The training and evaluation steps come from the backend's trainer
(`keras_mtl.trainers`: `step.py` the algorithm, `tensorflow_trainer.py`,
`jax_trainer.py` and `torch_trainer.py` one per backend), the wrappers of
`evaluate` and the one-batch calls from `trainers/loops.py`; the per-task
trackers from `task_metrics.py`; shared-parameter selection and the
trunk/heads split from `net_structure.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_mtl import _compat
from keras_mtl import aggregation as aggregation_lib
from keras_mtl import weighting as weighting_lib
from keras_mtl.net_structure import (
    _check_representation,
    _check_shared,
    _inference_net,
    _net_from_trunk_and_heads,
    _output_task_names,
    _Split,
    _split_functional,
    _tensor_task_name,
    _TrunkAndHeads,
)
from keras_mtl.task_metrics import (
    _EpochMean,
    _SkippedEpochWarning,
    _TaskMean,
    metrics_for_keras,
)
from keras_mtl.tasks import TaskLosses, loss_weight_vector, missing_label_values
from keras_mtl.trainers import Trainer
from keras_mtl.trainers.loops import MultiTaskLoops

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


@keras.saving.register_keras_serializable(package="keras_mtl")
class MultiTaskModel(MultiTaskLoops, Trainer, keras.Model):
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
            dtype=self._counter_dtype,
            initializer="zeros",
            trainable=False,
            name="train_steps",
        )
        self.skipped_steps = self.add_weight(
            shape=(),
            dtype=self._counter_dtype,
            initializer="zeros",
            trainable=False,
            name="skipped_steps",
        )
        self.last_nonfinite_step = self.add_weight(
            shape=(),
            dtype=self._counter_dtype,
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
        outputs = self._split.heads(
            self._heads_input(representation), training=training
        )
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
        by task, as for any multi-output Keras model. Metrics see a task's
        labelled examples only (missing labels: NaN, `missing_label` values
        or, for `weighted_metrics`, a zero sample weight): `metrics` alone
        are given the missing-label mask as their sample weight (Keras
        gives them none; they keep their names), `weighted_metrics` the
        sample weight times that mask. Given both, `metrics` count every
        example (their missing labels replaced by 0) and a warning says so.
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
        plain, weighted, masks_only = metrics_for_keras(metrics, weighted_metrics)
        object.__setattr__(self, "_metrics_see_masks_only", masks_only)
        object.__setattr__(
            self, "_metrics_compiled", plain is not None or weighted is not None
        )
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=plain,
            weighted_metrics=weighted,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        # An epoch (or evaluation) whose every step was skipped logs NaN.
        # Untracked, as Keras' own (tracked, it would be listed twice).
        objective_mean = _EpochMean("loss", self._task_loss_trackers[0])
        _compat.set_loss_tracker(self, objective_mean)
        object.__setattr__(self, "_objective_mean", objective_mean)
        self._check_strategy_support(_compat.model_distribute_strategy(self))
        saved = _compat.compile_config(self)
        saved["loss"] = loss
        saved["loss_weights"] = loss_weights
        saved["metrics"] = metrics
        saved["weighted_metrics"] = weighted_metrics
        self.loss = loss

    def compile_from_config(self, config: dict[str, Any]) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

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
        return super().fit(*args, callbacks=callbacks, **kwargs)

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
        auto = _compat.auto_config(self)
        if type(self) is not MultiTaskModel and auto is not None:
            config.update(auto)  # a subclass's own constructor arguments
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
        computation); the weighting and its training state are left out.

        On torch, Keras 3.15 writes no SavedModel (torch 2.13's
        `torch.export` rejects the shapes Keras gives it, for any model):
        export `format="onnx"` there, or load the `.keras` file on
        TensorFlow and export that (docs/backends.md)."""
        inference = self._inference_model()
        if keras.backend.backend() != "torch" or format != "tf_saved_model":
            return inference.export(filepath, format=format, **kwargs)
        try:
            return inference.export(filepath, format=format, **kwargs)
        except Exception as error:
            raise NotImplementedError(
                "Exporting a SavedModel (format='tf_saved_model') from the torch "
                f"backend failed in Keras {keras.version()}: "
                f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]} "
                "Export with format='onnx' on torch, or save the model "
                "(model.save('model.keras')), load it with "
                "KERAS_BACKEND=tensorflow and export it there."
            ) from error

    def _inference_model(self) -> keras.Model:
        return _inference_net(self.net, self.task_names, _compat.build_shapes(self))


# Aliases of the aggregators that can balance the gradients of a
# representation (derived from the classes in `keras_mtl.aggregation`).
REPRESENTATION_AGGREGATORS = aggregation_lib.REPRESENTATION_AGGREGATORS

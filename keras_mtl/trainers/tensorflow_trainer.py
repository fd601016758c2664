"""The TensorFlow trainer of `MultiTaskModel`: the training step under a
`tf.GradientTape` and its `tf.distribute` handling.

The algorithm is `MultiTaskStep`'s (`step.py`); this module provides what
it needs from TensorFlow. Per-task gradients are K `tape.gradient` calls on
a persistent tape (faster than `tape.jacobian`, also under XLA). Under a
`tf.distribute` strategy each replica runs the step on its share of the
batch: the task losses and per-task gradients are all-reduced before the
weighting and the aggregator see them, and a gradient every replica computes
alike is divided by their number (`keras_mtl._replicas`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from keras_mtl import _compat, _replicas
from keras_mtl.trainers.step import MultiTaskStep, StepGradients


class TensorFlowTrainer(MultiTaskStep):
    """`MultiTaskStep` on TensorFlow (the model's base on that backend)."""

    # Step counters; a saved int64 value loads into either backend's.
    _counter_dtype = "int64"

    def train_step(self, data: Any) -> dict[str, Any]:
        """One training step (Keras' TensorFlow signature)."""
        return _replicas.multi_worker_logs(self._train_body(data))

    def test_step(self, data: Any) -> dict[str, Any]:
        """One evaluation step (Keras' TensorFlow signature)."""
        return _replicas.multi_worker_logs(self._test_body(data))

    # ------------------------------------------------ MultiTaskStep's hooks
    def _apply_if_finite(
        self, finite: Any, gradients: list[Any], variables: list[Any]
    ) -> None:
        _replicas.apply_if(finite, self.optimizer.apply, gradients, variables)

    def _num_replicas(self) -> int:
        return _replicas.num_replicas()

    def _all_reduce_sum(self, value: Any) -> Any:
        return _replicas.all_reduce_sum(value)

    def _all_true(self, flag: Any) -> Any:
        return _replicas.all_true(flag)

    def _global_losses(self, local: Any) -> Any:
        return _replicas.global_losses(local)

    def _init_scope(self) -> contextlib.AbstractContextManager[Any]:
        return tf.init_scope()

    def _traced_only(self, fn: Callable[[], Any]) -> Any:
        if tf.executing_eagerly():
            return fn()
        # In a trace: trace `fn` in a function of its own, never run, so its
        # operations are not part of the training step.
        found: list[Any] = []

        def probe() -> int:
            found.append(fn())
            return 0

        tf.function(probe, autograph=False).get_concrete_function()
        return found[0]

    # ------------------------------------------------------------ the step
    def _step_gradients(self, x: Any, y: Any, sample_weight: Any) -> StepGradients:
        """The forward pass under a `GradientTape` and every gradient of the
        step (see `MultiTaskStep`)."""
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
        return StepGradients(
            y_pred, losses, total, weights, gradients, variables, state, state_before
        )

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

    def _maybe_symbolic_build(
        self, iterator: Any = None, data_batch: Any = None
    ) -> Any:
        # Keras builds a model created in a strategy's scope from the first
        # batch, reduced as one nested structure, which
        # MultiWorkerMirroredStrategy's `reduce` rejects (a dict of targets
        # is not a tensor). Only shapes and dtypes matter here: take this
        # worker's first replica's part of the batch, leaf by leaf.
        strategy = _compat.model_distribute_strategy(self)
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
        return _compat.base_maybe_symbolic_build(
            TensorFlowTrainer, self, iterator=iterator, data_batch=data_batch
        )

    def make_train_function(self, force: bool = False) -> Any:
        self._prepare_strategy(fitting=True)
        self._build_optimizer_before_tracing()
        return super().make_train_function(force=force)

    def _build_optimizer_before_tracing(self) -> None:
        """Without a strategy, Keras builds the optimizer in the first trace
        of the step, and a function whose first trace creates variables is
        traced a second time by TensorFlow: the whole step, twice, at the
        start of every `fit`. Its variables are built here instead (the same
        zeros), once every variable of the model exists (a subclassed net
        may create its own in the first call: that model keeps Keras' way)."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or optimizer.built:
            return
        if not all(layer.built for layer in _compat.flatten_layers(self)):
            return
        with self.distribute_strategy.scope():
            optimizer.build(self.trainable_variables)

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
        strategy = self.distribute_strategy
        _replicas.isolate_collective_keys(strategy)
        if fitting and getattr(self, "optimizer", None) is not None:
            self._check_strategy_support(strategy)

    def _check_strategy_support(self, strategy: Any) -> None:
        """As `MultiTaskStep`'s, and `jit_compile=True` is turned off where
        XLA is known to fail (`_replicas.xla_unsupported`)."""
        super()._check_strategy_support(strategy)
        replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        if _compat.requested_jit_compile(self) is True and _replicas.xla_unsupported(
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
            self.jit_compile = False
            # Step functions made with XLA are made again without it.
            self.train_function = None
            self.test_function = None
            self.predict_function = None

"""The training step of `MultiTaskModel`, written once for every backend.

`MultiTaskStep` is the backend-neutral half of the model's trainer, as
`keras/src/trainers/trainer.py` is Keras' own: the objective (task losses
through the weighting), the aggregation of per-task gradient rows (the
Jacobian or the Gramian route; over the present tasks' rows alone in a step
where some task has no labelled example, `_on_present_rows`), the finishing
of a training step (the non-finite check, the update applied only if
finite, the rollback of the weighting's and aggregator's state, the step
counters and trackers) and the evaluation step. One trainer per backend
subclasses it and is chosen once, at import (`keras_mtl.trainers`):
`tensorflow_trainer.TensorFlowTrainer` (a `GradientTape` step,
`tf.distribute`), `jax_trainer.JaxTrainer` (a stateless step under
`jax.vjp`) and `torch_trainer.TorchTrainer` (`torch.autograd.grad` on
one forward pass). `present_rows.py` holds the aggregator built for fewer
rows and the functions that run it, for steps where some task has no
labelled example.

What a backend trainer provides (the methods below that raise
`NotImplementedError`; the same names on every backend):

- `train_step` / `test_step` in Keras' signature for the backend, running
  `_train_body(data)` / `_test_body(data)`;
- `_step_gradients(x, y, sample_weight) -> StepGradients`: the forward pass
  and the gradient of every trainable variable. Without an aggregator that
  is the objective's gradient. With one, the backend takes the per-task
  gradients of the task terms (`_aggregation_objectives`) with respect to
  the given targets (the shared variables, `_find_shared_variables`, or in
  representation mode the trunk's output), passes them to `_aggregate_rows`
  for the direction and gives every other variable the gradient of the
  heads' objective. Each trainer names that part `_aggregated_gradients`;
- `_apply_if_finite(finite, gradients, variables)`: the optimizer's update,
  applied only where `finite` is true, as part of the compiled step;
- replica reduction: `_num_replicas()`, `_all_reduce_sum(value)`,
  `_all_true(flag)`, `_global_losses(losses)` (the identity with one
  replica);
- state handling: `_init_scope()` (where variables may be created while a
  step is traced), `_traced_only(fn)` (runs `fn` for its Python result
  without adding its operations to a step being traced), and
  `_counter_dtype`, the dtype of the step counters.

One hook has a default: `_heads_input(representation)`, the trunk's output
as the heads take it in representation mode (itself; torch passes it
across a graph break under `torch.compile`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
from keras import ops

from keras_mtl import _compat, _replicas, net_structure
from keras_mtl import gradients as gradients_lib
from keras_mtl.aggregation._rows import sum_rows
from keras_mtl.aggregation.base import rescaled, uses_gramian
from keras_mtl.trainers import present_rows


class StepGradients(NamedTuple):
    """What a backend's `_step_gradients` returns to `_finish_step`."""

    y_pred: Any
    losses: Any  # [K] unweighted task losses (global batch)
    total: Any  # the objective, regularisation included
    weights: Any  # [K] effective weight on each task's gradient
    gradients: list[Any]
    variables: list[Any]
    state: list[Any]  # weighting (and aggregator) state, rolled back if skipped
    state_before: list[Any]  # their values before the step


class MultiTaskStep:
    """The backend-neutral training and evaluation step of `MultiTaskModel`
    (a mixin of the model's trainer; see the module docstring for what a
    backend trainer provides)."""

    _counter_dtype: str

    # ------------------------------------------ provided by a backend trainer
    def _step_gradients(self, x: Any, y: Any, sample_weight: Any) -> StepGradients:
        raise NotImplementedError

    def _apply_if_finite(
        self, finite: Any, gradients: list[Any], variables: list[Any]
    ) -> None:
        raise NotImplementedError

    def _num_replicas(self) -> int:
        raise NotImplementedError

    def _all_reduce_sum(self, value: Any) -> Any:
        raise NotImplementedError

    def _all_true(self, flag: Any) -> Any:
        raise NotImplementedError

    def _global_losses(self, local: Any) -> Any:
        raise NotImplementedError

    def _init_scope(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _traced_only(self, fn: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _heads_input(self, representation: Any) -> Any:
        return representation

    # ------------------------------------------------------------ the steps
    def _train_body(self, data: Any) -> dict[str, Any]:
        """One training step, inside the backend's `train_step`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = self._step_gradients(x, y, sample_weight)
        return self._finish_step(x, y, sample_weight, step)

    def _find_shared_variables(self) -> list[Any]:
        """The net's trainable variables used by two or more task losses; the
        aggregator is built for their total size. Found once the net is
        built: at construction, when loaded, or (a subclassed net creates its
        variables in its first call) in the first trace of the step. There
        the test is traced only (which gradients are None is known from the
        graph) and the aggregator's variables are created outside it."""
        if self._shared_variables is not None:
            return self._shared_variables
        if self.shared is not None:
            shared = net_structure._select_shared(self.net, self.shared)
        else:
            variables = list(self.net.trainable_variables)
            indices = self._traced_only(
                lambda: net_structure._shared_variable_indices(
                    self.net, variables, self.task_names
                )
            )
            if not indices:
                raise ValueError(
                    "No parameter is shared by two or more tasks: there is nothing "
                    "for the aggregator to balance."
                )
            shared = [variables[i] for i in indices]
        # Not tracked by Keras: they are the net's variables (tracked, the
        # model would own and save them twice), and this may happen in the
        # first trace, after the model is built.
        object.__setattr__(self, "_shared_variables", shared)
        dim = sum(math.prod(v.shape) for v in shared)
        if not self.aggregator.built:
            with self._init_scope():
                self.aggregator.build((len(self.task_names), dim))
        return shared

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
        replicas = self._num_replicas()
        total_counts = self._all_reduce_sum(counts)
        present = total_counts > 0.0
        scale = (sizes * float(replicas)) / ops.maximum(total_counts, 1.0)
        losses = self._global_losses(raw * scale)
        # An absent task (no labelled example) gives the weighting a
        # constant: it adds nothing to the gradient, and the state it would
        # change is kept (`_finish_step`). The constant is the task's mean so
        # far this epoch (1 before any), which leaves epoch means unchanged.
        fill = ops.stop_gradient(self._loss_fill())
        seen = ops.where(present, losses, fill)
        static = ops.convert_to_tensor(self.task_loss_weights)
        may_be_absent = tuple(self._task_losses.may_be_missing(y, sample_weight))
        # Presence only where a task can be absent: otherwise the weighting's
        # graph is the one of a fully labelled model.
        objective, weights = self.weighting(
            seen * static,
            training=training,
            present=present if any(may_be_absent) else None,
        )
        total = ops.cast(objective, "float32") + self._regularization()
        # The logged loss leaves an absent task out: its stand-in's term,
        # its weight times the constant, is taken off. A constant, so the
        # gradient is the objective's; 0 when every task is present.
        stand_ins = ops.where(
            present, 0.0, ops.cast(weights, "float32") * static * fill
        )
        total = total - ops.stop_gradient(ops.sum(stand_ins))
        # Read by the rest of the step (same trace): which tasks are
        # present, and which could be absent in a batch of this structure.
        object.__setattr__(self, "_step_present", present)
        object.__setattr__(self, "_step_may_be_absent", may_be_absent)
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

    def compute_metrics(
        self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None
    ) -> dict[str, Any]:
        """Keras' `compute_metrics`, its compiled metrics given each task's
        labelled examples only (`TaskLosses.metric_inputs`)."""
        if getattr(self, "_metrics_compiled", False) and y is not None:
            y, sample_weight = self._task_losses.metric_inputs(
                y, sample_weight, self._metrics_see_masks_only
            )
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

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
        # that observed it (NaN if none did); nor does the loss of a step
        # without any labelled example.
        present = self._present()
        counted = ops.logical_and(finite, ops.any(present))
        keep = ops.cast(counted, "float32")
        observed = ops.logical_and(finite, present)
        zero = ops.zeros_like(losses)
        losses = ops.where(observed, losses, zero)
        weights = ops.where(observed, weights, zero)
        self._objective_mean.update_state(
            ops.where(counted, total, 0.0),
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

    def _finish_step(
        self, x: Any, y: Any, sample_weight: Any, step: StepGradients
    ) -> dict[str, Any]:
        """The end of a training step, on either backend: checks the losses
        and gradients, applies the update if they are finite
        (`_apply_if_finite`), rolls the weighting's and aggregator's state
        (`step.state`, with its values before the step in
        `step.state_before`) back where it was not applied, counts skipped
        steps and updates the trackers and metrics."""
        y_pred, losses, total, weights = (
            step.y_pred,
            step.losses,
            step.total,
            step.weights,
        )
        gradients, variables = step.gradients, step.variables
        state, state_before = step.state, step.state_before
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
            grads_finite = self._all_true(ops.isfinite(grad_total))
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It checks its (scaled) gradients itself and on overflow lowers
            # the scale and skips: it must see them. The state still rolls
            # back on such a step.
            updated = ops.logical_and(finite, grads_finite)
        else:
            finite = ops.logical_and(finite, grads_finite)
            updated = finite
        # A batch without any labelled example updates nothing (with Adam a
        # zero gradient would still move the parameters).
        present = self._present()
        labelled = ops.any(present)
        updated = ops.logical_and(updated, labelled)
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]

        if pairs:
            self._apply_if_finite(
                ops.logical_and(finite, labelled),
                [g for g, _ in pairs],
                [v for _, v in pairs],
            )
        # Roll the weighting's (and aggregator's) state back where the step
        # was not applied, and an absent task's part of the weighting's
        # (its rows along the task axes) where the task had no labelled
        # example (the aggregator's is kept by `_on_present_rows`).
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
        weighting's `state_task_axes`); all of an aggregator's state (an
        absent task's entries are kept by `_on_present_rows`)."""
        weighting_ids = {id(v) for v in self.weighting.variables}
        if id(variable) not in weighting_ids:
            return ops.convert_to_tensor(True)
        return present_rows.present_mask(
            present, self.weighting.state_task_axes(variable), len(variable.shape)
        )

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
        if not uses_gramian(self.aggregator):
            jacobian = ops.stack([gradients_lib.flatten(r, targets) for r in rows])
            jacobian = self._all_reduce_sum(jacobian)
            direction, combination, loss_scale = self._direction(jacobian, losses)
            return gradients_lib.split_like(direction, targets), combination, loss_scale
        blocks = gradients_lib.task_blocks(rows, targets)
        if self._num_replicas() > 1:
            # One all-reduce per block (stacked), as the Jacobian's one.
            blocks = [
                ops.unstack(self._all_reduce_sum(ops.stack(b)), axis=0) for b in blocks
            ]
        loss_scale = ops.cast(self.optimizer.scale_loss(1.0), "float32")
        gramian, divisor = gradients_lib.safe_gramian(blocks)
        # `gramian` is that of J / unit for the unscaled Jacobian J; the
        # weights of J itself follow from the aggregator's scale degree.
        unit = divisor / loss_scale

        def weights(aggregator: Any, rows: Any = None) -> Any:
            block, task_losses = gramian, losses
            if rows is not None:
                block = ops.take(ops.take(gramian, rows, axis=0), rows, axis=1)
                task_losses = ops.take(losses, rows, axis=0)
            extra, exponent = {}, None
            if aggregator.needs_losses:
                extra["losses"] = task_losses
            if aggregator.reads_gramian_scale:
                # Its weights are those of J itself (GradNorm, MoDo).
                extra["unit"] = unit
            else:
                exponent = aggregator.scale_degree - 1
            return rescaled(
                aggregator.direction_weights(block, training=True, **extra),
                unit,
                exponent,
            )

        # A task without a labelled example has a zero row, which is not a
        # gradient: the weights are then those of the present rows alone.
        combination = self._on_present_rows(
            weights,
            ops.cast(self._present(), "float32"),  # the sum of the present rows
            per_task=True,
        )
        # An absent task's zero row has cosine 0 with every row: the
        # smallest cosine is that of the present rows.
        self._cosine_tracker.update_state(
            gradients_lib.gramian_min_cosine(
                present_rows.absent_as_present(gramian, self._present(), square=True)
            )
        )
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

        def aggregate(aggregator: Any, rows: Any = None) -> Any:
            if rows is None:
                return aggregator(jacobian, training=True, losses=losses)
            return aggregator(
                ops.take(jacobian, rows, axis=0),
                training=True,
                losses=None if losses is None else ops.take(losses, rows, axis=0),
            )

        # Logged only; an overflowing (loss-scaled) step has no finite Jacobian.
        finite_jacobian = ops.where(ops.isfinite(jacobian), jacobian, 0.0)
        # A task without a labelled example has a zero row, which is not a
        # gradient (it would enter MGDA's hull): the direction is then the
        # aggregator's of the present rows alone.
        direction = self._on_present_rows(
            aggregate,
            # The sum of the present rows (the absent ones are zero), as row
            # additions on JAX: XLA's CPU reduction of the short axis took
            # 32 ms at [3, 2.2M], the additions 0.8 ms (docs/performance.md).
            sum_rows(finite_jacobian),
            per_task=False,
        )
        combination, cosine = gradients_lib.combination_weights_and_min_cosine(
            finite_jacobian, direction
        )
        self._cosine_tracker.update_state(
            present_rows.present_min_cosine(finite_jacobian, self._present(), cosine)
        )
        if lso:
            # The aggregator zeroes non-finite entries: an overflow must
            # still reach the optimizer, which then lowers the scale.
            overflow = ops.logical_not(ops.all(ops.isfinite(jacobian)))
            direction = ops.where(overflow, float("inf"), direction) * loss_scale
        return direction, combination, loss_scale

    def _may_be_absent(self) -> tuple[bool, ...]:
        """Per task, whether a batch of this step's structure can leave it
        without a labelled example (`TaskLosses.may_be_missing`)."""
        flags = getattr(self, "_step_may_be_absent", None)
        if flags is None:
            return (True,) * len(self.task_names)
        return flags

    def _row_subsets(self) -> present_rows.RowSubsets:
        """The aggregator built for fewer rows (`present_rows.RowSubsets`),
        made once the aggregator is built: before a step is traced (in
        `_symbolic_build`), or on TensorFlow in its first trace."""
        subsets = getattr(self, "_subsets", None)
        if not present_rows.made_for(subsets, self.aggregator):
            dim = None
            if not self.representation_mode:
                dim = sum(math.prod(v.shape) for v in self._find_shared_variables())
            with self._init_scope():
                subsets = present_rows.RowSubsets(
                    self.aggregator, len(self.task_names), dim
                )
            # Not tracked: stand-ins, never saved.
            object.__setattr__(self, "_subsets", subsets)
        return subsets

    def _on_present_rows(
        self, apply: Callable[[Any, Any], Any], fallback: Any, per_task: bool
    ) -> Any:
        """`apply(aggregator, None)`, the aggregator on all K rows; in a step
        where a task can be absent, the aggregator on the present tasks'
        rows where some are (`present_rows.on_present_rows`, `fallback` the
        sum of the present rows), its new state assigned."""
        may_be_absent = self._may_be_absent()
        if not any(may_be_absent):
            return apply(self.aggregator, None)
        subsets = self._row_subsets()
        state = present_rows.state_values(subsets)
        result = apply(self.aggregator, None)
        result, new_state = present_rows.on_present_rows(
            result,
            apply,
            fallback,
            subsets=subsets,
            state=state,
            state_after=[v.value for v in subsets.variables],
            present=self._present(),
            may_be_absent=may_be_absent,
            per_task=per_task,
        )
        for variable, value in zip(subsets.variables, new_state):
            variable.assign(value)
        return result

    def _trunk_variables(self) -> list[Any]:
        """The trunk's trainable variables (read in the step: a subclassed
        trunk creates them in its first call)."""
        return net_structure._trunk_variables(self._split)

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
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> Any:
        result = _compat.base_symbolic_build(
            MultiTaskStep, self, iterator=iterator, data_batch=data_batch
        )
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
        # The aggregator for fewer rows, before a (JAX) step is traced.
        if (
            self.aggregator is not None
            and self.task_names is not None
            and (self.representation_mode or self.net.built)
        ):
            self._row_subsets()
        return result

    def _check_strategy_support(self, strategy: Any) -> None:
        """At compile and at the start of fit: representation mode's limits
        raise here, before a step is traced. A trainer adds the checks of
        its backend (`super()._check_strategy_support(strategy)` first)."""
        replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        if self.representation_mode:
            message = _replicas.representation_unsupported(replicas, loss_scaled)
            if message is not None:
                raise NotImplementedError(message)


def _batch_size(x: Any) -> Any:
    """The batch size of the inputs `x` (their first non-None tensor)."""
    return ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]

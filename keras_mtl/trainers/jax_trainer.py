"""The JAX trainer of `MultiTaskModel`: the stateless training step and the
`fit` / `evaluate` / `predict` wrappers that keep the model's state.

Keras' JAX trainer is stateless: `train_step(state, data)` receives the
values of every variable (trainable, non-trainable, optimizer, metrics) and
returns the new ones. Here the whole step runs inside one
`keras.StatelessScope` over that state, so the weighting, the aggregator,
the non-finite checks and the trackers are the same code as on TensorFlow
(`MultiTaskStep` in `step.py`): their variable reads see the step's state
and their `assign`s are collected from the scope as the new state, never
baked into the trace.

What differs is differentiation. The forward pass is a function of the
trainable values, run under `jax.vjp` in a nested scope (its state updates,
such as a weighting's loss history or batch-norm statistics, come back as
auxiliary outputs). One forward pass gives a VJP function; every gradient
the step needs is a VJP with a different cotangent:

- no aggregator: cotangent 1 on the objective;
- an aggregator on the shared parameters: the K unit cotangents of the task
  terms (the Jacobian's rows), one on the heads' objective and, if there
  are any, one on the activity losses (`_vjp_rows`); the weight
  regularisers' gradient is taken apart, from the parameters alone;
- representation mode: two functions, trunk and heads, so the K rows are
  taken at the representation and the trunk gets one backward pass, with
  the aggregated direction as its output cotangent.

The update is applied with the optimizer's `stateless_apply` under
`lax.cond` on the step being finite, as on TensorFlow. There is one
replica: a `keras.distribution` shards the batch inside the compiled step,
whose reductions are already global.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import keras
from keras import ops

from keras_mtl import _compat
from keras_mtl.trainers.single_device import SingleDevice
from keras_mtl.trainers.step import MultiTaskStep, StepGradients


class JaxTrainer(SingleDevice, MultiTaskStep):
    """`MultiTaskStep` on JAX (the model's base on that backend)."""

    # Step counters: 64-bit integers are off on JAX by default (a saved
    # int64 value loads into int32).
    _counter_dtype = "int32"

    def train_step(self, state: Any, data: Any) -> tuple[Any, Any]:
        """`train_step(state, data) -> (logs, state)` of the JAX trainer."""
        return self._stateless(state, True, lambda: self._train_body(data))

    def test_step(self, state: Any, data: Any) -> tuple[Any, Any]:
        """`test_step(state, data) -> (logs, state)` of the JAX trainer."""
        return self._stateless(state, False, lambda: self._test_body(data))

    # ------------------------------------------------ MultiTaskStep's hooks
    def _apply_if_finite(
        self, finite: Any, gradients: list[Any], variables: list[Any]
    ) -> None:
        """The optimizer's update of `variables` if `finite` (a `lax.cond`,
        so a skipped step costs nothing), written to the step's scope."""
        optimizer = self.optimizer
        trainable = list(self.trainable_variables)
        if len(variables) != len(trainable):
            raise RuntimeError(
                "On JAX every trainable variable has a gradient; got "
                f"{len(variables)} of {len(trainable)}."
            )
        trainable_values = [v.value for v in variables]
        optimizer_values = [v.value for v in optimizer.variables]

        def update() -> tuple[list[Any], list[Any]]:
            return optimizer.stateless_apply(
                optimizer_values, gradients, trainable_values
            )

        def keep() -> tuple[list[Any], list[Any]]:
            return trainable_values, optimizer_values

        new_trainable, new_optimizer = jax.lax.cond(finite, update, keep)
        for variable, value in zip(variables, new_trainable):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, new_optimizer):
            variable.assign(value)

    def _traced_only(self, fn: Callable[[], Any]) -> Any:
        # No separate graph to keep `fn` out of: it runs where it is called
        # (the shared variables are found before a step is traced, in
        # `_symbolic_build`, as a JAX step cannot create variables).
        return fn()

    # ------------------------------------------------------- stateless step
    def _state_groups(self, optimizer: bool) -> list[list[Any]]:
        """The model's variables in the order of the JAX trainer's state."""
        groups = [list(self.trainable_variables), list(self.non_trainable_variables)]
        if optimizer:
            groups.append(list(self.optimizer.variables))
        groups.append(list(self.metrics_variables))
        return groups

    def _stateless(self, state: Any, optimizer: bool, body: Any) -> Any:
        """Runs `body()` with every variable read from `state` and returns
        its result and the new state (each variable's value at the end)."""
        groups = self._state_groups(optimizer)
        mapping = [
            (variable, value)
            for variables, values in zip(groups, state)
            for variable, value in zip(variables, values)
        ]
        # Collecting the activity losses (`add_loss`) makes them part of
        # `model.losses`, so an evaluation's loss includes them, as on
        # TensorFlow.
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            result = body()
        new_state = tuple(
            [scope.get_current_value(v) for v in variables] for variables in groups
        )
        return result, new_state

    def _step_gradients(self, x: Any, y: Any, sample_weight: Any) -> StepGradients:
        """The forward pass under `jax.vjp` and every gradient of the step
        (see `MultiTaskStep`)."""
        optimizer = self.optimizer
        aggregator = self.aggregator
        # Trainable too: an absent task's part is kept (`_finish_step`).
        state = list(self.weighting.variables)
        if aggregator is not None:
            state += list(aggregator.non_trainable_variables)
        state_before = [ops.copy(v.value) for v in state]
        trainable = list(self.trainable_variables)
        trainable_ids = {id(v) for v in trainable}
        others = [
            v
            for group in self._state_groups(optimizer=True)[1:]
            for v in group
            if id(v) not in trainable_ids
        ]
        values = [v.value for v in trainable]

        if aggregator is not None and self.representation_mode:
            y_pred, (losses, total, weights), gradients = (
                self._representation_gradients(
                    x, y, sample_weight, trainable, others, values
                )
            )
        else:

            def objective() -> tuple[Any, Any]:
                y_pred = self(x, training=True)
                losses, total, weights = self._objective(
                    y, y_pred, sample_weight, training=True
                )
                outputs = {"objective": optimizer.scale_loss(total)}
                if aggregator is not None:
                    outputs.update(self._task_outputs(losses, weights, total))
                return outputs, (y_pred, losses, total, weights)

            # With an aggregator the activity losses are an output of their
            # own: the shared parameters get their gradient unweighted.
            forward = _Forward(
                self, trainable, others, objective, activity=aggregator is not None
            )
            outputs, vjp, (updates, aux) = jax.vjp(forward, values, has_aux=True)
            forward.assign_updates(updates)
            y_pred, losses, total, weights = aux
            if aggregator is None:
                gradients = vjp(_cotangents(outputs, {"objective": 1.0}))[0]
            else:
                gradients, weights = self._aggregated_gradients(
                    trainable, values, outputs, vjp, (losses, weights)
                )
        return StepGradients(
            y_pred,
            losses,
            total,
            weights,
            list(gradients),
            trainable,
            state,
            state_before,
        )

    def _task_outputs(self, losses: Any, weights: Any, total: Any) -> dict[str, Any]:
        """The outputs an aggregator step differentiates, as on TensorFlow
        (`_aggregation_objectives`): the loss-scaled task terms (the
        Jacobian's rows) and heads' objective."""
        optimizer = self.optimizer
        _, transformed, heads = self._aggregation_objectives(losses, weights, total)
        return {
            "objective": optimizer.scale_loss(heads),
            "terms": optimizer.scale_loss(transformed),
        }

    def _transform_weights(self, losses: Any, weights: Any) -> Any:
        """Effective weights on grad L_i under a `task_terms` transform:
        the weights times d term_i / d (w_i L_i)."""
        terms = ops.stop_gradient(weights) * losses
        aggregator = self.aggregator
        if aggregator.task_terms(terms) is terms:
            return weights
        slope = jax.grad(lambda t: ops.sum(aggregator.task_terms(t)))(terms)
        return weights * slope

    def _aggregated_gradients(
        self,
        trainable: list[Any],
        values: list[Any],
        outputs: dict[str, Any],
        vjp: Any,
        objective: tuple[Any, Any],
    ) -> tuple[list[Any], Any]:
        """Parameter mode: the shared parameters get the aggregator's
        direction for the Jacobian of the task terms plus the
        regularisation's gradient (activity losses and weight regularisers),
        every other parameter the gradient of the heads' objective.
        `objective`: the task losses and weights. Returns the gradients and
        the effective task weights."""
        losses, weights = objective
        task_rows, heads_row, activity_row = _vjp_rows(vjp, outputs)
        regularization = _regularization_gradients(trainable, values, activity_row)
        shared = self._find_shared_variables()
        index = {id(v): i for i, v in enumerate(trainable)}
        positions = [index[id(v)] for v in shared]
        rows = [[row[0][i] for i in positions] for row in task_rows]
        direction, combination, loss_scale = self._aggregate_rows(
            rows, shared, ops.cast(losses, "float32")
        )
        gradients = list(heads_row[0])
        for i, v, g in zip(positions, shared, direction):
            scaled = regularization[i] * ops.cast(loss_scale, v.dtype)
            gradients[i] = g + ops.cast(scaled, g.dtype)
        weights = self._transform_weights(losses, weights)
        return gradients, weights * combination

    def _representation_gradients(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        trainable: list[Any],
        others: list[Any],
        values: list[Any],
    ) -> tuple[Any, Any, list[Any]]:
        """Representation mode: the Jacobian of the task terms with respect
        to the trunk's output `z` (`[K, B * R]`), and one backward pass
        through the trunk with the aggregated direction as the cotangent of
        `z`."""
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            raise NotImplementedError(
                "Representation mode does not support mixed_float16 loss scaling "
                "yet; aggregate over the shared parameters (no "
                "`representation`/`trunk`) instead."
            )
        split = self._split

        def run_trunk() -> tuple[Any, Any]:
            return {"z": split.trunk(x, training=True)}, ()

        # The trunk's activity losses (`add_loss` in its layers) are
        # collected in its own pass: they join the objective there.
        trunk_forward = _Forward(self, trainable, others, run_trunk, activity=True)
        trunk_outputs, trunk_vjp, (trunk_updates, _) = jax.vjp(
            trunk_forward, values, has_aux=True
        )
        trunk_forward.assign_updates(trunk_updates)
        representation = trunk_outputs["z"]

        def run_heads(z: Any) -> tuple[Any, Any]:
            y_pred = self._named_outputs(split.heads(z, training=True))
            losses, total, weights = self._objective(
                y, y_pred, sample_weight, training=True
            )
            if "activity" in trunk_outputs:
                total = total + trunk_outputs["activity"]
            outputs = self._task_outputs(losses, weights, total)
            return outputs, (y_pred, losses, total, weights)

        # The heads' activity losses reach the trunk through `z` unweighted,
        # as on TensorFlow: their own row.
        heads_forward = _Forward(self, trainable, others, run_heads, activity=True)
        outputs, heads_vjp, (updates, aux) = jax.vjp(
            heads_forward, values, representation, has_aux=True
        )
        heads_forward.assign_updates(updates)
        y_pred, losses, total, weights = aux
        task_rows, heads_row, activity_row = _vjp_rows(heads_vjp, outputs)
        direction, combination, _ = self._aggregate_rows(
            [[row[1]] for row in task_rows],
            [representation],
            ops.cast(losses, "float32"),
        )
        z_cotangent = direction[0]
        if activity_row is not None:
            z_cotangent = z_cotangent + ops.cast(activity_row[1], z_cotangent.dtype)
        # Weight regularisers read the trunk's parameters directly.
        regularization = _regularization_gradients(trainable, values, activity_row)
        trunk_cotangent = _cotangents(
            trunk_outputs, {"z": z_cotangent, "activity": 1.0}
        )
        trunk_grads = trunk_vjp(trunk_cotangent)[0]
        trunk_ids = {id(v) for v in self._trunk_variables()}
        gradients = [
            through_z + reg if id(v) in trunk_ids else heads
            for v, heads, reg, through_z in zip(
                trainable, heads_row[0], regularization, trunk_grads
            )
        ]
        weights = self._transform_weights(losses, weights)
        return y_pred, (losses, total, weights * combination), gradients

    # ------------------------------------------- fit, evaluate and predict
    def fit(self, *args: Any, **kwargs: Any) -> Any:
        with self._jax_state_kept():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        with self._jax_state_kept():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._jax_state_kept():
            return super().predict(*args, **kwargs)

    @contextlib.contextmanager
    def _jax_state_kept(self) -> Iterator[None]:
        """Keras detaches the variables' values while it loops
        (`_purge_model_variables`) and writes them back at the end; an
        error in the loop (bad targets, a non-finite step with
        `on_nonfinite="raise"`) would leave every variable empty. Here the
        latest state, or else the values from before the loop, are put
        back before the error propagates."""
        # Not tracked by Keras (a tracked list of variables would be saved).
        object.__setattr__(self, "_values_before_purge", [])
        try:
            yield
        except BaseException:
            if _compat.jax_trainer_state(self):
                self.jax_state_sync()
            for variable, value in self._values_before_purge:
                if _compat.variable_raw_value(variable) is None:
                    _compat.restore_variable_value(variable, value)
            raise
        finally:
            object.__setattr__(self, "_values_before_purge", [])

    def _purge_model_variables(self, *args: Any, **kwargs: Any) -> None:
        # See `_jax_state_kept`.
        kept = getattr(self, "_values_before_purge", None)
        if kept is not None and not kept:
            variables = self.variables
            if getattr(self, "optimizer", None) is not None:
                variables = variables + list(self.optimizer.variables)
            kept.extend(
                (v, _compat.variable_raw_value(v))
                for v in variables + self.metrics_variables
            )
        _compat.base_purge_model_variables(JaxTrainer, self, *args, **kwargs)


class _Forward:
    """A pure function of the trainable values for `jax.vjp`: runs `body`
    in a scope that maps the trainable variables to the traced values and
    every other variable to its value in the enclosing (step) scope, and
    returns `body`'s outputs (a dict; with `activity=True` also the sum of
    the pass's activity losses, `"activity"`, if it has any) with, as
    auxiliary output, the other variables' new values and `body`'s
    auxiliary values.

    Each pass first clears the activity-loss ids `model`'s layers recorded
    (`_compat.clear_activity_losses`): in a stateless scope Keras picks a
    layer's losses by id, and a pass that calls only part of the model
    (representation mode: the trunk, then the heads) would leave the other
    part's layers with ids of freed tensors, which Python can reuse for this
    pass's losses."""

    def __init__(
        self,
        model: keras.layers.Layer,
        trainable: list[Any],
        others: list[Any],
        body: Any,
        activity: bool = False,
    ) -> None:
        self.model = model
        self.trainable = trainable
        self.others = others
        self.body = body
        self.activity = activity

    def __call__(self, values: list[Any], *args: Any) -> tuple[Any, Any]:
        mapping = list(zip(self.trainable, values))
        mapping += [(v, v.value) for v in self.others]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            _compat.clear_activity_losses(self.model)
            outputs, aux = self.body(*args)
            if self.activity and scope.losses:
                # The activity losses (`add_loss`) of this pass, summed; no
                # output without any (its VJP row would be a backward pass
                # of zeros, which XLA does not remove).
                outputs["activity"] = sum(
                    ops.cast(ops.sum(t), "float32") for t in scope.losses
                )
        updates = [scope.get_current_value(v) for v in self.others]
        return outputs, (updates, aux)

    def assign_updates(self, updates: list[Any]) -> None:
        for variable, value in zip(self.others, updates):
            variable.assign(value)


def _vjp_rows(vjp: Any, outputs: dict[str, Any]) -> tuple[list[Any], Any, Any]:
    """The VJPs an aggregator step needs from the outputs of
    `_task_outputs`: one per task term (the Jacobian's rows), the heads'
    objective's and, if the pass has activity losses, theirs (else None);
    each a tuple with the gradient of every differentiated argument.

    One VJP call per row rather than a `jax.vmap` of them: measured faster
    under XLA on the CPU (20-35% a step at widths 128 and 1024 with K = 3
    and 8): what a row does not use is dead code that XLA removes (a task
    row needs only the shared parameters' gradients, the heads' row no
    backward pass through the trunk); a batched pass computes it all."""
    k = outputs["terms"].shape[0]
    eye = ops.eye(k)
    zeros = {"objective": 0.0, "terms": eye[0] * 0.0, "activity": 0.0}

    def row(**cotangent: Any) -> Any:
        return vjp(_cotangents(outputs, {**zeros, **cotangent}))

    task_rows = [row(terms=eye[i]) for i in range(k)]
    activity_row = row(activity=1.0) if "activity" in outputs else None
    return task_rows, row(objective=1.0), activity_row


def _cotangents(outputs: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """Cotangents for `outputs`, cast to each output's dtype."""
    return {
        key: ops.cast(rows[key], outputs[key].dtype)
        for key in outputs  # the same keys, or the VJP rejects the structure
    }


def _weight_regularization(trainable: list[Any], values: list[Any]) -> list[Any]:
    """The gradient of the weight regularisers' sum (`regularizer=` of the
    trainable variables), a function of the parameters alone: taken on its
    own, not as a VJP row of the forward pass (a backward pass through the
    whole network with zero cotangents, which XLA does not remove). Zeros
    for a model without any."""
    regularized = [i for i, v in enumerate(trainable) if v.regularizer is not None]
    if not regularized:
        return [ops.zeros_like(value) for value in values]

    def penalty(values: list[Any]) -> Any:
        return sum(
            ops.cast(ops.sum(trainable[i].regularizer(values[i])), "float32")
            for i in regularized
        )

    return jax.grad(penalty)(values)


def _regularization_gradients(
    trainable: list[Any], values: list[Any], activity_row: Any
) -> list[Any]:
    """Each trainable parameter's gradient of the regularisation: the
    weight regularisers' plus, if the pass has activity losses, their VJP
    row's (`_vjp_rows`)."""
    gradients = _weight_regularization(trainable, values)
    if activity_row is None:
        return gradients
    return [g + a for g, a in zip(gradients, activity_row[0])]

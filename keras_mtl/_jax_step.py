"""The training and evaluation steps of `MultiTaskModel` on the JAX backend.

Keras' JAX trainer is stateless: `train_step(state, data)` receives the
values of every variable (trainable, non-trainable, optimizer, metrics) and
returns the new ones. Here the whole step runs inside one
`keras.StatelessScope` over that state, so the weighting, the aggregator,
the non-finite checks and the trackers are the same code as on TensorFlow
(`MultiTaskModel._finish_step`, `_direction`): their variable reads see the
step's state and their `assign`s are collected from the scope as the new
state, never baked into the trace.

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
`lax.cond` on the step being finite, as `MultiTaskModel` does on TensorFlow.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def _state_groups(model: Any, optimizer: bool) -> list[list[Any]]:
    """The model's variables in the order of the JAX trainer's state."""
    groups = [list(model.trainable_variables), list(model.non_trainable_variables)]
    if optimizer:
        groups.append(list(model.optimizer.variables))
    groups.append(list(model.metrics_variables))
    return groups


def _stateless(model: Any, state: Any, optimizer: bool, body: Any) -> Any:
    """Runs `body()` with every variable read from `state` and returns its
    result and the new state (each variable's value at the end)."""
    groups = _state_groups(model, optimizer)
    mapping = [
        (variable, value)
        for variables, values in zip(groups, state)
        for variable, value in zip(variables, values)
    ]
    # Collecting the activity losses (`add_loss`) makes them part of
    # `model.losses`, so an evaluation's loss includes them, as on TensorFlow.
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
        result = body()
    new_state = tuple(
        [scope.get_current_value(v) for v in variables] for variables in groups
    )
    return result, new_state


def test_step(model: Any, state: Any, data: Any) -> tuple[Any, Any]:
    """`test_step(state, data) -> (logs, state)` of the JAX trainer."""
    return _stateless(model, state, False, lambda: model._test_body(data))


def train_step(model: Any, state: Any, data: Any) -> tuple[Any, Any]:
    """`train_step(state, data) -> (logs, state)` of the JAX trainer."""
    return _stateless(model, state, True, lambda: _train_body(model, data))


class _Forward:
    """A pure function of the trainable values for `jax.vjp`: runs `body`
    in a scope that maps the trainable variables to the traced values and
    every other variable to its value in the enclosing (step) scope, and
    returns `body`'s outputs (a dict; with `activity=True` also the sum of
    the pass's activity losses, `"activity"`, if it has any) with, as
    auxiliary output, the other variables' new values and `body`'s
    auxiliary values."""

    def __init__(
        self,
        trainable: list[Any],
        others: list[Any],
        body: Any,
        activity: bool = False,
    ) -> None:
        self.trainable = trainable
        self.others = others
        self.body = body
        self.activity = activity

    def __call__(self, values: list[Any], *args: Any) -> tuple[Any, Any]:
        mapping = list(zip(self.trainable, values))
        mapping += [(v, v.value) for v in self.others]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
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


def _train_body(model: Any, data: Any) -> dict[str, Any]:
    import jax

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    optimizer = model.optimizer
    aggregator = model.aggregator
    # Trainable too: an absent task's part is kept (`_finish_step`).
    state = list(model.weighting.variables)
    if aggregator is not None:
        state += list(aggregator.non_trainable_variables)
    state_before = [ops.copy(v.value) for v in state]
    trainable = list(model.trainable_variables)
    trainable_ids = {id(v) for v in trainable}
    others = [
        v
        for group in _state_groups(model, optimizer=True)[1:]
        for v in group
        if id(v) not in trainable_ids
    ]
    values = [v.value for v in trainable]

    if aggregator is not None and model.representation_mode:
        y_pred, (losses, total, weights), gradients = _representation_gradients(
            model, x, y, sample_weight, trainable, others, values
        )
    else:

        def objective() -> tuple[Any, Any]:
            y_pred = model(x, training=True)
            losses, total, weights = model._objective(
                y, y_pred, sample_weight, training=True
            )
            outputs = {"objective": optimizer.scale_loss(total)}
            if aggregator is not None:
                outputs.update(_task_outputs(model, losses, weights, total))
            return outputs, (y_pred, losses, total, weights)

        # With an aggregator the activity losses are an output of their own:
        # the shared parameters get their gradient unweighted.
        forward = _Forward(
            trainable, others, objective, activity=aggregator is not None
        )
        outputs, vjp, (updates, aux) = jax.vjp(forward, values, has_aux=True)
        forward.assign_updates(updates)
        y_pred, losses, total, weights = aux
        if aggregator is None:
            gradients = vjp(_cotangents(outputs, {"objective": 1.0}))[0]
        else:
            gradients, weights = _shared_gradients(
                model, trainable, values, outputs, vjp, (losses, weights)
            )

    def apply_if(finite: Any, gradients: list[Any], variables: list[Any]) -> None:
        _apply_if(optimizer, finite, gradients, variables, trainable)

    return model._finish_step(
        (x, y, y_pred, sample_weight),
        (losses, total, weights),
        list(gradients),
        trainable,
        (state, state_before),
        apply_if,
    )


def _task_outputs(model: Any, losses: Any, weights: Any, total: Any) -> dict[str, Any]:
    """The outputs an aggregator step differentiates, as on TensorFlow
    (`MultiTaskModel._aggregation_objectives`): the loss-scaled task terms
    (the Jacobian's rows) and heads' objective."""
    optimizer = model.optimizer
    _, transformed, heads = model._aggregation_objectives(losses, weights, total)
    return {
        "objective": optimizer.scale_loss(heads),
        "terms": optimizer.scale_loss(transformed),
    }


def _weight_regularization(trainable: list[Any], values: list[Any]) -> list[Any]:
    """The gradient of the weight regularisers' sum (`regularizer=` of the
    trainable variables), a function of the parameters alone: taken on its
    own, not as a VJP row of the forward pass (a backward pass through the
    whole network with zero cotangents, which XLA does not remove). Zeros
    for a model without any."""
    import jax

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


def _transform_weights(model: Any, losses: Any, weights: Any) -> Any:
    """Effective weights on grad L_i under a `task_terms` transform:
    the weights times d term_i / d (w_i L_i)."""
    import jax

    terms = ops.stop_gradient(weights) * losses
    aggregator = model.aggregator
    if aggregator.task_terms(terms) is terms:
        return weights
    slope = jax.grad(lambda t: ops.sum(aggregator.task_terms(t)))(terms)
    return weights * slope


def _shared_gradients(
    model: Any,
    trainable: list[Any],
    values: list[Any],
    outputs: dict[str, Any],
    vjp: Any,
    objective: tuple[Any, Any],
) -> tuple[list[Any], Any]:
    """Parameter mode: the shared parameters get the aggregator's direction
    for the Jacobian of the task terms plus the regularisation's gradient
    (activity losses and weight regularisers), every other parameter the
    gradient of the heads' objective. `objective`: the task losses and
    weights."""
    losses, weights = objective
    task_rows, heads_row, activity_row = _vjp_rows(vjp, outputs)
    regularization = _regularization_gradients(trainable, values, activity_row)
    shared = model._find_shared_variables()
    index = {id(v): i for i, v in enumerate(trainable)}
    positions = [index[id(v)] for v in shared]
    rows = [[row[0][i] for i in positions] for row in task_rows]
    direction, combination, loss_scale = model._aggregate_rows(
        rows, shared, ops.cast(losses, "float32")
    )
    gradients = list(heads_row[0])
    for i, v, g in zip(positions, shared, direction):
        scaled = regularization[i] * ops.cast(loss_scale, v.dtype)
        gradients[i] = g + ops.cast(scaled, g.dtype)
    weights = _transform_weights(model, losses, weights)
    return gradients, weights * combination


def _representation_gradients(
    model: Any,
    x: Any,
    y: Any,
    sample_weight: Any,
    trainable: list[Any],
    others: list[Any],
    values: list[Any],
) -> tuple[Any, Any, list[Any]]:
    """Representation mode: the Jacobian of the task terms with respect to
    the trunk's output `z` (`[K, B * R]`), and one backward pass through the
    trunk with the aggregated direction as the cotangent of `z`."""
    import jax

    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        raise NotImplementedError(
            "Representation mode does not support mixed_float16 loss scaling "
            "yet; aggregate over the shared parameters (no "
            "`representation`/`trunk`) instead."
        )
    split = model._split

    def run_trunk() -> tuple[Any, Any]:
        return {"z": split.trunk(x, training=True)}, ()

    # The trunk's activity losses (`add_loss` in its layers) are collected
    # in its own pass: they join the objective there.
    trunk_forward = _Forward(trainable, others, run_trunk, activity=True)
    trunk_outputs, trunk_vjp, (trunk_updates, _) = jax.vjp(
        trunk_forward, values, has_aux=True
    )
    trunk_forward.assign_updates(trunk_updates)
    representation = trunk_outputs["z"]

    def run_heads(z: Any) -> tuple[Any, Any]:
        y_pred = model._named_outputs(split.heads(z, training=True))
        losses, total, weights = model._objective(
            y, y_pred, sample_weight, training=True
        )
        if "activity" in trunk_outputs:
            total = total + trunk_outputs["activity"]
        outputs = _task_outputs(model, losses, weights, total)
        return outputs, (y_pred, losses, total, weights)

    # The heads' activity losses reach the trunk through `z` unweighted, as
    # on TensorFlow: their own row.
    heads_forward = _Forward(trainable, others, run_heads, activity=True)
    outputs, heads_vjp, (updates, aux) = jax.vjp(
        heads_forward, values, representation, has_aux=True
    )
    heads_forward.assign_updates(updates)
    y_pred, losses, total, weights = aux
    task_rows, heads_row, activity_row = _vjp_rows(heads_vjp, outputs)
    direction, combination, _ = model._aggregate_rows(
        [[row[1]] for row in task_rows],
        [representation],
        ops.cast(losses, "float32"),
    )
    z_cotangent = direction[0]
    if activity_row is not None:
        z_cotangent = z_cotangent + ops.cast(activity_row[1], z_cotangent.dtype)
    # Weight regularisers read the trunk's parameters directly.
    regularization = _regularization_gradients(trainable, values, activity_row)
    trunk_cotangent = _cotangents(trunk_outputs, {"z": z_cotangent, "activity": 1.0})
    trunk_grads = trunk_vjp(trunk_cotangent)[0]
    trunk_ids = {id(v) for v in model._trunk_variables()}
    gradients = [
        through_z + reg if id(v) in trunk_ids else heads
        for v, heads, reg, through_z in zip(
            trainable, heads_row[0], regularization, trunk_grads
        )
    ]
    weights = _transform_weights(model, losses, weights)
    return y_pred, (losses, total, weights * combination), gradients


def _apply_if(
    optimizer: Any,
    finite: Any,
    gradients: list[Any],
    variables: list[Any],
    trainable: list[Any],
) -> None:
    """The optimizer's update of `variables` if `finite` (a `lax.cond`, so
    a skipped step costs nothing), written to the step's scope."""
    import jax

    if len(variables) != len(trainable):
        raise RuntimeError(
            "On JAX every trainable variable has a gradient; got "
            f"{len(variables)} of {len(trainable)}."
        )
    trainable_values = [v.value for v in variables]
    optimizer_values = [v.value for v in optimizer.variables]

    def update() -> tuple[list[Any], list[Any]]:
        return optimizer.stateless_apply(optimizer_values, gradients, trainable_values)

    def keep() -> tuple[list[Any], list[Any]]:
        return trainable_values, optimizer_values

    new_trainable, new_optimizer = jax.lax.cond(finite, update, keep)
    for variable, value in zip(variables, new_trainable):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, new_optimizer):
        variable.assign(value)

"""Per-task gradients inside a training step, for aggregators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops


def shared_variable_indices(
    net: keras.Model,
    variables: Sequence[Any],
    tasks: Sequence[str],
    feed: Any = None,
) -> list[int]:
    """Indices of the `variables` that two or more task outputs depend on.

    Found once, eagerly, from a forward pass of a zero batch through the
    built `net` (with `training=False`, so no statistics change): a variable
    is shared if the gradients of at least two outputs reach it. `feed` is
    that batch; by default zeros shaped like a functional net's inputs.
    """
    if keras.backend.backend() == "jax":
        return _jax_shared_variable_indices(net, variables, tasks, _feed(net, feed))
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        # Built in a strategy's scope: a distributed variable is read only
        # in a replica context. Every replica finds the same indices.
        found: list[list[int]] = []
        tf.distribute.get_strategy().run(
            lambda: found.append(shared_variable_indices(net, variables, tasks, feed))
        )
        return found[0]
    feed = _feed(net, feed)
    counts = [0] * len(variables)
    sources = [v.value for v in variables]
    with tf.GradientTape(persistent=True) as tape:
        outputs = net(feed, training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = dict(zip(tasks, outputs))
        sums = {t: ops.sum(ops.cast(outputs[t], "float32")) for t in tasks}
    for task in tasks:
        grads = tape.gradient(sums[task], sources)
        for i, g in enumerate(grads):
            if g is not None:
                counts[i] += 1
    del tape
    return [i for i, c in enumerate(counts) if c >= 2]


def _feed(net: keras.Model, feed: Any) -> Any:
    """`feed`, or a zero batch of one example shaped like a functional
    net's inputs."""
    if feed is not None:
        return feed
    inputs = getattr(net, "inputs", None)
    if not inputs:
        raise ValueError(
            "Shared parameters are found from a forward pass of a zero batch; "
            f"the input shape of the net {net.name!r} is unknown (call it once "
            "on data, or pass a functional model)."
        )
    zeros = [ops.zeros((1, *tuple(t.shape)[1:]), dtype=t.dtype) for t in inputs]
    return zeros[0] if len(zeros) == 1 else zeros


def _jax_shared_variable_indices(
    net: keras.Model, variables: Sequence[Any], tasks: Sequence[str], feed: Any
) -> list[int]:
    """The JAX version of `shared_variable_indices`. JAX differentiates an
    unconnected parameter to zeros, not `None` (and a zero batch makes many
    connected gradients zero too), so dependence is read from the program
    instead: the forward pass is traced to a jaxpr (nothing runs) and
    dead-code elimination keeps, for each task output, the inputs it
    depends on."""
    import jax
    from jax._src.interpreters import partial_eval

    def outputs_of(values: list[Any]) -> list[Any]:
        mapping = list(zip(variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            outputs = net(feed, training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = dict(zip(tasks, outputs))
        return [ops.sum(ops.cast(outputs[t], "float32")) for t in tasks]

    traced = jax.make_jaxpr(outputs_of)([v.value for v in variables])
    counts = [0] * len(variables)
    for k in range(len(tasks)):
        used = [i == k for i in range(len(tasks))]
        _, used_inputs = partial_eval.dce_jaxpr(traced.jaxpr, used)
        for i, needed in enumerate(used_inputs):
            counts[i] += int(needed)
    return [i for i, c in enumerate(counts) if c >= 2]


def flatten(tensors: Sequence[Any], like: Sequence[Any]) -> Any:
    """Concatenates tensors into one float32 vector; `None` entries become
    zeros shaped like the matching entry of `like` (a variable, or a tensor
    whose batch size may be known only at run time)."""
    parts = [
        ops.reshape(
            ops.cast(t if t is not None else ops.zeros_like(v), "float32"), (-1,)
        )
        for t, v in zip(tensors, like)
    ]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=0)


def task_jacobian(tape: Any, task_terms: Sequence[Any], targets: Sequence[Any]) -> Any:
    """The Jacobian `[K, D]` of the K task terms with respect to `targets`
    (the shared variables, or the representation tensor), one row per task,
    each row the flattened gradients. K `tape.gradient` calls on the
    persistent `tape` (faster than `tape.jacobian`, see PITFALLS)."""
    return ops.stack(
        [flatten(tape.gradient(term, targets), targets) for term in task_terms]
    )


def unflatten(vector: Any, like: Sequence[Any]) -> list[Any]:
    """Splits a vector into tensors shaped like the entries of `like`."""
    out, start = [], 0
    for v in like:
        size = 1
        for d in v.shape:
            size *= int(d)
        out.append(
            ops.cast(ops.reshape(vector[start : start + size], v.shape), v.dtype)
        )
        start += size
    return out


def combination_weights(jacobian: Any, direction: Any, ridge: float = 1e-6) -> Any:
    """The weights `w` with `w @ J` closest to `direction` (least squares,
    ridge-regularised): each task's effective weight in the direction."""
    # A non-finite step is skipped anyway; its logs must not make the
    # (non-XLA) solver raise on a NaN system.
    jacobian = ops.where(ops.isfinite(jacobian), jacobian, 0.0)
    return _combination(*_scaled_gram(jacobian), direction, ridge)


def min_cosine(jacobian: Any) -> Any:
    """The smallest pairwise cosine similarity between the task gradients."""
    return _min_cosine(_scaled_gram(jacobian)[2])


def combination_weights_and_min_cosine(
    jacobian: Any, direction: Any, ridge: float = 1e-6
) -> tuple[Any, Any]:
    """`combination_weights(jacobian, direction, ridge)` and
    `min_cosine(jacobian)` of a finite `jacobian`, the same values, with the
    scaled Jacobian and its Gramian computed once for both (each is a pass
    over the `[K, D]` Jacobian: this halves the logging's cost)."""
    scaled = _scaled_gram(jacobian)
    return _combination(*scaled, direction, ridge), _min_cosine(scaled[2])


def _scaled_gram(jacobian: Any) -> tuple[Any, Any, Any]:
    """The Jacobian divided by its largest absolute entry (so the Gramian
    cannot overflow), that scale and the Gramian of the scaled Jacobian."""
    scale = ops.maximum(ops.max(ops.abs(jacobian)), 1e-30)
    j = jacobian / scale
    return j, scale, ops.matmul(j, ops.transpose(j))


def _combination(j: Any, scale: Any, gram: Any, direction: Any, ridge: float) -> Any:
    direction = ops.where(ops.isfinite(direction), direction, 0.0)
    k = gram.shape[0]
    trace = ops.trace(gram) / k
    system = gram + (ridge * ops.maximum(trace, 1e-30)) * ops.eye(k)
    rhs = ops.matmul(j, direction[:, None] / scale)
    return ops.linalg.solve(system, rhs)[:, 0]


def _min_cosine(gram: Any) -> Any:
    norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 1e-30))
    cosine = gram / (norms[:, None] * norms[None, :])
    k = gram.shape[0]
    off_diagonal = ops.where(ops.eye(k) > 0, 2.0, cosine)
    return ops.min(off_diagonal)

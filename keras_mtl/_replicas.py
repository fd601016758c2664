"""Global-batch semantics of the training step under `tf.distribute`.

Under a `tf.distribute` strategy Keras runs `train_step` once per replica,
on that replica's share of the global batch, and the optimizer sums the
gradients of all replicas (`all_reduce(SUM)`); a Keras loss returns its
per-replica mean divided by the number of replicas R, so that sum is the
gradient of the global-batch mean. A weighting or an aggregator is not
linear in the task losses or gradients, so the step reduces those first:

- the task losses the weighting sees are the sums of the replicas' scaled
  losses: the global-batch losses, the same on every replica;
- per-task gradients are all-reduced before an aggregator sees them;
- a gradient computed from such global quantities is the same on every
  replica: it is divided by R, since the optimizer sums R copies of it.

Without a strategy (R = 1) every helper is the identity.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def num_replicas() -> int:
    """The number of replicas in sync (1 without a strategy)."""
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def _replica_context() -> Any:
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def all_reduce_sum(value: Any) -> Any:
    """The sum of `value` over the replicas (a constant for the gradient
    tape: the tape differentiates each replica's own share)."""
    context = _replica_context()
    if context is None:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))


def global_losses(local: Any) -> Any:
    """Task losses with the global-batch value and the local gradient.

    `local` holds this replica's losses (each its mean divided by R). The
    result's value is their sum over the replicas; its gradient is that of
    `local`, so the gradient of any function `f` of it, summed over the
    replicas by the optimizer, is the gradient of `f(global losses)`.
    """
    if _replica_context() is None:
        return local
    return local + tf.stop_gradient(all_reduce_sum(local) - local)


def all_true(flag: Any) -> Any:
    """True on every replica iff `flag` is true on every replica."""
    context = _replica_context()
    if context is None:
        return flag
    bad = tf.cast(tf.logical_not(flag), tf.float32)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, bad) == 0.0


def multi_worker_logs(logs: Any) -> Any:
    """The step's logs, each with a leading axis of 1 across workers.

    Keras 3.15 reduces a step's outputs under a multi-worker
    `MultiWorkerMirroredStrategy` with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on the scalars a step returns. The logs are already
    synchronised (metric variables sum over the replicas), so the mean over
    that axis of length 1 is the scalar itself.
    """
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    if strategy.num_replicas_in_sync <= len(strategy.extended.worker_devices):
        return logs  # one worker: Keras reduces the local results itself
    return tf.nest.map_structure(
        lambda v: v[None] if getattr(v, "shape", None) == () else v, logs
    )


def apply_if(condition: Any, apply: Any, *args: Any) -> None:
    """Runs `apply(*args)` (an optimizer update) if `condition`, a value
    that is the same on every replica.

    A strategy that needs `merge_call` (MirroredStrategy) does not allow a
    `cond` in replica context whose branch merges (the optimizer's update
    does), so the `cond` is taken in cross-replica context, as Keras'
    `LossScaleOptimizer` does. `args` (the gradients) go through the merge
    as per-replica values: a closure would hand every replica the tensors
    of one of them.
    """
    context = _replica_context()
    if context is None or tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(condition, lambda: apply(*args), lambda: None)
        return

    def merged(distribution: Any, condition: Any, *args: Any) -> None:
        first = distribution.experimental_local_results(condition)[0]

        def run() -> Any:
            distribution.extended.call_for_each_replica(apply, args=args)
            return tf.no_op()

        tf.cond(first, run, tf.no_op)

    context.merge_call(merged, args=(condition, *args))

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

Without a strategy (R = 1) every helper is the identity, as it is on a
backend other than TensorFlow, where TensorFlow is not even imported
(importing keras_mtl on JAX must not import it).
"""

from __future__ import annotations

import threading
from typing import Any

import keras

from keras_mtl import _compat

# Every `MirroredStrategy` numbers its collectives from the same keys (group
# 1, instances from 100), and TensorFlow's collective runtime keeps what the
# first op at a key declared (its shape) for the rest of the process. A
# second strategy in the process whose all-reduce at a reused key has
# another shape aborts every collective ("Shape mismatch in the collective
# instance 100", tensorflow/tensorflow#62790), stock Keras models included.
# So the strategy of a MultiTaskModel gets instance keys from its own block,
# unused in this process. Instance keys are int32: 2047 blocks of 2**20.
_KEY_BLOCK = 1 << 20
_KEY_BLOCKS = ((1 << 31) - 1) // _KEY_BLOCK
_key_blocks_used = [0]
_key_lock = threading.Lock()


def isolate_collective_keys(strategy: Any) -> None:
    """Moves the collective instance keys of a local `MirroredStrategy` to
    a block of keys no other strategy of this process uses (once per
    strategy; later calls do nothing). Other strategies are left alone: a
    `MultiWorkerMirroredStrategy`'s keys must agree between processes."""
    # Private TensorFlow state: empty for a version without it, which is
    # then left as it is.
    key_sets = _compat.mirrored_collective_keys(strategy)
    with _key_lock:
        for keys in key_sets:
            if getattr(keys, "_keras_mtl_isolated", False):
                continue
            if _key_blocks_used[0] >= _KEY_BLOCKS - 1:
                return
            _key_blocks_used[0] += 1
            start = _key_blocks_used[0] * _KEY_BLOCK
            _compat.advance_collective_instance_keys(keys, start)
            keys._keras_mtl_isolated = True


def _tf() -> Any:
    """TensorFlow, imported on first use (by a TensorFlow step only)."""
    import tensorflow as tf

    return tf


def _uses_tf_distribute() -> bool:
    """Whether `tf.distribute` can be in use: on the TensorFlow backend."""
    return keras.backend.backend() == "tensorflow"


def num_replicas() -> int:
    """The number of replicas in sync (1 without a strategy)."""
    if not _uses_tf_distribute():
        return 1
    return int(_tf().distribute.get_strategy().num_replicas_in_sync)


def _replica_context() -> Any:
    if not _uses_tf_distribute():
        return None
    context = _tf().distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def all_reduce_sum(value: Any) -> Any:
    """The sum of `value` over the replicas (a constant for the gradient
    tape: the tape differentiates each replica's own share)."""
    context = _replica_context()
    if context is None:
        return value
    tf = _tf()
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
    return local + _tf().stop_gradient(all_reduce_sum(local) - local)


def all_true(flag: Any) -> Any:
    """True on every replica iff `flag` is true on every replica."""
    context = _replica_context()
    if context is None:
        return flag
    tf = _tf()
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
    if not _uses_tf_distribute():
        return logs
    tf = _tf()
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
    tf = _tf()
    context = _replica_context()
    if context is None or _compat.strategy_supports_no_merge_call():
        tf.cond(condition, lambda: apply(*args), lambda: None)
        return

    def merged(distribution: Any, condition: Any, *args: Any) -> None:
        first = distribution.experimental_local_results(condition)[0]

        def run() -> Any:
            distribution.extended.call_for_each_replica(apply, args=args)
            return tf.no_op()

        tf.cond(first, run, tf.no_op)

    context.merge_call(merged, args=(condition, *args))


def xla_unsupported(strategy: Any) -> bool:
    """Whether `jit_compile=True` is known to fail under `strategy`: one
    process driving more than one CPU replica. Measured with TensorFlow
    2.21 for stock Keras models too ("Trying to access resource ...
    located in device CPU:1 from device CPU:0"); GPU replicas and one
    replica per process (multi-worker) were not measured, so they keep the
    user's choice."""
    if strategy is None or int(strategy.num_replicas_in_sync) <= 1:
        return False
    devices = list(getattr(strategy.extended, "worker_devices", ()))
    return len(devices) > 1 and any(
        _tf().DeviceSpec.from_string(d).device_type == "CPU" for d in devices
    )


def representation_unsupported(replicas: int, loss_scaled: bool) -> str | None:
    """The error message for representation mode under `replicas` replicas
    or a `LossScaleOptimizer` (`loss_scaled`), or None if it is supported."""
    reasons = []
    if replicas > 1:
        reasons.append(
            f"tf.distribute with more than one replica (here {replicas}): its "
            "Jacobian has one column per example, so each replica holds the "
            "columns of its own examples only, and the global Jacobian would "
            "have to be gathered across replicas, not summed"
        )
    if loss_scaled:
        reasons.append(
            "loss scaling (a LossScaleOptimizer, as `mixed_float16` sets up): "
            "the step does not unscale the representation's Jacobian"
        )
    if not reasons:
        return None
    return (
        "Representation mode (`representation=` or `trunk=`/`heads=` with an "
        f"aggregator) does not support {'; nor '.join(reasons)}. Use parameter "
        "mode instead: leave out `representation`/`trunk`/`heads` and the "
        "aggregator balances the gradients of the shared parameters, which "
        "works under tf.distribute and mixed precision."
    )

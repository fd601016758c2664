"""Worker processes of tests/trainers/test_scaling.py (run as `python scale_worker.py
MODE OUT_DIR`; the tests start them with a timeout).

Logical devices and `TF_CONFIG` must be set before TensorFlow initialises,
and a killed process must be a real one, so these runs cannot share the
pytest process. Every mode trains the cases of
`conftest.environment_cases`: by default one method per path of the step
and its state handling (`conftest.PATH_CASES`); with
KERAS_MTL_FULL_MATRIX=1 every method of the registries that has state
(each weighting alone, each aggregator with a weighting) and stand-ins for
the stateless ones, so methods added to a registry are covered without a
change here.

Modes:
    mirrored: 2 logical CPU devices; for each case, the variables after a
        few steps under `MirroredStrategy` against one device with the same
        global batch: `mirrored.json` (largest difference per case). The
        single-device states are saved (`single.npz`) as the reference of
        the other modes.
    multiworker: one worker of a 2-worker `MultiWorkerMirroredStrategy`
        (`TF_CONFIG` set by the caller): `multiworker<task>.npz`.
    interrupted: for each case, `fit` with `BackupAndRestore` until the
        middle of the second epoch; every case but the last stops there with
        an exception (nothing is saved after the last epoch-end backup), the
        last writes `killed.marker` and waits to be killed (SIGKILL).
    resume: a new process resumes every case from its backup to the end
        (`resumed.npz`), with `ModelCheckpoint`s (full and weights-only)
        that are loaded back and compared (`checkpoints.json`).

Deterministic ops are enabled in every mode.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
# This checkout's keras_mtl, tests/conftest.py and the workers beside this one.
sys.path[:0] = [os.path.dirname(TESTS), TESTS, HERE]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH = 64  # the global batch
EPOCHS = 3
STEPS = 2  # per epoch


def cases() -> list[tuple[str, str | None]]:
    """(weighting, aggregator): one method per path of the step, or with
    KERAS_MTL_FULL_MATRIX=1 every method with state and stand-ins for those
    without (`conftest.environment_cases`)."""
    from conftest import environment_cases

    out = environment_cases()
    # For a quick local run: SCALE_TEST_CASES="dwa,famo+gradnorm".
    only = os.environ.get("SCALE_TEST_CASES")
    if only:
        out = [c for c in out if case_name(c) in only.split(",")]
    return out


def case_name(case: tuple[str, str | None]) -> str:
    return case[0] if case[1] is None else f"{case[0]}+{case[1]}"


def data(num: int = BATCH * STEPS):
    from conftest import Digits

    digits = Digits(num)
    return digits.x, digits.y


def build(case: tuple[str, str | None], optimizer_built: bool = False):
    """The same compiled model (same initial weights) for a case.

    `optimizer_built=True` builds the optimizer before `fit` (as
    `BackupAndRestore` does, and `fit` under a strategy): without a strategy
    an optimizer built by the first trace of the step makes `tf.function`
    trace it a second time. The trained values are the same, bit for bit."""
    import keras
    from conftest import TASK_LOSSES, aggregator_for, build_net, weighting_for

    import keras_mtl

    keras.utils.set_random_seed(1234)
    weighting, aggregator = case
    # An L2 term exercises the regularisation path (added once per step).
    net = build_net(hidden=16, kernel_regularizer=keras.regularizers.L2(1e-3))
    model = keras_mtl.MultiTaskModel(
        net, weighting=weighting_for(weighting), aggregator=aggregator_for(aggregator)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=dict(TASK_LOSSES), jit_compile=False
    )
    if optimizer_built:
        model.optimizer.build(model.trainable_variables)
    return model


def state(model) -> dict[str, np.ndarray]:
    """Every variable of the model (net, weighting and aggregator state,
    counters, random-generator states) and of its optimizer."""
    owned = {id(v) for v in model.variables}
    methods = [model.weighting] + ([model.aggregator] if model.aggregator else [])
    assert all(id(v) in owned for m in methods for v in m.variables)
    out = {}
    for prefix, variables in (
        ("model", model.variables),
        ("optimizer", model.optimizer.variables),
    ):
        for i, v in enumerate(variables):
            out[f"{prefix}/{i}" + (f"/{v.name}" if prefix == "model" else "")] = (
                np.array(v.numpy())
            )
    return out


def fit(model, callbacks=(), distributed: bool = False):
    """Every epoch sees the same STEPS batches in the same order (a resumed
    epoch too). Under a strategy (`distributed`) the data is an endless
    dataset with `steps_per_epoch`, which keeps one iterator for the whole
    fit: each new one is a multi-device iterator, ~0.3 s to build (~40% of
    a mirrored case's time). On one device numpy arrays are faster."""
    x, y = data()
    if distributed:
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
        inputs = {"x": dataset, "steps_per_epoch": STEPS}
    else:
        inputs = {"x": x, "y": y, "batch_size": BATCH}
    return model.fit(
        **inputs,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )


def largest_difference(a: dict, b: dict) -> float:
    assert list(a) != [] and len(a) == len(b)
    worst = 0.0
    for va, vb in zip(a.values(), b.values()):
        if va.size:
            diff = np.max(np.abs(va.astype("float64") - vb.astype("float64")))
            worst = max(worst, float(diff))
    return worst


# ------------------------------------------------------------------- modes
def mirrored(out_dir: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    result, arrays = {}, {}
    for case in cases():
        single = build(case, optimizer_built=True)
        fit(single)
        with strategy.scope():
            distributed = build(case)
        fit(distributed, distributed=True)
        assert int(distributed.train_steps.numpy()) == EPOCHS * STEPS
        reference = state(single)
        result[case_name(case)] = largest_difference(reference, state(distributed))
        arrays.update({f"{case_name(case)}/{k}": v for k, v in reference.items()})
    with open(os.path.join(out_dir, "mirrored.json"), "w") as f:
        json.dump(result, f)
    # The single-device runs are the references of the other modes.
    np.savez(os.path.join(out_dir, "single.npz"), **arrays)


def multiworker_cases() -> list[tuple[str, str | None]]:
    """Two of `cases()`: a weighting with a learned parameter, alone, and
    the case of a seeded, stateless aggregator."""
    all_cases = cases()
    return [("uncertainty", None), next(c for c in all_cases if c[1] == "pcgrad")]


def multiworker(out_dir: str) -> None:
    tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    arrays = {}
    for case in multiworker_cases():
        with strategy.scope():
            model = build(case)
        fit(model, distributed=True)
        arrays.update({f"{case_name(case)}/{k}": v for k, v in state(model).items()})
    task = strategy.cluster_resolver.task_id
    np.savez(os.path.join(out_dir, f"multiworker{task}.npz"), **arrays)


class _Interrupt(Exception):
    pass


def interrupted(out_dir: str) -> None:
    import keras

    tf.config.experimental.enable_op_determinism()
    all_cases = cases()

    class Crash(keras.callbacks.Callback):
        """Mid-epoch (epoch 2, after its first batch): the last case waits
        to be killed; the others leave `fit` at once, as a kill would (no
        callback runs after this point, so no backup is written)."""

        def __init__(self, last: bool) -> None:
            super().__init__()
            self.last = last
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                if not self.last:
                    raise _Interrupt()
                with open(os.path.join(out_dir, "killed.marker"), "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)  # killed here

    for i, case in enumerate(all_cases):
        model = build(case, optimizer_built=True)
        backup = keras.callbacks.BackupAndRestore(
            os.path.join(out_dir, "backup", case_name(case)), save_freq="epoch"
        )
        try:
            fit(model, [backup, Crash(last=i == len(all_cases) - 1)])
        except _Interrupt:
            continue
    raise AssertionError("the last case was not killed")


def Snapshot():  # noqa: N802 (a callback class, made after keras is imported)
    """A callback keeping the state at the last epoch end, when the
    checkpoints were written (the end of `fit` then changes an epoch
    marker: `EpochDriver` calls `weighting.on_train_end()`)."""
    import keras

    class _Snapshot(keras.callbacks.Callback):
        state: dict = {}

        def on_epoch_end(self, epoch, logs=None):
            self.state = state(self.model)

    return _Snapshot()


def resume(out_dir: str) -> None:
    """Resumes every case from its backup; its `ModelCheckpoint`s (full and
    weights-only) are loaded back and compared with the model in memory."""
    import keras

    tf.config.experimental.enable_op_determinism()
    arrays, checkpoints = {}, {}
    for case in cases():
        name = case_name(case)
        directory = os.path.join(out_dir, "backup", name)
        assert os.path.exists(os.path.join(directory, "training_metadata.json")), name
        model = build(case)
        full = os.path.join(out_dir, f"{name}.keras")
        weights = os.path.join(out_dir, f"{name}.weights.h5")
        snapshot = Snapshot()
        fit(
            model,
            [
                keras.callbacks.BackupAndRestore(directory, save_freq="epoch"),
                keras.callbacks.ModelCheckpoint(full),
                keras.callbacks.ModelCheckpoint(weights, save_weights_only=True),
                snapshot,  # after the checkpoints
            ],
        )
        trained = state(model)
        arrays.update({f"{name}/{k}": v for k, v in trained.items()})
        loaded = keras.models.load_model(full)
        fresh = build(case)
        fresh.optimizer.build(fresh.trainable_variables)
        fresh.load_weights(weights)
        checkpoints[name] = {
            what: [
                k
                for k, v in state(other).items()
                if not np.array_equal(v, snapshot.state[k])
            ]
            for what, other in (("full", loaded), ("weights_only", fresh))
        }
    np.savez(os.path.join(out_dir, "resumed.npz"), **arrays)
    with open(os.path.join(out_dir, "checkpoints.json"), "w") as f:
        json.dump(checkpoints, f)


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    {
        "mirrored": mirrored,
        "multiworker": multiworker,
        "interrupted": interrupted,
        "resume": resume,
    }[mode](directory)

"""tf.distribute and fault tolerance for the methods of the registries
(`conftest.environment_cases`).

By default the cases take one method per path of the step and its state
handling (`conftest.PATH_CASES`: the loss-level step with trainable
weighting variables; the Gramian and the Jacobian route, each
with aggregator state and with a random stream; state of the Jacobian's
width, transformed task terms, an aggregator reading the losses; a
weighting's state, epoch history and random stream; trainable weighting
variables beside an aggregator). That suffices: what a strategy, a kill
or a checkpoint can do differently for a method is decided by those paths
(how its inputs are all-reduced, how its gradient is shared among the
replicas, how its variables are mirrored, saved, restored and rolled
back), the same code for every method on a path; each method's maths has
its own tests. KERAS_MTL_FULL_MATRIX=1 trains every method with state and
stand-ins for the stateless ones (about twice as long).

`MirroredStrategy` on 2 logical CPU devices and a 2-process
`MultiWorkerMirroredStrategy` on localhost must train exactly as one device
with the same global batch; a training process killed mid-epoch and
restarted with `keras.callbacks.BackupAndRestore` must end with the
variables of an uninterrupted run (weights, optimizer, every piece of
weighting and aggregator state, step counters, random-generator states);
`ModelCheckpoint` files (full and weights-only) must restore all of it.

The runs are subprocesses of `tests/trainers/scale_worker.py` (logical devices and
`TF_CONFIG` must be set before TensorFlow starts; a kill must be real), each
bounded by a timeout. One process runs every method, to keep the cost down,
and the mirrored run goes on while the interrupted, resumed and
multi-worker runs follow each other (see `_Runs`).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scale_worker

WORKER = str(Path(__file__).with_name("scale_worker.py"))
CASES = [scale_worker.case_name(c) for c in scale_worker.cases()]
# Generous bounds for a busy 2-core machine; each run stops by itself.
TIMEOUT = 1200


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return {**env, **extra}


def _start(mode: str, out: Path, **env: str) -> subprocess.Popen:
    """A worker process; its stderr goes to a file (a pipe nobody reads
    while it runs could fill up and block it)."""
    stderr = open(out / f"{mode}{env.get('TASK', '')}.stderr", "w")
    try:
        return subprocess.Popen(
            [sys.executable, WORKER, mode, str(out)],
            env=_env(**{k: v for k, v in env.items() if k != "TASK"}),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    finally:
        stderr.close()  # the child has its own copy


def _stderr(process: subprocess.Popen) -> str:
    mode, out = process.args[2], Path(process.args[3])
    paths = sorted(out.glob(f"{mode}*.stderr"))
    return "\n".join(p.read_text()[-3000:] for p in paths)


def _wait(process: subprocess.Popen, deadline: float) -> None:
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        message = f"the {process.args[2]} worker did not finish in time"
        raise AssertionError(message) from None
    assert process.returncode == 0, (
        f"{process.args[2]} worker failed:\n{_stderr(process)}"
    )


def _load(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class _Runs:
    """The worker runs, started together when the module's first test needs
    one (the machine has 2 cores and each run is mostly single-threaded
    tracing): the `mirrored` run in one process and, in a thread, the
    chain `interrupted` -> SIGKILL -> `resume`, then the 2-process
    `multiworker` run. Each run's outcome (None or the exception) is
    reported to the tests that read it."""

    def __init__(self, tmp_path_factory) -> None:
        self.mirrored_dir = tmp_path_factory.mktemp("mirrored")
        self.resume_dir = tmp_path_factory.mktemp("resume")
        self.multiworker_dir = tmp_path_factory.mktemp("multiworker")
        self.processes: list[subprocess.Popen] = []
        self.errors: dict[str, BaseException | None] = {}
        self.stopping = False
        self.mirrored = self._track(_start("mirrored", self.mirrored_dir))
        self.mirrored_deadline = time.monotonic() + TIMEOUT
        self.chain = threading.Thread(target=self._chain, daemon=True)
        self.chain.start()

    def _track(self, process: subprocess.Popen) -> subprocess.Popen:
        self.processes.append(process)
        if self.stopping:
            process.kill()
        return process

    def _chain(self) -> None:
        for name, run in (
            ("resume", self._interrupt_and_resume),
            ("multiworker", self._multiworker),
        ):
            try:
                run()
                self.errors[name] = None
            except BaseException as error:  # noqa: BLE001 (reported by a test)
                self.errors[name] = error

    def _interrupt_and_resume(self) -> None:
        """A worker trains every case with BackupAndRestore and is SIGKILLed
        in the middle of an epoch; a new process resumes every case to the
        end."""
        out = self.resume_dir
        marker = out / "killed.marker"
        process = self._track(_start("interrupted", out))
        deadline = time.monotonic() + TIMEOUT
        try:
            while not marker.exists():
                if process.poll() is not None:
                    raise AssertionError(
                        f"worker ended before the kill:\n{_stderr(process)}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(
                        "the worker did not reach the kill point in time"
                    )
                time.sleep(0.5)
            assert int(marker.read_text()) == process.pid
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == -signal.SIGKILL
        _wait(self._track(_start("resume", out)), time.monotonic() + TIMEOUT)

    def _multiworker(self) -> None:
        ports = _free_ports(2)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        workers = [
            self._track(
                _start(
                    "multiworker",
                    self.multiworker_dir,
                    TASK=str(index),
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": "worker", "index": index}}
                    ),
                )
            )
            for index in range(2)
        ]
        deadline = time.monotonic() + TIMEOUT
        try:
            for worker in workers:
                _wait(worker, deadline)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()

    def result(self, name: str) -> Path:
        """The output directory of a run, once it has succeeded."""
        if name == "mirrored":
            _wait(self.mirrored, self.mirrored_deadline)
            return self.mirrored_dir
        self.chain.join(timeout=3 * TIMEOUT)  # each run has its own bound
        if name not in self.errors:
            pytest.fail(f"the {name} run did not finish in time")
        if self.errors[name] is not None:
            raise self.errors[name]
        return self.resume_dir if name == "resume" else self.multiworker_dir

    def stop(self) -> None:
        self.stopping = True
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.chain.join(timeout=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    started = _Runs(tmp_path_factory)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def reference(runs) -> Path:
    """Runs the MirroredStrategy comparison; its single-device runs are the
    reference of the other tests (`single.npz`)."""
    return runs.result("mirrored")


@pytest.mark.parametrize("case", CASES)
def test_mirrored_strategy_trains_as_one_device(case, reference):
    with open(reference / "mirrored.json") as f:
        differences = json.load(f)
    assert differences[case] <= 1e-5, (case, differences[case])


def test_multi_worker_mirrored_strategy_trains_as_one_device(reference, runs):
    out = runs.result("multiworker")
    single = _load(reference / "single.npz")
    for task in range(2):
        distributed = _load(out / f"multiworker{task}.npz")
        assert distributed
        for key, value in distributed.items():
            np.testing.assert_allclose(
                value, single[key], rtol=0, atol=1e-5, err_msg=key
            )


@pytest.fixture(scope="module")
def resumed(runs) -> Path:
    """A worker trains every case with BackupAndRestore and is SIGKILLed in
    the middle of an epoch; a new process resumes every case to the end."""
    return runs.result("resume")


@pytest.mark.parametrize("case", CASES)
def test_backup_and_restore_after_a_kill_equals_an_uninterrupted_run(
    case, reference, resumed
):
    single = _load(reference / "single.npz")
    restored = _load(resumed / "resumed.npz")
    keys = [k for k in single if k.startswith(f"{case}/")]
    assert keys and keys == [k for k in restored if k.startswith(f"{case}/")]
    different = [k for k in keys if not np.array_equal(single[k], restored[k])]
    assert not different, different


@pytest.mark.parametrize("case", CASES)
def test_model_checkpoint_restores_every_variable(case, resumed):
    with open(resumed / "checkpoints.json") as f:
        checkpoints = json.load(f)
    assert checkpoints[case] == {"full": [], "weights_only": []}

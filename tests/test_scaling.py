"""tf.distribute and fault tolerance for every method of the registries.

`MirroredStrategy` on 2 logical CPU devices and a 2-process
`MultiWorkerMirroredStrategy` on localhost must train exactly as one device
with the same global batch; a training process killed mid-epoch and
restarted with `keras.callbacks.BackupAndRestore` must end with the
variables of an uninterrupted run (weights, optimizer, every piece of
weighting and aggregator state, step counters, random-generator states);
`ModelCheckpoint` files (full and weights-only) must restore all of it.

The runs are subprocesses of `tests/scale_worker.py` (logical devices and
`TF_CONFIG` must be set before TensorFlow starts; a kill must be real), each
bounded by a timeout. One process runs every method, to keep the cost down.
"""

import json
import os
import signal
import socket
import subprocess
import sys
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


def _run(mode: str, out: Path, timeout: float = TIMEOUT) -> None:
    done = subprocess.run(
        [sys.executable, WORKER, mode, str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{mode} worker failed:\n{done.stderr[-3000:]}"


def _load(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Runs the MirroredStrategy comparison; its single-device runs are the
    reference of the other tests (`single.npz`)."""
    out = tmp_path_factory.mktemp("mirrored")
    _run("mirrored", out)
    return out


@pytest.mark.parametrize("case", CASES)
def test_mirrored_strategy_trains_as_one_device(case, reference):
    with open(reference / "mirrored.json") as f:
        differences = json.load(f)
    assert differences[case] <= 1e-5, (case, differences[case])


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_trains_as_one_device(reference, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        config = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        workers.append(
            subprocess.Popen(
                [sys.executable, WORKER, "multiworker", str(tmp_path)],
                env=_env(TF_CONFIG=config),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errors = []
    deadline = time.monotonic() + TIMEOUT
    for worker in workers:
        try:
            _, stderr = worker.communicate(
                timeout=max(1.0, deadline - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            pytest.fail("the multi-worker run did not finish in time")
        if worker.returncode != 0:
            errors.append(stderr[-3000:])
    assert not errors, "\n".join(errors)

    single = _load(reference / "single.npz")
    for task in range(2):
        distributed = _load(tmp_path / f"multiworker{task}.npz")
        assert distributed
        for key, value in distributed.items():
            np.testing.assert_allclose(
                value, single[key], rtol=0, atol=1e-5, err_msg=key
            )


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory) -> Path:
    """A worker trains every case with BackupAndRestore and is SIGKILLed in
    the middle of an epoch; a new process resumes every case to the end."""
    out = tmp_path_factory.mktemp("resume")
    marker = out / "killed.marker"
    process = subprocess.Popen(
        [sys.executable, WORKER, "interrupted", str(out)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"worker ended before the kill:\n{process.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the worker did not reach the kill point in time")
            time.sleep(0.5)
        assert int(marker.read_text()) == process.pid
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    _run("resume", out)
    return out


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

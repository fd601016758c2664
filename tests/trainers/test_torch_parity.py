"""torch trains to TensorFlow's numbers, and `.keras` files move between
torch and the other two backends.

Worker processes (tests/trainers/torch_parity_worker.py: real digits data, the same
initial weights, plain SGD, eager steps) train a method on each backend:

- parity: for each of `COMPARED` (one method per kind of step: no
  aggregator, loss-level weightings with and without state or learned
  parameters, iterative solvers, the Gramian route with state, a seeded
  aggregator on two tasks, representation mode), torch's per-epoch logs,
  final parameters and evaluation must be TensorFlow's to 1e-4 (relative):
  float32 rounding of twelve SGD steps, far below it;
- exchange: for each of `EXCHANGED` (a weighting with learned parameters,
  an aggregator with state) a model saved after two epochs on torch loads
  on TensorFlow and on JAX, and one saved on TensorFlow and on JAX loads on
  torch, with the saved state, and its third epoch is the saving backend's
  own third epoch, to the same tolerance.

Runs in the TensorFlow session of the suite only (it starts every backend
itself), and only where torch is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="starts torch, TensorFlow and JAX processes itself; run once, "
        "from the TensorFlow session",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="torch is not installed"
    ),
]

WORKER = Path(__file__).with_name("torch_parity_worker.py")
RTOL, ATOL = 1e-4, 1e-6
COMPARED = [
    "equal",
    "adaptive",
    "bmtl",
    "uncertainty",
    "mgda",
    "upgrad",
    # With two tasks PCGrad's random order does not matter (each backend
    # draws it from its own generator); the seed fixes the stream anyway.
    "pcgrad:seed=7@k2",
    "nash_mtl",
    "upgrad@trunk",
    # The aggregator step's other gradients: a weighting's learned
    # parameters, the regularisers' terms (of the trunk and of a head) and
    # heads trained on transformed losses.
    "uncertainty+upgrad@reg",
    "upgrad@trunk@reg",
    "db_mtl",
]
EXCHANGED = ["uncertainty", "nash_mtl"]
OTHERS = ("tensorflow", "jax")


def _start(backend: str, *arguments: str) -> subprocess.Popen:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, str(WORKER), *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _results(processes: dict[str, tuple[subprocess.Popen, Path]]) -> dict:
    results = {}
    for name, (process, out) in processes.items():
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"{name} worker failed:\n{output[-3000:]}"
        results[name] = json.loads(out.read_text())
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every backend's training, then every backend's resumption of the
    others' files: `{"train": {backend: ...}, "resume": {backend: ...}}`."""
    root = tmp_path_factory.mktemp("torch_parity")
    trained = {
        "torch": COMPARED + [s for s in EXCHANGED if s not in COMPARED],
        "tensorflow": COMPARED + [s for s in EXCHANGED if s not in COMPARED],
        "jax": EXCHANGED,
    }
    processes = {}
    for backend, specs in trained.items():
        (root / backend).mkdir()
        out = root / f"train_{backend}.json"
        processes[backend] = (
            _start(backend, "train", str(out), str(root / backend), *specs),
            out,
        )
    train = _results(processes)
    sources = {
        "tensorflow": [root / "torch"],
        "jax": [root / "torch"],
        "torch": [root / "tensorflow", root / "jax"],
    }
    processes = {}
    for backend, directories in sources.items():
        out = root / f"resume_{backend}.json"
        dirs = ",".join(str(d) for d in directories)
        processes[backend] = (
            _start(backend, "resume", str(out), dirs, *EXCHANGED),
            out,
        )
    resume = _results(processes)
    for phase in (train, resume):
        for backend, result in phase.items():
            assert result["backend"] == backend
    return {"train": train, "resume": resume}


def _close(expected: object, got: object, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(expected), rtol=RTOL, atol=ATOL, err_msg=what
    )


def _no_error(run: dict, what: str) -> None:
    assert "error" not in run, f"{what}: {run.get('error')}"


def _same_logs(expected: dict, got: dict, what: str) -> None:
    assert sorted(got) == sorted(expected), what
    for key, values in expected.items():
        _close(values, got[key], f"{what}: {key}")


def _same_parameters(expected: dict, got: dict, what: str) -> None:
    assert sorted(got) == sorted(expected), what
    for path, values in expected.items():
        _close(values, got[path], f"{what}: {path}")


@pytest.mark.parametrize("spec", COMPARED)
def test_torch_trains_to_tensorflows_numbers(runs: dict, spec: str) -> None:
    tf_run = runs["train"]["tensorflow"][spec]
    torch_run = runs["train"]["torch"][spec]
    _no_error(tf_run, f"tensorflow {spec}")
    _no_error(torch_run, f"torch {spec}")
    assert any(k.endswith("_weight") for k in tf_run["history"])
    _same_logs(tf_run["history"], torch_run["history"], f"{spec} history")
    _same_logs(tf_run["evaluate"], torch_run["evaluate"], f"{spec} evaluate")
    _same_parameters(tf_run["weights"], torch_run["weights"], f"{spec} weights")
    # The runs changed the weights: equal numbers are not both untouched.
    first = next(iter(tf_run["history"].values()))
    assert first[0] != first[-1], spec


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("spec", EXCHANGED)
def test_a_file_saved_on_torch_trains_on(runs: dict, spec: str, backend: str) -> None:
    saved = runs["train"]["torch"][spec]
    loaded = runs["resume"][backend][f"torch/{spec}"]
    _no_error(saved, f"torch {spec}")
    _no_error(loaded, f"{backend} loading torch's {spec}")
    _same_parameters(saved["saved_state"], loaded["loaded_state"], f"{spec} state")
    _same_logs(saved["continued"], loaded["continued"], f"{spec} on {backend}")
    _same_parameters(saved["weights"], loaded["weights"], f"{spec} on {backend}")


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("spec", EXCHANGED)
def test_a_file_saved_on_another_backend_trains_on_torch(
    runs: dict, spec: str, backend: str
) -> None:
    saved = runs["train"][backend][spec]
    loaded = runs["resume"]["torch"][f"{backend}/{spec}"]
    _no_error(saved, f"{backend} {spec}")
    _no_error(loaded, f"torch loading {backend}'s {spec}")
    _same_parameters(saved["saved_state"], loaded["loaded_state"], f"{spec} state")
    _same_logs(saved["continued"], loaded["continued"], f"{spec} from {backend}")
    _same_parameters(saved["weights"], loaded["weights"], f"{spec} from {backend}")

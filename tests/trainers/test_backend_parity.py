"""TensorFlow and JAX train every method to the same numbers.

Two processes, one per backend, run the same short training of each
method (tests/trainers/backend_worker.py: real digits data, the same initial
weights, plain SGD). JAX compiles with XLA; TensorFlow runs a `tf.function`
graph without XLA, in a third of the time (the ~40 XLA compiles took ~4 min
of CI); every method's XLA step on TensorFlow is trained by
tests/model/test_model_training.py and tests/model/test_model_aggregation.py. Each
method's per-epoch task losses, task weights and loss, its evaluation (the
models without an aggregator and one with: `backend_worker.evaluated`) and
every parameter of the net must agree to 1e-4 (relative). Runs in the
TensorFlow session of the suite only (it starts both backends itself).

Methods that draw random numbers (RLW's weights, GradDrop's masks) draw
them from each backend's own generator, so their runs differ by design;
they are trained on both and checked for finite results only. PCGrad and
GradVac visit the tasks in a random order: with two tasks the order does
not matter, so they run on two (`@k2`).

By default the runs take one method per path of the step and its state
handling (`DEFAULT`: the paths of `conftest.step_paths`, a weighting with
an aggregator, representation mode, regularisers in each mode, the
evaluation step): what the two trainers (tensorflow_trainer.py,
jax_trainer.py) do differently for a method is decided by those paths,
the same code for every method on a path, and every method's maths is
checked against its reference values on both backends by its own tests
(tests/aggregation/, tests/weighting/, marked backend_neutral).
KERAS_MTL_FULL_MATRIX=1 compares every method (`EXACT`, `RANDOM`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import backend_worker
import keras
import numpy as np
import pytest
from conftest import full_matrix, one_alias_per_class, uncovered_paths

import keras_mtl

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="starts a TensorFlow and a JAX process itself; run once, from the "
    "TensorFlow session",
)

WORKER = Path(__file__).with_name("backend_worker.py")
RTOL, ATOL = 1e-4, 1e-6

# Every weighting and aggregator class, one alias each, plus pairs and
# representation mode. `@k2`: the first two tasks only; `@trunk`:
# representation mode at the layer "trunk"; `@reg`: with regularisers.
EXACT = [
    "equal",
    "fixed:weights=[1.0,2.0,0.5]",
    "uncertainty",
    "dwa",
    "adaptive",
    "adaptive:mode=epoch",
    "bmtl",
    "gls",
    "famo",
    "mean",
    "sum",
    "mgda",
    "upgrad",
    "dualproj",
    "imtl_g",
    "aligned_mtl",
    "cagrad",
    "pcgrad@k2",
    "gradvac@k2",
    "config",
    "nash_mtl",
    "fairgrad",
    "moco",
    "db_mtl",
    "excess_mtl",
    "grad_norm",
    "stch:warmup_epoch=0",
    "imtl_l",
    # At LibMTL's step SDMGrad amplifies rounding (docs/aggregation/sdmgrad.md).
    "sdmgrad:step_size=1.0",
    "modo",
    "cr_mogm",
    "krum",
    "trimmed_mean",
    "adaptive+upgrad",
    "bmtl+pcgrad@k2",
    "upgrad@trunk",
    "mgda@trunk",
    "imtl_g@trunk",
    # Weight and activity regularisers, of the trunk and of a head.
    "equal@reg",
    "upgrad@reg",
    "upgrad@trunk@reg",
]
RANDOM = ["rlw", "graddrop"]
# One method per path (`conftest.step_paths`; checked below) and every
# option: Equal (no variables), Uncertainty (trainable variables), DWA
# (state, epoch history), RLW (a random stream); Nash-MTL and PCGrad (the
# Gramian route with state, with a random stream), DB-MTL, GradDrop and
# GradNorm (the Jacobian route with state of width D and transformed task
# terms, a random stream, the losses read); UPGrad, evaluated with an
# aggregator (`backend_worker.EVALUATED_WITH_AGGREGATOR`).
DEFAULT = {
    "equal",
    "uncertainty",
    "dwa",
    "upgrad",
    "nash_mtl",
    "pcgrad@k2",
    "db_mtl",
    "grad_norm",
    "adaptive+upgrad",
    "upgrad@trunk",
    "equal@reg",
    "upgrad@reg",
    "upgrad@trunk@reg",
    "rlw",
    "graddrop",
}
COMPARED = [s for s in EXACT if full_matrix() or s in DEFAULT]
TRAINED = [s for s in RANDOM if full_matrix() or s in DEFAULT]


def _name(spec: str) -> str:
    return spec.split("@")[0].split("+")[-1].split(":")[0]


def _names(spec: str) -> list[str]:
    """The aliases of a spec's weighting and aggregator."""
    return [part.split(":")[0] for part in spec.split("@")[0].split("+")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Both backends' results, the two processes run side by side."""
    out = tmp_path_factory.mktemp("parity")
    processes = {}
    for backend in ("tensorflow", "jax"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        env["PARITY_JIT_COMPILE"] = "1" if backend == "jax" else "0"
        processes[backend] = subprocess.Popen(
            [sys.executable, str(WORKER), str(out / f"{backend}.json")]
            + COMPARED
            + TRAINED,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    results = {}
    for backend, process in processes.items():
        output, _ = process.communicate(timeout=1200)
        assert process.returncode == 0, f"{backend} worker failed:\n{output[-3000:]}"
        results[backend] = json.loads((out / f"{backend}.json").read_text())
        assert results[backend]["backend"] == backend
    return results


def test_every_method_is_compared():
    """A new weighting or aggregator must join the parity lists."""
    covered = {_name(spec) for spec in EXACT + RANDOM}
    for registry in (keras_mtl.weighting, keras_mtl.aggregation):
        for alias in one_alias_per_class(registry):
            cls = registry.ALIASES[alias]
            assert any(registry.ALIASES.get(n) is cls for n in covered), alias
    assert backend_worker.EVALUATED_WITH_AGGREGATOR in EXACT
    # The default runs: specs of the lists, every path and option among them.
    assert DEFAULT <= set(EXACT + RANDOM)
    assert backend_worker.EVALUATED_WITH_AGGREGATOR in DEFAULT
    assert not uncovered_paths({n for spec in DEFAULT for n in _names(spec)})
    options = {o for spec in EXACT for o in spec.split("@")[1:]}
    assert options == {o for spec in DEFAULT for o in spec.split("@")[1:]}


def _close(a, b, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(b), np.asarray(a), rtol=RTOL, atol=ATOL, err_msg=what
    )


@pytest.mark.parametrize("spec", COMPARED)
def test_same_numbers_on_both_backends(runs, spec):
    tf_run, jax_run = runs["tensorflow"][spec], runs["jax"][spec]
    assert "error" not in tf_run, tf_run.get("error")
    assert "error" not in jax_run, jax_run.get("error")
    assert sorted(tf_run["history"]) == sorted(jax_run["history"])
    assert any(k.endswith("_weight") for k in tf_run["history"])
    for key, values in tf_run["history"].items():
        _close(values, jax_run["history"][key], f"{spec}: history {key}")
    if backend_worker.evaluated(spec):
        assert sorted(tf_run["evaluate"]) == sorted(jax_run["evaluate"])
        for key, value in tf_run["evaluate"].items():
            _close(value, jax_run["evaluate"][key], f"{spec}: evaluate {key}")
    assert sorted(tf_run["weights"]) == sorted(jax_run["weights"])
    for path, values in tf_run["weights"].items():
        _close(values, jax_run["weights"][path], f"{spec}: parameter {path}")


@pytest.mark.parametrize("spec", TRAINED)
def test_random_methods_train_on_both_backends(runs, spec):
    for backend in ("tensorflow", "jax"):
        run = runs[backend][spec]
        assert "error" not in run, f"{backend}: {run.get('error')}"
        history = run["history"]
        assert all(np.all(np.isfinite(v)) for v in history.values()), backend
        # Trained: the sum of the unweighted task losses went down (the
        # logged "loss" carries RLW's random weights).
        tasks = [k for k in history if k.endswith("_loss")]
        first = sum(history[k][0] for k in tasks)
        last = sum(history[k][-1] for k in tasks)
        assert last < first, (backend, first, last)

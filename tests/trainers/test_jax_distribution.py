"""Every method trains the same under `keras.distribution.DataParallel` on
JAX as on one device.

One JAX process with two forced host devices (tests/trainers/jax_distribution_worker.py)
trains weightings and aggregators (parameter mode) and one aggregator in
representation mode twice from the same initial weights on the same global
batch: data-parallel over both devices, and with no distribution. By
default one method per path of the step and its state handling
(`conftest.PATH_WEIGHTINGS`, `conftest.PATH_AGGREGATORS`: no variables,
trainable variables, state, an epoch history, random streams; the Gramian
and the Jacobian route with state, a random stream, state of the
Jacobian's width, transformed task terms, the losses read): the step is
one jitted SPMD program whose sharding of inputs, state and gradients
depends on those paths, the same code for every method on a path, and
each method's maths has its own tests on JAX. KERAS_MTL_FULL_MATRIX=1
trains every weighting and aggregator class. Under `DataParallel` the batch is sharded over the devices
and the step is one jitted SPMD program, so every batch mean is the
global one; only the order of the floating-point additions differs (each
device sums its half, then the halves are added). The per-step logs (task
losses and weights, the loss) and the final parameters must agree to
1e-5 relative, plus an absolute 1e-6 of each array's largest magnitude
for entries near zero (a sum's rounding error scales with its terms, not
with its result); measured: at most 1e-6 absolute, 6% of that tolerance.

Runs in the TensorFlow session of the suite only: it starts its own JAX
process.
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
from conftest import (
    PATH_AGGREGATORS,
    PATH_WEIGHTINGS,
    full_matrix,
    one_alias_per_class,
    uncovered_paths,
)

import keras_mtl

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason="jax is not installed (pip install 'keras-mtl[jax]')",
    ),
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="starts a JAX process itself; run once, from the TensorFlow session",
    ),
]

WORKER = Path(__file__).with_name("jax_distribution_worker.py")
RTOL = 1e-5
# Absolute tolerance, as a fraction of each compared array's largest value.
ATOL_OF_SCALE = 1e-6

# One alias per weighting and aggregator class (parameter mode), and
# representation mode (`@trunk`). RLW, GradDrop, PCGrad and GradVac draw
# random numbers: the worker seeds them the same in both runs.
WEIGHTINGS = [
    "adaptive",
    "bmtl",
    "dwa",
    "equal",
    "famo",
    "fixed:weights=[1.0,2.0,0.5]",
    "gls",
    "imtl_l",
    "rlw",
    "stch",
    "uncertainty",
]
AGGREGATORS = [
    "aligned_mtl",
    "cagrad",
    "config",
    "cr_mogm",
    "db_mtl",
    "dualproj",
    "excess_mtl",
    "fairgrad",
    "graddrop",
    "gradnorm",
    "gradvac",
    "imtl_g",
    "krum",
    "mean",
    "mgda",
    "moco",
    "modo",
    "nash_mtl",
    "pcgrad",
    "sdmgrad",
    "sum",
    "trimmed_mean",
    "upgrad",
]


def _methods() -> list[str]:
    """One method per path of the step (`conftest.PATH_WEIGHTINGS` and
    `PATH_AGGREGATORS`, as in the other environment suites) or, with
    KERAS_MTL_FULL_MATRIX=1, every weighting and aggregator class; and
    representation mode."""
    chosen = [
        spec
        for spec in WEIGHTINGS + AGGREGATORS
        if full_matrix() or _name(spec) in PATH_WEIGHTINGS + PATH_AGGREGATORS
    ]
    # SDMGrad at LibMTL's step amplifies rounding (docs/aggregation/sdmgrad.md).
    chosen = ["sdmgrad:step_size=1.0" if s == "sdmgrad" else s for s in chosen]
    return [*chosen, "upgrad@trunk"]


def _name(spec: str) -> str:
    return spec.split("@")[0].split(":")[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("jax_distribution") / "runs.npz"
    # The worker sets the JAX backend and appends the two-device flag to
    # the XLA_FLAGS it inherits (scripts/test.sh's among them).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [sys.executable, str(WORKER), str(out), *_methods()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
    )
    assert process.returncode == 0, f"worker failed:\n{process.stdout[-3000:]}"
    with np.load(out) as data:
        arrays = {key: data[key] for key in data.files}
    return {"arrays": arrays, "errors": json.loads(str(arrays.pop("errors")))}


def _run(results: dict[str, object], spec: str, run: str) -> dict[str, np.ndarray]:
    prefix = f"{spec}|{run}|"
    arrays = results["arrays"]
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def test_every_method_is_compared():
    """A new weighting or aggregator class must join the lists."""
    assert [_name(s) for s in WEIGHTINGS] == one_alias_per_class(keras_mtl.weighting)
    assert AGGREGATORS == one_alias_per_class(keras_mtl.aggregation)
    # The default methods take every path of the step between them.
    assert not uncovered_paths({_name(s) for s in _methods()})


@pytest.mark.parametrize("spec", _methods())
def test_data_parallel_trains_as_one_device(results, spec):
    for run in ("data_parallel", "one_device"):
        assert f"{spec}|{run}" not in results["errors"], results["errors"][
            f"{spec}|{run}"
        ]
    parallel = _run(results, spec, "data_parallel")
    single = _run(results, spec, "one_device")
    # The parameters live on both devices in one run, on one in the other.
    assert int(parallel.pop("devices")) == 2
    assert int(single.pop("devices")) == 1
    assert sorted(parallel) == sorted(single)
    assert any(k.endswith("_weight") for k in single), sorted(single)
    initial = sum(k.startswith("initial/") for k in results["arrays"])
    assert sum(k.startswith("param/") for k in single) == initial, sorted(single)
    for key, expected in single.items():
        actual = parallel[key]
        assert actual.shape == expected.shape, key
        atol = ATOL_OF_SCALE * float(np.max(np.abs(expected)))
        np.testing.assert_allclose(
            actual, expected, rtol=RTOL, atol=atol, err_msg=f"{spec}: {key}"
        )
    # It trained: every parameter array moved from its initial value
    # (equal runs that never updated would prove nothing).
    for key, value in single.items():
        if key.startswith("param/"):
            start = results["arrays"][f"initial/{key[len('param/') :]}"]
            assert np.max(np.abs(value - start)) > 1e-3, f"{spec}: {key}"

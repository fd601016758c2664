"""Several `MirroredStrategy` scopes in one process, `jit_compile` under a
strategy and representation mode's limits.

Every `MirroredStrategy` of a process numbers its collectives from the same
keys, and TensorFlow keeps the shape the first op at a key declared: a
model trained under a second strategy failed ("Shape mismatch in the
collective instance 100") when an earlier model, stock Keras included,
had another shape at that key. The run is a subprocess of
`tests/trainers/distribute_worker.py` (logical devices must be set before TensorFlow
starts) that trains a stock model, then MultiTaskModels with a weighting
and with aggregators, each under a new strategy (see its docstring).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import distribute_worker
import keras
import pytest
from conftest import TASK_LOSSES, build_net

import keras_mtl

WORKER = str(Path(__file__).with_name("distribute_worker.py"))
# A generous bound for a busy 2-core machine (the run takes about a minute).
TIMEOUT = 900


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sequence")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    try:
        done = subprocess.run(
            [sys.executable, WORKER, str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the distribute worker did not finish in time")
    assert done.returncode == 0, f"distribute worker failed:\n{done.stderr[-4000:]}"
    with open(out / "sequence.json") as f:
        return json.load(f)


def _finite(losses: list[float]) -> bool:
    return bool(losses) and all(math.isfinite(v) for v in losses)


def test_stock_model_then_multitask_models_each_under_a_new_strategy(sequence):
    assert _finite(sequence["stock"])
    assert _finite(sequence["weighting"])
    # Our models must not leave records at the keys a later stock model
    # uses either: the same stock model trains again, to the same losses
    # (the same computation on the same machine: rounding-level agreement).
    again, first = sequence["stock_again"], sequence["stock"]
    assert len(again) == len(first)
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(again, first))


@pytest.mark.parametrize(
    "case", [f"{w}+{a}" for w, a in distribute_worker.AGGREGATOR_CASES]
)
def test_aggregator_under_a_later_strategy_trains_as_one_device(sequence, case):
    result = sequence[case]
    assert _finite(result["losses"]) and math.isfinite(result["evaluate_loss"])
    assert result["steps"] > 0
    # The tolerance of tests/trainers/test_scaling.py (measured about 1e-7).
    assert result["difference"] <= 1e-5, result["difference"]


def test_jit_compile_is_turned_off_with_a_warning_on_cpu_replicas(sequence):
    jit = sequence["jit"]
    assert len(jit["warnings"]) == 1
    assert "jit_compile=True is turned off" in jit["warnings"][0]
    assert "2 replicas" in jit["warnings"][0]
    assert jit["jit_compile_after_compile"] is False
    assert jit["jit_compile_after_fit"] is False
    assert _finite(jit["losses"])
    # "auto" resolves to a setting that works, silently.
    assert sequence["jit_auto"] == {"warnings": [], "jit_compile": False}


def test_representation_mode_under_a_strategy_fails_at_compile(sequence):
    message = sequence["representation"]
    assert message is not None, "compile accepted representation mode"
    assert "Representation mode" in message
    assert "tf.distribute" in message and "(here 2)" in message
    assert "parameter mode" in message


@pytest.mark.backend_neutral
def test_representation_mode_under_loss_scaling_fails_at_compile():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras_mtl.MultiTaskModel(
            build_net(), aggregator="upgrad", representation="hidden"
        )
        with pytest.raises(NotImplementedError, match="loss scaling") as raised:
            model.compile(optimizer="adam", loss=dict(TASK_LOSSES))
    finally:
        keras.config.set_dtype_policy("float32")
    assert "parameter mode" in str(raised.value)
    assert "more than one replica" not in str(raised.value)

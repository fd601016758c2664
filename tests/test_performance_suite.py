"""The performance suite's building blocks (benchmarks/performance.py): its
ideal per-task-gradient baseline is a correct training step, and timing
runs end to end. Nothing here asserts a time."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "performance.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("performance_suite", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ideal_step_updates_like_the_summed_loss(suite):
    """The sum of the K per-task trunk gradients is the gradient of the summed
    losses: one SGD step of the ideal baseline equals stock Keras'."""
    x, y = next(iter(suite.dataset("mlp", 3).take(1)))
    losses = suite.losses_for("mlp", 3)
    after = []
    for make in ("keras", "ideal"):
        keras.utils.set_random_seed(0)
        net = suite.mlp(16, 3)
        model = net if make == "keras" else suite.IdealPerTaskStep(net, losses)
        kwargs = {"loss": losses} if make == "keras" else {}
        model.compile(optimizer=keras.optimizers.SGD(0.1), **kwargs)
        model.train_on_batch(x, y)
        after.append([np.asarray(v) for v in net.trainable_variables])
    ideal = suite.IdealPerTaskStep(suite.mlp(16, 3), losses)
    assert {v.path.split("/")[0] for v in ideal.shared} == {
        "trunk_0",
        "trunk_1",
        "trunk_2",
    }
    for a, b in zip(*after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_timing_runs_every_kind_of_variant(suite):
    variants = ["keras", "ideal", "w:fixed", "a:pcgrad", "r:mgda"]
    results = suite.time_variants(variants, "mlp", 8, 2, False, steps=1, repeats=2)
    assert set(results) == set(variants)
    for r in results.values():
        assert r["step_seconds"] > 0 and r["compile_seconds"] > 0
    table = suite.ratio_table(results, "keras", 1.03, "method")
    assert table[2].startswith("| `keras` | ") and len(table) == 2 + len(variants)

"""The performance suite's building blocks (benchmarks/performance.py): its
ideal per-task-gradient baseline is a correct training step on the backend
the tests run on (TensorFlow, or JAX with KERAS_BACKEND=jax), timing runs
end to end, and the report merges both backends. Nothing here asserts a
time."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

# Backend-neutral: scripts/test.sh runs these under JAX too.
pytestmark = pytest.mark.backend_neutral
# benchmarks/performance.py drives Keras' TensorFlow and JAX step functions
# (`train_function(iterator)`, `train_function(state, iterator)`); its
# torch column is still to come (issue 23).
_NO_TORCH_RUNNER = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="the performance suite has no torch runner yet",
)

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "performance.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("performance_suite", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@_NO_TORCH_RUNNER
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ideal_step_updates_like_the_summed_loss(suite, optimizer):
    """The sum of the K per-task trunk gradients is the gradient of the summed
    losses: two steps of the ideal baseline (the GradientTape step on
    TensorFlow, the stateless VJP step on JAX) equal stock Keras' with the
    summed loss, for SGD and for Adam (not linear in the gradient)."""
    data = suite.batches("mlp", 3, count=2)
    losses = suite.losses_for("mlp", 3)
    after = []
    for make in ("keras", "ideal"):
        keras.utils.set_random_seed(0)
        net = suite.mlp(16, 3)
        model = net if make == "keras" else suite.IdealPerTaskStep(net, losses)
        kwargs = {"loss": losses} if make == "keras" else {}
        opt = (
            keras.optimizers.SGD(0.1)
            if optimizer == "sgd"
            else keras.optimizers.Adam(0.01)
        )
        model.compile(optimizer=opt, jit_compile=True, **kwargs)
        for x, y in data:
            model.train_on_batch(x, y)
        after.append([np.asarray(v) for v in net.trainable_variables])
    before = [np.asarray(v) for v in suite.mlp(16, 3).trainable_variables]
    for a, b, start in zip(*after, before):
        assert not np.allclose(a, start)  # every parameter was trained
        # Adam divides by the gradient's RMS: an entry whose gradient is
        # near zero moves by a rounding-sized amount, up to ~1e-3 of a step.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_ideal_step_finds_the_trunk(suite):
    ideal = suite.IdealPerTaskStep(suite.mlp(16, 3), suite.losses_for("mlp", 3))
    assert {v.path.split("/")[0] for v in ideal.shared} == {
        "trunk_0",
        "trunk_1",
        "trunk_2",
    }
    assert [v.path for v in ideal.trainable_variables] == [
        v.path for v in ideal.net.trainable_variables
    ]


@_NO_TORCH_RUNNER
def test_runner_threads_the_state_like_fit(suite):
    """The timing loop's steps train the model as `fit` does (on JAX the
    state is threaded from call to call): the ideal step's loss falls."""
    keras.utils.set_random_seed(0)
    losses = suite.losses_for("mlp", 2)
    model = suite.IdealPerTaskStep(suite.mlp(16, 2), losses)
    model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
    runner = suite.Runner(model, suite.dataset("mlp", 2, count=1))
    first = float(np.asarray(runner.step()["loss"]))
    for _ in range(20):
        last = runner.step()
    runner.sync(last)
    assert float(np.asarray(last["loss"])) < first


@_NO_TORCH_RUNNER
def test_timing_runs_every_kind_of_variant(suite):
    variants = ["keras", "ideal", "w:fixed", "a:pcgrad", "r:mgda"]
    # Without XLA on TensorFlow (faster to trace); JAX without jit is eager.
    jit = suite.backend() == "jax"
    results = suite.time_variants(variants, "mlp", 8, 2, jit, steps=1, repeats=2)
    assert set(results) == set(variants)
    for r in results.values():
        assert r["step_seconds"] > 0 and r["compile_seconds"] > 0
    table = suite.ratio_table({suite.backend(): results}, "keras", 1.03, "method")
    assert table[2].startswith("| `keras` | ") and len(table) == 2 + len(variants)


def test_ratios_are_paired_by_round_with_a_noise_interval(suite):
    """A slow round slows every variant alike: the paired ratio (median of
    the per-round ratios) sees through it; a ratio over its goal whose
    interval reaches the goal is marked as noise, not as a miss."""

    def r(samples):
        return {
            "samples": samples,
            "step_seconds": sorted(samples)[len(samples) // 2],
            "spread": 0.0,
            "compile_seconds": 1.0,
        }

    results = {
        "keras": r([1.0, 1.0, 3.0, 3.0, 3.0]),
        "w:steady": r([1.1, 1.1, 3.3, 3.3, 3.3]),
        "w:noisy": r([3.0, 0.9, 3.3, 3.15, 2.85]),
    }
    # Ratio of the medians: 3.3 / 3.0 and 3.0 / 3.0; paired: 1.1 and 1.05.
    assert suite.paired_ratio(results, "w:steady", "keras") == pytest.approx(1.1)
    assert suite.paired_ratio(results, "w:noisy", "keras") == pytest.approx(1.05)
    low, high = suite.ratio_interval(results, "w:steady", "keras")
    assert low == pytest.approx(1.1) and high == pytest.approx(1.1)
    low, high = suite.ratio_interval(results, "w:noisy", "keras")
    assert low < 1.0 < 1.05 < high
    rows = suite.ratio_table({"tensorflow": results}, "keras", 1.03, "method")
    marks = {row.split(" | ")[0]: row.split(" | ")[3] for row in rows[2:]}
    assert marks == {
        "| `keras`": "",
        "| `w:steady`": "**no**",
        "| `w:noisy`": "within noise",
    }


def test_report_puts_the_backends_side_by_side(suite, tmp_path):
    """Each backend's results (from its own process) in one table: ratios
    are taken within a backend, never across; a variant or table measured on
    one backend only leaves the other's cells empty."""

    def r(ms):
        return {"step_seconds": ms / 1e3, "spread": 0.1, "compile_seconds": 1.0}

    tf_results = {"keras": r(2.0), "w:equal": r(2.2)}
    jax_results = {"keras": r(0.5), "w:equal": r(0.5), "w:famo": r(0.6)}
    table = suite.ratio_table(
        {"tensorflow": tf_results, "jax": jax_results}, "keras", 1.03, "method"
    )
    assert table[0].count("ms/step") == 2 and "TF ÷ `keras`" in table[0]
    assert table[3].split(" | ")[1:4] == ["2.20", "1.100 (1.10-1.10)", "**no**"]
    assert table[3].split(" | ")[6:9] == ["0.50", "1.000 (1.00-1.00)", "yes"]
    assert table[4].split(" | ")[1] == "–"  # w:famo measured on JAX only
    cfg = suite.argparse.Namespace(widths=[32], tasks=[2, 3])
    records = {
        "tensorflow": {"loss_level/mlp32/jit=False": tf_results},
        "jax": {"loss_level/mlp32/jit=True": jax_results},
    }
    lines = suite.format_loss_level(cfg, records)
    assert "### MLP width 32, jit_compile=True" in lines
    assert "### MLP width 32, jit_compile=False" in lines
    # Section 1 measures XLA off on TensorFlow only.
    assert [t["jit"] for t in suite.plan("1", cfg, "jax")] == [True]
    assert [t["jit"] for t in suite.plan("1", cfg, "tensorflow")] == [True, False]
    # A hand-written profile section survives a rewrite of the report.
    report = tmp_path / "performance.md"
    report.write_text("# Performance\n\nold tables\n\n## Profile\n\nfindings\n")
    assert suite.kept_profile(report) == ["## Profile", "", "findings", ""]

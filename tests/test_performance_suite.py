"""The performance suite's building blocks (benchmarks/performance.py): its
ideal per-task-gradient baseline is a correct training step on the backend
the tests run on (TensorFlow, or JAX with KERAS_BACKEND=jax), timing runs
end to end, and the report merges both backends. Nothing here asserts a
time."""

import argparse
import importlib.util
import json
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


def import_by_path(name: str, path: Path):
    """The benchmark script at `path` as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return import_by_path("performance_suite", PATH)


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


def test_kept_sections_name_the_machine_that_measured_each(suite, tmp_path):
    """A report keeping sections of earlier runs names each kept section's
    machine (sections of one machine share a sentence), and its record
    keeps every section's machine for the next `--keep`."""
    intel, amd, now = {"cpu": "Intel"}, {"cpu": "AMD"}, {"cpu": "EPYC 2"}
    # A record from before per-section machines: sections 1-4 kept from an
    # Intel run, section 5 measured by that run, on AMD.
    old = {"machine": amd, "config": {"kept": {"sections": ["1", "2", "3", "4"]}}}
    old["config"]["kept"]["machine"] = intel
    assert suite.kept_machine(old, "3") == intel
    assert suite.kept_machine(old, "5") == amd
    kept = {s: suite.kept_machine(old, s) for s in ["1", "3", "4", "5"]}
    cfg = suite.argparse.Namespace(
        sections="2", repeats=3, steps=None, sample_seconds=0.1,
        kept={"record": "old.json", "sections": list(kept), "machines": kept},
    )  # fmt: skip
    out = tmp_path / "performance.md"
    records = {"tensorflow": {}}
    suite.write_report(out, cfg, ["--sections", "2"], now, 0.0, [], [], records, {})
    text = out.read_text()
    assert "Sections 1, 3, 4 are kept from an earlier run (`old.json`; " in text
    assert "machine: cpu Intel)." in text
    assert (
        "Section 5 is kept from an earlier run (`old.json`; machine: cpu AMD)." in text
    )
    assert "Section 2 was measured by this command." in text
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["section_machines"] == {
        "1": intel, "2": now, "3": intel, "4": intel, "5": amd,
    }  # fmt: skip
    assert suite.kept_machine(record, "2") == now


def test_machine_names_glibc_tunables_when_set(suite, monkeypatch):
    """glibc's malloc settings change JAX's CPU steps (docs/backends.md): a
    run with them says so in its machine line."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert "glibc_tunables" not in suite.machine()
    tunables = "glibc.malloc.arena_max=1"
    monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert suite.machine()["glibc_tunables"] == tunables


# ------------------------------------- side by side with PyTorch + TorchJD
SIDE_BY_SIDE_PATH = PATH.parent / "torchjd_side_by_side.py"
_NEEDS_TORCHJD = pytest.mark.skipif(
    any(importlib.util.find_spec(n) is None for n in ("torch", "torchjd", "cvxpy")),
    reason="torch and torchjd[full] are not installed: the performance suite's "
    "own set-up (scripts/perf.sh) installs them; keras_mtl does not depend on them",
)


@pytest.fixture(scope="module")
def side_by_side():
    return import_by_path("side_by_side", SIDE_BY_SIDE_PATH)


def test_side_by_side_names_what_is_missing(side_by_side, monkeypatch, capsys):
    """Without TorchJD (as on CI) the comparison measures nothing it cannot
    pair, starts no worker and says what to install."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.split(".")[0] == "torchjd" else real(name, *a),
    )
    methods = list(side_by_side.METHODS)
    record = side_by_side.run(["mlp"], methods, ["torchjd"], 256, 1)
    assert record["results"] == {}
    for method in methods:
        assert "torchjd" in record["missing"][f"mlp/{method}/torchjd"]
    text = "\n".join(side_by_side.format_table(record))
    for label in side_by_side.METHOD_LABELS.values():  # every method, unmeasured
        assert f"| {label} | – | – |" in text
    assert "torchjd not installed" in text and "scripts/perf.sh" in text
    assert side_by_side.main(["--frameworks", "torchjd", "--methods", "sum",
                              "--out", "/dev/null"]) == 0  # fmt: skip
    assert "torchjd not installed" in capsys.readouterr().out


def test_side_by_side_table_pairs_ratios_by_round(suite, side_by_side):
    """keras_mtl ÷ TorchJD is the median of the per-round ratios: a slow
    round for both leaves it unchanged. The suite reports it as section 5."""

    def cell(samples):
        return {"samples": samples, "epoch_seconds": sorted(samples)[1], "peak_mb": 9}

    record = {
        "config": {"models": ["mlp"], "methods": ["upgrad"],
                   "frameworks": ["torchjd", "jax"], "samples": 8192,
                   "batch_size": 256, "rounds": 3, "torchjd": "0.18.0"},
        "results": {"mlp/upgrad": {"torchjd": cell([2.0, 6.0, 2.0]),
                                   "jax": cell([1.0, 3.0, 1.2])}},
    }  # fmt: skip
    row = side_by_side.format_table(record)[-2].split(" | ")
    assert row[0] == "| UPGrad" and row[1:3] == ["2.00", "1.20"]
    assert row[3] == "0.50 (0.50-0.60)"
    # Measured once for every backend, kept under the first one's record.
    records = {"tensorflow": {suite.SIDE_BY_SIDE_KEY: record}, "jax": {}}
    section = suite.format_torchjd(suite.argparse.Namespace(), records)
    assert section[0] == "## 5. Side by side with PyTorch + TorchJD"
    assert "| UPGrad | 2.00 | 1.20 | 0.50 (0.50-0.60) | 9 | 9 |" in section
    assert suite.FORMATS["5"] is suite.format_torchjd


@_NEEDS_TORCHJD
def test_keras_mtl_and_torchjd_aggregate_alike(side_by_side):
    """The benchmark's pairs are the same methods: on one conflicting
    Jacobian keras_mtl's aggregator (with the benchmark's options) and
    TorchJD's give the same update, up to the stated differences."""
    import torch
    from torchjd import aggregation
    from torchjd.linalg import QuadprogProjector

    import keras_mtl

    rng = np.random.default_rng(0)
    jacobian = rng.standard_normal((3, 40))
    jacobian[1] = 0.5 * jacobian[1] - 0.5 * jacobian[0]  # rows 0 and 1 conflict
    jacobian = jacobian.astype("float32")
    for method in side_by_side.METHODS:
        rows = jacobian[:2] if method == "pcgrad" else jacobian
        theirs_agg = side_by_side.torchjd_aggregator(method)
        if method == "sum":
            theirs_agg = aggregation.Sum()
        elif method == "mgda":  # its Frank-Wolfe run to convergence
            theirs_agg = aggregation.MGDA(epsilon=1e-12, max_iters=100_000)
        elif method == "upgrad":  # its quadprog projector, unregularised
            theirs_agg = aggregation.UPGrad(
                projector=QuadprogProjector(norm_eps=0.0, reg_eps=0.0)
            )
        ours = keras_mtl.aggregation.get(
            method, **side_by_side.KERAS_MTL_OPTIONS.get(method, {})
        )(rows)
        theirs = theirs_agg(torch.from_numpy(rows.astype("float64"))).numpy()
        if method == "aligned_mtl":
            theirs = 3 * theirs  # TorchJD averages the aligned rows, we sum them
        # CAGrad and Nash-MTL: TorchJD solves with cvxpy to ~1e-8 on the
        # objective, ~sqrt(1e-8) on the minimiser; the others float32 (PCGrad
        # on two rows: with three its projection order is random).
        rtol = 1e-4 if method in ("cagrad", "nash_mtl") else 1e-5
        np.testing.assert_allclose(
            np.asarray(ours), theirs, rtol=0, atol=rtol * np.linalg.norm(theirs),
            err_msg=method,
        )  # fmt: skip


def test_side_by_side_cnn_channels_first_is_the_same_network(side_by_side):
    """The torch columns' CNN, built channels first (PyTorch's layout), is the
    channels-last network with its axes reordered: with the same weights it
    gives the same outputs on the transposed images (Keras' `Flatten` reads a
    channels-first map in channels-last order, so even the shared Dense's
    rows line up)."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 12, 16, 1), dtype="float32")
    last = side_by_side.keras_mtl_model("sum", "cnn", jit_compile=False)
    before = keras.config.image_data_format()
    try:
        first = side_by_side.keras_mtl_model(
            "sum", "cnn", jit_compile=False, channels_first=True
        )
    finally:  # it sets the process' format: this one's is left as it was
        keras.config.set_image_data_format(before)
    assert tuple(first.net.input.shape) == (None, 1, 12, 16)
    assert [w.shape for w in first.net.weights] == [w.shape for w in last.net.weights]
    first.net.set_weights(last.net.get_weights())
    ours = last.net.predict(x, verbose=0)
    theirs = first.net.predict(x.transpose(0, 3, 1, 2).copy(), verbose=0)
    for name in ours:
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("keras_arrays", [False, True])
def test_side_by_side_workers_get_the_drivers_layout(
    side_by_side, channels_last, keras_arrays
):
    """A worker parses the layout the driver was given back from the flags
    the driver passes it, and the record's config names that layout."""
    layout = side_by_side.Layout(channels_last, keras_arrays)
    parser = argparse.ArgumentParser()
    side_by_side.Layout.add_flags(parser)
    assert side_by_side.Layout.from_args(parser.parse_args(layout.argv())) == layout
    config = layout.config()
    assert config["torch_image_data_format"] == (
        "channels_last" if channels_last else "channels_first"
    )
    assert config["tensorflow_input"] == (
        side_by_side.ARRAYS_INPUT if keras_arrays else side_by_side.TF_DATA_INPUT
    )
    assert layout.channels_first("torch", "cnn") is not channels_last
    assert not layout.channels_first("tensorflow", "cnn")
    assert not layout.channels_first("torch", "mlp")
    assert layout.tf_data("tensorflow") is not keras_arrays
    assert not layout.tf_data("jax")


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the TensorFlow column's input, checked in the TensorFlow pass",
)
def test_side_by_side_tensorflow_input_is_each_sample_once_an_epoch(side_by_side):
    """The TensorFlow column's `tf.data` input: every sample once an epoch
    with its own targets, in batches of the benchmark's size, a new order
    each epoch, and tf.data's autotuning off (its thread's join stalled
    epochs)."""
    import tensorflow as tf

    n = 2 * side_by_side.BATCH_SIZE + 7
    x = np.arange(n, dtype="float32")[:, None] * np.ones((1, 3), "float32")
    targets = {"task_0": np.arange(n, dtype="float32"), "task_1": -np.arange(n)}
    dataset = side_by_side.tf_input(x, targets)
    assert dataset.options().autotune.enabled is False
    orders = []
    for _ in range(2):
        batches = list(dataset.as_numpy_iterator())
        assert [len(b[0]) for b in batches] == [side_by_side.BATCH_SIZE] * 2 + [7]
        features = np.concatenate([b[0] for b in batches])
        for name, sign in (("task_0", 1), ("task_1", -1)):
            column = np.concatenate([b[1][name] for b in batches])
            np.testing.assert_array_equal(sign * column, features[:, 0])
        np.testing.assert_array_equal(np.sort(features[:, 0]), np.arange(n))
        orders.append(features[:, 0])
    assert not np.array_equal(orders[0], orders[1])
    assert isinstance(dataset, tf.data.Dataset)


@_NEEDS_TORCHJD
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="its workers choose their own backends: run once, under TensorFlow",
)
def test_quick_side_by_side_times_each_kind_of_step(side_by_side, tmp_path):
    """The quick mode end to end on the two eager torch columns (TorchJD and
    keras_mtl on torch; no compile, so the test takes about a minute): plain
    sum (one backward), UPGrad (a Gramian solver) and Nash-MTL (stateful,
    cvxpy in TorchJD) timed in fresh processes taking turns, positive finite
    epochs and peaks, and the aggregator acts on the same shared parameters
    in both. The other methods differ only in the aggregator (compared above)."""
    methods = ["sum", "upgrad", "nash_mtl"]
    out = tmp_path / "side.json"
    args = ["--quick", "--models", "mlp", "--frameworks", "torchjd,torch"]
    args += ["--methods", ",".join(methods), "--out", str(out)]
    assert side_by_side.main(args) == 0
    record = json.loads(out.read_text())
    assert record["missing"] == {} and record["config"]["rounds"] == 2
    for method in methods:
        cells = record["results"][f"mlp/{method}"]
        assert set(cells) == {"torchjd", "torch"}
        for cell in cells.values():
            assert len(cell["samples"]) == 2
            assert all(0 < s < float("inf") for s in cell["samples"])
            assert np.isfinite(cell["peak_mb"]) and cell["peak_mb"] > 0
        # The trunk: 64*1024 + 2*1024*1024 weights and 3*1024 biases.
        assert cells["torchjd"]["shared_parameters"] == 2_165_760
        assert cells["torch"]["shared_parameters"] == 2_165_760
    lines = side_by_side.format_table(record)
    rows = [line for line in lines if line.startswith("| ")][1:]  # no head
    assert [r.split(" | ")[0][2:] for r in rows] == [
        "plain sum",
        "UPGrad",
        "Nash-MTL",
    ]

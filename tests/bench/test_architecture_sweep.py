"""`keras-mtl bench --dataset mmoe_synthetic`: the architectures x correlations
sweep end to end (tiny sizes, one epoch), the networks and the usage errors."""

import json

import keras
import numpy as np
import pytest

from keras_mtl import layers
from keras_mtl.bench.cli import bench
from keras_mtl.bench.models import ARCHITECTURES, vector_mlp
from keras_mtl.bench.runner import prepare
from keras_mtl.datasets import TaskSpec

TASKS = {"task_1": TaskSpec("regression", 1), "task_2": TaskSpec("regression", 1)}
LAYER_OF = {
    "mmoe": layers.MMoE,
    "cgc": layers.CGC,
    "ple": layers.PLE,
    "dselect_k": layers.DSelectK,
    "cross_stitch": layers.CrossStitch,
}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_vector_mlp_uses_the_architecture(architecture):
    net = vector_mlp(6, TASKS, architecture)
    kinds = {type(layer) for layer in net.layers}
    if architecture == "shared_bottom":
        assert net.get_layer("shared").units == 128
        assert not kinds & set(LAYER_OF.values())
    else:
        assert LAYER_OF[architecture] in kinds
    outputs = net(np.zeros((3, 6), "float32"))
    assert set(outputs) == set(TASKS)
    assert all(tuple(v.shape) == (3, 1) for v in outputs.values())
    # Regression heads are linear (no squashing activation).
    assert net.get_layer("task_1").activation is keras.activations.linear


def test_other_datasets_keep_their_network_and_refuse_architectures():
    with pytest.raises(ValueError, match="vector inputs"):
        prepare("multi_digits", {"max_examples": 8}, architecture="mmoe")
    with pytest.raises(ValueError, match="Unknown architecture"):
        prepare("mmoe_synthetic", {"max_examples": 8}, architecture="moe")


def test_sweep_writes_results_and_plot(tmp_path):
    out = tmp_path / "sweep"
    code = bench(
        [
            "--dataset", "mmoe_synthetic", "--architectures", "shared_bottom,mmoe",
            "--correlations", "0.2,1.0", "--seeds", "1", "--epochs", "1",
            "--max-examples", "48", "--batch-size", "16", "--verbose", "0",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["architectures"] == ["shared_bottom", "mmoe"]
    assert meta["correlations"] == [0.2, 1.0] and meta["methods"] == ["equal"]
    runs = results["runs"]
    assert len(runs) == 2 * 2  # architectures x correlations x seeds
    combos = {(r["architecture"], r["correlation"], r["seed"]) for r in runs}
    assert len(combos) == 4
    for run in runs:
        assert set(run["test"]) == {"task_1", "task_2"}
        for scores in run["test"].values():
            assert scores["mse"] > 0 and np.isfinite(scores["r2"])
        assert len(run["history"]["val_task_1_loss"]) == 1
    rows = results["summary"]["rows"]
    assert len(rows) == 4
    for row in rows:
        matching = [
            r
            for r in runs
            if (r["architecture"], r["correlation"])
            == (row["architecture"], row["correlation"])
        ]
        per_run = [np.mean([r["test"][t]["mse"] for t in r["test"]]) for r in matching]
        assert row["mean_mse"]["mean"] == pytest.approx(np.mean(per_run))
        assert row["mean_mse"]["std"] == pytest.approx(np.std(per_run))
    # The correlation a run was trained with is what its data had: p = 1
    # gives (up to the noise) equal labels.
    labels = results["summary"]["label_correlation"]
    assert labels["1.0"]["mean"] > 0.9 > labels["0.2"]["mean"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "architecture,correlation,method,seed,task,metric,value"
    assert len(csv_lines) == 1 + 4 * 2 * 2  # runs x tasks x (r2, mse)
    table = (out / "results.md").read_text()
    assert "| `mmoe` |" in table and "p = 0.2" in table and "label correlation" in table
    assert (out / "correlation_sweep.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--dataset", "mmoe_synthetic", "--architectures", "moe"], ["moe", "mmoe"]),
        (
            ["--dataset", "mmoe_synthetic", "--architectures", "mmoe,mmoe"],
            ["twice"],
        ),
        (["--dataset", "mmoe_synthetic", "--correlations", "0.5,1.5"], ["1.5"]),
        (["--dataset", "mmoe_synthetic", "--correlations", "0.5,high"], ["high"]),
        (["--dataset", "mmoe_synthetic", "--correlations", "0.5,0.5"], ["twice"]),
        (["--dataset", "multi_digits", "--architectures", "mmoe"], ["multi_digits"]),
        (["--dataset", "toy", "--architecture", "ple"], ["toy", "mmoe_synthetic"]),
        (["--dataset", "multi_digits", "--correlations", "0.5"], ["--correlations"]),
    ],
)
def test_usage_errors(argv, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    for word in words:
        assert word in err
    assert not (tmp_path / "out").exists()  # nothing was run or written


def test_regression_scores():
    from keras_mtl.bench.metrics import main_metric, task_scores

    spec = TaskSpec("regression", 1)
    y = np.array([[1.0], [2.0], [3.0], [6.0]])
    prediction = np.array([[1.5], [2.0], [2.0], [6.0]])
    scores = task_scores(spec, y, prediction)
    # MSE = (0.25 + 0 + 1 + 0) / 4; Var(y) = 3.5; R² = 1 - MSE / Var(y).
    assert scores["mse"] == pytest.approx(0.3125)
    assert scores["r2"] == pytest.approx(1 - 0.3125 / 3.5)
    assert task_scores(spec, y, np.full_like(y, 3.0))["r2"] == pytest.approx(0.0)
    assert main_metric(spec) == "r2" and next(iter(scores)) == "r2"

"""The benchmark CLI end to end on real offline digits (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keras_mtl.bench.cli import bench, main, split_methods
from keras_mtl.bench.runner import parse_method

REPO = Path(__file__).resolve().parents[2]


def test_parse_method_arguments_and_errors():
    assert parse_method("adaptive:mode=epoch:temperature=2") == (
        "adaptive",
        {"mode": "epoch", "temperature": 2},
    )
    with pytest.raises(ValueError, match="Valid methods"):
        parse_method("nope")
    with pytest.raises(ValueError, match="temperature"):
        parse_method("dwa:temperature=0")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("adaptive:epoch")
    assert "adaptive:mode=epoch" in split_methods("all")
    with pytest.raises(ValueError, match="twice"):
        split_methods("equal,equal")


def test_unknown_dataset_and_method_list_valid_names(capsys):
    with pytest.raises(SystemExit):
        bench(["--dataset", "imagenet"])
    assert "multi_digits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench(["--methods", "equal,magic"])
    err = capsys.readouterr().err
    assert "magic" in err and "uncertainty" in err
    assert main(["frobnicate"]) == 2


def test_bench_runs_and_writes_results(tmp_path):
    out = tmp_path / "run"
    code = bench(
        [
            "--dataset", "multi_digits", "--methods", "equal,adaptive",
            "--epochs", "2", "--seeds", "2", "--max-examples", "256",
            "--batch-size", "64", "--out", str(out), "--verbose", "0",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["seeds"] == 2 and results["summary"]["baseline"] == "equal"
    assert len(results["runs"]) == 4
    methods = results["summary"]["methods"]
    assert methods["equal"]["delta_m"] == pytest.approx(0.0)
    for run in results["runs"]:
        assert set(run["test"]) == {"left", "right", "sum_parity"}
        assert len(run["history"]["val_left_loss"]) == 2
        # Training lowered the digit losses.
        assert run["history"]["left_loss"][-1] < run["history"]["left_loss"][0]
    # Each seed has its own initialisation and training order.
    equal = [r for r in results["runs"] if r["method"] == "equal"]
    assert equal[0]["history"]["loss"] != equal[1]["history"]["loss"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "method,seed,task,metric,value" and len(csv_lines) > 4
    table = (out / "results.md").read_text()
    assert "Δm% vs equal" in table and "`adaptive`" in table
    for name in ("val_loss_curves.png", "task_weights.png"):
        assert (out / name).stat().st_size > 1000


def test_toy_paths(tmp_path):
    out = tmp_path / "toy"
    assert (
        bench(
            [
                "--dataset",
                "toy",
                "--methods",
                "equal,bmtl",
                "--epochs",
                "300",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"equal", "bmtl"}
    assert len(results["equal"]["final_losses"]) == 5
    assert (out / "toy_paths.png").stat().st_size > 1000


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "keras_mtl.bench", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "--dataset" in done.stdout

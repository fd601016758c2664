"""The benchmark CLI end to end on real offline digits (tiny settings)."""

import json
import runpy
import sys

import numpy as np
import pytest

import keras_mtl
from keras_mtl.bench.cli import bench, main, split_methods
from keras_mtl.bench.runner import parse_method


def test_parse_method_arguments_and_errors():
    method = parse_method("adaptive:mode=epoch:temperature=2")
    assert (method.weighting, method.weighting_kwargs) == (
        "adaptive",
        {"mode": "epoch", "temperature": 2},
    )
    assert method.aggregator is None and method.build()["aggregator"] is None
    with pytest.raises(ValueError, match="Valid methods"):
        parse_method("nope")
    with pytest.raises(ValueError, match="temperature"):
        parse_method("dwa:temperature=0")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("adaptive:epoch")
    assert "adaptive:mode=epoch" in split_methods("all")
    with pytest.raises(ValueError, match="twice"):
        split_methods("equal,equal")


def test_parse_method_with_an_aggregator():
    # An aggregator alone runs on equally weighted losses.
    alone = parse_method("pcgrad")
    assert (alone.weighting, alone.aggregator) == ("equal", "pcgrad")
    both = parse_method("bmtl:temperature=2+cagrad:c=0.2")
    assert both.weighting_kwargs == {"temperature": 2}
    assert both.aggregator_kwargs == {"c": 0.2}
    built = both.build()
    assert isinstance(built["weighting"], keras_mtl.weighting.BMTL)
    assert isinstance(built["aggregator"], keras_mtl.aggregation.CAGrad)
    assert built["aggregator"].c == pytest.approx(0.2)
    # Each build is a fresh pair (state is never shared between runs).
    assert both.build()["aggregator"] is not built["aggregator"]
    with pytest.raises(ValueError, match="'upgrad' is not a weighting"):
        parse_method("upgrad+pcgrad")
    with pytest.raises(ValueError, match="'dwa' is not an aggregator"):
        parse_method("equal+dwa")
    with pytest.raises(ValueError, match="weighting\\+aggregator"):
        parse_method("equal+pcgrad+mgda")
    with pytest.raises(ValueError, match="weighting\\+aggregator"):
        parse_method("equal+")
    with pytest.raises(ValueError, match="Unknown method 'magic'"):
        parse_method("equal+magic")
    with pytest.raises(ValueError, match="nonsense"):
        parse_method("pcgrad:nonsense=1")


def test_method_names_are_unambiguous_and_grouped():
    # A spec's name is looked up in both registries: they must not overlap.
    weightings = set(keras_mtl.weighting.names())
    aggregators = set(keras_mtl.aggregation.names())
    assert not weightings & aggregators
    gradient = split_methods("gradient")
    classes = [keras_mtl.aggregation.ALIASES[name] for name in gradient]
    assert len(set(classes)) == len(classes)
    assert set(classes) == set(keras_mtl.aggregation.ALIASES.values())
    assert split_methods("everything") == split_methods("all") + gradient


def test_unknown_dataset_and_method_list_valid_names(capsys):
    with pytest.raises(SystemExit):
        bench(["--dataset", "imagenet"])
    assert "multi_digits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench(["--methods", "equal,magic"])
    err = capsys.readouterr().err
    assert "magic" in err and "uncertainty" in err
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize(
    "option, value",
    [
        ("--epochs", "-1"),
        ("--epochs", "0"),
        ("--seeds", "0"),
        ("--batch-size", "-8"),
        ("--max-examples", "0"),
        ("--learning-rate", "0"),
        ("--learning-rate", "nan"),
        ("--epochs", "two"),
    ],
)
def test_non_positive_numbers_are_a_usage_error(option, value, capsys, tmp_path):
    # Before: `--dataset toy --epochs -1` ended in a traceback ("need at
    # least one array to concatenate").
    with pytest.raises(SystemExit) as exit_info:
        bench(["--dataset", "toy", "--out", str(tmp_path), option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and option in err and value in err
    assert not any(tmp_path.iterdir())  # nothing was run or written


def test_bench_runs_and_writes_results(tmp_path):
    out = tmp_path / "run"
    code = bench(
        [
            "--dataset", "multi_digits", "--methods", "equal,adaptive+pcgrad",
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
    assert "Δm% vs equal" in table and "`adaptive+pcgrad`" in table
    pcgrad = [r for r in results["runs"] if r["method"] == "adaptive+pcgrad"]
    assert len(pcgrad) == 2
    assert "grad_cosine_min" in pcgrad[0]["history"]
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


def test_module_entry_point_help(capsys, monkeypatch):
    # `python -m keras_mtl.bench --help`, in this process: runpy finds and
    # runs the package's __main__ as `-m` does, without a new interpreter
    # importing TensorFlow (~4 s of CPU). A fresh interpreter runs
    # `keras-mtl bench --help` in scripts/wheel_smoke_test.py.
    monkeypatch.setattr(sys, "argv", ["keras_mtl.bench", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("keras_mtl.bench", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0 and "--dataset" in capsys.readouterr().out


def test_toy_path_with_aggregators():
    """On the toy problem, `sum` of the two task gradients is the gradient of
    the summed losses: its path is the equal-weighting path. `mean` halves
    both gradients: Adam's update is invariant to a constant gradient scale
    (up to its epsilon), so the path is the same and the logged effective
    weights are 1/2 each."""
    from keras_mtl.bench.toy import STEPS_PER_EPOCH, optimise_path

    toy = keras_mtl.datasets.load("toy")
    start = toy.start_points[0]
    # One epoch of the toy loop (`STEPS_PER_EPOCH`): one compile per method
    # (150 steps compiled a second loop for the last 50). 100 Adam steps
    # move the parameters by about 1 and MGDA's path ends 0.03 from
    # equal's (measured): a wrong direction would exceed the tolerances.
    steps = STEPS_PER_EPOCH
    equal = optimise_path(toy, "equal", start, steps=steps)
    summed = optimise_path(toy, "sum", start, steps=steps)
    np.testing.assert_allclose(summed["params"], equal["params"], atol=1e-5)
    # (Recovered by ridge-regularised least squares: close, not exact.)
    np.testing.assert_allclose(summed["weights"], 1.0, atol=2e-3)
    mean = optimise_path(toy, "mean", start, steps=steps)
    np.testing.assert_allclose(mean["params"], equal["params"], atol=1e-3)
    np.testing.assert_allclose(mean["weights"], 0.5, atol=2e-3)
    # MGDA moves along a common descent direction: while the two task
    # gradients do not conflict head-on, plain gradient steps with it do not
    # raise both losses at once; with Adam we check the weaker end result.
    mgda = optimise_path(toy, "mgda", start, steps=steps)
    assert np.all(np.isfinite(mgda["params"]))
    assert np.all(mgda["weights"] >= -1e-4)


def test_a_method_that_needs_more_tasks_is_a_usage_error(capsys, tmp_path):
    # Krum (n_byzantine=0) needs three rows; the toy problem has two tasks.
    # Before: `--dataset toy --methods gradient` stopped mid-run in a trace.
    with pytest.raises(SystemExit) as exit_info:
        bench(["--dataset", "toy", "--methods", "equal,krum", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'krum' on 2 tasks" in err and "got 2" in err
    assert not any(tmp_path.iterdir())

"""The scripts in examples/ run end to end, offline, on tiny settings.

multi_digits, goemotions (the local files in ../shared/data/goemotions) and
toy run on real data; multi_mnist and celeb_a inside tfds' mock data.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

ROOT = Path(__file__).resolve().parents[1]
GOEMOTIONS_DIR = (ROOT / ".." / "shared" / "data" / "goemotions").resolve()


def load_example(name):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(result, tasks, export_dir):
    """Every task scored with finite metrics; the export serves like predict."""
    assert list(result["scores"]) == list(tasks)
    for task, scores in result["scores"].items():
        assert "loss" in scores and len(scores) >= 2, task
        assert all(math.isfinite(v) for v in scores.values()), (task, scores)
    assert result["export_dir"] == str(export_dir)
    assert (export_dir / "saved_model.pb").is_file()
    assert result["export_max_abs_diff"] < 1e-4


def test_multi_digits(tmp_path):
    out = tmp_path / "export"
    result = load_example("multi_digits").main(
        ["--method", "dwa+pcgrad", "--epochs", "1", "--max-examples", "64"]
        + ["--batch-size", "32", "--export-dir", str(out)]
    )
    check(result, ["left", "right", "sum_parity"], out)
    assert set(result["scores"]["sum_parity"]) == {"loss", "accuracy", "auc"}


@pytest.mark.skipif(
    not (GOEMOTIONS_DIR / "original" / "train.tsv").is_file(),
    reason=f"GoEmotions files not at {GOEMOTIONS_DIR}",
)
def test_goemotions(tmp_path):
    out = tmp_path / "export"
    result = load_example("goemotions").main(
        ["--epochs", "1", "--max-examples", "64", "--batch-size", "32"]
        + ["--vocabulary-size", "300", "--sequence-length", "16"]
        + ["--data-dir", str(GOEMOTIONS_DIR), "--export-dir", str(out)]
    )
    check(result, ["group", "ekman", "original"], out)
    assert set(result["scores"]["original"]) == {"loss", "macro_f1", "auc"}
    assert (out / "vocabulary.txt").read_text().split()[:2] == ["[PAD]", "[UNK]"]


@pytest.mark.skipif(
    not (GOEMOTIONS_DIR / "original" / "train.tsv").is_file(),
    reason=f"GoEmotions files not at {GOEMOTIONS_DIR}",
)
def test_goemotions_missing_labels():
    result = load_example("goemotions_missing_labels").main(
        ["--epochs", "2", "--max-examples", "96", "--batch-size", "16"]
        + ["--labelled-fraction", "0.25", "--zero-fill"]
        + ["--vocabulary-size", "300", "--sequence-length", "16"]
        + ["--data-dir", str(GOEMOTIONS_DIR)]
    )
    assert result["examples"] == 96 and 0 < result["labelled"] < 96
    for run in ("masked", "zero_fill"):
        history, scores = result[run]["history"], result[run]["scores"]
        assert list(scores) == ["group", "ekman", "original"]
        for key, values in history.items():
            # Three quarters of ekman's labels are NaN: no NaN reaches a log
            # (a batch without any enters no epoch mean).
            assert len(values) == 2 and all(math.isfinite(v) for v in values), key
        assert "val_ekman_weight" not in history
    # Filling the missing labels with 0 is another objective: other numbers.
    assert result["masked"]["history"]["ekman_loss"] != pytest.approx(
        result["zero_fill"]["history"]["ekman_loss"], rel=1e-3
    )


def test_multi_mnist_mocked(tmp_path):
    out = tmp_path / "export"
    with tfds.testing.mock_data(num_examples=12):
        result = load_example("multi_mnist").main(
            ["--method", "bmtl", "--epochs", "1", "--max-examples", "24"]
            + ["--batch-size", "8", "--export-dir", str(out)]
        )
    check(result, ["left", "right"], out)


def test_celeb_a_mocked(tmp_path):
    out = tmp_path / "export"
    attributes = ["Smiling", "Male", "Young"]
    with tfds.testing.mock_data(num_examples=16):
        result = load_example("celeb_a").main(
            ["--epochs", "1", "--max-examples", "16", "--batch-size", "8"]
            + ["--image-size", "16", "--attributes", ",".join(attributes)]
            + ["--export-dir", str(out)]
        )
    check(result, attributes, out)


def test_toy(tmp_path):
    result = load_example("toy").main(
        ["--method", "equal", "--method", "adaptive", "--steps", "10"]
        + ["--plot", "--out", str(tmp_path)]
    )
    assert list(result) == ["equal", "adaptive"]
    for runs in result.values():
        assert set(runs) == {"f1", "f2", "distance_to_front"}
        for values in runs.values():
            assert len(values) == 5 and all(math.isfinite(v) for v in values)
    assert (tmp_path / "toy_paths.png").is_file()

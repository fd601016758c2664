"""GoEmotions: local files (real data), the taxonomy mapping, the tfds path."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_mtl.datasets import goemotions, load, load_goemotions_texts
from keras_mtl.datasets.goemotions import (
    EKMAN_MAPPING,
    ENV_VAR,
    ORIGINAL_LABELS,
    SENTIMENT_MAPPING,
    find_goemotions_dir,
    load_goemotions,
    read_goemotions_split,
)

DATA_DIR = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "goemotions"
).resolve()
needs_files = pytest.mark.skipif(
    not (DATA_DIR / "original" / "train.tsv").is_file(),
    reason=f"GoEmotions files not at {DATA_DIR}",
)
TAXONOMIES = ("group", "ekman", "original")
SIZES = {"group": 4, "ekman": 7, "original": 28}


def parse(taxonomy, filename, limit=None):
    """Independent parser: [(text, [label ids], comment id)] and label names."""
    names = (DATA_DIR / taxonomy / "labels.txt").read_text(encoding="utf-8").split()
    rows = []
    with open(DATA_DIR / taxonomy / filename, encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(rows) == limit:
                break
            text, ids, comment = line.rstrip("\n").split("\t")
            rows.append((text, [int(i) for i in ids.split(",")], comment))
    return rows, names


def multi_hot(ids, size):
    out = np.zeros(size, np.float32)
    out[ids] = 1.0
    return out


@needs_files
def test_structure_and_shapes():
    data = load_goemotions(data_dir=DATA_DIR, batch_size=16, max_examples=40)
    assert data.name == "goemotions"
    assert list(data.tasks) == list(TAXONOMIES)
    for taxonomy, spec in data.tasks.items():
        assert spec.kind == "multilabel" and spec.num_classes == SIZES[taxonomy]
        assert spec.label_names == tuple(parse(taxonomy, "dev.tsv", 0)[1])
    assert data.info["input"] == "text"
    assert data.info["label_names"]["ekman"][4] == "neutral"
    assert data.info["num_examples"] == {"train": 40, "validation": 40, "test": 40}
    assert data.info["source"] == str(DATA_DIR)
    for split in ("train", "validation", "test"):
        x_spec, y_spec = getattr(data, split).element_spec
        assert x_spec.dtype == tf.string and x_spec.shape.as_list() == [None]
        total = 0
        for x, y in getattr(data, split):
            assert x.dtype == tf.string and x.shape.rank == 1
            for taxonomy in TAXONOMIES:
                assert y[taxonomy].dtype == tf.float32
                assert y[taxonomy].shape == (x.shape[0], SIZES[taxonomy])
                # every comment has at least one label in every taxonomy
                assert np.all(y[taxonomy].numpy().sum(axis=1) >= 1)
            total += x.shape[0]
        assert total == 40


@needs_files
def test_targets_match_the_tsv_rows():
    data = load("goemotions", data_dir=str(DATA_DIR), batch_size=8, max_examples=24)
    # Validation (dev.tsv) is not shuffled: same order as the file.
    x, y = next(iter(data.validation))
    for taxonomy in TAXONOMIES:
        rows, _ = parse(taxonomy, "dev.tsv", 8)
        for i, (text, ids, _) in enumerate(rows):
            assert x[i].numpy().decode("utf-8") == text
            np.testing.assert_array_equal(
                y[taxonomy][i].numpy(), multi_hot(ids, SIZES[taxonomy])
            )
    # Training is shuffled: the same 24 rows, each with its own targets.
    expected = {
        taxonomy: {
            text: multi_hot(ids, SIZES[taxonomy])
            for text, ids, _ in parse(taxonomy, "train.tsv", 24)[0]
        }
        for taxonomy in TAXONOMIES
    }
    seen = []
    for x, y in data.train:
        for i, text in enumerate(x.numpy()):
            text = text.decode("utf-8")
            seen.append(text)
            for taxonomy in TAXONOMIES:
                np.testing.assert_array_equal(
                    y[taxonomy][i].numpy(), expected[taxonomy][text]
                )
    assert sorted(seen) == sorted(expected["original"])
    first_rows = [text for text, _, _ in parse("original", "train.tsv", 24)[0]]
    assert seen != first_rows  # shuffled


@needs_files
def test_training_shuffle_is_seeded():
    orders = []
    for seed, global_seed in ((0, 1), (0, 2), (1, 1)):
        tf.random.set_seed(global_seed)  # plays no part
        data = load_goemotions(
            data_dir=DATA_DIR, batch_size=64, max_examples=64, seed=seed
        )
        orders.append(
            [[t.decode() for t in next(iter(data.train))[0].numpy()] for _ in range(2)]
        )
    assert orders[0] == orders[1]
    assert orders[0][0] != orders[2][0]
    assert orders[0][0] != orders[0][1]  # a new order each epoch
    assert sorted(orders[0][0]) == sorted(orders[0][1])


@needs_files
@pytest.mark.parametrize("filename", ["train.tsv", "dev.tsv", "test.tsv"])
def test_taxonomy_mapping_reproduces_the_files(filename):
    original, original_names = parse("original", filename)
    assert tuple(original_names) == ORIGINAL_LABELS
    for taxonomy, mapping in (("ekman", EKMAN_MAPPING), ("group", SENTIMENT_MAPPING)):
        rows, names = parse(taxonomy, filename)
        assert sorted(mapping) == sorted(names)
        coarse_of = {
            emotion: label
            for label, emotions in mapping.items()
            for emotion in emotions
        }
        # every original label maps to exactly one coarse label
        assert sorted(coarse_of) == sorted(ORIGINAL_LABELS)
        assert sum(len(v) for v in mapping.values()) == len(ORIGINAL_LABELS)
        mismatches = 0
        for (text, ids, comment), (text2, coarse_ids, comment2) in zip(
            original, rows, strict=True
        ):
            assert (text, comment) == (text2, comment2)
            mapped = {coarse_of[original_names[i]] for i in ids}
            if mapped != {names[i] for i in coarse_ids}:
                mismatches += 1
        assert mismatches == 0, f"{taxonomy}/{filename}: {mismatches} rows disagree"
    # The module's matrix form agrees with the dict form.
    texts, targets, _ = read_goemotions_split(
        DATA_DIR, filename.split(".")[0].replace("dev", "validation")
    )
    for taxonomy in ("group", "ekman"):
        np.testing.assert_array_equal(
            goemotions.map_original(taxonomy, targets["original"]), targets[taxonomy]
        )


@needs_files
def test_texts_for_a_vocabulary():
    texts = load_goemotions_texts(DATA_DIR, split="train", max_examples=10)
    assert texts == [text for text, _, _ in parse("original", "train.tsv", 10)[0]]
    assert len(load_goemotions_texts(DATA_DIR, split="dev")) == 5426
    with pytest.raises(ValueError, match="split"):
        load_goemotions_texts(DATA_DIR, split="training")


@needs_files
def test_directory_lookup(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(DATA_DIR))
    assert find_goemotions_dir() == DATA_DIR
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        find_goemotions_dir()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.chdir(tmp_path)  # not found from the working dir: repository root
    assert find_goemotions_dir() == DATA_DIR
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_goemotions(data_dir=tmp_path)


@needs_files
def test_missing_coarse_taxonomies_are_derived(tmp_path):
    (tmp_path / "original").mkdir()
    shutil.copy(DATA_DIR / "original" / "labels.txt", tmp_path / "original")
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        lines = (
            (DATA_DIR / "original" / name).read_text(encoding="utf-8").splitlines(True)
        )
        (tmp_path / "original" / name).write_text("".join(lines[:30]), encoding="utf-8")
    derived = load_goemotions(data_dir=tmp_path, batch_size=30)
    files = load_goemotions(data_dir=DATA_DIR, batch_size=30, max_examples=30)
    _, y_derived = next(iter(derived.test))
    _, y_files = next(iter(files.test))
    for taxonomy in TAXONOMIES:
        np.testing.assert_array_equal(
            y_derived[taxonomy].numpy(), y_files[taxonomy].numpy()
        )
    assert derived.tasks == files.tasks


def test_errors():
    with pytest.raises(ValueError, match="batch_size"):
        load_goemotions(batch_size=0)
    with pytest.raises(ValueError, match="max_examples"):
        load_goemotions(max_examples=0)
    with pytest.raises(TypeError, match="vocab"):
        load("goemotions", vocab=1000)


def test_tfds_fallback(monkeypatch):
    assert tfds.builder_cls("goemotions") is not None
    monkeypatch.setattr(goemotions, "find_goemotions_dir", lambda data_dir=None: None)
    with tfds.testing.mock_data(num_examples=5):
        data = load_goemotions(batch_size=5, max_examples=4)
        raw = list(tfds.load("goemotions", split="validation"))[:4]
        texts = load_goemotions_texts(split="validation", max_examples=3)
    assert data.info["source"] == "tfds:goemotions"
    assert [spec.num_classes for spec in data.tasks.values()] == [4, 7, 28]
    x, y = next(iter(data.validation))
    assert x.shape == (4,) and x.dtype == tf.string
    assert texts == [ex["comment_text"].numpy().decode() for ex in raw[:3]]
    coarse_of = {
        taxonomy: {e: label for label, es in mapping.items() for e in es}
        for taxonomy, mapping in (
            ("ekman", EKMAN_MAPPING),
            ("group", SENTIMENT_MAPPING),
        )
    }
    for i, ex in enumerate(raw):
        assert x[i].numpy() == ex["comment_text"].numpy()
        present = [name for name in ORIGINAL_LABELS if bool(ex[name])]
        np.testing.assert_array_equal(
            y["original"][i].numpy(),
            [float(bool(ex[name])) for name in ORIGINAL_LABELS],
        )
        for taxonomy in ("ekman", "group"):
            names = data.tasks[taxonomy].label_names
            expected = {coarse_of[taxonomy][name] for name in present}
            got = {names[j] for j in np.flatnonzero(y[taxonomy][i].numpy())}
            assert got == expected

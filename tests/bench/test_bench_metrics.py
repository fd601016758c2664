"""Benchmark metrics checked against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from keras_mtl.bench.metrics import (
    binary_auc,
    delta_m,
    macro_f1,
    main_metric,
    mean_ranks,
    task_scores,
)
from keras_mtl.datasets import TaskSpec


def test_binary_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, size=200)
        score = np.round(rng.normal(size=200) + y, 1)  # rounded: many ties
        assert binary_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert np.isnan(binary_auc(np.ones(5), np.arange(5.0)))


def test_macro_f1_matches_sklearn_on_labels_present():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(300, 6))
    pred = rng.integers(0, 2, size=(300, 6))
    assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro"))
    # A label never present nor predicted is left out (undefined F1).
    y[:, 0] = 0
    pred[:, 0] = 0
    expected = f1_score(y[:, 1:], pred[:, 1:], average="macro")
    assert macro_f1(y, pred) == pytest.approx(expected)


def test_task_scores_by_kind():
    multiclass = TaskSpec("multiclass", 3)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    assert task_scores(multiclass, np.array([0, 2, 0]), probs) == {
        "accuracy": pytest.approx(2 / 3)
    }
    binary = TaskSpec("binary", 1)
    scores = task_scores(
        binary,
        np.array([[1.0], [0.0], [1.0], [0.0]]),
        np.array([[0.9], [0.2], [0.4], [0.6]]),
    )
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["auc"] == pytest.approx(0.75)
    multilabel = TaskSpec("multilabel", 2)
    scores = task_scores(
        multilabel, np.array([[1, 0], [0, 1]]), np.array([[0.8, 0.3], [0.6, 0.7]])
    )
    assert set(scores) == {"macro_f1", "auc"}
    assert main_metric(multiclass) == "accuracy"
    assert main_metric(binary) == "accuracy"
    assert main_metric(multilabel) == "auc"


def test_delta_m_by_hand():
    # Task 1 improves 10%, task 2 drops 5%: mean +2.5%.
    assert delta_m([0.55, 0.76], [0.5, 0.8]) == pytest.approx(2.5)
    assert delta_m([0.5, 0.8], [0.5, 0.8]) == 0.0


def test_mean_ranks_with_ties():
    ranks = mean_ranks({"a": [0.9, 0.5], "b": [0.8, 0.5], "c": [0.7, 0.6]})
    # Task 1: a=1, b=2, c=3. Task 2: c=1, a and b tie for 2-3 -> 2.5.
    assert ranks == {
        "a": pytest.approx(1.75),
        "b": pytest.approx(2.25),
        "c": pytest.approx(2.0),
    }

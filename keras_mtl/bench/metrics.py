"""Per-task evaluation, the multi-task performance Δm and mean ranks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from keras_mtl.datasets import TaskSpec


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged.
    NaN when only one class is present."""
    y_true = np.asarray(y_true).astype(bool).ravel()
    score = np.asarray(score, dtype="float64").ravel()
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype="float64")
    sorted_scores = score[order]
    # Average ranks over ties.
    start = 0
    while start < len(score):
        stop = start
        while stop + 1 < len(score) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return float(
        (ranks[y_true].sum() - positives * (positives + 1) / 2)
        / (positives * negatives)
    )


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged F1 over the labels (columns) of multi-hot arrays.

    A label with no positive in both the truth and the prediction has no
    defined F1 and is left out of the mean."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    scores = []
    for j in range(y_true.shape[1]):
        tp = np.sum(y_true[:, j] & y_pred[:, j])
        fp = np.sum(~y_true[:, j] & y_pred[:, j])
        fn = np.sum(y_true[:, j] & ~y_pred[:, j])
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def task_scores(
    spec: TaskSpec, y_true: np.ndarray, y_prob: np.ndarray
) -> dict[str, float]:
    """All metrics of one task; the first key is the task's main metric."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype="float64")
    if spec.kind == "regression":  # y_prob holds the predicted values
        y_true = y_true.reshape(len(y_true), -1).astype("float64")
        y_prob = y_prob.reshape(len(y_prob), -1)
        mse = float(np.mean((y_prob - y_true) ** 2))
        variance = float(np.mean((y_true - y_true.mean(axis=0)) ** 2))
        r2 = 1.0 - mse / variance if variance > 0 else float("nan")
        return {"r2": r2, "mse": mse}
    if spec.kind == "multiclass":
        return {"accuracy": float(np.mean(np.argmax(y_prob, -1) == y_true.ravel()))}
    if spec.kind == "binary":
        y_true = y_true.reshape(-1)
        y_prob = y_prob.reshape(-1)
        return {
            "accuracy": float(np.mean((y_prob >= 0.5) == (y_true >= 0.5))),
            "auc": binary_auc(y_true, y_prob),
        }
    y_true = y_true.reshape(len(y_true), -1)
    y_prob = y_prob.reshape(len(y_prob), -1)
    aucs = [binary_auc(y_true[:, j], y_prob[:, j]) for j in range(y_true.shape[1])]
    return {
        "macro_f1": macro_f1(y_true, y_prob >= 0.5),
        "auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
    }


def main_metric(spec: TaskSpec) -> str:
    """The metric that Δm and the ranks use for a task (higher is better).

    Accuracy for single-label tasks; macro-averaged ROC AUC for multi-label
    ones (macro-F1 at a fixed 0.5 threshold is near 0 for rare labels after
    a short training, which makes its relative changes, and so Δm,
    meaningless; it is still reported in results.json); the coefficient of
    determination R² for regression (its MSE is in results.json too)."""
    return {"multiclass": "accuracy", "binary": "accuracy", "regression": "r2"}.get(
        spec.kind, "auc"
    )


def delta_m(method: Sequence[float], baseline: Sequence[float]) -> float:
    """Δm% of Maninis et al. (CVPR 2019), as Nash-MTL and FAMO report it:
    the mean relative change of each task's main metric against the
    baseline, in percent, all metrics being higher-is-better here:
    `100 / K * sum_k (M_k - B_k) / B_k`."""
    m = np.asarray(method, dtype="float64")
    b = np.asarray(baseline, dtype="float64")
    return float(100.0 * np.mean((m - b) / b))


def mean_ranks(table: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean over tasks of each method's rank (1 = best; ties share the mean rank)."""
    methods = list(table)
    scores = np.asarray([table[m] for m in methods], dtype="float64")  # [M, K]
    ranks = np.zeros_like(scores)
    for k in range(scores.shape[1]):
        column = -scores[:, k]
        order = np.argsort(column, kind="mergesort")
        r = np.empty(len(methods))
        r[order] = np.arange(1, len(methods) + 1, dtype="float64")
        for value in np.unique(column):  # ties share the mean rank
            tied = column == value
            r[tied] = r[tied].mean()
        ranks[:, k] = r
    return {m: float(ranks[i].mean()) for i, m in enumerate(methods)}

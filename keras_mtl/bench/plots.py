"""PNG plots of benchmark runs (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs: Sequence[Any], key: str) -> np.ndarray | None:
    curves = [r.history[key] for r in runs if key in r.history]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    return np.mean([c[:length] for c in curves], axis=0)


def training_curves(
    runs: Sequence[Any], tasks: Mapping[str, Any], out: Path
) -> list[Path]:
    """`val_loss_curves.png` (one panel per task, one line per method) and
    `task_weights.png` (one panel per method, one line per task), each
    averaged over seeds. Returns the written paths."""
    from keras_mtl.bench.report import run_labels

    plt = _pyplot()
    labels = run_labels(runs)  # "<architecture>/<method>" if several
    methods = list(dict.fromkeys(labels))
    by_method = {
        m: [r for r, label in zip(runs, labels) if label == m] for m in methods
    }
    written = []

    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False
    )
    for ax, task in zip(axes[0], tasks):
        for m in methods:
            curve = _mean_curve(by_method[m], f"val_{task}_loss")
            if curve is not None:
                ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=m)
        ax.set_title(f"{task}: validation loss")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "val_loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    cols = min(4, len(methods))
    rows = int(np.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), methods):
        for task in tasks:
            curve = _mean_curve(by_method[m], f"{task}_weight")
            if curve is not None:
                ax.plot(
                    np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=task
                )
        ax.set_title(f"{m}: task weights")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(methods) :]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "task_weights.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def correlation_sweep(
    summary: Mapping[str, Any], tasks: Mapping[str, Any], out: Path
) -> list[Path]:
    """`correlation_sweep.png`: test MSE against the task correlation, one
    panel per task and one for their average, one line per architecture (and
    method), error bars the std over seeds. Returns the written path."""
    plt = _pyplot()
    rows = summary["rows"]
    several_methods = len({row["method"] for row in rows}) > 1
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        name = row["architecture"]
        if several_methods:
            name = f"{name} + {row['method']}"
        lines.setdefault(name, []).append(row)
    panels = [(f"{t}: test MSE", t) for t in tasks] + [("mean over tasks", None)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False
    )
    for ax, (title, task) in zip(axes[0], panels):
        for name, group in lines.items():
            group = sorted(group, key=lambda r: r["correlation"])
            stats = [
                r["mean_mse"] if task is None else r["tasks"][task]["mse"]
                for r in group
            ]
            ax.errorbar(
                [r["correlation"] for r in group],
                [s["mean"] for s in stats],
                yerr=[s["std"] for s in stats],
                marker="o",
                ms=4,
                capsize=3,
                label=name,
            )
        ax.set_title(title)
        ax.set_xlabel("task correlation p")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test MSE (lower is better)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = out / "correlation_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]

"""Aggregating benchmark runs: mean ± std over seeds, Δm%, mean rank, tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_mtl.bench.metrics import delta_m, main_metric, mean_ranks
from keras_mtl.datasets import TaskSpec


def run_labels(runs: Sequence[Any]) -> list[str]:
    """The name each run is grouped under: its method, or, when the runs
    have several architectures, `"<architecture>/<method>"`."""
    architectures = {getattr(r, "architecture", "shared_bottom") for r in runs}
    if len(architectures) <= 1:
        return [r.method for r in runs]
    return [f"{r.architecture}/{r.method}" for r in runs]


def summarize(
    runs: Sequence[Any], tasks: Mapping[str, TaskSpec], baseline: str = "equal"
) -> dict[str, Any]:
    """Per method (per architecture and method when the runs have several
    architectures, keyed `"<architecture>/<method>"`): each task's metrics
    (mean, std over seeds), Δm% against `baseline` (mean and std over
    seeds, paired by seed), mean rank over tasks of the main metric, mean
    seconds per run.

    With several architectures the baseline is `baseline` on the first
    architecture run. If it was not run, the first method is the baseline
    (said in the output's "baseline" field).
    """
    labels = run_labels(runs)
    methods = list(dict.fromkeys(labels))
    if baseline not in methods:
        first = f"{runs[0].architecture}/{baseline}"
        baseline = first if first in methods else methods[0]
    by_method = {
        m: [r for r, label in zip(runs, labels) if label == m] for m in methods
    }
    main = {t: main_metric(spec) for t, spec in tasks.items()}

    def main_scores(run: Any) -> list[float]:
        return [run.test[t][main[t]] for t in tasks]

    base_by_seed = {r.seed: main_scores(r) for r in by_method[baseline]}
    base_mean = np.mean([main_scores(r) for r in by_method[baseline]], axis=0)
    summary: dict[str, Any] = {"baseline": baseline, "main_metric": main, "methods": {}}
    for m in methods:
        rs = by_method[m]
        per_task = {}
        for t in tasks:
            metrics = {}
            for metric in rs[0].test[t]:
                values = np.array([r.test[t][metric] for r in rs], dtype="float64")
                metrics[metric] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                }
            per_task[t] = metrics
        paired = [
            delta_m(main_scores(r), base_by_seed[r.seed])
            for r in rs
            if r.seed in base_by_seed
        ]
        mean_main = np.mean([main_scores(r) for r in rs], axis=0)
        summary["methods"][m] = {
            "architecture": getattr(rs[0], "architecture", "shared_bottom"),
            "method": rs[0].method,
            "tasks": per_task,
            "delta_m": delta_m(mean_main, base_mean),
            "delta_m_std": float(np.std(paired)) if paired else float("nan"),
            "seconds_per_run": float(np.mean([r.seconds for r in rs])),
            "seeds": len(rs),
        }
    ranks = mean_ranks(
        {
            m: [summary["methods"][m]["tasks"][t][main[t]]["mean"] for t in tasks]
            for m in methods
        }
    )
    for m in methods:
        summary["methods"][m]["mean_rank"] = ranks[m]
    return summary


def markdown_table(summary: Mapping[str, Any], tasks: Mapping[str, TaskSpec]) -> str:
    """The results table, methods sorted by Δm% (best first); with several
    architectures an architecture column before the method."""
    main = summary["main_metric"]
    several = len({s.get("architecture") for s in summary["methods"].values()}) > 1
    header = ["architecture"] * several + ["method"] + [f"{t} {main[t]}" for t in tasks]
    header += [f"Δm% vs {summary['baseline']}", "mean rank", "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = sorted(summary["methods"].items(), key=lambda kv: -kv[1]["delta_m"])
    for method, s in rows:
        cells = (
            [f"`{s['architecture']}`", f"`{s['method']}`"]
            if several
            else [f"`{method}`"]
        )
        for t in tasks:
            v = s["tasks"][t][main[t]]
            cells.append(f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f}")
        cells.append(f"{s['delta_m']:+.2f} ± {s['delta_m_std']:.2f}")
        cells.append(f"{s['mean_rank']:.2f}")
        cells.append(f"{s['seconds_per_run']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({s["seeds"] for s in summary["methods"].values()})
    lines.append("")
    lines.append(
        f"Test-set metrics in %, mean ± std over {', '.join(map(str, seeds))} seed(s). "
        f"Δm% (Maninis et al. 2019): mean relative change of each task's main metric "
        f"against `{summary['baseline']}` (± std over seeds, paired by seed); "
        "mean rank: over tasks, 1 = best."
    )
    return "\n".join(lines)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype="float64")
    return {"mean": float(np.mean(array)), "std": float(np.std(array))}


def sweep_summary(
    runs: Sequence[Any],
    tasks: Mapping[str, TaskSpec],
    label_correlations: Mapping[float, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The correlation sweep per (architecture, method, correlation): each
    task's test MSE and R², the MSE averaged over tasks (each as mean and
    std over seeds), seconds per run; `label_correlations` (correlation ->
    one realised Pearson correlation of the training labels per seed) is
    summarised alongside."""
    keys = list(dict.fromkeys((r.architecture, r.method, r.correlation) for r in runs))
    rows = []
    for architecture, method, correlation in keys:
        rs = [
            r
            for r in runs
            if (r.architecture, r.method, r.correlation)
            == (architecture, method, correlation)
        ]
        per_task = {
            t: {
                metric: _mean_std([r.test[t][metric] for r in rs])
                for metric in ("mse", "r2")
            }
            for t in tasks
        }
        rows.append(
            {
                "architecture": architecture,
                "method": method,
                "correlation": correlation,
                "seeds": len(rs),
                "tasks": per_task,
                "mean_mse": _mean_std(
                    [np.mean([r.test[t]["mse"] for t in tasks]) for r in rs]
                ),
                "seconds_per_run": float(np.mean([r.seconds for r in rs])),
            }
        )
    labels = {
        str(c): _mean_std(values) for c, values in (label_correlations or {}).items()
    }
    return {"metric": "mse", "rows": rows, "label_correlation": labels}


def sweep_markdown(summary: Mapping[str, Any], tasks: Mapping[str, TaskSpec]) -> str:
    """Two tables: test MSE averaged over tasks, one row per architecture
    (and method) and one column per correlation; then every task's MSE."""
    rows = summary["rows"]
    correlations = list(dict.fromkeys(row["correlation"] for row in rows))
    several_methods = len({row["method"] for row in rows}) > 1

    def label(row: Mapping[str, Any]) -> str:
        name = f"`{row['architecture']}`"
        return f"{name} + `{row['method']}`" if several_methods else name

    header = ["architecture"] + [f"p = {c:g}" for c in correlations]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels = summary.get("label_correlation", {})
    if labels:
        cells = ["label correlation (train)"]
        for c in correlations:
            value = labels.get(str(c))
            cells.append(
                "" if value is None else f"{value['mean']:.3f} ± {value['std']:.3f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    by_label: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(label(row), {})[row["correlation"]] = row
    for name, cells_by_c in by_label.items():
        cells = [name]
        for c in correlations:
            row = cells_by_c.get(c)
            cells.append(
                ""
                if row is None
                else f"{row['mean_mse']['mean']:.4f} ± {row['mean_mse']['std']:.4f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({row["seeds"] for row in rows})
    lines.append("")
    lines.append(
        "Test MSE averaged over the tasks, mean ± std over "
        f"{', '.join(map(str, seeds))} seed(s) (lower is better); p is the cosine "
        "similarity of the tasks' weight vectors, the first row the Pearson "
        "correlation of the training labels it gave."
    )
    header = ["p", "architecture"] + [f"{t} MSE" for t in tasks]
    header += [f"{t} R²" for t in tasks] + ["s/run"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: -r["correlation"]):
        cells = [f"{row['correlation']:g}", label(row)]
        for metric in ("mse", "r2"):
            for t in tasks:
                v = row["tasks"][t][metric]
                cells.append(f"{v['mean']:.4f} ± {v['std']:.4f}")
        cells.append(f"{row['seconds_per_run']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Aggregating benchmark runs: mean ± std over seeds, Δm%, mean rank, tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_mtl.bench.metrics import delta_m, main_metric, mean_ranks
from keras_mtl.datasets import TaskSpec


def summarize(
    runs: Sequence[Any], tasks: Mapping[str, TaskSpec], baseline: str = "equal"
) -> dict[str, Any]:
    """Per method: each task's metrics (mean, std over seeds), Δm% against
    `baseline` (mean and std over seeds, paired by seed), mean rank over
    tasks of the main metric, mean seconds per run.

    If `baseline` was not run, the first method is the baseline (said in
    the output's "baseline" field).
    """
    methods = list(dict.fromkeys(r.method for r in runs))
    if baseline not in methods:
        baseline = methods[0]
    by_method = {m: [r for r in runs if r.method == m] for m in methods}
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
    """The results table, methods sorted by Δm% (best first)."""
    main = summary["main_metric"]
    header = ["method"] + [f"{t} {main[t]}" for t in tasks]
    header += [f"Δm% vs {summary['baseline']}", "mean rank", "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = sorted(summary["methods"].items(), key=lambda kv: -kv[1]["delta_m"])
    for method, s in rows:
        cells = [f"`{method}`"]
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

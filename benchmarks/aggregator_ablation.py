"""Where an aggregator step's time goes: `ideal`, `a:sum` and `a:upgrad`,
each also with its effective-weight and min-cosine logs removed, timed
side by side (paired rounds) on one backend.

    KERAS_BACKEND=jax python benchmarks/aggregator_ablation.py --width 1024

The logs are removed by replacing `gradients.combination_weights_and_min_cosine`
while a variant's step is traced (its first call); the other variants are
traced with the real one. Prints one JSON line: ms per step and the paired
ratio to `ideal` of each variant. Used for docs/performance.md (Profile).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras import ops  # noqa: E402

from benchmarks import performance  # noqa: E402
from keras_mtl import gradients  # noqa: E402

VARIANTS = [
    ("ideal", "ideal", False),
    ("a:sum", "a:sum", False),
    ("a:sum, no logs", "a:sum", True),
    ("a:upgrad", "a:upgrad", False),
    ("a:upgrad, no logs", "a:upgrad", True),
]


def no_logs(jacobian: Any, direction: Any) -> tuple[Any, Any]:
    """Constant logs: the step's log computations become dead code."""
    return ops.ones((jacobian.shape[0],), "float32"), ops.zeros((), "float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="steps per sample")
    cfg = parser.parse_args()
    data = performance.dataset("mlp", cfg.tasks)
    real = gradients.combination_weights_and_min_cosine
    runs, counts = {}, {}
    for name, variant, remove_logs in VARIANTS:
        gradients.combination_weights_and_min_cosine = no_logs if remove_logs else real
        try:
            runner = performance.Runner(
                performance.build(variant, "mlp", cfg.width, cfg.tasks, True), data
            )
            for _ in range(3):  # trace, compile, warm up
                runner.sync(runner.step())
        finally:
            gradients.combination_weights_and_min_cosine = real
        runs[name], counts[name] = runner, cfg.steps
    samples: dict[str, list[float]] = {name: [] for name in runs}
    gc.collect()
    gc.disable()
    performance._take_samples(runs, counts, samples, cfg.rounds)
    gc.enable()
    out = {
        name: {
            "ms_per_step": round(1e3 * statistics.median(samples[name]), 1),
            "ratio_to_ideal": round(
                statistics.median(
                    a / b for a, b in zip(samples[name], samples["ideal"])
                ),
                3,
            ),
        }
        for name in runs
    }
    print(json.dumps({"backend": performance.backend(), "width": cfg.width, **out}))


if __name__ == "__main__":
    main()

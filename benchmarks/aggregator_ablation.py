"""Where an aggregator step's time goes: `ideal`, `a:sum` and `a:upgrad`
(the Gramian route), `a:upgrad` made to take the `[K, D]` Jacobian, with
and without its effective-weight and min-cosine logs, timed side by side
(paired rounds) on one backend.

    KERAS_BACKEND=jax python benchmarks/aggregator_ablation.py --width 1024

A variant's step is traced (its first call) with `model.uses_gramian`
replaced by `False` (the Jacobian) and, for "no logs", with
`gradients.combination_weights_and_min_cosine` replaced by constants; the
other variants are traced with the real ones. Prints one JSON line: ms per
step and the paired ratio to `ideal` of each variant. Used for
docs/performance.md (Profile).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras import ops  # noqa: E402

from benchmarks import performance  # noqa: E402
from keras_mtl import gradients  # noqa: E402
from keras_mtl import model as model_lib  # noqa: E402

# (name, variant, take the Jacobian, remove its logs)
VARIANTS = [
    ("ideal", "ideal", False, False),
    ("a:sum", "a:sum", False, False),
    ("a:upgrad", "a:upgrad", False, False),
    ("a:upgrad, Jacobian", "a:upgrad", True, False),
    ("a:upgrad, Jacobian, no logs", "a:upgrad", True, True),
]


def no_logs(jacobian: Any, direction: Any) -> tuple[Any, Any]:
    """Constant logs: the step's log computations become dead code."""
    return ops.ones((jacobian.shape[0],), "float32"), ops.zeros((), "float32")


@contextlib.contextmanager
def traced_with(jacobian: bool, remove_logs: bool) -> Iterator[None]:
    """The model's route and logs replaced while a step is traced."""
    route, logs = model_lib.uses_gramian, gradients.combination_weights_and_min_cosine
    if jacobian:
        model_lib.uses_gramian = lambda aggregator: False
    if remove_logs:
        gradients.combination_weights_and_min_cosine = no_logs
    try:
        yield
    finally:
        model_lib.uses_gramian = route
        gradients.combination_weights_and_min_cosine = logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="steps per sample")
    cfg = parser.parse_args()
    data = performance.dataset("mlp", cfg.tasks)
    runs, counts = {}, {}
    for name, variant, jacobian, remove_logs in VARIANTS:
        with traced_with(jacobian, remove_logs):
            runner = performance.Runner(
                performance.build(variant, "mlp", cfg.width, cfg.tasks, True), data
            )
            for _ in range(3):  # trace, compile, warm up
                runner.sync(runner.step())
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

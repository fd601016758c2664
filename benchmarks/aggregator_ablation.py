"""Where an aggregator step's time goes: `ideal`, `a:sum` and `a:upgrad`
on the Gramian route, each with a part of it removed, and `a:upgrad` made
to take the `[K, D]` Jacobian, timed side by side (paired rounds) on one
backend.

    KERAS_BACKEND=jax python benchmarks/aggregator_ablation.py --width 1024

A variant's step is traced (its first call) with one function replaced;
the other variants are traced with the real ones:
- "no Gramian": `gradients.safe_gramian` returns the identity (no pass
  over the gradients; Sum's direction is unchanged, its cosine log 0);
- "no rescale branch": `safe_gramian` returns the raw Gramian, no `cond`;
- "Jacobian": `model.uses_gramian` returns False (the Jacobian path, with
  its least-squares and min-cosine logs);
- "Jacobian, no logs": also `gradients.combination_weights_and_min_cosine`
  returns constants.
With `--set gramian`, the ways of making the Gramian safe against
overflow that docs/performance.md (Profile) compares instead: the raw
Gramian with a `cond` whose branch does less (returns `raw / 2`, only
reads the rows' largest entry, or that after `where(isfinite)`), and the
rescaled Gramian always (branch-free). With `--set reads_scale`,
GradNorm and MoDo on the Gramian route and made to take the Jacobian.
With `--set graddrop`, GradDrop (which keeps the Jacobian) with its one
random draw per column per step replaced by a constant (0.5: the mask is then a fixed function of the
signs), without its logs, and with its logs' Gramian always taken of the
Jacobian divided by its largest entry (as shipped: the raw Gramian, with a
rescaling branch). With `--set projections`, PCGrad, GradVac and ConFIG
on the Gramian route, and PCGrad on the Jacobian.

Prints one JSON line: ms per step and the paired ratio to `ideal` of each
variant. Used for docs/performance.md (Profile).
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

import keras  # noqa: E402
from keras import ops  # noqa: E402

from benchmarks import performance  # noqa: E402
from keras_mtl import gradients  # noqa: E402
from keras_mtl.trainers import step as step_lib  # noqa: E402


def no_logs(jacobian: Any, direction: Any) -> tuple[Any, Any]:
    """Constant logs: the step's log computations become dead code."""
    return ops.ones((jacobian.shape[0],), "float32"), ops.zeros((), "float32")


def no_gramian(blocks: Any) -> tuple[Any, Any]:
    """The identity for a Gramian: no pass over the gradients."""
    return ops.eye(len(blocks[0])), ops.ones((), "float32")


def raw_gramian(blocks: Any) -> tuple[Any, Any]:
    """The raw Gramian, without the rescaling branch."""
    return gradients.blocks_gramian(blocks), ops.ones((), "float32")


def _raw_or(other: Any) -> Any:
    """A `safe_gramian` that keeps the raw Gramian when it is usable (as on
    JAX) and runs `other(blocks, raw)` in the branch otherwise."""

    def gramian(blocks: Any) -> tuple[Any, Any]:
        raw = gradients.blocks_gramian(blocks)
        return ops.cond(
            gradients.usable_gramian(raw),
            lambda: (raw, ops.ones((), "float32")),
            lambda: other(blocks, raw),
        )

    return gramian


def _largest(rows: Any) -> Any:
    return ops.max(ops.stack([ops.max(ops.abs(r)) for b in rows for r in b]))


def _halved(blocks: Any, raw: Any) -> tuple[Any, Any]:
    return raw / 2.0, 2.0 * ops.ones((), "float32")


def _largest_entry(blocks: Any, raw: Any) -> tuple[Any, Any]:
    largest = _largest(blocks)
    return raw / largest**2, largest


def _largest_finite_entry(blocks: Any, raw: Any) -> tuple[Any, Any]:
    largest = _largest(
        [[ops.where(ops.isfinite(r), r, 0.0) for r in b] for b in blocks]
    )
    return raw / largest**2, largest


def _rescaled(blocks: Any, raw: Any) -> tuple[Any, Any]:
    return gradients.rescaled_gramian(blocks)


# `a:upgrad` with each of these as `gradients.safe_gramian`.
_SAFE_GRAMIANS: list[tuple[str, Any]] = [
    ("raw, no cond", raw_gramian),
    ("raw, cond rescaling (as shipped)", _raw_or(_rescaled)),
    ("raw, cond returning raw / 2", _raw_or(_halved)),
    ("raw, cond reading the largest entry", _raw_or(_largest_entry)),
    ("raw, cond reading the largest finite entry", _raw_or(_largest_finite_entry)),
    ("always rescaled", gradients.rescaled_gramian),
]
GRAMIAN_VARIANTS: list[tuple[str, str, list[tuple[Any, str, Any]]]] = [
    ("ideal", "ideal", []),
    *(
        (name, "a:upgrad", [(gradients, "safe_gramian", gramian)])
        for name, gramian in _SAFE_GRAMIANS
    ),
]


def constant_uniform(shape: Any, dtype: str = "float32", **kwargs: Any) -> Any:
    """`keras.random.uniform` without the draw: 0.5 everywhere."""
    return ops.full(shape, 0.5, dtype=dtype)


def always_rescaled(
    raw_gramian: Any, with_raw: Any, rescaled: Any, columns: int | None
) -> Any:
    """`gradients.raw_unless_unusable` without the raw Gramian and its
    branch: the rescaled one always."""
    return rescaled()


GRADDROP_VARIANTS: list[tuple[str, str, list[tuple[Any, str, Any]]]] = [
    ("ideal", "ideal", []),
    ("a:graddrop", "a:graddrop", []),
    (
        "a:graddrop, no draw",
        "a:graddrop",
        [(keras.random, "uniform", constant_uniform)],
    ),
    (
        "a:graddrop, no logs",
        "a:graddrop",
        [(gradients, "combination_weights_and_min_cosine", no_logs)],
    ),
    # The logs' Gramian (GradDrop keeps the Jacobian: only its logs take
    # one) rescaled always, without the branch that keeps the raw one.
    (
        "a:graddrop, logs always rescaled",
        "a:graddrop",
        [(gradients, "raw_unless_unusable", always_rescaled)],
    ),
]

JACOBIAN = [(step_lib, "uses_gramian", lambda a: False)]
# The projection methods on the Gramian route, and PCGrad made to take the
# Jacobian (as before the route served it).
PROJECTION_VARIANTS: list[tuple[str, str, list[tuple[Any, str, Any]]]] = [
    ("ideal", "ideal", []),
    ("a:upgrad", "a:upgrad", []),
    ("a:pcgrad", "a:pcgrad", []),
    ("a:gradvac", "a:gradvac", []),
    ("a:config", "a:config", []),
    ("a:pcgrad, Jacobian", "a:pcgrad", JACOBIAN),
]

# GradNorm and MoDo (which read the Gramian's scale) on the Gramian route,
# and made to take the Jacobian (as before the route served them).
READS_SCALE_VARIANTS: list[tuple[str, str, list[tuple[Any, str, Any]]]] = [
    ("ideal", "ideal", []),
    ("a:upgrad", "a:upgrad", []),
    ("a:grad_norm", "a:grad_norm", []),
    ("a:grad_norm, Jacobian", "a:grad_norm", JACOBIAN),
    ("a:modo", "a:modo", []),
    ("a:modo, Jacobian", "a:modo", JACOBIAN),
]

# (name, variant, replacements: (module, attribute, value))
VARIANTS: list[tuple[str, str, list[tuple[Any, str, Any]]]] = [
    ("ideal", "ideal", []),
    ("a:sum", "a:sum", []),
    ("a:sum, no Gramian", "a:sum", [(gradients, "safe_gramian", no_gramian)]),
    ("a:upgrad", "a:upgrad", []),
    (
        "a:upgrad, no rescale branch",
        "a:upgrad",
        [(gradients, "safe_gramian", raw_gramian)],
    ),
    ("a:upgrad, Jacobian", "a:upgrad", JACOBIAN),
    (
        "a:upgrad, Jacobian, no logs",
        "a:upgrad",
        [*JACOBIAN, (gradients, "combination_weights_and_min_cosine", no_logs)],
    ),
]


@contextlib.contextmanager
def replaced(replacements: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """The given module attributes replaced while a step is traced."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    for module, name, value in replacements:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="steps per sample")
    parser.add_argument(
        "--set",
        choices=["route", "gramian", "graddrop", "projections", "reads_scale"],
        default="route",
    )
    parser.add_argument(
        "--only",
        action="append",
        help="a variant to run, by name (repeatable; default: the whole set)",
    )
    cfg = parser.parse_args()
    variants = {
        "route": VARIANTS,
        "gramian": GRAMIAN_VARIANTS,
        "graddrop": GRADDROP_VARIANTS,
        "projections": PROJECTION_VARIANTS,
        "reads_scale": READS_SCALE_VARIANTS,
    }[cfg.set]
    if cfg.only:
        keep = {"ideal", *cfg.only}
        variants = [v for v in variants if v[0] in keep]
    data = performance.dataset("mlp", cfg.tasks)
    runs, counts = {}, {}
    for name, variant, replacements in variants:
        with replaced(replacements):
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

"""`keras-mtl bench`: compare balancing methods on a multi-task dataset.

    keras-mtl bench --dataset multi_digits \\
        --methods equal,uncertainty,dwa,adaptive,bmtl --epochs 8 --seeds 3 --out runs/digits

Writes `results.json`, `results.csv`, `results.md` and PNG plots into
`--out`, prints the results table (markdown) at the end. Also runnable as
`python -m keras_mtl.bench ...`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_METHODS = "equal,uncertainty,dwa,adaptive,bmtl"
# Every loss-level method that needs no user input ("fixed" needs weights).
ALL_METHODS = (
    "equal,uncertainty,dwa,adaptive,adaptive:mode=epoch,bmtl,rlw,gls,famo,stch,imtl_l"
)
DEFAULT_EPOCHS = {"multi_digits": 5, "goemotions": 2, "toy": 0}


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the error into a
    usage message naming the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from keras_mtl.datasets import names as dataset_names

    parser = argparse.ArgumentParser(
        prog="keras-mtl bench",
        description="Train one network per method and seed on a multi-task dataset "
        "and compare the balancing methods (per-task metrics, Δm%, mean rank).",
    )
    parser.add_argument(
        "--dataset",
        default="multi_digits",
        help=f"one of: {', '.join(dataset_names())} (default: multi_digits, offline)",
    )
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated methods: a weighting alias (e.g. adaptive), an "
        "aggregator alias (e.g. pcgrad, with equal weighting) or both joined by "
        "'+' (e.g. adaptive+upgrad), each with optional arguments as "
        "name:key=value (e.g. adaptive:mode=epoch); 'all' for every loss-level "
        "method, 'gradient' for every aggregator, 'everything' for both "
        f"(default: {DEFAULT_METHODS})",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs per run (for --dataset toy: optimisation steps per start)",
    )
    parser.add_argument(
        "--seeds", type=positive_int, default=2, help="seeds per method (default 2)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument(
        "--max-examples",
        type=positive_int,
        default=None,
        help="cap the examples per split (quick runs; datasets that support it)",
    )
    parser.add_argument("--baseline", default="equal", help="the Δm baseline method")
    parser.add_argument("--out", default="runs/bench", help="output directory")
    parser.add_argument(
        "--jit-compile", choices=["auto", "true", "false"], default="auto"
    )
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def gradient_methods() -> str:
    """Every registered aggregator, each with equal loss weighting."""
    from keras_mtl import aggregation

    classes = set()
    names = []
    for name in aggregation.names():  # one alias per class
        if aggregation.ALIASES[name] not in classes:
            classes.add(aggregation.ALIASES[name])
            names.append(name)
    return ",".join(names)


def split_methods(text: str) -> list[str]:
    """The method specs of `--methods`, with its group names expanded."""
    groups = {
        "all": lambda: ALL_METHODS,
        "gradient": gradient_methods,
        "everything": lambda: f"{ALL_METHODS},{gradient_methods()}",
    }
    if text.strip() in groups:
        text = groups[text.strip()]()
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods lists a method twice: {methods}.")
    return methods


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `keras-mtl` command; `bench` is its one subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: keras-mtl bench [options]   (keras-mtl bench --help for options)")
        return 0 if argv else 2
    if argv[0] != "bench":
        print(f"keras-mtl: unknown command {argv[0]!r}; the command is 'bench'.")
        return 2
    return bench(argv[1:])


def bench(argv: Sequence[str]) -> int:
    """Runs the benchmark described by the command-line arguments `argv`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    from keras_mtl.bench.runner import parse_method
    from keras_mtl.datasets import names as dataset_names

    if args.dataset not in dataset_names():
        parser.error(
            f"unknown dataset {args.dataset!r}; valid datasets: {', '.join(dataset_names())}"
        )
    try:
        methods = split_methods(args.methods)
        for method in methods:
            parse_method(method)
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = (
        args.epochs if args.epochs is not None else DEFAULT_EPOCHS.get(args.dataset, 5)
    )
    command = "keras-mtl bench " + " ".join(argv)
    if args.dataset == "toy":
        from keras_mtl.bench.toy import run_toy

        return run_toy(
            methods, out, steps=epochs or None, plots=not args.no_plots, command=command
        )
    return run_bench(args, methods, epochs, out, command)


def _load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if args.max_examples is not None:
        kwargs["max_examples"] = args.max_examples
    return kwargs


def run_bench(
    args: argparse.Namespace, methods: list[str], epochs: int, out: Path, command: str
) -> int:
    from keras_mtl.bench import report
    from keras_mtl.bench.runner import prepare, run

    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    started = time.time()
    try:
        prepared = prepare(args.dataset, _load_kwargs(args))
    except TypeError as error:  # an option this dataset's loader does not take
        print(f"keras-mtl bench: {error}", file=sys.stderr)
        return 2
    runs = []
    for method in methods:
        for seed in range(args.seeds):
            print(
                f"\n=== {args.dataset} | method {method} | seed {seed} ===", flush=True
            )
            runs.append(
                run(
                    prepared,
                    method,
                    seed,
                    epochs,
                    learning_rate=args.learning_rate,
                    jit_compile=jit,
                    verbose=args.verbose,
                )
            )
    summary = report.summarize(runs, prepared.tasks, baseline=args.baseline)
    table = report.markdown_table(summary, prepared.tasks)
    meta = {
        "command": command,
        "dataset": args.dataset,
        "methods": methods,
        "epochs": epochs,
        "seeds": args.seeds,
        "baseline": summary["baseline"],
        "learning_rate": args.learning_rate,
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine_info(),
        "tasks": {t: vars(spec) for t, spec in prepared.tasks.items()},
    }
    (out / "results.json").write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "runs": [vars(r) for r in runs]},
            indent=2,
            default=str,
        )
    )
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "task", "metric", "value"])
        for r in runs:
            for task, scores in r.test.items():
                for metric, value in scores.items():
                    writer.writerow([r.method, r.seed, task, metric, value])
    (out / "results.md").write_text(f"`{command}`\n\n{table}\n")
    if not args.no_plots:
        from keras_mtl.bench import plots

        for path in plots.training_curves(runs, prepared.tasks, out):
            print(f"wrote {path}")
    print(f"\n{table}\nResults in {out}/ (results.json, results.csv, results.md)")
    return 0


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU count and TensorFlow/Keras versions of this run."""
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }


if __name__ == "__main__":
    raise SystemExit(main())

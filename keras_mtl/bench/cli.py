"""`keras-mtl bench`: compare balancing methods on a multi-task dataset.

    keras-mtl bench --dataset multi_digits \\
        --methods equal,uncertainty,dwa,adaptive,bmtl --epochs 8 --seeds 3 --out runs/digits

Writes `results.json`, `results.csv`, `results.md` and PNG plots into
`--out`, prints the results table (markdown) at the end. Also runnable as
`python -m keras_mtl.bench ...`.

On MMoE's synthetic data the benchmark compares multi-task architectures
across task correlations instead (one network per architecture, correlation,
method and seed; `correlation_sweep.png` plots test MSE against correlation):

    keras-mtl bench --dataset mmoe_synthetic \\
        --architectures shared_bottom,mmoe,cgc,ple --correlations 0.5,0.9,1.0 --seeds 3

On image datasets `--architectures shared_bottom,task_attention` trains the
CNN with a shared bottom and with MTAN-style task attention, side by side in
one table (Δm% against the baseline method on the first architecture).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_METHODS = "equal,uncertainty,dwa,adaptive,bmtl"
# Every loss-level method that needs no user input ("fixed" needs weights).
ALL_METHODS = (
    "equal,uncertainty,dwa,adaptive,adaptive:mode=epoch,bmtl,rlw,gls,famo,stch,imtl_l"
)
DEFAULT_EPOCHS = {"multi_digits": 5, "goemotions": 2, "toy": 0, "mmoe_synthetic": 12}
# Datasets of vector inputs: the ones whose network takes any --architectures
# and that sweep --correlations.
SWEEP_DATASETS = ("mmoe_synthetic",)
DEFAULT_CORRELATIONS = "0.5,0.9,1.0"  # the correlations of MMoE's Figure 4


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


def correlation_list(text: str) -> list[float]:
    """An argparse type: comma-separated distinct numbers in [-1, 1]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, got {part.strip()!r} in {text!r}"
            ) from None
        if not -1.0 <= value <= 1.0:  # also rejects nan
            raise argparse.ArgumentTypeError(
                f"a correlation must be in [-1, 1], got {part.strip()}"
            )
        values.append(value)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a correlation is listed twice in {text!r}")
    return values


def architecture_list(text: str) -> list[str]:
    """An argparse type: comma-separated distinct names of
    `keras_mtl.bench.models.ALL_ARCHITECTURES` (which of them a dataset
    takes is checked with the dataset)."""
    from keras_mtl.bench.models import ALL_ARCHITECTURES as ARCHITECTURES

    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no architecture given")
    for name in names:
        if name not in ARCHITECTURES:
            raise argparse.ArgumentTypeError(
                f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}"
            )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"an architecture is listed twice in {text!r}")
    return names


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
        "--architectures",
        "--architecture",
        type=architecture_list,
        default=None,
        help="comma-separated multi-task architectures of the network: "
        "shared_bottom (the default, every dataset); mmoe, cgc, ple, dselect_k, "
        f"cross_stitch (datasets {', '.join(SWEEP_DATASETS)}); task_attention "
        "(image datasets: multi_digits, multi_mnist, celeb_a)",
    )
    parser.add_argument(
        "--correlations",
        type=correlation_list,
        default=None,
        help="comma-separated task correlations in [-1, 1] to sweep "
        f"(default {DEFAULT_CORRELATIONS}); datasets {', '.join(SWEEP_DATASETS)} only",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods: a weighting alias (e.g. adaptive), an "
        "aggregator alias (e.g. pcgrad, with equal weighting) or both joined by "
        "'+' (e.g. adaptive+upgrad), each with optional arguments as "
        "name:key=value (e.g. adaptive:mode=epoch); 'all' for every loss-level "
        "method, 'gradient' for every aggregator, 'everything' for both "
        f"(default: {DEFAULT_METHODS}; equal for {', '.join(SWEEP_DATASETS)})",
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
    parser.add_argument(
        "--baseline",
        default="equal",
        help="the Δm baseline method (with several --architectures, on the first)",
    )
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
    from keras_mtl.bench.models import DATASET_INPUTS, check_architecture
    from keras_mtl.bench.runner import check_task_count, parse_method
    from keras_mtl.datasets import names as dataset_names

    if args.dataset not in dataset_names():
        parser.error(
            f"unknown dataset {args.dataset!r}; valid datasets: {', '.join(dataset_names())}"
        )
    sweep = args.dataset in SWEEP_DATASETS
    if not sweep and args.correlations is not None:
        parser.error(
            f"--correlations applies to --dataset {' or '.join(SWEEP_DATASETS)}, "
            f"not {args.dataset!r}"
        )
    try:
        for architecture in args.architectures or []:
            check_architecture(
                architecture, args.dataset, DATASET_INPUTS.get(args.dataset, "")
            )
    except ValueError as error:
        parser.error(f"--architectures {','.join(args.architectures)}: {error}")
    if args.methods is None:
        args.methods = "equal" if sweep else DEFAULT_METHODS
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
    if args.dataset == "toy" or sweep:  # two tasks; other datasets once loaded
        try:
            for method in methods:
                check_task_count(method, 2)
        except ValueError as error:
            parser.error(str(error))
    if args.dataset == "toy":
        from keras_mtl.bench.toy import run_toy

        return run_toy(
            methods, out, steps=epochs or None, plots=not args.no_plots, command=command
        )
    if sweep:
        correlations = args.correlations or correlation_list(DEFAULT_CORRELATIONS)
        architectures = args.architectures or ["shared_bottom"]
        return run_sweep(
            args, methods, architectures, correlations, epochs, out, command
        )
    architectures = args.architectures or ["shared_bottom"]
    return run_bench(args, methods, epochs, out, command, architectures)


def _load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if args.max_examples is not None:
        kwargs["max_examples"] = args.max_examples
    return kwargs


def _train_every_method(
    args: argparse.Namespace,
    prepared: Any,
    methods: list[str],
    epochs: int,
    heading: str,
) -> list[Any]:
    """One run per method and seed on `prepared`, each announced under
    `heading`."""
    from keras_mtl.bench.runner import run

    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    runs = []
    for method in methods:
        for seed in range(args.seeds):
            print(f"\n=== {heading} | method {method} | seed {seed} ===", flush=True)
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
    return runs


def run_bench(
    args: argparse.Namespace,
    methods: list[str],
    epochs: int,
    out: Path,
    command: str,
    architectures: Sequence[str] = ("shared_bottom",),
) -> int:
    """Trains one network per architecture, method and seed on an image or
    text dataset and writes the results, the table and the plots."""
    from keras_mtl.bench import report
    from keras_mtl.bench.runner import check_task_count, prepare

    started = time.time()
    try:
        prepared_all = [
            prepare(args.dataset, _load_kwargs(args), architecture=architecture)
            for architecture in architectures
        ]
    except TypeError as error:  # an option this dataset's loader does not take
        print(f"keras-mtl bench: {error}", file=sys.stderr)
        return 2
    prepared = prepared_all[0]
    try:
        for method in methods:
            check_task_count(method, len(prepared.tasks))
    except ValueError as error:
        print(f"keras-mtl bench: {error}", file=sys.stderr)
        return 2
    runs = []
    for each in prepared_all:
        heading = args.dataset
        if len(architectures) > 1:
            heading += f" | {each.architecture}"
        runs += _train_every_method(args, each, methods, epochs, heading)
    summary = report.summarize(runs, prepared.tasks, baseline=args.baseline)
    table = report.markdown_table(summary, prepared.tasks)
    meta = {
        "command": command,
        "dataset": args.dataset,
        "architectures": list(architectures),
        "methods": methods,
        "epochs": epochs,
        "seeds": args.seeds,
        "baseline": summary["baseline"],
        "learning_rate": args.learning_rate,
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine_info(),
        "tasks": {t: vars(spec) for t, spec in prepared.tasks.items()},
    }
    several = len(architectures) > 1
    _write_results(
        out,
        {"meta": meta, "summary": summary, "runs": runs},
        ["architecture"] * several + ["method", "seed"],
        lambda r: [r.architecture] * several + [r.method, r.seed],
        f"`{command}`\n\n{table}\n",
    )
    if not args.no_plots:
        from keras_mtl.bench import plots

        for path in plots.training_curves(runs, prepared.tasks, out):
            print(f"wrote {path}")
    print(f"\n{table}\nResults in {out}/ (results.json, results.csv, results.md)")
    return 0


def run_sweep(
    args: argparse.Namespace,
    methods: list[str],
    architectures: list[str],
    correlations: list[float],
    epochs: int,
    out: Path,
    command: str,
) -> int:
    """Trains one network per correlation, architecture, method and seed on a
    dataset of `SWEEP_DATASETS` and writes the sweep's results and plot."""
    from keras_mtl.bench import report
    from keras_mtl.bench.runner import prepare
    from keras_mtl.datasets import load

    started = time.time()
    runs = []
    label_correlations: dict[float, list[float]] = {}
    tasks: dict[str, Any] = {}
    for correlation in correlations:
        load_kwargs = {**_load_kwargs(args), "correlation": correlation}
        # The realised label correlation of each seed's training data.
        label_correlations[correlation] = [
            load(args.dataset, seed=seed, **load_kwargs).info["label_correlation"]
            for seed in range(args.seeds)
        ]
        for architecture in architectures:
            prepared = prepare(args.dataset, load_kwargs, architecture=architecture)
            tasks = prepared.tasks
            heading = f"{args.dataset} | correlation {correlation:g} | {architecture}"
            runs += _train_every_method(args, prepared, methods, epochs, heading)
    summary = report.sweep_summary(runs, tasks, label_correlations)
    table = report.sweep_markdown(summary, tasks)
    meta = {
        "command": command,
        "dataset": args.dataset,
        "architectures": architectures,
        "correlations": correlations,
        "methods": methods,
        "epochs": epochs,
        "seeds": args.seeds,
        "learning_rate": args.learning_rate,
        "load_kwargs": _load_kwargs(args),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine_info(),
        "tasks": {t: vars(spec) for t, spec in tasks.items()},
    }
    _write_results(
        out,
        {"meta": meta, "summary": summary, "runs": runs},
        ["architecture", "correlation", "method", "seed"],
        lambda r: [r.architecture, r.correlation, r.method, r.seed],
        f"`{command}`\n\n{table}\n",
    )
    if not args.no_plots:
        from keras_mtl.bench import plots

        for path in plots.correlation_sweep(summary, tasks, out):
            print(f"wrote {path}")
    print(f"\n{table}\nResults in {out}/ (results.json, results.csv, results.md)")
    return 0


def _write_results(
    out: Path,
    results: dict[str, Any],
    key_columns: list[str],
    keys_of: Callable[[Any], list[Any]],
    markdown: str,
) -> None:
    """`results.json` (`results`: meta, summary and the runs), `results.csv`
    (a row per run, task and metric, led by `key_columns`, which
    `keys_of(run)` fills) and `results.md` (`markdown`) into `out`."""
    runs = results["runs"]
    (out / "results.json").write_text(
        json.dumps({**results, "runs": [vars(r) for r in runs]}, indent=2, default=str)
    )
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*key_columns, "task", "metric", "value"])
        for r in runs:
            for task, scores in r.test.items():
                for metric, value in scores.items():
                    writer.writerow([*keys_of(r), task, metric, value])
    (out / "results.md").write_text(markdown)


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

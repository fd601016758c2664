"""keras_mtl performance suite: the cost of each balancing method, as ratios.

    python benchmarks/performance.py                 # everything -> docs/performance.md
    python benchmarks/performance.py --quick         # a smoke run (tiny, few repeats)
    python benchmarks/performance.py --sections 1,3  # some sections only
    python benchmarks/performance.py --backends jax  # one backend only
    python benchmarks/performance.py --sections 5    # side by side with TorchJD
    python benchmarks/performance.py --sections 3,4 --keep docs/performance.json
        # sections 3 and 4 measured again, the others kept from that record

The Keras backend is fixed per process, so the suite runs each backend's
measurements in a process of its own (`KERAS_BACKEND=...`, one per section
and backend) and merges their results into one report, the backends side by
side. Every figure is still a ratio of median train-step times measured side
by side in one process (the variants of a table take turns, repeat after
repeat, so a noisy machine slows them alike), after warm-up (the first call,
which traces and compiles, is timed separately as the compile time). Steps
run through Keras' own `train_function`, as `fit` runs them: on TensorFlow
`train_function(iterator)` over a `tf.data` pipeline, on JAX the stateless
`train_function(state, iterator)` over numpy batches (as `fit` feeds arrays).

Baselines, on each backend:
- loss-level methods: stock Keras, the same network as a plain multi-output
  `keras.Model` compiled with static `loss_weights` (same data, optimizer
  and `jit_compile`);
- gradient-level methods: the ideal cost of any per-task-gradient method,
  one forward pass and K backward passes of the shared trunk, measured on
  the same network by `IdealPerTaskStep` (the gradients are summed, no
  other work): a `GradientTape` step on TensorFlow, on JAX a stateless step
  with one `jax.vjp` forward pass and K VJPs, applied with
  `optimizer.stateless_apply`.

Peak memory (section 4) is the peak resident set size of a fresh process
per variant (`ru_maxrss`), so it includes the framework's own (on either
backend the process imports TensorFlow: `keras.utils.set_random_seed`,
which `build` calls, seeds it wherever it is installed; `import keras_mtl`
does not). Not part of the test suite: nothing
there depends on timing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl import gradients as gradients_lib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 256
INPUT_DIM = 64
BACKENDS = ("tensorflow", "jax")
BACKEND_LABELS = {"tensorflow": "TF", "jax": "JAX"}


def backend() -> str:
    """The Keras backend of this process."""
    return keras.backend.backend()


# ------------------------------------------------------------------ networks
def mlp(width: int, num_tasks: int, depth: int = 3, seed: int = 0) -> keras.Model:
    """A shared MLP trunk of `depth` layers and one linear regression head per task."""
    inputs = keras.Input((INPUT_DIM,), name="x")
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(
            width,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
            name=f"trunk_{i}",
        )(h)
    outputs = {
        f"task_{k}": keras.layers.Dense(1, name=f"task_{k}")(h)
        for k in range(num_tasks)
    }
    return keras.Model(inputs, outputs, name="mlp")


def cnn(num_tasks: int) -> keras.Model:
    """The benchmark's digit CNN (`keras_mtl.bench.models.image_cnn`) on
    12x16 images, with 10-way heads, in Keras' image data format (inputs
    `[N, 12, 16, 1]`, or `[N, 1, 12, 16]` channels first)."""
    from keras_mtl.bench.models import image_cnn
    from keras_mtl.datasets import TaskSpec

    tasks = {f"task_{k}": TaskSpec("multiclass", 10) for k in range(num_tasks)}
    channels_first = keras.config.image_data_format() == "channels_first"
    return image_cnn((1, 12, 16) if channels_first else (12, 16, 1), tasks)


def batches(
    kind: str, num_tasks: int, count: int = 16
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """`count` fixed batches of random data of the right shapes (numpy)."""
    rng = np.random.default_rng(0)
    n = count * BATCH_SIZE
    if kind == "cnn":
        x = rng.random((n, 12, 16, 1), dtype="float32")
        y = {f"task_{k}": rng.integers(0, 10, n) for k in range(num_tasks)}
    else:
        x = rng.standard_normal((n, INPUT_DIM), dtype="float32")
        y = {
            f"task_{k}": rng.standard_normal((n, 1)).astype("float32")
            for k in range(num_tasks)
        }
    return [
        (x[i : i + BATCH_SIZE], {t: v[i : i + BATCH_SIZE] for t, v in y.items()})
        for i in range(0, n, BATCH_SIZE)
    ]


def dataset(kind: str, num_tasks: int, count: int = 16) -> Any:
    """The batches of `batches`, repeated forever, as `fit` feeds them on
    this backend: a cached `tf.data` pipeline on TensorFlow (the train
    function reads it in the graph), the numpy batches themselves on JAX."""
    data = batches(kind, num_tasks, count)
    if backend() == "tensorflow":
        import tensorflow as tf

        x = np.concatenate([b[0] for b in data])
        y = {t: np.concatenate([b[1][t] for b in data]) for t in data[0][1]}
        pipeline = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE)
        return pipeline.cache().repeat()
    return _Cycle(data)


class _Cycle:
    """Numpy batches repeated forever (an iterable, like a dataset)."""

    def __init__(self, data: list[Any]) -> None:
        self.data = data

    def __iter__(self) -> Any:
        return itertools.cycle(self.data)


def losses_for(kind: str, num_tasks: int) -> dict[str, str]:
    loss = "sparse_categorical_crossentropy" if kind == "cnn" else "mse"
    return {f"task_{k}": loss for k in range(num_tasks)}


def network(kind: str, width: int, num_tasks: int) -> keras.Model:
    return cnn(num_tasks) if kind == "cnn" else mlp(width, num_tasks)


# ------------------------------------------------------------- the ideal step
class IdealPerTaskStep(keras.Model):
    """The least work of any per-task-gradient method: one forward pass, the
    K task losses' gradients of the shared trunk (K backward passes), the
    heads' gradient of the summed loss, and one optimizer update with the
    summed trunk gradients. No aggregation, no checks, no bookkeeping.

    On TensorFlow a persistent `GradientTape` (K + 1 `tape.gradient` calls);
    on JAX the stateless `train_step(state, data)`: one forward pass under
    `jax.vjp`, K VJPs with the unit cotangents of the task losses (the trunk's
    part of each is used) and one with cotangent 1 on every loss (the heads'
    part), applied with `optimizer.stateless_apply`."""

    def __init__(self, net: keras.Model, losses: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.task_names = list(losses)
        self.task_loss_fns = [keras.losses.get(losses[t]) for t in self.task_names]
        variables = list(net.trainable_variables)
        self.shared_indices = gradients_lib.shared_variable_indices(
            net, variables, self.task_names
        )
        self.shared = [variables[i] for i in self.shared_indices]
        ids = {id(v) for v in self.shared}
        self.heads = [v for v in variables if id(v) not in ids]

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.net(inputs, training=training)

    def _task_losses(self, y: Any, outputs: Any) -> list[Any]:
        return [
            ops.mean(fn(y[t], outputs[t]))
            for t, fn in zip(self.task_names, self.task_loss_fns)
        ]

    def train_step(self, *args: Any) -> Any:
        if backend() == "jax":
            return self._jax_train_step(*args)
        return self._tf_train_step(*args)

    def _tf_train_step(self, data: Any) -> dict[str, Any]:
        import tensorflow as tf

        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape(persistent=True) as tape:
            outputs = self.net(x, training=True)
            task_losses = self._task_losses(y, outputs)
            total = tf.add_n(task_losses)
        shared = [tape.gradient(loss, self.shared) for loss in task_losses]
        summed = [tf.add_n(list(gs)) for gs in zip(*shared)]
        heads = tape.gradient(total, self.heads)
        del tape
        self.optimizer.apply(summed + heads, self.shared + self.heads)
        return {"loss": total}

    def _jax_train_step(self, state: Any, data: Any) -> tuple[Any, Any]:
        import jax

        trainable, non_trainable, optimizer_values, metrics_values = state
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        # The model's trainable variables are the net's, in the net's order.
        net_trainable = len(self.net.trainable_variables)
        net_non_trainable = len(self.net.non_trainable_variables)

        def forward(values: list[Any]) -> tuple[Any, Any]:
            outputs, new_non_trainable = self.net.stateless_call(
                values[:net_trainable],
                non_trainable[:net_non_trainable],
                x,
                training=True,
            )
            return ops.stack(self._task_losses(y, outputs)), new_non_trainable

        losses, vjp, new_non_trainable = jax.vjp(forward, trainable, has_aux=True)
        eye = ops.eye(len(self.task_names), dtype=losses.dtype)
        rows = [vjp(eye[k])[0] for k in range(len(self.task_names))]
        heads = vjp(ops.ones_like(losses))[0]  # XLA keeps only the heads' part
        shared = set(self.shared_indices)
        gradients = [
            sum(row[i] for row in rows) if i in shared else g
            for i, g in enumerate(heads)
        ]
        new_trainable, new_optimizer = self.optimizer.stateless_apply(
            optimizer_values, gradients, trainable
        )
        non_trainable = list(new_non_trainable) + list(
            non_trainable[net_non_trainable:]
        )
        state = (new_trainable, non_trainable, new_optimizer, metrics_values)
        return {"loss": ops.sum(losses)}, state


# ------------------------------------------------------------------ variants
def build(variant: str, kind: str, width: int, num_tasks: int, jit: bool) -> Any:
    """A compiled model for `variant`: `keras` (stock, static loss_weights),
    `ideal`, `w:<weighting>`, `a:<aggregator>` or `r:<aggregator>` (the
    aggregator in representation mode) (MultiTaskModel)."""
    keras.utils.set_random_seed(0)
    net = network(kind, width, num_tasks)
    losses = losses_for(kind, num_tasks)
    optimizer = keras.optimizers.Adam(1e-4)
    if variant == "keras":
        model = net
        model.compile(
            optimizer=optimizer,
            loss=losses,
            loss_weights={t: 1.0 for t in losses},
            jit_compile=jit,
        )
        return model
    if variant == "ideal":
        model = IdealPerTaskStep(net, losses)
        model.compile(optimizer=optimizer, jit_compile=jit)
        return model
    family, _, name = variant.partition(":")
    options: dict[str, Any] = {}
    if family == "w":
        weighting: Any = name
        if name == "fixed":
            weighting = keras_mtl.weighting.get("fixed", weights=[1.0] * num_tasks)
        options["weighting"] = weighting
    elif family == "a":
        options["aggregator"] = name
    elif family == "r":  # representation mode: aggregated at the trunk's output
        options["aggregator"] = name
        options["representation"] = "shared" if kind == "cnn" else "trunk_2"
    else:
        raise ValueError(f"Unknown variant {variant!r}.")
    model = keras_mtl.MultiTaskModel(net, **options)
    model.compile(optimizer=optimizer, loss=losses, jit_compile=jit)
    return model


class Runner:
    """Calls a compiled model's train function step by step, as `fit` does:
    `train_function(iterator)` on TensorFlow; on JAX
    `train_function(state, iterator)`, the state threaded from call to call
    (taken from the variables once, which are then emptied, as in `fit`)."""

    def __init__(self, model: Any, data: Any) -> None:
        self.model = model
        model.optimizer.build(model.trainable_variables)
        model.make_train_function()
        self.iterator = iter(data)
        self.state = None
        if backend() == "jax":
            self.state = model._get_jax_state(
                trainable_variables=True,
                non_trainable_variables=True,
                optimizer_variables=True,
                metrics_variables=True,
                purge_model_variables=True,
            )

    def step(self) -> Any:
        if self.state is None:
            return self.model.train_function(self.iterator)
        logs, self.state = self.model.train_function(self.state, self.iterator)
        return logs

    def sync(self, outputs: Any) -> None:
        """Waits for the step's results (JAX and TF dispatch asynchronously)."""
        if self.state is not None:
            import jax

            jax.block_until_ready((outputs, self.state))
            return
        for value in keras.tree.flatten(outputs):
            np.asarray(value)


SAMPLE_SECONDS = 0.1  # the default length of one timing sample
MAX_STEPS = 100  # steps per sample at most


def time_variants(
    variants: list[str],
    kind: str,
    width: int,
    num_tasks: int,
    jit: bool,
    steps: int | None,
    repeats: int,
    sample_seconds: float = SAMPLE_SECONDS,
) -> dict[str, dict[str, float]]:
    """Median seconds per train step of each variant (taking turns), and the
    seconds of each one's first call (trace + compile + one step).

    Each sample times `steps` steps; with `steps=None`, as many as fill
    about `sample_seconds` (from the warm-up steps' time, between 1 and
    `MAX_STEPS`): a 2 ms step is timed over 100 steps, a 100 ms one over 2."""
    data = dataset(kind, num_tasks)
    runs: dict[str, Runner] = {}
    compile_seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    for variant in variants:
        runner = Runner(build(variant, kind, width, num_tasks, jit), data)
        start = time.perf_counter()
        runner.sync(runner.step())
        compile_seconds[variant] = time.perf_counter() - start
        warm = float("inf")
        for _ in range(3):  # warm-up; the fastest step sizes the samples
            start = time.perf_counter()
            runner.sync(runner.step())
            warm = min(warm, time.perf_counter() - start)
        counts[variant] = steps or min(MAX_STEPS, max(1, round(sample_seconds / warm)))
        runs[variant] = runner
    samples: dict[str, list[float]] = {v: [] for v in variants}
    # The collector stays off while timing (as in `timeit`): with a dozen
    # models alive a collection pause lands in some samples, not others.
    gc.collect()
    gc.disable()
    try:
        _take_samples(runs, counts, samples, repeats)
    finally:
        gc.enable()
    return {
        v: {
            "step_seconds": statistics.median(samples[v]),
            "spread": (max(samples[v]) - min(samples[v]))
            / statistics.median(samples[v]),
            "compile_seconds": compile_seconds[v],
            "steps_per_sample": counts[v],
            "samples": samples[v],
        }
        for v in variants
    }


def _take_samples(
    runs: dict[str, Runner],
    counts: dict[str, int],
    samples: dict[str, list[float]],
    repeats: int,
) -> None:
    """`repeats` rounds of one sample per variant (seconds per step)."""
    variants = list(runs)
    for repeat in range(repeats):
        # Rotate the order so no variant always runs first after a pause.
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for variant in order:
            runner = runs[variant]
            start = time.perf_counter()
            for _ in range(counts[variant]):
                outputs = runner.step()
            runner.sync(outputs)
            samples[variant].append((time.perf_counter() - start) / counts[variant])


# ---------------------------------------------------------------- the plan
def weighting_names() -> list[str]:
    return _one_alias_per_class(keras_mtl.weighting.ALIASES)


def aggregator_names() -> list[str]:
    return _one_alias_per_class(keras_mtl.aggregation.ALIASES)


def _one_alias_per_class(aliases: dict[str, type]) -> list[str]:
    seen: set[type] = set()
    names = []
    for name in sorted(aliases):
        if aliases[name] not in seen:
            seen.add(aliases[name])
            names.append(name)
    return names


# Representation mode ÷ equal weighting: at most 1.05 (issue 21; the
# suite's goal was 1.15 before).
REPRESENTATION_GOAL = 1.05
REPRESENTATION_VARIANTS = [
    f"r:{n}" for n in ("sum", "mgda", "pcgrad", "upgrad", "cagrad", "nash_mtl")
]
TASKS_VARIANTS = ["keras", "w:equal", "w:adaptive", "w:dwa", "ideal"] + [
    f"a:{n}" for n in ("pcgrad", "mgda", "upgrad", "nash_mtl")
]
XLA_VARIANTS = ["keras", "w:equal", "w:adaptive", "ideal", "a:pcgrad", "a:upgrad"]


def jit_modes(name: str) -> tuple[bool, ...]:
    """XLA on and off for section 1 on TensorFlow (a `tf.function` graph
    either way). On JAX `jit_compile=False` is op-by-op eager execution, a
    debugging mode (see section 4), so section 1 measures XLA only there."""
    return (True, False) if name == "tensorflow" else (True,)


def plan(section: str, cfg: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """The tables a section measures on backend `name`: each a key, its
    variants and the network, number of tasks and `jit_compile` they share."""
    tables: list[dict[str, Any]] = []

    def table(
        key: str, variants: list[str], kind: str, width: int, k: int, jit: bool
    ) -> None:
        tables.append(
            {"key": key, "variants": variants, "kind": kind, "width": width,
             "tasks": k, "jit": jit}
        )  # fmt: skip

    if section == "1":
        variants = ["keras"] + [f"w:{n}" for n in weighting_names()]
        for width in cfg.widths:
            for jit in jit_modes(name):
                table(
                    f"loss_level/mlp{width}/jit={jit}", variants, "mlp", width, 3, jit
                )
    elif section == "2":
        gradient = ["ideal", "keras", "w:equal"] + [
            f"a:{n}" for n in aggregator_names()
        ]
        representation = ["w:equal"] + REPRESENTATION_VARIANTS
        for prefix, variants in (
            ("gradient_level", gradient),
            ("representation", representation),
        ):
            for kind, width in networks(cfg):
                table(f"{prefix}/{kind}{width}", variants, kind, width, 3, True)
    elif section == "3":
        for k in cfg.tasks:
            table(f"tasks/K={k}", TASKS_VARIANTS, "mlp", cfg.widths[0], k, True)
    return tables


def networks(cfg: argparse.Namespace) -> list[tuple[str, int]]:
    """The MLP at each width, then the benchmark CNN."""
    return [("mlp", w) for w in cfg.widths] + [("cnn", 32)]


# ------------------------------------------------------------ measuring
def run_tables(tables: list[dict[str, Any]], cfg: argparse.Namespace) -> dict[str, Any]:
    """Measures `tables` in this process (one backend)."""
    results: dict[str, Any] = {}
    for t in tables:
        print(f"  [{backend()}] {t['key']}", flush=True)
        results[t["key"]] = time_variants(
            t["variants"], t["kind"], t["width"], t["tasks"], t["jit"],
            cfg.steps, cfg.repeats, cfg.sample_seconds,
        )  # fmt: skip
    return results


def available_backends(requested: list[str]) -> list[str]:
    """The requested backends whose package is installed."""
    found = []
    for name in requested:
        if name not in BACKENDS:
            raise ValueError(f"Unknown backend {name!r}; choose from {BACKENDS}.")
        if importlib.util.find_spec(name) is None:
            print(f"{name} is not installed: its measurements are left out.")
        else:
            found.append(name)
    return found


def _env(name: str) -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": name}


def _common_args(cfg: argparse.Namespace, repeats: int | None = None) -> list[str]:
    args = ["--repeats", str(repeats or cfg.repeats)]
    args += ["--sample-seconds", str(cfg.sample_seconds)]
    return args + (["--steps", str(cfg.steps)] if cfg.steps else [])


def measure_in_subprocess(
    section: str, name: str, cfg: argparse.Namespace
) -> dict[str, Any]:
    """Runs section `section`'s tables in a fresh process on backend `name`."""
    if section == "4":
        return section_xla_cells(name, cfg)
    if section == "5":
        return section_torchjd(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        args = [
            sys.executable, __file__, "--worker", section, "--worker-out", str(out),
            "--widths", ",".join(map(str, cfg.widths)),
            "--tasks", ",".join(map(str, cfg.tasks)), *_common_args(cfg),
        ]  # fmt: skip
        done = subprocess.run(args, env=_env(name), timeout=4 * 3600)
        if done.returncode != 0:
            raise RuntimeError(f"section {section} on {name} failed (see above)")
        return json.loads(out.read_text())


def section_xla_cells(name: str, cfg: argparse.Namespace) -> dict[str, Any]:
    """Section 4 on backend `name`: each variant, XLA on and off, in a fresh
    process of its own (its peak memory is that process')."""
    results: dict[str, Any] = {}
    for variant in XLA_VARIANTS:
        for jit in (True, False):
            print(f"  [{name}] xla/{variant}/jit={jit}", flush=True)
            repeats = cfg.repeats
            if name == "jax" and not jit:
                # Op-by-op JAX takes 0.1-5 s a step: 3 samples already
                # time it to a few percent.
                repeats = min(repeats, 3)
            args = [
                sys.executable, __file__, "--one", variant,
                "--one-width", str(cfg.widths[-1]), "--one-jit", str(int(jit)),
                *_common_args(cfg, repeats),
            ]  # fmt: skip
            done = subprocess.run(
                args, env=_env(name), capture_output=True, text=True, timeout=3600
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"{variant} jit={jit} on {name} failed:\n{done.stderr[-3000:]}"
                )
            results[f"xla/{variant}/jit={jit}"] = json.loads(
                done.stdout.strip().splitlines()[-1]
            )
    return {"results": results}


SIDE_BY_SIDE_KEY = "side_by_side/torchjd"


def side_by_side_module() -> Any:
    """benchmarks/torchjd_side_by_side.py, imported by path."""
    spec = importlib.util.spec_from_file_location(
        "torchjd_side_by_side", REPO / "benchmarks" / "torchjd_side_by_side.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section_torchjd(cfg: argparse.Namespace) -> dict[str, Any]:
    """Section 5: keras_mtl on TensorFlow, JAX and torch side by side with
    PyTorch + TorchJD, every framework in worker processes of its own taking
    turns epoch by epoch (one run for all backends, whatever `--backends`
    says). What is not installed is named in the record and the report, not
    measured."""
    side = side_by_side_module()
    if cfg.quick:  # a smoke run: the MLP, 2 batches an epoch, 2 rounds
        models, samples, rounds = ["mlp"], 2 * BATCH_SIZE, 2
    else:
        models, samples, rounds = list(side.MODELS), 8192, cfg.torchjd_rounds
    record = side.run(
        models, list(side.METHODS), list(side.FRAMEWORKS), samples, rounds,
        threads=cfg.torchjd_threads,
    )  # fmt: skip
    return {"results": {SIDE_BY_SIDE_KEY: record}}


def one_variant(variant: str, width: int, jit: bool, cfg: argparse.Namespace) -> None:
    result = time_variants(
        [variant], "mlp", width, 3, jit, cfg.steps, cfg.repeats, cfg.sample_seconds
    )[variant]
    # ru_maxrss is in kilobytes on Linux.
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ------------------------------------------------------------------ report
def paired_ratios(
    results: dict[str, dict[str, Any]], variant: str, baseline: str
) -> list[float]:
    """The ratio of `variant`'s sample to `baseline`'s in each round (taken
    seconds apart, so a slow spell of the machine hits both); the ratio of
    the medians alone for results without samples."""
    ours, theirs = results[variant], results[baseline]
    if "samples" in ours and "samples" in theirs:
        return [a / b for a, b in zip(ours["samples"], theirs["samples"])]
    return [ours["step_seconds"] / theirs["step_seconds"]]


def paired_ratio(
    results: dict[str, dict[str, Any]], variant: str, baseline: str
) -> float:
    """`variant`'s time ÷ `baseline`'s: the median of the paired ratios."""
    return statistics.median(paired_ratios(results, variant, baseline))


def ratio_interval(
    results: dict[str, dict[str, Any]], variant: str, baseline: str
) -> tuple[float, float]:
    """A 90% bootstrap interval of `paired_ratio` (2000 resamples of the
    rounds, a fixed seed): how far this machine's noise leaves the ratio."""
    ratios = paired_ratios(results, variant, baseline)
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000)
    )
    return medians[100], medians[1899]


def ratio_table(
    per_backend: dict[str, dict[str, dict[str, float]]],
    baseline: str,
    goal: float,
    label: str,
) -> list[str]:
    """A markdown table: one row per variant, for each backend its ms per
    step, ratio to `baseline` (measured in the same process) with its 90%
    interval, whether that meets `goal` ("within noise": over it, but the
    interval reaches it), the spread of the samples and the compile time."""
    names = list(per_backend)
    variants: list[str] = []
    for results in per_backend.values():
        variants += [v for v in results if v not in variants]
    head = [label]
    for name in names:
        b = BACKEND_LABELS.get(name, name)
        head += [
            f"{b} ms/step", f"{b} ÷ `{baseline}`", f"≤ {goal}",
            f"{b} spread", f"{b} compile s",
        ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in variants:
        cells = [f"`{variant}`"]
        for name in names:
            results = per_backend[name]
            r = results.get(variant)
            if r is None or baseline not in results:
                cells += ["–"] * 5
                continue
            ratio = paired_ratio(results, variant, baseline)
            low, high = ratio_interval(results, variant, baseline)
            mark = "yes" if ratio <= goal else "**no**"
            if ratio > goal and low <= goal:
                mark = "within noise"  # over, but the interval reaches the goal
            if variant == baseline:
                mark = ""
            cells += [
                f"{1e3 * r['step_seconds']:.2f}",
                f"{ratio:.3f} ({low:.2f}-{high:.2f})" if variant != baseline else "1",
                mark,
                f"{100 * r['spread']:.0f}%", f"{r['compile_seconds']:.1f}",
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _per_backend(records: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    return {name: rec[key] for name, rec in records.items() if key in rec}


def format_loss_level(cfg: argparse.Namespace, records: dict[str, Any]) -> list[str]:
    out = [
        "## 1. Loss-level methods against stock Keras",
        "",
        "Each weighting in `MultiTaskModel` ÷ the same network as a plain "
        "multi-output `keras.Model` with static `loss_weights` (goal ≤ 1.03), "
        f"on each backend; MLP, K = 3 tasks, batch {BATCH_SIZE}. Without XLA "
        "TensorFlow only: on JAX `jit_compile=False` runs op by op (section 4).",
        "",
    ]
    for width in cfg.widths:
        for jit in (True, False):
            per_backend = _per_backend(records, f"loss_level/mlp{width}/jit={jit}")
            if per_backend:
                out += [f"### MLP width {width}, jit_compile={jit}", ""]
                out += ratio_table(per_backend, "keras", 1.03, "method") + [""]
    return out


def format_gradient_level(
    cfg: argparse.Namespace, records: dict[str, Any]
) -> list[str]:
    out = [
        "## 2. Gradient-level methods against the ideal per-task-gradient step",
        "",
        "Each aggregator in `MultiTaskModel` ÷ `ideal` (one forward, K = 3 "
        "backward passes of the trunk, gradients summed; goal ≤ 1.1), on each "
        "backend; `keras` (stock, one backward) for scale. jit_compile=True.",
        "",
    ]
    out += _network_tables(cfg, records, "gradient_level", "ideal", 1.1)
    out += [
        "### Representation mode",
        "",
        "Aggregation at the trunk's output (`representation=`, one backward "
        f"through the trunk) ÷ `w:equal` (goal ≤ {REPRESENTATION_GOAL}), "
        "jit_compile=True.",
        "",
    ]
    out += _network_tables(
        cfg, records, "representation", "w:equal", REPRESENTATION_GOAL
    )
    return out


def _network_tables(
    cfg: argparse.Namespace,
    records: dict[str, Any],
    prefix: str,
    baseline: str,
    goal: float,
) -> list[str]:
    out: list[str] = []
    for kind, width in networks(cfg):
        per_backend = _per_backend(records, f"{prefix}/{kind}{width}")
        if per_backend:
            title = f"MLP width {width}" if kind == "mlp" else "benchmark CNN"
            out += [f"### {prefix}: {title}", ""]
            out += ratio_table(per_backend, baseline, goal, "method") + [""]
    return out


def baseline_of(variant: str) -> str:
    """What section 3 divides a variant by: an aggregator by the ideal
    per-task-gradient step, anything else by stock Keras."""
    return "ideal" if variant.startswith(("a:", "r:")) else "keras"


def format_tasks(cfg: argparse.Namespace, records: dict[str, Any]) -> list[str]:
    names = [n for n in records if any(k.startswith("tasks/") for k in records[n])]
    out = [
        "## 3. Scaling with the number of tasks",
        "",
        "ms per step for K = " + ", ".join(map(str, cfg.tasks)) + " (MLP width "
        f"{cfg.widths[0]}, jit_compile=True), on each backend; in brackets the "
        "ratio, measured in the same process, of an aggregator to `ideal` "
        "(goal ≤ 1.1) and of anything else to stock Keras (goal ≤ 1.03 for the "
        "weightings; for `ideal` the cost of K backward passes).",
        "",
    ]
    columns = [(k, n) for k in cfg.tasks for n in names]
    out.append(
        "| method | "
        + " | ".join(f"K = {k} {BACKEND_LABELS.get(n, n)}" for k, n in columns)
        + " |"
    )
    out.append("|---|" + "---|" * len(columns))
    for variant in TASKS_VARIANTS:
        cells = []
        for k, n in columns:
            table = records[n].get(f"tasks/K={k}")
            if table is None or variant not in table:
                cells.append("–")
                continue
            t = table[variant]["step_seconds"]
            ratio = paired_ratio(table, variant, baseline_of(variant))
            cells.append(f"{1e3 * t:.2f} ({ratio:.2f})")
        out.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    return out + [""]


def format_xla(cfg: argparse.Namespace, records: dict[str, Any]) -> list[str]:
    out = [
        "## 4. XLA on and off: compile time, step time, peak memory",
        "",
        f"MLP width {cfg.widths[-1]}, K = 3. Each cell runs in a fresh process; "
        "compile = the first call (trace, compile and one step); peak RSS of "
        "that process (the framework itself included: on either backend the "
        "process imports TensorFlow, which `keras.utils.set_random_seed` "
        "seeds wherever it is installed). Without XLA: a `tf.function` graph on "
        "TensorFlow, op-by-op (eager) execution on JAX.",
        "",
        "| method | backend | compile s (XLA) | compile s (no XLA) | ms/step (XLA) "
        "| ms/step (no XLA) | peak MB (XLA) | peak MB (no XLA) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in XLA_VARIANTS:
        for name, rec in records.items():
            on = rec.get(f"xla/{variant}/jit=True")
            off = rec.get(f"xla/{variant}/jit=False")
            if on is None or off is None:
                continue
            out.append(
                f"| `{variant}` | {BACKEND_LABELS.get(name, name)} "
                f"| {on['compile_seconds']:.1f} | {off['compile_seconds']:.1f} "
                f"| {1e3 * on['step_seconds']:.2f} | {1e3 * off['step_seconds']:.2f} "
                f"| {on['peak_mb']:.0f} | {off['peak_mb']:.0f} |"
            )
    return out + [""]


def format_torchjd(cfg: argparse.Namespace, records: dict[str, Any]) -> list[str]:
    record = next(
        (rec[SIDE_BY_SIDE_KEY] for rec in records.values() if SIDE_BY_SIDE_KEY in rec),
        None,
    )
    if record is None:
        return []
    side = side_by_side_module()
    config = record["config"]
    # Records from before the option measured Keras on torch channels last.
    torch_layout = config.get("torch_image_data_format", "channels_last")
    # And before this one, TensorFlow's column was given the arrays.
    tf_input = config.get("tensorflow_input", side.ARRAYS_INPUT)
    tf_input_text = (
        "the arrays given to `fit` (Keras' own autotuned `tf.data` pipeline)"
        if tf_input == side.ARRAYS_INPUT
        else "a `tf.data` pipeline of the arrays with autotuning off "
        "(`tf_input` says why)"
    )
    out = [
        "## 5. Side by side with PyTorch + TorchJD",
        "",
        "Seconds per epoch of the same model ("
        f"{config['samples']} samples, batch {config['batch_size']}, Adam, CPU, "
        "float32): PyTorch with TorchJD "
        f"{config.get('torchjd') or '(not installed)'} as its documentation "
        "trains (`mtl_backward(losses, features=features)`, `jac_to_grad("
        "trunk.parameters(), aggregator)`), keras_mtl's `MultiTaskModel` on "
        "TensorFlow and JAX (`jit_compile=True`) and on torch (eager, and "
        "with `jit_compile=True`: Keras' `torch.compile` of the step), each "
        "in a process of its own per method; the processes take turns epoch "
        f"by epoch, {config['rounds']} timed epochs each after a warm-up epoch "
        "(excluded). keras_mtl is timed inside one `fit` by a callback. "
        "s/epoch: the median; ÷ TorchJD: the median of the per-round ratios "
        "(in brackets their range); peak MB: the process' peak resident set "
        "over the timed epochs minus its resident set before the model was "
        "built (allocator caches and XLA's compile leftovers included). "
        "Hyperparameters matched as benchmarks/torchjd_side_by_side.py says "
        "(CAGrad c = 0.5 without rescaling; Nash-MTL every step, max norm 1, "
        "20 iterations; the others both libraries' defaults). The CNN's "
        "layout: channels first in PyTorch, "
        f"{torch_layout.replace('_', ' ')} in Keras on torch, channels last "
        "in Keras on TensorFlow and JAX. TensorFlow's input: "
        f"{tf_input_text}; the other columns read the arrays in the training "
        "process.",
        "",
    ]
    return out + side.format_table(record)


FORMATS = {
    "1": format_loss_level,
    "2": format_gradient_level,
    "3": format_tasks,
    "4": format_xla,
    "5": format_torchjd,
}


def machine() -> dict[str, Any]:
    """This machine and the versions of both backends."""
    import platform
    from importlib import metadata

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    for package in ("tensorflow", "jax", "keras"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["load_average_at_start"] = tuple(round(a, 2) for a in os.getloadavg())
    except OSError:
        pass
    # glibc's malloc settings change JAX's CPU steps (fresh pages for XLA's
    # temporaries every step by default: docs/backends.md).
    if os.environ.get("GLIBC_TUNABLES"):
        info["glibc_tunables"] = os.environ["GLIBC_TUNABLES"]
    return info


def kept_profile(path: Path) -> list[str]:
    """The hand-written "## Profile" section of an existing report (from
    that heading to the end), kept when the suite rewrites the report."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "## Profile":
            return lines[i:] + [""]
    return []


def kept_machine(record: dict[str, Any], section: str) -> dict[str, Any]:
    """The machine that measured `section` of a report's record: its
    `section_machines` entry; in a record written before those were kept,
    the machine of the run it kept the section from, else its own."""
    if section in record.get("section_machines", {}):
        return record["section_machines"][section]
    earlier = record.get("config", {}).get("kept") or {}
    if section in earlier.get("sections", []) and "machine" in earlier:
        return earlier["machine"]
    return record["machine"]


def write_report(
    out: Path,
    cfg: argparse.Namespace,
    argv: list[str] | None,
    info: dict[str, Any],
    started: float,
    body: list[str],
    profile: list[str],
    records: dict[str, dict[str, Any]],
    minutes: dict[str, float],
) -> None:
    """Writes the report (`out`, markdown) and its record (`.json`)."""
    command = "python benchmarks/performance.py " + " ".join(argv or sys.argv[1:])
    header = [
        "# Performance",
        "",
        f"Output of `{command.strip()}` (wall time "
        f"{(time.time() - started) / 60:.0f} min). Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + ".",
        "",
        f"Backends: {', '.join(records)}, each in processes of its own; every "
        "ratio is measured within one process. Median of "
        f"{cfg.repeats} samples per variant, variants taking turns, each "
        + (
            f"of {cfg.steps} steps"
            if cfg.steps
            else f"of as many steps as fill {cfg.sample_seconds} s (1 to {MAX_STEPS})"
        )
        + ", with the garbage collector off; ms/step is a variant's median, "
        "a ratio the median over the rounds of the two variants' samples' "
        "ratio in that round (paired, so a slow spell of the machine hits "
        "both), in brackets its 90% bootstrap interval; a ratio over its "
        "goal whose interval reaches the goal is marked 'within noise'; "
        "'spread' = (max - min) / median of the samples (the "
        "machine's noise); compile s = the first call (trace, compile, one "
        "step).",
        "",
    ]
    kept = getattr(cfg, "kept", None)
    measured = cfg.sections.split(",")
    section_machines = {section: info for section in measured}
    if kept:
        section_machines.update(kept["machines"])
        # Kept sections measured on the same machine share one sentence.
        runs: list[tuple[list[str], dict[str, Any]]] = []
        for section in kept["sections"]:
            machine = kept["machines"][section]
            same = [r for r in runs if r[1] == machine]
            if same:
                same[0][0].append(section)
            else:
                runs.append(([section], machine))
        for sections, machine in runs:
            header += [
                f"Section{'s' if len(sections) > 1 else ''} {', '.join(sections)} "
                f"{'are' if len(sections) > 1 else 'is'} kept from an earlier run "
                f"(`{kept['record']}`; machine: "
                + ", ".join(f"{k} {v}" for k, v in machine.items())
                + ").",
                "",
            ]
        header += [
            f"Section {measured[0]} was measured by this command."
            if len(measured) == 1
            else f"Sections {', '.join(measured)} were measured by this command.",
            "",
        ]
    out.write_text("\n".join(header + body + profile))
    config = vars(cfg).copy()
    if kept:  # every section the report holds, for a later --keep
        config["sections"] = ",".join(
            sorted({*kept["sections"], *cfg.sections.split(",")})
        )
    record = {
        "machine": info,
        # The machine of each section, for a later --keep of some of them.
        "section_machines": {
            s: section_machines[s] for s in sorted(section_machines) if s in FORMATS
        },
        "config": config,
        "minutes": minutes,
        "results": records,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="default docs/performance.md")
    parser.add_argument("--sections", default="1,2,3,4,5")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per sample (default: as many as fill --sample-seconds)",
    )
    parser.add_argument(
        "--sample-seconds",
        type=float,
        default=SAMPLE_SECONDS,
        help="length of one timing sample when --steps is not given",
    )
    parser.add_argument("--repeats", type=int, default=21, help="samples per variant")
    parser.add_argument("--widths", default="128,1024")
    parser.add_argument("--tasks", default="2,8,40")
    parser.add_argument(
        "--torchjd-rounds",
        type=int,
        default=5,
        help="section 5: timed epochs per framework and method",
    )
    parser.add_argument(
        "--torchjd-threads",
        type=int,
        default=None,
        help="section 5: intra-op threads of every framework (default: all "
        "cores; 1 on a loaded machine, see benchmarks/torchjd_side_by_side.py)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny smoke run (to runs/perf-quick/)"
    )
    parser.add_argument(
        "--keep",
        help="the record (.json) of an earlier run: its other sections are "
        "kept in the report (and named there), the --sections measured again",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-jit", type=int, help=argparse.SUPPRESS)
    cfg = parser.parse_args(argv)
    if cfg.one:
        one_variant(cfg.one, cfg.one_width, bool(cfg.one_jit), cfg)
        return 0
    if cfg.quick:
        cfg.steps, cfg.repeats, cfg.widths, cfg.tasks = 2, 2, "32", "2,3"
        cfg.out = cfg.out or str(REPO / "runs" / "perf-quick" / "performance.md")
    cfg.widths = [int(w) for w in str(cfg.widths).split(",")]
    cfg.tasks = [int(k) for k in str(cfg.tasks).split(",")]
    if cfg.worker:
        results = run_tables(plan(cfg.worker, cfg, backend()), cfg)
        Path(cfg.worker_out).write_text(json.dumps({"results": results}))
        return 0
    started = time.time()
    info = machine()
    names = available_backends(cfg.backends.split(","))
    records: dict[str, dict[str, Any]] = {name: {} for name in names}
    minutes: dict[str, float] = {}  # wall time of each section on each backend
    body: list[str] = []
    out = Path(cfg.out or REPO / "docs" / "performance.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = kept_profile(out)
    measured = [section.strip() for section in cfg.sections.split(",")]
    kept_sections: list[str] = []
    if cfg.keep:
        kept = json.loads(Path(cfg.keep).read_text())
        # The sections it measured to the end (a run cut short has fewer).
        kept_sections = sorted(
            {key.split("/")[0] for key in kept["minutes"]} - set(measured)
        )
        # The kept sections' tables; those measured now are replaced.
        for name in names:
            records[name].update(kept["results"].get(name, {}))
        minutes.update(
            {
                k: v
                for k, v in kept["minutes"].items()
                if k.split("/")[0] in kept_sections
            }
        )
        cfg.kept = {
            "record": cfg.keep,
            "sections": kept_sections,
            "machines": {s: kept_machine(kept, s) for s in kept_sections},
        }
    for i, section in enumerate(measured):
        for name in names:
            if section == "5" and name != names[0]:
                continue  # one run measures every framework side by side
            print(f"[{section}] {name}", flush=True)
            begun = time.time()
            records[name].update(measure_in_subprocess(section, name, cfg)["results"])
            minutes[f"{section}/{name}"] = round((time.time() - begun) / 60, 1)
            print(f"[{section}] {name}: {minutes[f'{section}/{name}']} min", flush=True)
        done = [s for s in sorted({*kept_sections, *measured[: i + 1]}) if s in FORMATS]
        body = [line for s in done for line in FORMATS[s](cfg, records)]
        # Written after every section: a run cut short keeps what it measured.
        write_report(out, cfg, argv, info, started, body, profile, records, minutes)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

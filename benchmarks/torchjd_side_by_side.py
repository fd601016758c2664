"""keras_mtl side by side with PyTorch + TorchJD 0.18: seconds per epoch of
the same model, measured in one run.

    python benchmarks/torchjd_side_by_side.py            # full run -> runs/torchjd/
    python benchmarks/torchjd_side_by_side.py --quick    # a smoke run (2 batches, 2 rounds)
    python benchmarks/torchjd_side_by_side.py --models mlp --methods sum,upgrad

The performance suite runs it as its section 5 (`bash scripts/perf.sh`, or
`python benchmarks/performance.py --sections 5`), which writes the table into
docs/performance.md and the raw numbers into docs/performance.json.

The model (`--models mlp`) is the suite's width-1024 MLP: input 64, three
hidden ReLU layers of width 1024, three scalar regression heads (MSE), 8192
samples, batch 256, Adam (learning rate 1e-4), CPU, float32. `cnn` is the
suite's benchmark CNN (`keras_mtl.bench.models.image_cnn` on 12x16 images,
three 10-way heads, sparse cross-entropy), written out layer for layer in
PyTorch. Its layout is each framework's own: channels first in PyTorch and
in Keras on torch, channels last in Keras on TensorFlow and JAX (XLA's CPU
layout). Keras on torch runs a channels-last convolution or pooling by
transposing its input (and kernel) to channels first around the torch call;
`--torch-channels-last` measures the torch columns in that layout. Methods: plain
summed losses (`sum`) and the aggregators UPGrad, MGDA, PCGrad, CAGrad,
IMTL-G, Aligned-MTL and Nash-MTL on the shared trunk's parameters.

Columns, each framework in a process of its own:

- `torchjd`: PyTorch with TorchJD's documented multi-task loop,
  `torchjd.autojac.mtl_backward(losses, features=features)` then
  `torchjd.autojac.jac_to_grad(trunk.parameters(), aggregator)`,
  `optimizer.step()`, `optimizer.zero_grad()` (for `sum`: one
  `sum(losses).backward()`), over a shuffling `DataLoader`;
- `tensorflow`, `jax`: `keras_mtl.MultiTaskModel(net, aggregator=...)` with
  `jit_compile=True`, trained by one `fit` (plain sum: the default equal
  weighting, a loss-level step); TensorFlow's `fit` is given a `tf.data`
  pipeline of the arrays with tf.data's autotuning off (`tf_input` says
  why; `--tf-keras-arrays` gives it the arrays), the other columns the
  arrays;
- `torch`: the same on `KERAS_BACKEND=torch`, eager (`jit_compile=False`);
- `torch_compiled`: the same with `jit_compile=True` (Keras wraps the step
  in `torch.compile`; keras_mtl's aggregation runs eagerly between the
  compiled parts, docs/backends.md).

Timing: every worker waits for a "go" from this process before each epoch,
so exactly one framework runs at a time, and the frameworks take turns
round by round (the order rotated each round); the first epoch (Keras'
trace and XLA compile, PyTorch's first allocations) is excluded (the
frameworks run it at the same time). `--threads 1` caps every framework's
intra-op threads (OpenMP, TF, XLA): on a loaded machine PyTorch's two OpenMP
threads wait on each other (measured here under a load average of 7 on 2
cores: 250-500 ms a plain step with two threads, 55-60 ms with one) while
TensorFlow and JAX got the same CPU time either way. keras_mtl
is timed per epoch inside one `fit` by a callback (from `on_epoch_begin` to
`on_epoch_end`, after reading the epoch's loss, which waits for the
device). Reported: the median seconds per epoch and keras_mtl ÷ TorchJD as
the median of the per-round ratios (paired: a slow spell of the shared
machine hits both).

Memory: each (framework, method) runs in a fresh process. Its peak resident
set size (`VmHWM`, reset through `/proc/self/clear_refs` when the warm-up
epoch ends) over the timed epochs, minus its resident set size before the
model was built: the model, optimizer state and the step's working set, plus
whatever the framework's allocators kept from the warm-up epoch (the XLA
compile's included). It compares frameworks only roughly; between methods on
one framework it is a fair comparison.

Matched hyperparameters (TorchJD's constructor ↔ keras_mtl's):
CAGrad `c=0.5` ↔ `c=0.5, rescale=0` (TorchJD's CAGrad does not rescale);
Nash-MTL `update_weights_every=1, max_norm=1.0, optim_niter=20` ↔
`update_every=1, max_norm=1.0, iterations=20`; the others take both
libraries' defaults (MGDA: TorchJD's Frank-Wolfe stops at `epsilon=1e-3`,
at most 100 iterations, keras_mtl runs 200 FISTA iterations and an active
set; UPGrad: TorchJD's quadprog projector, keras_mtl's in-graph solver;
Aligned-MTL: both scale by the smallest eigenvalue, keras_mtl sums the
aligned rows where TorchJD averages them, a factor K in the update).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, TextIO

REPO = Path(__file__).resolve().parents[1]
TORCHJD_VERSION = "0.18.0"
METHODS = (
    "sum", "upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "aligned_mtl", "nash_mtl",
)  # fmt: skip
METHOD_LABELS = {
    "sum": "plain sum",
    "upgrad": "UPGrad",
    "mgda": "MGDA",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "imtl_g": "IMTL-G",
    "aligned_mtl": "Aligned-MTL",
    "nash_mtl": "Nash-MTL",
}
FRAMEWORKS = ("torchjd", "tensorflow", "jax", "torch", "torch_compiled")
FRAMEWORK_LABELS = {
    "torchjd": "PyTorch + TorchJD",
    "tensorflow": "keras_mtl TF (XLA)",
    "jax": "keras_mtl JAX (XLA)",
    "torch": "keras_mtl torch (eager)",
    "torch_compiled": "keras_mtl torch (torch.compile)",
}
# The Keras backend of each keras_mtl column, and whether its step compiles.
KERAS_BACKENDS = {
    "tensorflow": ("tensorflow", True),
    "jax": ("jax", True),
    "torch": ("torch", False),
    "torch_compiled": ("torch", True),
}
MODELS = ("mlp", "cnn")
NUM_TASKS = 3
BATCH_SIZE = 256
WIDTH = 1024
LEARNING_RATE = 1e-4
# keras_mtl's options matching TorchJD's constructors (module docstring).
KERAS_MTL_OPTIONS: dict[str, dict[str, Any]] = {
    "cagrad": {"c": 0.5, "rescale": 0},
    "nash_mtl": {"update_every": 1, "max_norm": 1.0, "iterations": 20},
}
# TorchJD's extras per aggregator: CAGrad and Nash-MTL solve with cvxpy
# (Nash-MTL through ECOS), UPGrad projects with quadprog via qpsolvers.
TORCHJD_EXTRAS = {
    "upgrad": ("quadprog", "qpsolvers"),
    "cagrad": ("cvxpy",),
    "nash_mtl": ("cvxpy", "ecos"),
}
PROTOCOL = "@@ "  # prefix of the workers' result lines on stdout


class Layout(NamedTuple):
    """How the keras_mtl columns lay out their data. Each choice is in one
    place: its command-line flag and help (`FLAGS`, the driver's and the
    workers'), what a worker builds from it and the record's config entry;
    a new choice is a field here and an entry in `FLAGS`."""

    torch_channels_last: bool = False
    tf_keras_arrays: bool = False

    # A class attribute, not a field: a NamedTuple's fields are annotated.
    FLAGS = {
        "torch_channels_last": (
            "--torch-channels-last",
            "build the CNN channels last on torch too (Keras' default layout; "
            "default there: channels first, PyTorch's)",
        ),
        "tf_keras_arrays": (
            "--tf-keras-arrays",
            "give the arrays to fit on TensorFlow (Keras' own autotuned tf.data "
            "pipeline; default: a tf.data pipeline with autotuning off, see tf_input)",
        ),
    }

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Adds one `store_true` flag per field to `parser`."""
        for flag, help_ in cls.FLAGS.values():
            parser.add_argument(flag, action="store_true", help=help_)

    @classmethod
    def from_args(cls, cfg: argparse.Namespace) -> Layout:
        """The layout that parsed flags (`add_flags`) ask for."""
        return cls(**{name: getattr(cfg, name) for name in cls.FLAGS})

    def argv(self) -> list[str]:
        """The flags that give a worker this layout."""
        return [flag for name, (flag, _) in self.FLAGS.items() if getattr(self, name)]

    def channels_first(self, backend: str, model: str) -> bool:
        """Whether a Keras column on `backend` builds `model` channels first."""
        return backend == "torch" and model == "cnn" and not self.torch_channels_last

    def tf_data(self, backend: str) -> bool:
        """Whether a Keras column on `backend` reads `tf_input`."""
        return backend == "tensorflow" and not self.tf_keras_arrays

    def config(self) -> dict[str, str]:
        """The record's config entries that say which layout was measured."""
        return {
            "torch_image_data_format": (
                "channels_last" if self.torch_channels_last else "channels_first"
            ),
            "tensorflow_input": ARRAYS_INPUT if self.tf_keras_arrays else TF_DATA_INPUT,
        }


DEFAULT_LAYOUT = Layout()  # channels first on torch, tf_input on TensorFlow


# ------------------------------------------------------------ availability
def missing_requirements(framework: str, method: str = "sum") -> list[str]:
    """The packages `framework` needs for `method` that are not installed."""
    if framework == "torchjd":
        needed = ["torch", "torchjd", *TORCHJD_EXTRAS.get(method, ())]
    else:  # a keras_mtl column needs its Keras backend's framework
        needed = [KERAS_BACKENDS[framework][0]]
    return [name for name in needed if importlib.util.find_spec(name) is None]


def installed_torchjd_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("torchjd")
    except metadata.PackageNotFoundError:
        return None


def setup_hint() -> str:
    return (
        f"`bash scripts/perf.sh` installs them, or `.venv/bin/pip install "
        f"torch torchjd[full]=={TORCHJD_VERSION}` (the suite's own set-up, not "
        "a dependency of keras_mtl)"
    )


# ------------------------------------------------------------------ data
def make_data(model: str, samples: int) -> tuple[Any, list[Any]]:
    """Random inputs and NUM_TASKS targets (numpy, float32 / int), seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    if model == "cnn":
        x = rng.random((samples, 12, 16, 1), dtype="float32")
        ys = [rng.integers(0, 10, samples) for _ in range(NUM_TASKS)]
    else:
        x = rng.standard_normal((samples, 64), dtype="float32")
        ys = [
            rng.standard_normal((samples, 1)).astype("float32")
            for _ in range(NUM_TASKS)
        ]
    return x, ys


# --------------------------------------------------------------- the worker
def rss_mb(field: str = "VmRSS") -> float:
    """This process' resident set size (or its peak, `VmHWM`) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Resets `VmHWM` to the current resident set size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Gate:
    """The worker's side of the protocol: waits for "go" on stdin before each
    epoch, reports each epoch's seconds on stdout."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = 0.0
        self.epoch = 0

    def send(self, **message: Any) -> None:
        self.out.write(PROTOCOL + json.dumps(message) + "\n")
        self.out.flush()

    def begin(self) -> None:
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("torchjd_side_by_side worker: the driver went away")
        self.started = time.perf_counter()

    def end(self, loss: float) -> None:
        seconds = time.perf_counter() - self.started
        if self.epoch == 0:
            reset_peak_rss()  # the peak of the timed epochs only
        self.send(epoch=self.epoch, seconds=seconds, loss=loss)
        self.epoch += 1


def run_worker(
    framework: str,
    method: str,
    model: str,
    samples: int,
    epochs: int,
    layout: Layout = DEFAULT_LAYOUT,
) -> None:
    """Trains `epochs` + 1 epochs (the first is the warm-up), each gated."""
    out = sys.stdout
    # Frameworks' own prints go to stderr; stdout carries the protocol.
    sys.stdout = sys.stderr
    gate = Gate(out)
    if framework == "torchjd":
        import torch  # noqa: F401
        import torchjd.autojac  # noqa: F401

        train = torchjd_worker
    else:
        import keras

        import keras_mtl  # noqa: F401

        # Keras' seeding imports TensorFlow wherever it is installed (to seed
        # it too), ~480 MB on any backend: done here, before the base is
        # read, it is not counted as the step's memory (keras_mtl_model
        # seeds again, to the same state).
        keras.utils.set_random_seed(0)
        backend, jit_compile = KERAS_BACKENDS[framework]
        train = functools.partial(
            keras_mtl_worker,
            jit_compile=jit_compile,
            channels_first=layout.channels_first(backend, model),
            tf_data=layout.tf_data(backend),
        )
    x, ys = make_data(model, samples)
    base_mb = rss_mb()  # the framework imported, the data made, no model yet
    info = train(method, model, x, ys, epochs + 1, gate)
    gate.send(
        done=True,
        peak_mb=rss_mb("VmHWM") - base_mb,
        base_mb=base_mb,
        **info,
    )


def torchjd_aggregator(method: str) -> Any:
    """TorchJD's aggregator for `method` (hyperparameters in the docstring)."""
    from torchjd import aggregation

    return {
        "sum": lambda: None,
        "upgrad": aggregation.UPGrad,
        "mgda": aggregation.MGDA,
        "pcgrad": aggregation.PCGrad,
        "cagrad": lambda: aggregation.CAGrad(c=0.5),
        "imtl_g": aggregation.IMTLG,
        "aligned_mtl": aggregation.AlignedMTL,
        "nash_mtl": lambda: aggregation.NashMTL(
            n_tasks=NUM_TASKS, max_norm=1.0, update_weights_every=1, optim_niter=20
        ),
    }[method]()


def torch_networks(model: str) -> tuple[Any, list[Any]]:
    """The trunk and heads of `model` in PyTorch, as the Keras networks."""
    from torch import nn

    if model == "cnn":  # image_cnn(width=32), shared_bottom, channels first
        trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 3 * 4, 128), nn.ReLU(),
        )  # fmt: skip
        return trunk, [nn.Linear(128, 10) for _ in range(NUM_TASKS)]
    trunk = nn.Sequential(
        nn.Linear(64, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
        nn.Linear(WIDTH, WIDTH), nn.ReLU(),
    )  # fmt: skip
    return trunk, [nn.Linear(WIDTH, 1) for _ in range(NUM_TASKS)]


def torchjd_worker(
    method: str, model: str, x: Any, ys: list[Any], epochs: int, gate: Gate
) -> dict[str, Any]:
    """PyTorch + TorchJD, as its README's multi-task example trains."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torchjd.autojac import jac_to_grad, mtl_backward

    torch.manual_seed(0)
    trunk, heads = torch_networks(model)
    params = [*trunk.parameters(), *(p for h in heads for p in h.parameters())]
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
    if model == "cnn":
        loss_fn: Any = torch.nn.CrossEntropyLoss()  # on logits: softmax + NLL
        x = x.transpose(0, 3, 1, 2).copy()  # NHWC -> NCHW
        targets = [torch.from_numpy(y).long() for y in ys]
    else:
        loss_fn = torch.nn.MSELoss()
        targets = [torch.from_numpy(y) for y in ys]
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), *targets),
        batch_size=BATCH_SIZE,
        shuffle=True,
    )
    aggregator = torchjd_aggregator(method)
    gate.send(ready=True)
    for _ in range(epochs):
        gate.begin()
        for batch, *batch_targets in loader:
            features = trunk(batch)
            losses = [
                loss_fn(head(features), y) for head, y in zip(heads, batch_targets)
            ]
            if aggregator is None:
                sum(losses).backward()
            else:
                mtl_backward(losses, features=features)
                jac_to_grad(trunk.parameters(), aggregator)
            optimizer.step()
            optimizer.zero_grad()
        gate.end(float(sum(losses)))
    return {
        "shared_parameters": sum(p.numel() for p in trunk.parameters()),
        "parameters": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
    }


def keras_mtl_model(
    method: str, model: str, jit_compile: bool = True, channels_first: bool = False
) -> Any:
    """The compiled `MultiTaskModel` of `method` on the suite's network
    (the CNN on `[N, 1, 12, 16]` images if `channels_first`, which sets
    Keras' image data format for the whole process: a worker's own)."""
    import keras

    import keras_mtl

    suite = _load_suite()
    keras.utils.set_random_seed(0)
    if channels_first:
        keras.config.set_image_data_format("channels_first")
    net = suite.network(model, WIDTH, NUM_TASKS)
    options: dict[str, Any] = {}
    if method != "sum":
        options["aggregator"] = keras_mtl.aggregation.get(
            method, **KERAS_MTL_OPTIONS.get(method, {})
        )
    mtl_model = keras_mtl.MultiTaskModel(net, **options)
    mtl_model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=suite.losses_for(model, NUM_TASKS),
        jit_compile=jit_compile,
    )
    return mtl_model


def keras_mtl_worker(
    method: str,
    model: str,
    x: Any,
    ys: list[Any],
    epochs: int,
    gate: Gate,
    jit_compile: bool = True,
    channels_first: bool = False,
    tf_data: bool = False,
) -> dict[str, Any]:
    """keras_mtl on this process' Keras backend: one `fit`, gated per epoch
    (the CNN channels first if `channels_first`; fed by `tf_input` if
    `tf_data`, else the arrays go to `fit`)."""
    import keras

    mtl_model = keras_mtl_model(method, model, jit_compile, channels_first)
    if channels_first:  # NHWC -> NCHW, a contiguous copy (as PyTorch's data)
        x = x.transpose(0, 3, 1, 2).copy()

    class EpochGate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            gate.begin()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            gate.end(float(logs["loss"]))  # reading it waits for the device

    targets = {f"task_{k}": y for k, y in enumerate(ys)}
    if tf_data:
        data = {"x": tf_input(x, targets), "shuffle": False}
    else:
        data = {"x": x, "y": targets, "batch_size": BATCH_SIZE, "shuffle": True}
    gate.send(ready=True)
    mtl_model.fit(**data, epochs=epochs, verbose=0, callbacks=[EpochGate()])
    shared = (
        mtl_model._find_shared_variables()
        if method != "sum"
        else [v for v in mtl_model.trainable_variables if "task_" not in v.path]
    )
    return {
        "shared_parameters": sum(math.prod(v.shape) for v in shared),
        "parameters": sum(math.prod(v.shape) for v in mtl_model.trainable_variables),
        "jit_compile": bool(mtl_model.jit_compile),
        "image_data_format": keras.config.image_data_format(),
        "input": TF_DATA_INPUT if tf_data else ARRAYS_INPUT,
    }


# What TensorFlow's `fit` reads, as the record names it.
TF_DATA_INPUT = "tf.data, autotune off"
ARRAYS_INPUT = "arrays to fit"


def tf_input(x: Any, targets: dict[str, Any]) -> Any:
    """The arrays as a `tf.data` pipeline that reshuffles every epoch, in
    batches of `BATCH_SIZE`, with tf.data's autotuning off.

    Given arrays, Keras on TensorFlow builds an autotuned `tf.data` pipeline
    of its own. Its autotuning thread takes CPU during an epoch, and at the
    next epoch's first step Keras drops the previous epoch's iterator, whose
    destructor waits for that thread (seen in a native stack dump). Measured
    on the MLP with UPGrad: 0.5-4.7 s before the first step in a third of
    the epochs, and 1.80-2.64 s epochs without such a pause; with autotuning
    off no pause and 1.75-2.02 s epochs (docs/performance.md, Profile).
    PyTorch's column reads its tensors in the training process too (a
    `DataLoader` without workers)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensor_slices((x, targets))
    dataset = dataset.shuffle(len(x), seed=0, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE).with_options(options)


def _load_suite() -> Any:
    """benchmarks/performance.py (its networks), imported by path."""
    spec = importlib.util.spec_from_file_location(
        "performance_suite", REPO / "benchmarks" / "performance.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------- the driver
class Worker:
    """A worker process for one (framework, method), driven over pipes."""

    def __init__(
        self,
        framework: str,
        method: str,
        model: str,
        samples: int,
        epochs: int,
        threads: int | None = None,
        layout: Layout = DEFAULT_LAYOUT,
    ) -> None:
        self.framework = framework
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if framework != "torchjd":
            env["KERAS_BACKEND"] = KERAS_BACKENDS[framework][0]
        if threads:
            env.update(thread_env(threads, env.get("XLA_FLAGS", "")))
        self.log = tempfile.TemporaryFile("w+")
        args = [
            sys.executable, __file__, "--worker", framework, "--worker-method",
            method, "--models", model, "--samples", str(samples),
            "--rounds", str(epochs), *layout.argv(),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
        )

    def receive(self) -> dict[str, Any]:
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait()
                self.log.seek(0)
                raise RuntimeError(
                    f"the {self.framework} worker exited "
                    f"({self.process.returncode}):\n{self.log.read()[-3000:]}"
                )
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])

    def start_epoch(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def epoch(self) -> dict[str, Any]:
        """Runs one epoch (nothing else runs meanwhile) and returns its report."""
        self.start_epoch()
        return self.receive()

    def finish(self) -> dict[str, Any]:
        done = self.receive()
        self.process.wait(timeout=120)
        self.log.close()
        return done

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def thread_env(threads: int, xla_flags: str) -> dict[str, str]:
    """Environment variables that cap every framework's intra-op threads."""
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,  # PyTorch's intra-op pool
        "MKL_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
        "XLA_FLAGS": f"{xla_flags} --xla_cpu_multi_thread_eigen=false "
        f"intra_op_parallelism_threads={n}".strip(),
    }


def measure_method(
    method: str,
    model: str,
    frameworks: list[str],
    samples: int,
    rounds: int,
    threads: int | None = None,
    layout: Layout = DEFAULT_LAYOUT,
) -> dict[str, Any]:
    """One method's epochs on every framework, taking turns round by round.
    The warm-up epochs (excluded) run at the same time, to save wall time."""
    begun = time.perf_counter()
    workers = [
        Worker(f, method, model, samples, rounds, threads, layout) for f in frameworks
    ]
    try:
        results: dict[str, Any] = {w.framework: {"samples": []} for w in workers}
        for worker in workers:  # imported and built: nothing runs from here on
            worker.receive()  # but the one epoch this process asked for
            results[worker.framework]["ready_seconds"] = time.perf_counter() - begun
        for worker in workers:  # warm-up (trace, compile), all at once
            worker.start_epoch()
        for worker in workers:
            results[worker.framework]["warmup_seconds"] = worker.receive()["seconds"]
        for r in range(rounds):
            order = workers[r % len(workers) :] + workers[: r % len(workers)]
            for worker in order:
                results[worker.framework]["samples"].append(worker.epoch()["seconds"])
                if r == rounds - 1:
                    # Its last epoch: it reports and exits before the next
                    # worker's epoch starts (a process' teardown takes a
                    # core: measured, up to 3x the next one's epoch).
                    done = worker.finish()
                    done.pop("done")
                    results[worker.framework].update(done)
        for worker in workers:
            samples_ = results[worker.framework]["samples"]
            results[worker.framework]["epoch_seconds"] = statistics.median(samples_)
    finally:
        for worker in workers:
            worker.kill()
    return results


def run(
    models: list[str],
    methods: list[str],
    frameworks: list[str],
    samples: int,
    rounds: int,
    log: TextIO = sys.stdout,
    save: Path | None = None,
    threads: int | None = None,
    layout: Layout = DEFAULT_LAYOUT,
) -> dict[str, Any]:
    """Every method on every framework that is installed; what is missing is
    recorded by name (`missing`), not measured. The record is written to
    `save` after each method (a run cut short keeps what it measured)."""
    record: dict[str, Any] = {
        "config": {
            "models": models, "methods": methods, "frameworks": frameworks,
            "samples": samples, "batch_size": BATCH_SIZE, "rounds": rounds,
            "threads": threads, **layout.config(),
            "torchjd": installed_torchjd_version(),
        },
        "machine": machine(),
        "missing": {},
        "results": {},
    }  # fmt: skip
    begun = time.time()
    for model in models:
        for method in methods:
            here = []
            for framework in frameworks:
                missing = missing_requirements(framework, method)
                if missing:
                    record["missing"][f"{model}/{method}/{framework}"] = missing
                else:
                    here.append(framework)
            if not here:
                continue
            print(
                f"  [side by side] {model} {method}: {', '.join(here)}",
                file=log,
                flush=True,
            )
            started = time.time()
            record["results"][f"{model}/{method}"] = measure_method(
                method, model, here, samples, rounds, threads, layout
            )  # fmt: skip
            print(f"    {time.time() - started:.0f} s", file=log, flush=True)
            if save is not None:
                save.write_text(json.dumps(record, indent=2))
    record["machine"]["load_average_after"] = [round(a, 2) for a in os.getloadavg()]
    record["machine"]["minutes"] = round((time.time() - begun) / 60, 1)
    return record


def machine() -> dict[str, Any]:
    """When, on what and at which commit the run started."""
    from importlib import metadata

    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpus"] = os.cpu_count()
    info["load_average_before"] = [round(a, 2) for a in os.getloadavg()]
    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode != 0
        info["commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        pass
    for package in ("torch", "torchjd", "tensorflow", "jax", "keras"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


# ------------------------------------------------------------------ report
def paired_ratios(cells: dict[str, Any], framework: str) -> list[float]:
    """`framework`'s epoch ÷ TorchJD's, round by round."""
    ours, theirs = cells[framework]["samples"], cells["torchjd"]["samples"]
    return [a / b for a, b in zip(ours, theirs)]


def format_table(record: dict[str, Any]) -> list[str]:
    """The markdown tables (one per model) of a `run` record."""
    out: list[str] = []
    # One line per run: a record may merge several (`runs`, e.g. the CNN
    # measured after the MLP), each with its machine, loads and commit.
    runs = record.get("runs") or ([record["machine"]] if "machine" in record else [])
    for info in runs:
        out += [
            "Measured "
            + ", ".join(f"{k} {v}" for k, v in info.items() if k != "minutes")
            + (f"; {info['minutes']} min" if "minutes" in info else "")
            + (
                f"; intra-op threads per framework: {record['config']['threads']}"
                if record["config"].get("threads")
                else ""
            )
            + ".",
            "",
        ]
    if record.get("note"):  # what the person who ran it has to say about the run
        out += [record["note"], ""]
    frameworks = [f for f in record["config"]["frameworks"] if f in FRAMEWORK_LABELS]
    keras_frameworks = [f for f in frameworks if f != "torchjd"]
    for model in record["config"]["models"]:
        title = "MLP width 1024" if model == "mlp" else "benchmark CNN"
        head = ["method"] + [f"{FRAMEWORK_LABELS[f]} s/epoch" for f in frameworks]
        head += [f"{FRAMEWORK_LABELS[f]} ÷ TorchJD" for f in keras_frameworks]
        head += [f"{FRAMEWORK_LABELS[f]} peak MB" for f in frameworks]
        out += [f"### {title}", "", "| " + " | ".join(head) + " |"]
        out.append("|" + "---|" * len(head))
        for method in record["config"]["methods"]:
            cells = record["results"].get(f"{model}/{method}", {})
            row = [METHOD_LABELS.get(method, method)]
            row += [
                f"{cells[f]['epoch_seconds']:.2f}" if f in cells else "–"
                for f in frameworks
            ]
            for f in keras_frameworks:
                if f in cells and "torchjd" in cells:
                    ratios = paired_ratios(cells, f)
                    row.append(
                        f"{statistics.median(ratios):.2f} "
                        f"({min(ratios):.2f}-{max(ratios):.2f})"
                    )
                else:
                    row.append("–")
            row += [
                f"{cells[f]['peak_mb']:.0f}" if f in cells else "–" for f in frameworks
            ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    missing = record.get("missing", {})
    if missing:
        needs = sorted({name for names in missing.values() for name in names})
        out += [
            f"Not measured ({len(missing)} cells, '–'): {', '.join(needs)} "
            f"not installed; {setup_hint()}.",
            "",
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=7, help="timed epochs each")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 batches, 2 rounds"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of every framework (default: theirs, all cores); "
        "1 on a loaded machine, where PyTorch's OpenMP threads wait on each other",
    )
    Layout.add_flags(parser)
    parser.add_argument("--note", help="a sentence about the run, for the report")
    parser.add_argument("--out", help="default runs/torchjd/side_by_side.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-method", help=argparse.SUPPRESS)
    cfg = parser.parse_args(argv)
    layout = Layout.from_args(cfg)
    models = [m for m in cfg.models.split(",") if m]
    methods = [m for m in cfg.methods.split(",") if m]
    frameworks = [f for f in cfg.frameworks.split(",") if f]
    for value, valid, flag in (
        (models, MODELS, "--models"),
        (methods, METHODS, "--methods"),
        (frameworks, FRAMEWORKS, "--frameworks"),
    ):
        unknown = sorted(set(value) - set(valid))
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; valid: {', '.join(valid)}")
    if cfg.rounds < 1:
        parser.error(f"--rounds: at least 1 timed epoch; got {cfg.rounds}")
    if cfg.worker:
        run_worker(
            cfg.worker, cfg.worker_method, models[0], cfg.samples, cfg.rounds, layout
        )  # fmt: skip
        return 0
    if cfg.quick:
        cfg.samples, cfg.rounds = 2 * BATCH_SIZE, 2
    for framework in ("torchjd", "torch", "torch_compiled"):
        missing = missing_requirements(framework)
        if framework in frameworks and missing:
            print(
                f"{', '.join(missing)} not installed: the {FRAMEWORK_LABELS[framework]}"
                f" column is left out; {setup_hint()}."
            )
    version = installed_torchjd_version()
    if version is not None and version != TORCHJD_VERSION:
        print(
            f"TorchJD {version} installed; this comparison is written for {TORCHJD_VERSION}."
        )
    out = Path(cfg.out or REPO / "runs" / "torchjd" / "side_by_side.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = run(
        models, methods, frameworks, cfg.samples, cfg.rounds, save=out,
        threads=cfg.threads, layout=layout,
    )  # fmt: skip
    if cfg.note:
        record["note"] = cfg.note
    out.write_text(json.dumps(record, indent=2))
    print("\n".join(format_table(record)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

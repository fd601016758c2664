"""keras_mtl performance suite: the cost of each balancing method, as ratios.

    python benchmarks/performance.py                 # everything -> docs/performance.md
    python benchmarks/performance.py --quick         # a smoke run (tiny, few repeats)
    python benchmarks/performance.py --sections 1,3  # some sections only

Every figure is a ratio of median train-step times measured side by side in
one process (the variants of a table take turns, repeat after repeat, so a
noisy machine slows them alike), after warm-up (the first call, which
traces and compiles, is timed separately as the compile time). Steps run
through Keras' own `train_function`, as `fit` runs them.

Baselines:
- loss-level methods: stock Keras, the same network as a plain multi-output
  `keras.Model` compiled with static `loss_weights` (same data, optimizer
  and `jit_compile`);
- gradient-level methods: the ideal cost of any per-task-gradient method,
  one forward pass and K backward passes of the shared trunk, measured on
  the same network by `IdealPerTaskStep` (the gradients are summed, no
  other work).

Peak memory (section 4) is the peak resident set size of a fresh process
per variant (`ru_maxrss`), so it includes TensorFlow's own ~0.5-1 GB.
Not part of the test suite: nothing there depends on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl import gradients as gradients_lib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 256
INPUT_DIM = 64


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
    12x16 images, with 10-way heads."""
    from keras_mtl.bench.models import image_cnn
    from keras_mtl.datasets import TaskSpec

    tasks = {f"task_{k}": TaskSpec("multiclass", 10) for k in range(num_tasks)}
    return image_cnn((12, 16, 1), tasks)


def dataset(kind: str, num_tasks: int, batches: int = 16) -> tf.data.Dataset:
    """Fixed random data of the right shapes, repeated forever."""
    rng = np.random.default_rng(0)
    n = batches * BATCH_SIZE
    if kind == "cnn":
        x = rng.random((n, 12, 16, 1), dtype="float32")
        y = {f"task_{k}": rng.integers(0, 10, n) for k in range(num_tasks)}
    else:
        x = rng.standard_normal((n, INPUT_DIM), dtype="float32")
        y = {
            f"task_{k}": rng.standard_normal((n, 1)).astype("float32")
            for k in range(num_tasks)
        }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE).cache().repeat()


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
    summed trunk gradients. No aggregation, no checks, no bookkeeping."""

    def __init__(self, net: keras.Model, losses: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.task_names = list(losses)
        self.task_loss_fns = [keras.losses.get(losses[t]) for t in self.task_names]
        variables = list(net.trainable_variables)
        shared = gradients_lib.shared_variable_indices(net, variables, self.task_names)
        self.shared = [variables[i] for i in shared]
        ids = {id(v) for v in self.shared}
        self.heads = [v for v in variables if id(v) not in ids]

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.net(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape(persistent=True) as tape:
            outputs = self.net(x, training=True)
            task_losses = [
                tf.reduce_mean(fn(y[t], outputs[t]))
                for t, fn in zip(self.task_names, self.task_loss_fns)
            ]
            total = tf.add_n(task_losses)
        shared = [tape.gradient(loss, self.shared) for loss in task_losses]
        summed = [tf.add_n(list(gs)) for gs in zip(*shared)]
        heads = tape.gradient(total, self.heads)
        del tape
        self.optimizer.apply(summed + heads, self.shared + self.heads)
        return {"loss": total}


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


def _sync(outputs: Any) -> None:
    for value in tf.nest.flatten(outputs):
        np.asarray(value)


def time_variants(
    variants: list[str],
    kind: str,
    width: int,
    num_tasks: int,
    jit: bool,
    steps: int,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Median seconds per train step of each variant (taking turns), and the
    seconds of each one's first call (trace + compile + one step)."""
    data = dataset(kind, num_tasks)
    runs: dict[str, Any] = {}
    compile_seconds: dict[str, float] = {}
    for variant in variants:
        model = build(variant, kind, width, num_tasks, jit)
        model.optimizer.build(model.trainable_variables)
        model.make_train_function()
        iterator = iter(data)
        start = time.perf_counter()
        _sync(model.train_function(iterator))
        compile_seconds[variant] = time.perf_counter() - start
        for _ in range(3):  # warm-up
            _sync(model.train_function(iterator))
        runs[variant] = (model, iterator)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(repeats):
        # Rotate the order so no variant always runs first after a pause.
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for variant in order:
            model, iterator = runs[variant]
            start = time.perf_counter()
            for _ in range(steps):
                outputs = model.train_function(iterator)
            _sync(outputs)
            samples[variant].append((time.perf_counter() - start) / steps)
    return {
        v: {
            "step_seconds": statistics.median(samples[v]),
            "spread": (max(samples[v]) - min(samples[v]))
            / statistics.median(samples[v]),
            "compile_seconds": compile_seconds[v],
        }
        for v in variants
    }


# ------------------------------------------------------------------ sections
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


def ratio_table(
    results: dict[str, dict[str, float]], baseline: str, goal: float, label: str
) -> list[str]:
    base = results[baseline]["step_seconds"]
    lines = [
        f"| {label} | ms/step | ÷ `{baseline}` | goal ≤ {goal} | spread | compile s |",
        "|---|---|---|---|---|---|",
    ]
    for variant, r in results.items():
        ratio = r["step_seconds"] / base
        mark = "" if variant == baseline else ("yes" if ratio <= goal else "**no**")
        lines.append(
            f"| `{variant}` | {1e3 * r['step_seconds']:.2f} | {ratio:.3f} | {mark} "
            f"| {100 * r['spread']:.0f}% | {r['compile_seconds']:.1f} |"
        )
    return lines


def section_loss_level(cfg: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    out = [
        "## 1. Loss-level methods against stock Keras",
        "",
        "Each weighting in `MultiTaskModel` ÷ the same network as a plain "
        "multi-output `keras.Model` with static `loss_weights` (goal ≤ 1.03); "
        f"MLP, K = 3 tasks, batch {BATCH_SIZE}.",
        "",
    ]
    variants = ["keras"] + [f"w:{n}" for n in weighting_names()]
    for width in cfg.widths:
        for jit in (True, False):
            key = f"loss_level/mlp{width}/jit={jit}"
            print(f"[1] {key}", flush=True)
            results = time_variants(
                variants, "mlp", width, 3, jit, cfg.steps, cfg.repeats
            )
            record[key] = results
            out += [f"### MLP width {width}, jit_compile={jit}", ""]
            out += ratio_table(results, "keras", 1.03, "method") + [""]
    return out


def section_gradient_level(
    cfg: argparse.Namespace, record: dict[str, Any]
) -> list[str]:
    out = [
        "## 2. Gradient-level methods against the ideal per-task-gradient step",
        "",
        "Each aggregator in `MultiTaskModel` ÷ `ideal` (one forward, K = 3 "
        "backward passes of the trunk, gradients summed; goal ≤ 1.1); "
        "`keras` (stock, one backward) for scale. jit_compile=True.",
        "",
    ]
    variants = ["ideal", "keras", "w:equal"] + [f"a:{n}" for n in aggregator_names()]
    out += _tables_per_network(cfg, record, variants, "ideal", 1.1, "gradient_level")
    out += [
        "### Representation mode",
        "",
        "Aggregation at the trunk's output (`representation=`, one backward "
        "through the trunk) ÷ `w:equal` (goal ≤ 1.15), jit_compile=True.",
        "",
    ]
    variants = ["w:equal"] + [
        f"r:{n}" for n in ("sum", "mgda", "pcgrad", "upgrad", "cagrad", "nash_mtl")
    ]
    out += _tables_per_network(cfg, record, variants, "w:equal", 1.15, "representation")
    return out


def _tables_per_network(
    cfg: argparse.Namespace,
    record: dict[str, Any],
    variants: list[str],
    baseline: str,
    goal: float,
    prefix: str,
) -> list[str]:
    """One ratio table per network (the MLP widths and the CNN), XLA on."""
    out: list[str] = []
    for kind, width in [("mlp", w) for w in cfg.widths] + [("cnn", 32)]:
        key = f"{prefix}/{kind}{width}"
        print(f"[2] {key}", flush=True)
        results = time_variants(variants, kind, width, 3, True, cfg.steps, cfg.repeats)
        record[key] = results
        title = f"MLP width {width}" if kind == "mlp" else "benchmark CNN"
        out += [f"### {prefix}: {title}", ""]
        out += ratio_table(results, baseline, goal, "method") + [""]
    return out


def section_tasks(cfg: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    out = [
        "## 3. Scaling with the number of tasks",
        "",
        "ms per step for K = " + ", ".join(map(str, cfg.tasks)) + " (MLP width "
        f"{cfg.widths[0]}, jit_compile=True); the ratio to stock Keras at the same K "
        "in brackets.",
        "",
    ]
    variants = ["keras", "w:equal", "w:adaptive", "w:dwa", "ideal"] + [
        f"a:{n}" for n in ("pcgrad", "mgda", "upgrad", "nash_mtl")
    ]
    table: dict[int, dict[str, dict[str, float]]] = {}
    for k in cfg.tasks:
        key = f"tasks/K={k}"
        print(f"[3] {key}", flush=True)
        table[k] = time_variants(
            variants, "mlp", cfg.widths[0], k, True, cfg.steps, cfg.repeats
        )
        record[key] = table[k]
    out.append("| method | " + " | ".join(f"K = {k}" for k in cfg.tasks) + " |")
    out.append("|---|" + "---|" * len(cfg.tasks))
    for v in variants:
        cells = []
        for k in cfg.tasks:
            t = table[k][v]["step_seconds"]
            cells.append(f"{1e3 * t:.2f} ({t / table[k]['keras']['step_seconds']:.2f})")
        out.append(f"| `{v}` | " + " | ".join(cells) + " |")
    return out + [""]


XLA_VARIANTS = ["keras", "w:equal", "w:adaptive", "ideal", "a:pcgrad", "a:upgrad"]


def section_xla(cfg: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    out = [
        "## 4. XLA on and off: compile time, step time, peak memory",
        "",
        f"MLP width {cfg.widths[-1]}, K = 3. Each cell runs in a fresh process; "
        "compile = the first call (trace, compile and one step); peak RSS of "
        "that process (TensorFlow itself included).",
        "",
        "| method | compile s (XLA) | compile s (no XLA) | ms/step (XLA) "
        "| ms/step (no XLA) | peak MB (XLA) | peak MB (no XLA) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in XLA_VARIANTS:
        cells: dict[bool, dict[str, float]] = {}
        for jit in (True, False):
            print(f"[4] {variant} jit={jit}", flush=True)
            cells[jit] = _in_subprocess(variant, cfg.widths[-1], jit, cfg)
            record[f"xla/{variant}/jit={jit}"] = cells[jit]
        on, off = cells[True], cells[False]
        out.append(
            f"| `{variant}` | {on['compile_seconds']:.1f} | {off['compile_seconds']:.1f} "
            f"| {1e3 * on['step_seconds']:.2f} | {1e3 * off['step_seconds']:.2f} "
            f"| {on['peak_mb']:.0f} | {off['peak_mb']:.0f} |"
        )
    return out + [""]


def _in_subprocess(
    variant: str, width: int, jit: bool, cfg: argparse.Namespace
) -> dict[str, float]:
    args = [
        sys.executable, __file__, "--one", variant, "--one-width", str(width),
        "--one-jit", str(int(jit)), "--steps", str(cfg.steps),
        "--repeats", str(cfg.repeats),
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} jit={jit} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_variant(variant: str, width: int, jit: bool, steps: int, repeats: int) -> None:
    result = time_variants([variant], "mlp", width, 3, jit, steps, repeats)[variant]
    # ru_maxrss is in kilobytes on Linux.
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    from keras_mtl.bench.cli import machine_info

    info = machine_info()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


SECTIONS = {
    "1": section_loss_level,
    "2": section_gradient_level,
    "3": section_tasks,
    "4": section_xla,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--sections", default="1,2,3,4")
    parser.add_argument("--steps", type=int, default=20, help="steps per sample")
    parser.add_argument("--repeats", type=int, default=7, help="samples per variant")
    parser.add_argument("--widths", default="128,1024")
    parser.add_argument("--tasks", default="2,8,40")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-jit", type=int, help=argparse.SUPPRESS)
    cfg = parser.parse_args(argv)
    if cfg.one:
        one_variant(cfg.one, cfg.one_width, bool(cfg.one_jit), cfg.steps, cfg.repeats)
        return 0
    if cfg.quick:
        cfg.steps, cfg.repeats, cfg.widths, cfg.tasks = 2, 2, "32", "2,3"
    cfg.widths = [int(w) for w in cfg.widths.split(",")]
    cfg.tasks = [int(k) for k in cfg.tasks.split(",")]
    started = time.time()
    info = machine()
    record: dict[str, Any] = {"machine": info, "config": vars(cfg).copy()}
    body: list[str] = []
    for section in cfg.sections.split(","):
        body += SECTIONS[section.strip()](cfg, record)
    command = "python benchmarks/performance.py " + " ".join(argv or sys.argv[1:])
    header = [
        "# Performance",
        "",
        f"Output of `{command.strip()}` (wall time "
        f"{(time.time() - started) / 60:.0f} min). Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + ".",
        "",
        f"Median of {cfg.repeats} samples of {cfg.steps} steps per variant, "
        "variants taking turns; 'spread' = (max - min) / median of the samples "
        "(the machine's noise); compile s = the first call.",
        "",
    ]
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + body))
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

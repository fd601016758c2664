"""The toy benchmark: each method's optimisation path on the 2-D two-loss problem."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_mtl import gradients as gradients_lib

DEFAULT_STEPS = 5000
STEPS_PER_EPOCH = 100  # epoch-level methods see an "epoch" every 100 steps


def draws_random_numbers(*layers: Any) -> bool:
    """Whether any of `layers` (or a layer inside one) draws from a saved
    `keras.random.SeedGenerator` (RLW, PCGrad, GradDrop, ...)."""
    from keras_mtl._compat import flatten_layers
    from keras_mtl._seed_state import SavesSeedGeneratorState

    return any(
        isinstance(inner, SavesSeedGeneratorState)
        for layer in layers
        if layer is not None
        for inner in flatten_layers(layer)
    )


def _copy_values(targets: list[Any], sources: list[Any]) -> None:
    """Assigns each source variable's value to the target in the same place."""
    if [tuple(v.shape) for v in targets] != [tuple(v.shape) for v in sources]:
        raise RuntimeError(
            "A fresh build of the method has other variables than the compiled "
            f"one: {[v.path for v in sources]} vs {[v.path for v in targets]}."
        )
    for target, source in zip(targets, sources, strict=True):
        target.assign(source.value)


class ToyPathRunner:
    """One method's toy paths: the optimisation loop compiled once, run from
    any number of start points.

    Each epoch of `STEPS_PER_EPOCH` steps is one compiled `tf.while_loop`
    (an XLA computation, `jit_compile=True`) that writes the per-step
    parameters, losses and effective weights into `TensorArray`s. Between
    epochs the weighting's `on_epoch_begin(epoch)` runs in Python, as
    `EpochDriver` runs it in `fit`, so an epoch-level method (DWA, adaptive
    with `mode="epoch"`) sees the same epochs as in a model.

    `run(start)` resets the parameters, the optimizer and every variable of
    the weighting and the aggregator to the values of a fresh build (a new
    random seed for an unseeded method, as a fresh model would draw), so
    every start follows the path a newly built method would, and the
    compiled loop is traced once per method, not per start.

    Methods that draw random numbers run their loop as a `tf.function`
    without XLA: XLA lays out the random generators' counters its own way
    and would draw other (equally valid) numbers than the eager and
    `tf.function` runs of the same seed.

    Args:
        problem: the toy problem (`keras_mtl.datasets.load("toy")`).
        method: a weighting, an aggregator, or both (see
            `keras_mtl.bench.runner.parse_method`).
        learning_rate: Adam's learning rate.
    """

    def __init__(self, problem: Any, method: str, learning_rate: float = 1e-2) -> None:
        from keras_mtl.bench.runner import parse_method

        self.problem = problem
        self.method = parse_method(method)
        self.learning_rate = learning_rate
        self.weighting, self.aggregator = self._build_method()
        self.params = keras.Variable(np.zeros(2, dtype="float32"), name="params")
        self.variables = [self.params, *self.weighting.trainable_variables]
        self.optimizer = self._build_optimizer()
        self.jit_compile = not draws_random_numbers(self.weighting, self.aggregator)
        self._run_epoch = tf.function(self._epoch, jit_compile=self.jit_compile)

    def _build_method(self) -> tuple[Any, Any]:
        built = self.method.build()
        weighting, aggregator = built["weighting"], built["aggregator"]
        weighting.set_task_names(list(self.problem.tasks))
        weighting.build((2,))
        if aggregator is not None:
            aggregator.build((2, 2))  # two losses of two parameters
        return weighting, aggregator

    def _build_optimizer(self) -> Any:
        optimizer = keras.optimizers.Adam(self.learning_rate)
        optimizer.build(self.variables)
        return optimizer

    def reset(self, start: np.ndarray) -> None:
        """Parameters at `start`; optimizer, weighting and aggregator state
        as freshly built."""
        weighting, aggregator = self._build_method()
        _copy_values(self.weighting.variables, weighting.variables)
        if aggregator is not None:
            _copy_values(self.aggregator.variables, aggregator.variables)
        self.params.assign(np.asarray(start, dtype="float32"))
        _copy_values(self.optimizer.variables, self._build_optimizer().variables)

    def _step(self) -> Any:
        """One Adam step on the balanced losses; returns the effective weights."""
        params, variables = self.params, self.variables
        weighting, aggregator = self.weighting, self.aggregator
        with tf.GradientTape(persistent=aggregator is not None) as tape:
            losses = self.problem.losses(params)
            objective, weights = weighting(losses, training=True)
            if aggregator is not None:
                terms = tf.stop_gradient(weights) * losses
                # As in the model: the aggregator's terms (DB-MTL: log losses).
                transformed = aggregator.task_terms(terms)
                task_terms = [transformed[0], transformed[1]]
                transformed_sum = tf.reduce_sum(transformed)
        gradients = tape.gradient(objective, variables)
        if aggregator is not None:
            # The aggregator's direction replaces the parameters' gradient,
            # as for a model's shared parameters.
            jacobian = tf.stack([tape.gradient(t, params) for t in task_terms])
            direction = aggregator(jacobian, training=True, losses=losses)
            gradients = [direction, *gradients[1:]]
            weights = weights * gradients_lib.combination_weights(jacobian, direction)
            if transformed is not terms:
                weights = weights * tape.gradient(transformed_sum, terms)
            del tape
        self.optimizer.apply(gradients, variables)
        return weights

    def _epoch(self, num_steps: int) -> tuple[Any, Any, Any]:
        """`num_steps` steps (a Python int: one trace per epoch length)."""
        path = tf.TensorArray(tf.float32, size=num_steps)
        loss_path = tf.TensorArray(tf.float32, size=num_steps)
        weight_path = tf.TensorArray(tf.float32, size=num_steps)
        for i in tf.range(num_steps):
            weights = self._step()
            path = path.write(i, self.params.value)
            loss_path = loss_path.write(i, self.problem.losses(self.params))
            weight_path = weight_path.write(i, weights)
        return path.stack(), loss_path.stack(), weight_path.stack()

    def run(
        self, start: np.ndarray, steps: int = DEFAULT_STEPS
    ) -> dict[str, np.ndarray]:
        """The path from `start`: `params` `[steps + 1, 2]`, `losses`
        `[steps + 1, 2]` and `weights` `[steps, 2]`."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise ValueError(f"steps must be an int >= 1; got {steps!r}.")
        if steps < 1:
            raise ValueError(f"steps must be an int >= 1; got {steps!r}.")
        self.reset(start)
        start_losses = np.asarray(self.problem.losses(self.params))
        chunks = []
        for epoch, first in enumerate(range(0, int(steps), STEPS_PER_EPOCH)):
            self.weighting.on_epoch_begin(epoch)
            num_steps = min(STEPS_PER_EPOCH, int(steps) - first)
            chunks.append([np.asarray(t) for t in self._run_epoch(num_steps)])
        return {
            "params": np.concatenate(
                [[np.asarray(start, dtype="float32")], *[c[0] for c in chunks]]
            ),
            "losses": np.concatenate([[start_losses], *[c[1] for c in chunks]]),
            "weights": np.concatenate([c[2] for c in chunks]),
        }


def optimise_path(
    problem: Any,
    method: str,
    start: np.ndarray,
    steps: int = DEFAULT_STEPS,
    learning_rate: float = 1e-2,
) -> dict[str, np.ndarray]:
    """Runs Adam on the two toy losses balanced by `method` (a weighting, an
    aggregator, or both: see `keras_mtl.bench.runner.parse_method`) from `start`.

    Returns `params` `[steps + 1, 2]`, `losses` `[steps + 1, 2]` and
    `weights` `[steps, 2]` along the path. To run several starts of one
    method, use one `ToyPathRunner` (compiled once).
    """
    return ToyPathRunner(problem, method, learning_rate).run(start, steps)


def distance_to_front(point: np.ndarray, front: np.ndarray) -> float:
    """Euclidean distance in loss space from `point` to the sampled front."""
    return float(np.min(np.linalg.norm(front - point[None, :], axis=1)))


def run_toy(
    methods: list[str],
    out: Path,
    steps: int | None = None,
    plots: bool = True,
    command: str = "",
) -> int:
    """Runs every method from every start point; writes results and plots."""
    from keras_mtl.datasets import load

    problem = load("toy")
    steps = steps or DEFAULT_STEPS
    front = problem.pareto_front(400)
    paths: dict[str, list[dict[str, np.ndarray]]] = {}
    for method in methods:
        print(
            f"=== toy | method {method} | {steps} steps x {len(problem.start_points)} starts"
        )
        began = time.perf_counter()
        runner = ToyPathRunner(problem, method)
        paths[method] = [runner.run(start, steps) for start in problem.start_points]
        compiled = "XLA" if runner.jit_compile else "tf.function"
        print(f"    {time.perf_counter() - began:.1f} s ({compiled})")
    lines = [
        "| method | "
        + " | ".join(f"start {i + 1}" for i in range(len(problem.start_points)))
        + " | reached front |",
        "|---|" + "---|" * (len(problem.start_points) + 1),
    ]
    results: dict[str, Any] = {}
    for method, runs in paths.items():
        distances = [distance_to_front(r["losses"][-1], front) for r in runs]
        distances = [d if np.isfinite(d) else float("inf") for d in distances]
        finals = [r["losses"][-1].tolist() for r in runs]
        reached = sum(d < 0.05 for d in distances)
        results[method] = {"final_losses": finals, "distance_to_front": distances}
        cells = [
            f"({f[0]:.3f}, {f[1]:.3f})" if np.all(np.isfinite(f)) else "diverged"
            for f in finals
        ]
        lines.append(
            f"| `{method}` | " + " | ".join(cells) + f" | {reached}/{len(runs)} |"
        )
    lines.append("")
    lines.append(
        f"Final (L1, L2) after {steps} Adam steps (lr 0.01) from each start point; "
        "'reached front': loss-space distance to the Pareto front < 0.05. "
        f"L1 is scaled by {problem.loss_scale} (the loss-scale imbalance). The toy "
        "losses go negative (down to -2 and -20): methods that assume non-negative "
        "losses (uncertainty, gls, adaptive:form=proportional) may diverge here."
    )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"command": command, "steps": steps, "results": results}, indent=2)
    )
    (out / "results.md").write_text(f"`{command}`\n\n{table}\n")
    if plots:
        path = plot_toy(problem, paths, out)
        print(f"wrote {path}")
    print(f"\n{table}\nResults in {out}/")
    return 0


def plot_toy(
    problem: Any, paths: dict[str, list[dict[str, np.ndarray]]], out: Path
) -> Path:
    """`toy_paths.png`: for each method, the paths in parameter space over the
    contour of L1 + L2 (top) and in loss space against the Pareto front (bottom)."""
    from keras_mtl.bench.plots import _pyplot

    plt = _pyplot()
    grid = np.linspace(-10, 10, 201, dtype="float32")
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    total = np.asarray(problem.losses(points)).sum(axis=1).reshape(xx.shape)
    pareto_x = problem.pareto_set(200)
    front = problem.pareto_front(200)
    methods = list(paths)
    fig, axes = plt.subplots(
        2, len(methods), figsize=(3.6 * len(methods), 7), squeeze=False
    )
    for j, method in enumerate(methods):
        top, bottom = axes[0][j], axes[1][j]
        top.contourf(xx, yy, total, levels=30, cmap="viridis", alpha=0.8)
        top.plot(pareto_x[:, 0], pareto_x[:, 1], color="black", lw=2)
        bottom.plot(front[:, 0], front[:, 1], color="black", lw=2, label="Pareto front")
        for r in paths[method]:
            top.plot(r["params"][:, 0], r["params"][:, 1], color="red", lw=1.2)
            top.scatter(
                *r["params"][0], color="white", edgecolor="black", s=25, zorder=3
            )
            bottom.plot(r["losses"][:, 0], r["losses"][:, 1], lw=1.2)
        top.set_title(method)
        top.set_xlim(-10, 10)
        top.set_ylim(-10, 10)
        bottom.set_xlabel("L1")
        bottom.set_ylabel("L2")
        bottom.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "toy_paths.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

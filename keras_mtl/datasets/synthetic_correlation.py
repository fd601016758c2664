"""MMoE's synthetic data: two regression tasks of controlled correlation.

Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", KDD 2018, section 4.2 ("Data
Generation"). The construction (the paper's five steps):

1. two orthogonal unit vectors $u_1, u_2 \\in \\mathbb{R}^d$;
2. with a scale constant $c$ and a correlation score $-1 \\le p \\le 1$, the
   weights $w_1 = c\\,u_1$ and $w_2 = c\\,(p\\,u_1 + \\sqrt{1 - p^2}\\,u_2)$
   (so $\\cos(w_1, w_2) = p$);
3. an input $x \\in \\mathbb{R}^d$ with i.i.d. $N(0, 1)$ elements;
4. the labels
   $y_i = w_i^\\top x + \\sum_{j=1}^{m} \\sin(\\alpha_j w_i^\\top x + \\beta_j)
   + \\epsilon_i$, $i = 1, 2$, with the same $\\alpha_j, \\beta_j$ for both
   tasks and independent noise $\\epsilon_i$;
5. repeat 3-4 for every example.

Because of the sinusoids the labels' Pearson correlation is not $p$, but it
is a function of $p$ alone: $w_1^\\top x$ and $w_2^\\top x$ are jointly
normal with variance $c^2$ and correlation $p$, so with
$f(z) = z + \\sum_j \\sin(\\alpha_j z + \\beta_j)$ and its Hermite
coefficients $a_k$ (of $f(c\\,Z)$, $Z \\sim N(0, 1)$),
$\\mathrm{corr}(y_1, y_2) = \\sum_{k \\ge 1} a_k^2 p^k /
(\\sum_{k \\ge 1} a_k^2 + \\sigma_\\epsilon^2)$: increasing in $p$ on
$[0, 1]$ (the paper's Figure 2 shows this relation empirically).

Constants. The stored copies of the paper that could be searched from this
project did not contain the text of section 4 beyond the construction above,
so the constants below are our choices, stated here (and in `info`):

- `input_dim` $d = 100$: the input dimension we recall the paper using for
  its synthetic experiments (not verified against the text);
- `scale` $c = 1$, `num_sines` $m = 10$: our choice (also what public
  re-implementations use);
- $\\alpha_j, \\beta_j \\sim N(0, 1)$, drawn once per `seed`: our choice; the
  paper calls them "given parameters that control the shape of the
  sinusoidal functions";
- `noise_std` 0.1: we read the paper's $\\epsilon_i \\sim N(0, 0.01)$ as a
  variance of 0.01;
- the split sizes are ours (the paper does not give them in the part we
  could read); the benchmark states the sizes it used.

Randomness. `seed` draws everything: $u_1, u_2$ (a QR of a Gaussian
matrix), $\\alpha, \\beta$, the inputs and noise of every split, and the
per-epoch training order (the paper re-draws the data distribution on every
run). `correlation` enters only through $w_2$: for one `seed`, every
correlation shares the same $u$'s, sinusoids, inputs and noise, so a sweep
over `correlation` changes the task relation and nothing else. Each split is
drawn from its own random stream, so changing `num_train` does not change
the test set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mtl.datasets._base import (
    MultiTaskData,
    TaskSpec,
    check_positive_int,
    check_seed,
    epoch_permutations,
)

TASKS = ("task_1", "task_2")
# Independent random streams under one seed (SeedSequence spawn keys).
_STREAMS = {"structure": 0, "train": 1, "validation": 2, "test": 3}


def _generator(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[stream]]))


def _check_number(value: Any, name: str, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number; got {value!r}.")
    number = float(value)
    upper = math.inf if high is None else high
    if not (math.isfinite(number) and low <= number <= upper):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bounds}; got {value!r}.")
    return number


def synthetic_structure(
    input_dim: int, num_sines: int, correlation: float, scale: float, seed: int
) -> dict[str, np.ndarray]:
    """The data distribution of one `seed`: `u1`, `u2`, `w1`, `w2` (`(d,)`)
    and `alphas`, `betas` (`(m,)`), float64."""
    rng = _generator(seed, "structure")
    # The Q of a Gaussian matrix's QR: two orthonormal columns.
    q, _ = np.linalg.qr(rng.standard_normal((input_dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    alphas = rng.standard_normal(num_sines)
    betas = rng.standard_normal(num_sines)
    p = float(correlation)
    w1 = scale * u1
    w2 = scale * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)
    return {"u1": u1, "u2": u2, "w1": w1, "w2": w2, "alphas": alphas, "betas": betas}


def synthetic_labels(
    x: np.ndarray, weights: np.ndarray, alphas: np.ndarray, betas: np.ndarray
) -> np.ndarray:
    """Noise-free labels $w^\\top x + \\sum_j \\sin(\\alpha_j w^\\top x +
    \\beta_j)$ of the rows of `x`, float64 `(n,)`."""
    z = np.asarray(x, np.float64) @ np.asarray(weights, np.float64)
    return z + np.sin(np.multiply.outer(z, alphas) + betas).sum(axis=-1)


def _draw_split(
    structure: dict[str, np.ndarray], size: int, noise_std: float, seed: int, split: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = _generator(seed, split)
    x = rng.standard_normal((size, len(structure["u1"])))
    noise = rng.standard_normal((size, 2)) * noise_std
    targets = {}
    for i, (task, w) in enumerate(zip(TASKS, (structure["w1"], structure["w2"]))):
        y = synthetic_labels(x, w, structure["alphas"], structure["betas"])
        targets[task] = (y + noise[:, i]).astype(np.float32)[:, np.newaxis]
    return x.astype(np.float32), targets


def _pipeline(
    x: np.ndarray,
    targets: dict[str, np.ndarray],
    batch_size: int,
    shuffle_seed: int | None,
) -> tf.data.Dataset:
    x_all = tf.constant(x)
    y_all = {task: tf.constant(y) for task, y in targets.items()}
    if shuffle_seed is None:
        order = tf.data.Dataset.range(len(x))
    else:
        order = epoch_permutations(len(x), shuffle_seed)
    # Gather whole batches of indices: one op per batch, not per example.
    dataset = order.batch(batch_size).map(
        lambda index: (
            tf.gather(x_all, index),
            {task: tf.gather(y, index) for task, y in y_all.items()},
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_mmoe_synthetic(
    correlation: float = 0.5,
    num_train: int = 20000,
    num_validation: int = 2000,
    num_test: int = 2000,
    input_dim: int = 100,
    num_sines: int = 10,
    scale: float = 1.0,
    noise_std: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
    max_examples: int | None = None,
) -> MultiTaskData:
    """Load MMoE's synthetic data: two regression tasks of set correlation.

    Ma et al., KDD 2018, section 4.2: $w_1 = c\\,u_1$, $w_2 = c\\,(p\\,u_1 +
    \\sqrt{1 - p^2}\\,u_2)$ for orthonormal $u_1, u_2$, $x \\sim N(0, I_d)$ and
    $y_i = w_i^\\top x + \\sum_{j=1}^{m} \\sin(\\alpha_j w_i^\\top x + \\beta_j) +
    \\epsilon_i$; the constants and where they come from are in the module
    `keras_mtl.datasets.synthetic_correlation` and in the Datasets page.

    Args:
        correlation: $p \\in [-1, 1]$, the cosine similarity of the two
            tasks' weight vectors (the labels' Pearson correlation is an
            increasing function of it on [0, 1]).
        num_train, num_validation, num_test: examples per split.
        input_dim: $d \\ge 2$, the input dimension.
        num_sines: $m \\ge 1$, the number of sinusoids in each label.
        scale: $c > 0$, the norm of the weight vectors.
        noise_std: standard deviation of the label noise ($\\ge 0$).
        batch_size: batch size of the three pipelines (last batch partial).
        seed: draws the data distribution, every split and the training order.
        max_examples: if given, caps the examples of every split (quick runs).

    Returns:
        `MultiTaskData` with tasks `task_1`, `task_2` (kind `"regression"`,
        one output, float32 targets of shape `(1,)`) and `x` float32
        `(input_dim,)`. `info` holds the constants, the `structure`
        (`u1`, `u2`, `w1`, `w2`, `alphas`, `betas`) and the realised
        `label_correlation` of the training labels.
    """
    p = _check_number(correlation, "correlation", -1.0, 1.0)
    for value, name in (
        (num_train, "num_train"),
        (num_validation, "num_validation"),
        (num_test, "num_test"),
        (num_sines, "num_sines"),
        (batch_size, "batch_size"),
    ):
        check_positive_int(value, name)
    check_positive_int(input_dim, "input_dim")
    if input_dim < 2:
        raise ValueError(
            f"input_dim must be >= 2 (two orthogonal u's); got {input_dim}."
        )
    c = _check_number(scale, "scale", 0.0, None)
    if c == 0.0:
        raise ValueError(f"scale must be > 0; got {scale!r}.")
    sigma = _check_number(noise_std, "noise_std", 0.0, None)
    check_seed(seed)
    check_positive_int(max_examples, "max_examples", allow_none=True)
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    if max_examples is not None:
        counts = {split: min(n, max_examples) for split, n in counts.items()}

    structure = synthetic_structure(input_dim, num_sines, p, c, seed)
    splits = {
        split: _draw_split(structure, size, sigma, seed, split)
        for split, size in counts.items()
    }
    train_y = splits["train"][1]
    label_correlation = (
        float(np.corrcoef(train_y["task_1"][:, 0], train_y["task_2"][:, 0])[0, 1])
        if counts["train"] > 1
        else float("nan")
    )
    pipelines = {
        split: _pipeline(x, y, batch_size, seed if split == "train" else None)
        for split, (x, y) in splits.items()
    }
    return MultiTaskData(
        name="mmoe_synthetic",
        train=pipelines["train"],
        validation=pipelines["validation"],
        test=pipelines["test"],
        tasks={task: TaskSpec("regression", 1) for task in TASKS},
        info={
            "input": "vector",
            "input_shape": (input_dim,),
            "counts": counts,
            "correlation": p,
            "label_correlation": label_correlation,
            "scale": c,
            "num_sines": num_sines,
            "noise_std": sigma,
            "structure": structure,
            "seed": seed,
            "source": "Ma et al., KDD 2018, section 4.2 (generated, offline)",
        },
    )

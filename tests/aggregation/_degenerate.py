"""Hypothesis strategy of degenerate Jacobians `[K, D]` (float32).

Covers zero rows, an all-zero matrix, identical, opposite and parallel rows,
rank-deficient and one-hot (sparse) matrices, a few non-finite entries, and
magnitudes near 1e-30 and 1e30 (whole matrix or per row, mixed), for
K in 1..6 and D in 1..20.
"""

import numpy as np
from hypothesis import strategies as st

KINDS = (
    "random",
    "zero_rows",
    "all_zero",
    "identical",
    "opposite",
    "parallel",
    "rank_one",
    "rank_deficient",
    "one_hot",
    "nonfinite",
)
SCALES = ("one", "tiny", "huge", "mixed")


def make_jacobian(kind, scale, num_tasks, dim, seed):
    """One Jacobian of the given kind (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(num_tasks, dim))
    k = num_tasks
    if kind == "zero_rows":
        j[rng.random(k) < 0.5] = 0.0
    elif kind == "all_zero":
        j[:] = 0.0
    elif kind == "identical":
        j[:] = j[0]
    elif kind == "opposite":
        j[1::2] = -j[0]
        j[0::2] = j[0]
    elif kind == "parallel":
        j = rng.uniform(-3.0, 3.0, size=(k, 1)) * j[0][None, :]
    elif kind == "rank_one":
        j = rng.normal(size=(k, 1)) @ rng.normal(size=(1, dim))
    elif kind == "rank_deficient":
        rank = max(1, min(k, dim) - 1)
        j = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, dim))
    elif kind == "one_hot":
        j = np.zeros((k, dim))
        j[np.arange(k), rng.integers(0, dim, size=k)] = rng.choice([-1.0, 1.0], k)
    elif kind == "nonfinite":
        j.flat[rng.integers(0, j.size)] = rng.choice([np.inf, -np.inf, np.nan])
    if scale == "tiny":
        j = j * 1e-30
    elif scale == "huge":
        j = j * 1e30
    elif scale == "mixed":
        j = j * rng.choice([1e-30, 1.0, 1e30], size=(k, 1))
    with np.errstate(invalid="ignore", over="ignore"):
        return j.astype(np.float32)


@st.composite
def degenerate_jacobians(draw, max_tasks=6, max_dim=20):
    """A degenerate float32 Jacobian `[K, D]`."""
    num_tasks = draw(st.integers(1, max_tasks))
    dim = draw(st.integers(1, max_dim))
    kind = draw(st.sampled_from(KINDS))
    scale = draw(st.sampled_from(SCALES))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_jacobian(kind, scale, num_tasks, dim, seed)

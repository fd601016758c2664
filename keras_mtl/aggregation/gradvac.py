"""Gradient Vaccine (Wang et al., ICLR 2021): adaptive similarity targets."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_number
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import normalized_gramian, safe_divide
from keras_mtl.aggregation._stateful import SeededAggregator
from keras_mtl.aggregation.base import GramianWeightedAggregator

# The largest |target| used in the correction: a cosine of exactly 1 cannot
# be reached by adding a finite multiple of g_j.
_TARGET_CAP = 0.9999


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradVac(SeededAggregator, GramianWeightedAggregator):
    """Gradient Vaccine (GradVac): pull each pair of task gradients up to a
    running target cosine similarity.

    GradVac keeps a target $\\hat\\phi_{ij}$ for every ordered pair of
    tasks, an exponential moving average of their observed cosine
    similarity (initially 0, where GradVac coincides with PCGrad's
    condition). For every task i, starting from $g'_i = g_i$, the other
    tasks j are visited in a random order; with
    $\\phi_{ij} = \\cos(g'_i, g_j)$, if $\\phi_{ij} < \\hat\\phi_{ij}$ then

    $$g'_i \\leftarrow g'_i + \\frac{\\lVert g'_i\\rVert
        \\big(\\hat\\phi_{ij}\\sqrt{1-\\phi_{ij}^2}
              - \\phi_{ij}\\sqrt{1-\\hat\\phi_{ij}^2}\\big)}
        {\\lVert g_j\\rVert \\sqrt{1-\\hat\\phi_{ij}^2}}\\; g_j ,$$

    which makes $\\cos(g'_i, g_j) = \\hat\\phi_{ij}$ exactly, and in every
    case (as in the paper's algorithm)
    $\\hat\\phi_{ij} \\leftarrow (1-\\beta)\\hat\\phi_{ij} + \\beta\\phi_{ij}$.
    The direction is $d = \\sum_i g'_i$. The targets live in a `[K, K]`
    variable `targets`, updated only when `training=True`; evaluation uses
    the fixed order 0, ..., K-1 and does not advance the random generator
    (whose state is saved with the layer). In the correction the target is
    capped at $|\\hat\\phi| \\le 0.9999$ (a cosine of 1 would need an
    infinite multiple of $g_j$). Positively homogeneous
    (`scale_degree = 1`): cosines and norm ratios do not depend on scale.

    As in PCGrad, every $g'_i = \\sum_k C_{ik} g_k$ and each step needs only
    inner products: $g'_i \\cdot g_j = (CG)_{ij}$,
    $\\lVert g'_i\\rVert^2 = c_i^\\top G c_i$ ($c_i$ the i-th row of $C$)
    and $\\lVert g_j\\rVert^2 = G_{jj}$, so the corrections run on the
    `[K, K]` matrix $C$ (from $I$) and the Gramian $G = JJ^\\top$, and
    $d = (\\mathbf 1^\\top C) J$: a `GramianWeightedAggregator` (the
    Gramian route: `MultiTaskModel` never forms $J$). `agg.weights(gramian)`
    gives the evaluation-mode coefficients $\\mathbf 1^\\top C$ with the
    current targets (zero before the layer is built) and changes nothing.

    The paper applies the procedure per layer or per parameter block
    ("granularity"); here it acts on the whole Jacobian (LibMTL's
    `GradVac_group_type=0`). LibMTL updates the targets only when a
    correction happens and defaults to $\\beta = 0.5$; this follows the
    paper (update at every visit, $\\beta = 0.01$).

    Reference: Z. Wang, Y. Tsvetkov, O. Firat and Y. Cao, "Gradient Vaccine:
    Investigating and Improving Multi-task Optimization in Massively
    Multilingual Models", ICLR 2021 (arXiv 2010.05874).

    Args:
        beta: EMA rate $\\beta \\in (0, 1]$ of the targets.
        seed: int seeding the visiting orders, or None for a random seed.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.GradVac(beta=0.01, seed=0)
    d = agg(np.array([[1.0, 0.0], [-1.0, 1.0]]))
    # first call: targets are 0, so this is PCGrad: d = [0.5, 1.5]
    ```
    """

    scale_degree = 1

    def __init__(
        self, beta: float = 0.01, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.beta = check_number(beta, "beta", "GradVac", 0.0, 1.0, low_open=True)

    def build_state(self, num_tasks: int, dim: int | None) -> None:
        self.targets = self.add_weight(
            shape=(num_tasks, num_tasks),
            initializer="zeros",
            trainable=False,
            name="targets",
        )

    def gramian_weights(self, gramian: Any) -> Any:
        """The evaluation-mode coefficients `c` (`[K]`, `d = c @ J`) of a
        Gramian of any scale: fixed order 0..K-1 and the current targets
        (zero before the layer is built); no draw, no state change."""
        return self.direction_weights(gramian, training=False)

    def direction_weights(self, gramian: Any, training: bool = True) -> Any:
        """The coefficients `c` (`[K]`) of `d = c @ J`: the column sums of
        `C`, the adjusted gradients' coefficients over the original ones;
        updates the targets when `training`. Scale-free (cosines and norm
        ratios), so computed on the normalised Gramian, where `C @ G`
        cannot overflow."""
        num_tasks = gramian.shape[0]
        if num_tasks == 1:
            return small.ones((1,), dtype="float32")
        orders = self.task_orders(num_tasks, training)
        if self.built:
            targets = small.convert_to_tensor(self.targets)
        else:  # `weights(gramian)` of a fresh layer: the initial targets
            targets = small.zeros((num_tasks, num_tasks), dtype="float32")
        gramian, _ = normalized_gramian(gramian)
        # Rounding can leave a tiny negative squared norm.
        norms = small.sqrt(small.maximum(small.diagonal(gramian), 0.0))
        tasks = small.arange(num_tasks, dtype="int32")
        coefficients = small.eye(num_tasks, dtype="float32")
        new_targets = targets
        for step in range(num_tasks):
            others = orders[:, step]
            valid = small.not_equal(others, tasks)
            column = small.one_hot(others, num_tasks, dtype="float32")
            # Row i of C G: the inner products of g'_i with every g_k.
            products = small.matmul(coefficients, gramian)
            own_norms = small.sqrt(
                small.maximum(small.sum(products * coefficients, axis=1), 0.0)
            )
            other_norms = small.take(norms, others, axis=0)
            dots = small.take_along_axis(products, others[:, None], axis=1)[:, 0]
            cosine = small.clip(safe_divide(dots, own_norms * other_norms), -1.0, 1.0)
            target = small.take_along_axis(targets, others[:, None], axis=1)[:, 0]
            capped = small.clip(target, -_TARGET_CAP, _TARGET_CAP)
            root_target = small.sqrt(1.0 - capped * capped)
            root_cosine = small.sqrt(1.0 - cosine * cosine)
            coefficient = safe_divide(
                own_norms * (capped * root_cosine - cosine * root_target),
                other_norms * root_target,
            )
            correct = small.logical_and(valid, cosine < target)
            coefficient = small.where(correct, small.maximum(coefficient, 0.0), 0.0)
            coefficients = coefficients + coefficient[:, None] * column
            visit = column * small.cast(valid, "float32")[:, None]
            ema = (1.0 - self.beta) * target + self.beta * cosine
            new_targets = new_targets + visit * (ema - target)[:, None]
        if training:
            self.targets.assign(new_targets)
        return small.sum(coefficients, axis=0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}

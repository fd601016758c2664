"""IMTL-G: the combination whose projections on every unit task gradient
are equal."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import symmetric_part
from keras_mtl.aggregation.base import GramianWeightedAggregator

# Gradient norms (of the Jacobian scaled to a largest row norm of 1) below this
# count as zero: such a task has no direction to be impartial to.
_ZERO_NORM = 1e-15


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTLG(GramianWeightedAggregator):
    """Impartial multi-task learning, gradient part (IMTL-G): the
    combination of the task gradients, with weights summing to 1, whose
    projections onto every unit task gradient are equal.

    Liu et al. write it with $u_i = g_i / \\lVert g_i \\rVert$,
    $D = [g_1 - g_2, \\dots, g_1 - g_K]$, $U = [u_1 - u_2, \\dots,
    u_1 - u_K]$:

    $$\\alpha_{2:K} = g_1 U^\\top (D U^\\top)^{-1}, \\quad
    \\alpha_1 = 1 - \\textstyle\\sum_{i \\ge 2} \\alpha_i, \\quad
    d = \\textstyle\\sum_i \\alpha_i g_i .$$

    The equal-projection condition $\\langle d, u_i \\rangle = c$ for all i
    reads $G \\alpha = c\\, n$ with $n_i = \\lVert g_i \\rVert$, which gives
    a Gramian form:

    $$\\alpha \\propto G^{-1} n, \\quad \\mathbf 1^\\top \\alpha = 1,
    \\qquad d = \\alpha^\\top J .$$

    It is computed on the correlation matrix $C = N^{-1} G N^{-1}$,
    $N = \\mathrm{diag}(n)$, which is much better conditioned than $G$
    when the gradient norms differ: $\\alpha \\propto N^{-1} C^{+}
    \\mathbf 1$, with $C^{+}$ the pseudo-inverse from an eigendecomposition
    (eigenvalues below `rcond * lambda_max` count as 0), $\\alpha = 0$ when
    the sum is 0 (e.g. two opposite gradients), and weight 0 for a zero
    gradient. Identical to the paper's closed form when the gradients are
    linearly independent. For linearly dependent gradients it is a
    generalisation like Quinton & Rey's $G^{+} n$ (TorchJD), but the
    pseudo-inverse is taken in a different metric, so the two can differ
    there. The weights are scale-free, so a task whose loss is scaled up
    gets no more say, and the direction of $d$ does not depend on the
    gradient norms; $f(cJ) = c f(J)$. Weights may be negative.

    From Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (the loss-scale part, IMTL-L, is a
    loss weighting and not included); generalisation from Quinton & Rey,
    "Jacobian Descent for Multi-Objective Optimization", 2024.

    Args:
        rcond: relative eigenvalue cut-off of the pseudo-inverse.

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.imtl_g import IMTLG

    d = IMTLG()(np.array([[1.0, 0.0], [0.0, 2.0]]))
    # alpha == [2/3, 1/3], d == [0.667, 0.667]: <d, u_1> == <d, u_2> == 2/3
    ```
    """

    def __init__(self, rcond: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        rcond = float(rcond)
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"IMTLG: rcond must be in [0, 1); got {rcond}.")
        self.rcond = rcond

    def gramian_weights(self, gramian: Any) -> Any:
        gramian = symmetric_part(gramian)
        norms = small.sqrt(small.maximum(small.diagonal(gramian), 0.0))
        # Jacobi scaling: with N = diag(norms) and the correlation matrix
        # C = N^-1 G N^-1, G alpha = c n  <=>  C (N alpha) = c 1. C has a
        # far smaller condition number than G when the gradient norms
        # differ, so the eigendecomposition loses less to float32. Rows
        # below _ZERO_NORM (zero gradients: no direction) get weight 0.
        nonzero = norms > _ZERO_NORM
        safe = small.where(nonzero, norms, 1.0)
        mask = small.cast(nonzero, "float32")
        correlation = gramian / safe[:, None] / safe[None, :]
        correlation = correlation * mask[:, None] * mask[None, :]
        values, vectors = small.linalg.eigh(correlation)
        top = small.max(values)
        keep = small.logical_and(values > self.rcond * top, values > 0.0)
        inverse = small.where(keep, 1.0 / small.where(keep, values, 1.0), 0.0)
        # beta = C^+ 1, alpha = N^-1 beta.
        coefficients = small.matmul(mask[None, :], vectors)[0] * inverse
        beta = small.matmul(vectors, coefficients[:, None])[:, 0]
        alpha = beta / safe * mask
        total = small.sum(alpha)
        # A sum that is zero up to rounding (e.g. exactly opposite gradients)
        # means no combination has equal positive projections: return 0.
        usable = small.abs(total) > 1e-6 * small.sum(small.abs(alpha))
        return small.where(usable, alpha / small.where(usable, total, 1.0), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rcond": self.rcond}

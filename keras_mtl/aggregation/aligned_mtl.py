"""Aligned-MTL: align the principal components of the Jacobian."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import symmetric_part
from keras_mtl.aggregation.base import GramianWeightedAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class AlignedMTL(GramianWeightedAggregator):
    """Aligned-MTL: make the task gradients orthogonal with equal norms
    (condition number 1) before summing them.

    With the eigendecomposition $G = J J^\\top = V \\Lambda V^\\top$ restricted
    to its R non-zero eigenvalues ($\\lambda_1 \\ge \\dots \\ge \\lambda_R$),

    $$B = \\sqrt{\\lambda_R}\\; V \\Lambda^{-1/2} V^\\top, \\qquad
    \\hat J = B J, \\qquad d = \\mathbf 1^\\top \\hat J
    = (B \\mathbf 1)^\\top J .$$

    If $J = V \\Sigma W^\\top$ (SVD, $\\Sigma = \\Lambda^{1/2}$), then
    $\\hat J = \\sigma_R V W^\\top$: every non-zero singular value of the
    aligned Jacobian equals the smallest one of $J$, so no principal
    direction (and no task) dominates, and the step is as large as the
    weakest component allows. $f(cJ) = c f(J)$.

    Eigenvalues below `rcond * lambda_1` count as 0 (rank deficiency: e.g.
    duplicated or opposite tasks, or more tasks than parameters); without
    the cut-off a rounding-level eigenvalue would shrink the step to
    nothing. The official code and LibMTL use `K * eps` as the cut-off;
    the default here is larger because the Gramian of a float32 Jacobian
    has rounding errors of about 1e-6 relative.

    From Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023 (Algorithm 1, with unit
    task weights as in LibMTL's `Aligned_MTL`; TorchJD averages instead,
    which divides `d` by K). The paper's representation variant
    (Aligned-MTL-UB) is this aggregator in representation mode.

    Args:
        rcond: relative eigenvalue cut-off.

    Example:

    ```python
    import numpy as np
    from keras_mtl.aggregation.aligned_mtl import AlignedMTL

    d = AlignedMTL()(np.array([[3.0, 0.0], [0.0, 1.0]]))
    # aligned rows [1, 0] and [0, 1]: d == [1.0, 1.0]
    ```
    """

    def __init__(self, rcond: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        rcond = float(rcond)
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"AlignedMTL: rcond must be in [0, 1); got {rcond}.")
        self.rcond = rcond

    def balance_transformation(self, gramian: Any) -> Any:
        """The matrix `B` (`[K, K]`) with `B J` the aligned Jacobian."""
        gramian = symmetric_part(gramian)
        values, vectors = small.linalg.eigh(gramian)
        top = small.max(values)
        keep = small.logical_and(values > self.rcond * top, values > 0.0)
        safe = small.where(keep, values, 1.0)
        smallest = small.min(small.where(keep, values, top))
        scale = small.where(keep, small.sqrt(small.maximum(smallest, 0.0) / safe), 0.0)
        return small.matmul(vectors * scale[None, :], small.transpose(vectors))

    def gramian_weights(self, gramian: Any) -> Any:
        return small.sum(self.balance_transformation(gramian), axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rcond": self.rcond}

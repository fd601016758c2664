"""ConFIG (Liu et al., ICLR 2025): conflict-free update with equal cosines."""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._validation import check_number
from keras_mtl.aggregation import _small_ops as small
from keras_mtl.aggregation._linalg import safe_divide, symmetric_part
from keras_mtl.aggregation.base import GramianWeightedAggregator

_MIN_NORM = 1e-3


@keras.saving.register_keras_serializable(package="keras_mtl")
class ConFIG(GramianWeightedAggregator):
    """Conflict-Free Inverse Gradients (ConFIG): the direction that makes the
    same angle with every task gradient, with a length set by the conflict.

    With $U$ the `[K, D]` matrix of unit task gradients
    $u_i = g_i / \\lVert g_i\\rVert$,

    $$d_u = \\frac{U^{+}\\mathbf{1}}{\\lVert U^{+}\\mathbf{1}\\rVert},
      \\qquad d = \\Big(\\sum_{i=1}^{K} g_i^\\top d_u\\Big)\\, d_u ,$$

    where $U^{+}\\mathbf{1}$ is the minimum-norm solution of $U x = \\mathbf 1$
    (every task gets the same cosine $1/\\lVert x\\rVert > 0$ with $d$, so
    no task's loss increases to first order when $U$ has full row rank).
    The length is the sum of the projections of the task gradients on
    $d_u$: large when the tasks agree, small when they conflict.

    $U^{+}\\mathbf 1 = U^\\top (U U^\\top)^{+}\\mathbf 1$ is computed from the
    eigendecomposition of the `[K, K]` Gramian $UU^\\top$, treating
    eigenvalues below `rcond` times the largest as 0 (they are float32
    rounding noise of linearly dependent gradients; numpy's and torch's
    `pinv` use a cutoff too). When $U x = \\mathbf 1$ has no solution
    $U^{+}\\mathbf 1$ is the least-squares one; if it vanishes (norm below
    $10^{-3}$, while a solvable system gives norm $\\ge 1$), as for exactly
    opposite gradients, the tasks cancel and $d = 0$ (its direction would
    be rounding noise). Since $d = d_u d_u^\\top \\sum_i g_i$, always
    $\\lVert d\\rVert \\le \\lVert \\sum_i g_i\\rVert$. Zero rows are
    ignored (their unit vector is 0). Positively homogeneous
    (`scale_degree = 1`).

    Everything is an inner product of the task gradients: with
    $n_i = \\sqrt{G_{ii}}$ and $N = \\mathrm{diag}(n)$,
    $UU^\\top = N^{+} G N^{+}$, $U^{+}\\mathbf 1 = J^\\top N^{+} x$ for
    $x = (UU^\\top)^{+}\\mathbf 1$, $\\lVert U^{+}\\mathbf 1\\rVert^2 =
    x^\\top UU^\\top x$ and $\\sum_i g_i^\\top U^{+}\\mathbf 1 =
    n^\\top UU^\\top x$. So $d = c^\\top J$ with
    $c = \\frac{n^\\top UU^\\top x}{x^\\top UU^\\top x} N^{+} x$, computed
    from the Gramian $G = JJ^\\top$ alone: a `GramianWeightedAggregator`
    (`MultiTaskModel` never forms $J$ for it; `agg.weights(gramian)` is $c$).

    Reference: Q. Liu, M. Chu and N. Thuerey, "ConFIG: Towards Conflict-free
    Training of Physics Informed Neural Networks", ICLR 2025
    (arXiv 2408.11104). TorchJD and the authors' package compute the same
    direction with `torch.linalg.pinv`; the paper's momentum variant (M-ConFIG)
    is not included.

    Args:
        rcond: relative eigenvalue cutoff of the Gramian's pseudo-inverse
            (in (0, 1]; 1e-4 drops directions whose singular value is below
            1% of the largest).

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.ConFIG()
    d = agg(np.array([[1.0, 0.0], [0.0, 2.0]]))
    # d_u = [1, 1]/sqrt(2); length = (1 + 2)/sqrt(2): d = [1.5, 1.5]
    ```
    """

    scale_degree = 1

    def __init__(self, rcond: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rcond = check_number(rcond, "rcond", "ConFIG", 0.0, 1.0, low_open=True)

    def gramian_weights(self, gramian: Any) -> Any:
        """The coefficients `c` (`[K]`) of `d = c @ J` for a Gramian `G`
        (`[K, K]`) of any scale (they are scale-free)."""
        gramian = small.cast(gramian, "float32")
        norms = small.sqrt(small.maximum(small.diagonal(gramian), 0.0))
        # Zero rows have a zero unit vector: their row and column of UU^T are 0.
        inverse_norms = safe_divide(1.0, norms)
        gram = gramian * inverse_norms[:, None] * inverse_norms[None, :]
        gram = symmetric_part(gram)
        # pinv(U U^T) 1 from the eigendecomposition: eigenvalues below
        # rcond * largest are rounding noise of dependent rows and dropped.
        eigenvalues, eigenvectors = small.eigh(gram)
        keep = eigenvalues > self.rcond * small.max(eigenvalues)
        inverse = small.where(keep, 1.0 / small.where(keep, eigenvalues, 1.0), 0.0)
        projections = small.sum(eigenvectors, axis=0)  # V^T 1
        solution = small.matmul(eigenvectors, (inverse * projections)[:, None])[:, 0]
        # U U^T x gives both |pinv(U) 1|^2 = x^T U U^T x and the sum of the
        # projections sum_i g_i^T pinv(U) 1 = n^T U U^T x.
        gram_solution = small.matmul(gram, solution[:, None])[:, 0]
        squared_norm = small.maximum(small.sum(solution * gram_solution), 0.0)
        length = small.sum(norms * gram_solution)
        # |pinv(U) 1| >= 1 when U x = 1 is solvable; a (least-squares) solution
        # of norm < min_norm means the tasks cancel out (e.g. exactly opposite
        # gradients, where it is exactly 0): its direction would be rounding
        # noise, so the result is 0.
        weights = safe_divide(length, squared_norm) * solution * inverse_norms
        return small.where(small.sqrt(squared_norm) > _MIN_NORM, weights, 0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rcond": self.rcond}

"""GradDrop (Chen et al., NeurIPS 2020): gradient sign dropout."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_number
from keras_mtl.aggregation._random_streams import uniform_noise
from keras_mtl.aggregation._rows import sum_rows
from keras_mtl.aggregation._stateful import SeededAggregator


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradDrop(SeededAggregator):
    """Gradient Sign Dropout (GradDrop): per coordinate, keep only the task
    gradients of one randomly chosen sign.

    For every coordinate (column) k of the Jacobian, the gradient positive
    sign purity

    $$P_k = \\frac{1}{2}\\Big(1 + \\frac{\\sum_i g_{ik}}
                               {\\sum_i |g_{ik}| + \\epsilon}\\Big) \\in [0, 1]$$

    is the probability of keeping the positive components: with
    $U_k \\sim \\mathcal{U}(0, 1)$,

    $$M_{ik} = [P_k > U_k]\\,[g_{ik} > 0] + [P_k < U_k]\\,[g_{ik} < 0],
      \\qquad d_k = \\sum_i g_{ik}\\,(\\ell + (1 - \\ell) M_{ik}),$$

    where $\\ell$ is the leak (0: pure GradDrop; 1: the plain sum). Signs
    that agree across tasks always survive; a coordinate where the tasks
    disagree moves in one direction only, chosen with a probability
    proportional to the net gradient. $\\epsilon = 10^{-7}$ is applied to
    the Jacobian scaled to a largest entry of 1, which keeps `d` positively
    homogeneous (`scale_degree = 1`).

    The paper applies GradDrop to the gradients with respect to a shared
    activation layer, summing over the batch after multiplying by the sign
    of the layer's input; here each column of `J` is one coordinate (in the
    representation mode of a model a column is one activation of one
    sample, without the sign-of-input correction). Evaluation
    (`training=False`) returns the expected direction
    $d_k = \\sum_i g_{ik} (\\ell + (1-\\ell) E[M_{ik}])$ with
    $E[M_{ik}] = P_k [g_{ik} > 0] + (1 - P_k)[g_{ik} < 0]$, and does not
    advance the generator. The generator state is saved with the layer.

    Reference: Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar,
    Y. Chai and D. Anguelov, "Just Pick a Sign: Optimizing Deep Multitask
    Models with Gradient Sign Dropout", NeurIPS 2020 (arXiv 2010.06808).

    Args:
        leak: $\\ell \\in [0, 1]$, the fraction of every task gradient that
            always passes (LibMTL's `leak`, default 0).
        seed: int seeding the dropout masks, or None for a random seed.

    Example:

    ```python
    import numpy as np
    agg = keras_mtl.aggregation.GradDrop(seed=0)
    d = agg(np.array([[1.0, 2.0], [-1.0, 1.0]]))
    # column 1 agrees: d[1] == 3; column 0 keeps either 1.0 or -1.0
    ```
    """

    scale_degree = 1
    epsilon = 1e-7

    def __init__(
        self, leak: float = 0.0, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.leak = check_number(leak, "leak", "GradDrop", 0.0, 1.0)

    def aggregate(self, jacobian: Any, training: bool = True) -> Any:
        total = sum_rows(jacobian)
        magnitude = sum_rows(ops.abs(jacobian))
        purity = 0.5 * (1.0 + total / (magnitude + self.epsilon))
        positive = ops.cast(jacobian > 0.0, "float32")
        negative = ops.cast(jacobian < 0.0, "float32")
        if training:
            # `ops.shape`: D may be known only at run time (representation
            # mode: batch size x representation size).
            uniform = uniform_noise(ops.shape(purity), self.seed_generator)
            keep_positive = ops.cast(purity > uniform, "float32")
            keep_negative = ops.cast(purity < uniform, "float32")
        else:
            keep_positive = purity
            keep_negative = 1.0 - purity
        mask = keep_positive[None, :] * positive + keep_negative[None, :] * negative
        return sum_rows(jacobian * (self.leak + (1.0 - self.leak) * mask))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "leak": self.leak}

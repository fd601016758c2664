"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, TMLR 2022)."""

from __future__ import annotations

import numbers
from typing import Any

import keras
from keras import ops

from keras_mtl._seed_state import SavesSeedGeneratorState
from keras_mtl.weighting.base import Weighting, weighted_sum


@keras.saving.register_keras_serializable(package="keras_mtl")
class RandomLossWeighting(SavesSeedGeneratorState, Weighting):
    """Random Loss Weighting (RLW): fresh random task weights every step.

    At each training step a vector $z \\sim \\mathcal{N}(0, I_K)$ is drawn and

    $$w = \\mathrm{softmax}(z), \\qquad
    \\mathcal{L} = \\sum_{i=1}^{K} w_i L_i,$$

    with the weights treated as constants in the backward pass. As in the
    paper, the weights are positive and sum to 1 (not to K as in `dwa` or
    `adaptive`), so the objective is a random convex combination of the task
    losses; its expected value is the mean of the losses. Scale the learning
    rate by K to match the step size of equal weighting.

    The randomness comes from a `keras.random.SeedGenerator` whose state is a
    variable of this layer: it is saved and restored with the model's
    weights (so a resumed run continues the sequence), and the draw works
    inside a traced or XLA-compiled step. Evaluation
    (`training=False`) uses the expected weights 1/K and does not advance the
    generator. (TensorFlow picks its random-number algorithm per device, so
    a given seed yields a different, equally valid sequence under XLA than
    eagerly; each is reproducible.)

    Reference: B. Lin, F. Ye, Y. Xu, Y. Shi and Y. Zhang ("Lin, Ye, Xu, Shi &
    Zhang"), "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", Transactions on Machine Learning Research, 2022
    (arXiv 2111.10603).

    Args:
        seed: an int seeding the weight sequence (the same seed gives the
            same sequence), or None for a random seed.

    Example:

    ```python
    w = keras_mtl.weighting.get("rlw", seed=0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # weights: positive, sum to 1, redrawn at every training call
    ```
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise ValueError(
                    f"RandomLossWeighting: seed must be an int or None; got {seed!r}."
                )
            seed = int(seed)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        num_tasks = losses.shape[0]
        if training:
            z = keras.random.normal(
                (num_tasks,), dtype="float32", seed=self.seed_generator
            )
            weights = ops.softmax(z)
        else:
            weights = ops.full((num_tasks,), 1.0 / num_tasks, dtype="float32")
        return weighted_sum(losses, weights), weights

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}

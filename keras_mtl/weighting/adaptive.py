"""Adaptive weight assignment (Huq & Pervin 2022): harder tasks weigh more."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_temperature
from keras_mtl.weighting._epoch_history import EpochLossHistory
from keras_mtl.weighting.base import (
    Weighting,
    softmax_weights,
    weighted_sum,
)

MODES = ("step", "epoch")
FORMS = ("softmax", "proportional")


@keras.saving.register_keras_serializable(package="keras_mtl")
class AdaptiveWeighting(Weighting):
    """Adaptive weight assignment: a task with a larger loss gets more weight.

    From Huq & Pervin, "Adaptive Weight Assignment Scheme for Multi-task
    Learning", IAES International Journal of Artificial Intelligence (IJ-AI)
    11(1):173-178, 2022 (arXiv 2303.07278). The paper's idea: tasks are not
    equally difficult, so instead of equal weights allocate more weight to
    the harder task, measured by its current loss. The weights are
    recomputed from the losses and treated as constants in the backward
    pass:

    - `form="softmax"` (default):
      $$w_i = K \\cdot \\mathrm{softmax}(\\mathrm{sg}(\\tilde L) / T)_i$$
    - `form="proportional"`:
      $$w_i = K \\cdot \\tilde L_i / \\textstyle\\sum_j \\tilde L_j$$

    and the objective is $\\sum_i w_i L_i$, where sg is stop-gradient, K the
    number of tasks and $\\tilde L$ is

    - `mode="step"` (default): the current batch's task losses;
    - `mode="epoch"`: the mean training loss of each task over the previous
      epoch ($w_i = 1$ during the first epoch), like Dynamic Weight Average
      but from loss levels instead of loss ratios.

    Weights always sum to K, so the overall step size matches equal
    weighting. The softmax form uses a max-shifted softmax and never
    overflows; the temperature T sets how sharply weight goes to the hardest
    task (T -> infinity gives equal weighting). The proportional form is
    scale-free: multiplying every loss by a constant leaves the weights
    unchanged. The full text of the paper was not available when this was
    written; both forms are offered, softmax by default as in the project
    brief.

    With `mode="step"` and the softmax form, the update equals that of
    `BMTL` with its default normalised exponential transform at the same
    temperature (both put the gradient weight `K * softmax(L / T)` on task
    i); the two differ in their other modes.

    Args:
        temperature: softmax temperature T > 0 (only for the softmax form).
        mode: `"step"` (current batch losses) or `"epoch"` (previous epoch's
            mean training losses).
        form: `"softmax"` or `"proportional"`.

    Example:

    ```python
    w = keras_mtl.weighting.get("adaptive", temperature=1.0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # weights == 2 * softmax([0.5, 2.0]) == [0.365, 1.635]
    ```
    """

    def __init__(
        self,
        temperature: float = 1.0,
        mode: str = "step",
        form: str = "softmax",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature, "AdaptiveWeighting")
        if mode not in MODES:
            raise ValueError(
                f"AdaptiveWeighting: mode must be one of {MODES}; got {mode!r}."
            )
        if form not in FORMS:
            raise ValueError(
                f"AdaptiveWeighting: form must be one of {FORMS}; got {form!r}."
            )
        self.mode = mode
        self.form = form

    def build_state(self, num_tasks: int) -> None:
        if self.mode == "epoch":
            self.epoch_history = EpochLossHistory(depth=1, name="epoch_history")
            self.epoch_history.build((num_tasks,))

    def weights_from(self, levels: Any) -> Any:
        """The weights for loss levels `levels` (a `[K]` float32 tensor)."""
        levels = ops.stop_gradient(levels)
        if self.form == "softmax":
            return softmax_weights(levels, self.temperature)
        # Proportional: clamp at 0 (losses are non-negative; a negative
        # custom loss must not flip a weight's sign) and fall back to equal
        # weights when every loss is 0. Dividing by the largest loss first
        # keeps the sum in [1, K]: no underflow for tiny losses, no overflow
        # of the sum for huge ones.
        levels = ops.maximum(levels, 0.0)
        # XLA on JAX (CPU) divides by a scalar as a product with its
        # reciprocal, which is subnormal, flushed to 0, for a peak above
        # 2**126: huge levels are first scaled by 2**-64 (exact).
        levels = ops.where(ops.max(levels) > 2.0**64, levels * 2.0**-64, levels)
        peak = ops.max(levels)
        scaled = levels / ops.where(peak > 0.0, peak, 1.0)
        num_tasks = levels.shape[0]
        equal = ops.ones_like(levels)
        return ops.where(
            peak > 0.0, num_tasks * scaled / ops.maximum(ops.sum(scaled), 1.0), equal
        )

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        if self.mode == "step":
            weights = self.weights_from(losses)
        else:
            if training:
                history, completed = self.epoch_history.update(losses)
            else:
                history, completed = self.epoch_history.read()
            weights = ops.where(
                completed > 0, self.weights_from(history[-1]), ops.ones_like(losses)
            )
        return weighted_sum(losses, weights), weights

    def on_epoch_begin(self, epoch: int) -> None:
        if self.mode == "epoch":
            self.epoch_history.set_epoch(epoch)

    def on_train_end(self) -> None:
        if self.mode == "epoch":
            self.epoch_history.end_training()

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "mode": self.mode,
            "form": self.form,
        }

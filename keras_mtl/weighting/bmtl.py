"""BMTL (Liang & Zhang 2020): minimise a sum of increasing convex loss transforms."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mtl._validation import check_temperature
from keras_mtl.weighting.base import Weighting, weighted_sum

TRANSFORMS = ("exp", "identity", "power")
# Losses at which a user transform is checked for being increasing and convex.
_CHECK_GRID = np.linspace(0.0, 10.0, 201)
_TINY = 1e-30


def _derivative(fn: Callable[[Any], Any], x: Any) -> Any:
    """Elementwise derivative of a scalar-to-scalar `fn` at every entry of `x`.

    Used only for user-supplied transforms; the built-in ones have closed
    forms. Dispatches to the backend's autodiff.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return tape.gradient(y, x)
    if backend == "jax":
        import jax

        return jax.vmap(jax.grad(lambda v: fn(v)))(x)
    if backend == "torch":
        import torch

        # Its only use is under `stop_gradient`: a detached input suffices.
        source = ops.convert_to_tensor(x).detach().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(ops.sum(fn(source)), source)
        return gradient
    raise NotImplementedError(
        f"BMTL with a user transform needs autodiff; backend {backend!r} is not supported."
    )


@keras.saving.register_keras_serializable(package="keras_mtl")
class BMTL(Weighting):
    """BMTL: balance task difficulty by an increasing convex loss transform.

    From Liang & Zhang, "A Simple General Approach to Balance Task
    Difficulty in Multi-Task Learning", arXiv 2002.04792, 2020. Instead of
    weighting the losses, BMTL minimises

    $$\\mathcal{L} = \\sum_{i=1}^{K} h(L_i)$$

    with `h` increasing and convex. Its gradient is
    $\\sum_i h'(L_i) \\nabla L_i$: since `h'` grows with the loss, a harder
    task (larger loss) automatically gets a larger share of the update. The
    paper's default is `h(l) = exp(l / T)`.

    **Overflow-safe form (default, `normalize=True`).** `exp(l / T)`
    overflows float32 once `l / T > 88` (float16: `> 11`). So by default the
    update is computed as

    $$\\mathcal{L} = \\sum_i \\mathrm{sg}(w_i) L_i, \\qquad
      w_i = K \\frac{h'(L_i)}{\\sum_j h'(L_j)},$$

    whose gradient has exactly the direction of the gradient of
    $\\sum_i h(L_i)$, rescaled so the weights sum to K (the step size of
    equal weighting). The weights are formed from $\\log h'(L_i)$ by a
    max-shifted softmax, so they never overflow. For the exponential
    transform, $w = K \\cdot \\mathrm{softmax}(L / T)$: the gradient
    direction is that of softmax(L / T) weighting, and the update equals
    `AdaptiveWeighting(mode="step")` at the same temperature.
    `normalize=False` minimises the paper's literal $\\sum_i h(L_i)$; with
    the exponential transform that overflows for large losses (a
    `MultiTaskModel` then skips the step or raises, per its `on_nonfinite`).

    `<task>_weight` reports the normalised $K h'(L_i) / \\sum_j h'(L_j)$
    in both modes.

    Args:
        transform: `"exp"` (default, `h(l) = exp(l / T)`), `"identity"`
            (`h(l) = l`: equal weighting), `"power"` (`h(l) = l ** p`,
            `p >= 1`), or a callable `h` written with `keras.ops`, checked
            numerically for being increasing and convex on losses in
            [0, 10].
        temperature: T > 0 for `"exp"`.
        power: p >= 1 for `"power"`.
        normalize: the overflow-safe normalised form (default) or the
            literal objective.

    Example:

    ```python
    w = keras_mtl.weighting.get("bmtl", temperature=1.0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # weights == 2 * softmax([0.5, 2.0]) == [0.365, 1.635]
    ```
    """

    def __init__(
        self,
        transform: str | Callable[[Any], Any] = "exp",
        temperature: float = 1.0,
        power: float = 2.0,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(transform, dict):
            transform = keras.saving.deserialize_keras_object(transform)
        if isinstance(transform, str):
            if transform not in TRANSFORMS:
                raise ValueError(
                    f"BMTL: transform must be one of {TRANSFORMS} or a callable; "
                    f"got {transform!r}."
                )
        elif callable(transform):
            _check_increasing_convex(transform)
        else:
            raise ValueError(
                f"BMTL: transform must be one of {TRANSFORMS} or a callable; "
                f"got {transform!r}."
            )
        self.transform = transform
        self.temperature = check_temperature(temperature, "BMTL")
        try:
            self.power = float(power)
        except (TypeError, ValueError):
            raise ValueError(
                f"BMTL: power must be a number >= 1; got {power!r}."
            ) from None
        if not (self.power >= 1.0 and math.isfinite(self.power)):
            raise ValueError(
                f"BMTL: power must be >= 1 (h(l) = l**p is convex only then); got {power!r}."
            )
        self.normalize = bool(normalize)

    def value(self, losses: Any) -> Any:
        """`h(L_i)` for each task."""
        if self.transform == "exp":
            return ops.exp(losses / self.temperature)
        if self.transform == "identity":
            return losses
        if self.transform == "power":
            return ops.power(ops.maximum(losses, 0.0), self.power)
        return self.transform(losses)

    def log_derivative(self, losses: Any) -> Any:
        """`log h'(L_i)` for each task, computed without overflow."""
        if self.transform == "exp":
            return losses / self.temperature - math.log(self.temperature)
        if self.transform == "identity":
            return ops.zeros_like(losses)
        if self.transform == "power":
            base = ops.maximum(losses, _TINY)
            return math.log(self.power) + (self.power - 1.0) * ops.log(base)
        derivative = _derivative(self.transform, losses)
        return ops.log(ops.maximum(derivative, _TINY))

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        num_tasks = losses.shape[0]
        log_slopes = ops.stop_gradient(self.log_derivative(losses))
        weights = num_tasks * ops.softmax(log_slopes)
        if self.normalize:
            return weighted_sum(losses, weights), weights
        return ops.sum(self.value(losses)), weights

    def get_config(self) -> dict[str, Any]:
        transform = self.transform
        if callable(transform):
            transform = keras.saving.serialize_keras_object(transform)
        return {
            **super().get_config(),
            "transform": transform,
            "temperature": self.temperature,
            "power": self.power,
            "normalize": self.normalize,
        }


def _check_increasing_convex(fn: Callable[[Any], Any]) -> None:
    """Raises ValueError unless `fn` is increasing and convex on the grid."""

    def evaluate(points: np.ndarray) -> np.ndarray:
        grid = ops.convert_to_tensor(points.astype("float32"))
        try:
            return np.asarray(ops.convert_to_numpy(fn(grid)), dtype="float64")
        except Exception as error:  # a user function failing on a tensor
            raise ValueError(
                f"BMTL: the transform {fn!r} could not be evaluated on a float32 "
                f"tensor of losses (it must use keras.ops): {error}"
            ) from error

    values = evaluate(_CHECK_GRID)
    if values.shape != _CHECK_GRID.shape or not np.all(np.isfinite(values)):
        raise ValueError(
            f"BMTL: the transform {fn!r} must map each loss to a finite number on "
            f"losses in [0, 10] (elementwise); got shape {values.shape}."
        )
    # Elementwise: h(L_i) must not depend on the other losses, so evaluating
    # a shorter, reversed subset of the grid must give the same values.
    subset = _CHECK_GRID[::-7]
    again = evaluate(subset)
    scale = 1e-5 * max(1.0, float(np.max(np.abs(values))))
    if again.shape != subset.shape or not np.allclose(
        again, values[::-7], rtol=1e-5, atol=scale
    ):
        raise ValueError(
            f"BMTL: the transform {fn!r} must be elementwise: h(L_i) may depend "
            "only on L_i, not on the other tasks' losses."
        )
    steps = np.diff(values)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise ValueError(
            f"BMTL: the transform {fn!r} is not increasing: h({_CHECK_GRID[i]:g}) = "
            f"{values[i]:g} >= h({_CHECK_GRID[i + 1]:g}) = {values[i + 1]:g}."
        )
    slopes = steps / np.diff(_CHECK_GRID)
    tolerance = 1e-4 * np.maximum(np.abs(slopes[:-1]), 1.0)
    if np.any(np.diff(slopes) < -tolerance):
        i = int(np.argmax(np.diff(slopes) < -tolerance)) + 1
        raise ValueError(
            f"BMTL: the transform {fn!r} is not convex: its slope falls near loss "
            f"{_CHECK_GRID[i]:g} (from {slopes[i - 1]:g} to {slopes[i]:g})."
        )

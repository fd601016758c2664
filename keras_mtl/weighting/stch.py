"""Smooth Tchebycheff scalarization (Lin et al., ICML 2024)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras
from keras import ops

from keras_mtl._validation import check_number_list, check_positive
from keras_mtl.weighting.base import Weighting

# LibMTL's guard inside the logarithm of the normalised losses.
_LOG_EPS = 1e-20


@keras.saving.register_keras_serializable(package="keras_mtl")
class STCH(Weighting):
    """Smooth Tchebycheff scalarization: a smooth maximum of the weighted
    task losses, which optimises the worst task.

    The Tchebycheff scalarization $\\max_i w_i (f_i - z_i^*)$ (preference
    $w$, ideal point $z^*$) reaches every Pareto-optimal point but is not
    smooth; Lin et al. replace the maximum by its log-sum-exp smoothing
    with smoothing parameter $\\mu > 0$ (Eq. 7 of the paper):

    $$g_\\mu(f \\mid w) = \\mu \\log \\sum_{i=1}^{K}
        \\exp\\Big(\\frac{w_i (f_i - z_i^*)}{\\mu}\\Big).$$

    The objective here is $K \\cdot g_\\mu$ (LibMTL's factor K: with
    $w = \\mathbf 1$ the gradient weights then sum to K, as equal
    weighting's) and the reported weights are its gradient,

    $$\\frac{\\partial (K g_\\mu)}{\\partial L_i}
      = K \\,\\mathrm{softmax}\\big(w (f - z^*) / \\mu\\big)_i \\, w_i
        \\frac{\\partial f_i}{\\partial L_i}.$$

    What $f_i$ is depends on `warmup_epoch`:

    - `warmup_epoch=n` (an int, default 4; LibMTL's STCH, from the
      authors' code): during epochs $0, \\dots, n$ the objective is
      $\\sum_i \\log(L_i + 10^{-20})$ (weights $1 / (L_i + 10^{-20})$);
      during epoch $n$ the mean training loss $\\bar L_i$ of each task is
      also accumulated (the "nadir" vector). From then on
      $f_i = \\log(L_i / \\bar L_i + 10^{-20})$ with ideal point
      $z^* = 0$: the losses are normalised by their early values and put
      on a log scale. The measured $\\bar L$ is frozen once used, so a
      later `fit` call does not warm up again. If no step of epoch $n$ was
      trained on (a run resumed past it), the first step after it measures
      $\\bar L$ from its own batch. A mean loss of 0 is replaced by 1.
    - `warmup_epoch=None`: the paper's form on the raw losses,
      $f_i = L_i$ with the ideal point `ideal_point` (default 0, a lower
      bound of non-negative losses), no state.

    The default preference is $w = \\mathbf 1$ (LibMTL's; the paper's
    uniform $w_i = 1/K$ at smoothing $\\mu$ is the same objective as
    $w = \\mathbf 1$ at $\\mu K$, divided by K). The log-sum-exp is
    max-shifted, so no term overflows. The phase follows the epoch index
    that `MultiTaskModel.fit` announces (`on_epoch_begin`); a weighting
    called without it stays in epoch 0.

    Deviations from LibMTL: LibMTL reports weights of 1 in every phase;
    these are the true gradient weights. Everything else (the 1e-20
    guard, the factor K, the epoch schedule) follows it.

    Reference: X. Lin, X. Zhang, Z. Yang, F. Liu, Z. Wang and Q. Zhang,
    "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
    ICML 2024 (arXiv 2402.19078).

    Args:
        mu: smoothing parameter $\\mu > 0$ (LibMTL's default 1.0); as
            $\\mu \\to 0$ the objective tends to K times the largest term.
        warmup_epoch: the 0-based epoch whose mean losses normalise the
            losses afterwards (LibMTL's default 4), or None for the plain
            scalarization of the raw losses.
        preference: the preference vector $w$, K finite numbers > 0
            (default all ones).
        ideal_point: $z^*$ for `warmup_epoch=None`: a number or K numbers
            (default 0.0).

    Example:

    ```python
    w = keras_mtl.weighting.get("stch", warmup_epoch=None, mu=1.0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # objective == 2 * log(e**0.5 + e**2) == 4.403
    # weights == 2 * softmax([0.5, 2.0]) == [0.365, 1.635]
    ```
    """

    def __init__(
        self,
        mu: float = 1.0,
        warmup_epoch: int | None = 4,
        preference: list[float] | None = None,
        ideal_point: float | list[float] = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mu = check_positive(mu, "mu", "STCH")
        if warmup_epoch is not None and (
            isinstance(warmup_epoch, bool)
            or not isinstance(warmup_epoch, numbers.Integral)
            or warmup_epoch < 0
        ):
            raise ValueError(
                f"STCH: warmup_epoch must be an int >= 0 or None; got {warmup_epoch!r}."
            )
        self.warmup_epoch = None if warmup_epoch is None else int(warmup_epoch)
        self._announced_epoch = 0
        self.preference = check_number_list(
            preference, "preference", "STCH", positive=True
        )
        if isinstance(ideal_point, numbers.Real) and not isinstance(ideal_point, bool):
            if not math.isfinite(float(ideal_point)):
                raise ValueError(
                    f"STCH: ideal_point must be finite; got {ideal_point!r}."
                )
            self.ideal_point: float | list[float] = float(ideal_point)
        else:
            self.ideal_point = check_number_list(
                ideal_point, "ideal_point", "STCH", positive=False
            )

    def build_state(self, num_tasks: int) -> None:
        for name, value in (
            ("preference", self.preference),
            ("ideal_point", self.ideal_point),
        ):
            if isinstance(value, list) and len(value) != num_tasks:
                raise ValueError(
                    f"STCH: {name} has {len(value)} entries {value} but there are "
                    f"{num_tasks} tasks."
                )
        if self.warmup_epoch is None:
            return

        def state(name: str, shape: tuple[int, ...], dtype: str = "float32") -> Any:
            init = "ones" if name == "nadir" else "zeros"
            return self.add_weight(
                shape=shape, dtype=dtype, initializer=init, trainable=False, name=name
            )

        self.epoch = state("epoch", (), "int32")
        # An epoch announced before the layer was built (`initial_epoch`).
        self.epoch.assign(self._announced_epoch)
        self.loss_sum = state("loss_sum", (num_tasks,))
        self.count = state("count", ())
        self.nadir = state("nadir", (num_tasks,))
        self.ready = state("ready", (), "int32")

    def _smooth_max(self, terms: Any) -> tuple[Any, Any]:
        """`K * mu * logsumexp(w * terms / mu)` and its gradient in `terms`."""
        num_tasks = terms.shape[0]
        preference = (
            ops.ones((num_tasks,), "float32")
            if self.preference is None
            else ops.convert_to_tensor(self.preference, "float32")
        )
        scaled = preference * terms / self.mu
        objective = num_tasks * self.mu * ops.logsumexp(scaled)
        gradient = num_tasks * ops.softmax(ops.stop_gradient(scaled)) * preference
        return objective, gradient

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        if self.warmup_epoch is None:
            ideal = ops.convert_to_tensor(self.ideal_point, "float32")
            objective, weights = self._smooth_max(losses - ideal)
            return objective, ops.stop_gradient(weights)
        epoch = ops.convert_to_tensor(self.epoch)
        ready = ops.convert_to_tensor(self.ready) > 0
        averaging = ops.logical_and(ops.logical_not(ready), epoch == self.warmup_epoch)
        step = ops.cast(averaging, "float32")
        detached = ops.stop_gradient(losses)
        loss_sum = ops.convert_to_tensor(self.loss_sum) + step * detached
        count = ops.convert_to_tensor(self.count) + step
        switch = ops.logical_and(ops.logical_not(ready), epoch > self.warmup_epoch)
        # Without a measured epoch, the first batch after it is the measure.
        measured = ops.where(count > 0.0, loss_sum / ops.maximum(count, 1.0), detached)
        measured = ops.where(measured > 0.0, measured, 1.0)
        nadir = ops.where(switch, measured, ops.convert_to_tensor(self.nadir))
        tchebycheff = ops.logical_or(ready, switch)
        if training:
            self.loss_sum.assign(loss_sum)
            self.count.assign(count)
            self.nadir.assign(nadir)
            self.ready.assign(ops.cast(tchebycheff, "int32"))
        # Warm-up: the sum of log losses.
        warm_objective = ops.sum(ops.log(losses + _LOG_EPS))
        warm_weights = 1.0 / (detached + _LOG_EPS)
        terms = ops.log(losses / nadir + _LOG_EPS)
        objective, softmax_part = self._smooth_max(terms)
        # d log(L / n + eps) / dL = 1 / (L + eps * n).
        weights = softmax_part / (detached + _LOG_EPS * nadir)
        return (
            ops.where(tchebycheff, objective, warm_objective),
            ops.stop_gradient(ops.where(tchebycheff, weights, warm_weights)),
        )

    def on_epoch_begin(self, epoch: int) -> None:
        self._announced_epoch = int(epoch)
        if self.warmup_epoch is not None and self.built:
            self.epoch.assign(int(epoch))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mu": self.mu,
            "warmup_epoch": self.warmup_epoch,
            "preference": self.preference,
            "ideal_point": self.ideal_point,
        }

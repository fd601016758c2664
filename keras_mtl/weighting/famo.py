"""FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mtl._unobserved import (
    LOWEST_FLOAT32,
    mark_unobserved_if_never_updated,
)
from keras_mtl._validation import check_lower_bound
from keras_mtl.weighting.base import Weighting

# Added to every loss gap L_i - m_i before its logarithm (the paper's code).
_EPSILON = 1e-8
# The logit optimiser is Adam with PyTorch's defaults, as in the official code.
_BETA_1 = 0.9
_BETA_2 = 0.999
_ADAM_EPSILON = 1e-8
# `previous_losses` of a task not observed yet. Files of keras_mtl 0.1.0
# have zeros there before the first step (`has_previous` 0);
# `load_own_variables` converts them.
NOT_OBSERVED = LOWEST_FLOAT32


@keras.saving.register_keras_serializable(package="keras_mtl")
class FAMO(Weighting):
    """FAMO: balanced loss decrease from the losses alone, in O(1) per step.

    FAMO keeps task logits $\\xi$ (variable `logits`, starting at 0) and
    weights $z = \\mathrm{softmax}(\\xi)$. With the loss gaps
    $D_i = \\max(L_i - m_i, 0) + \\epsilon$ ($m_i$ the minimum loss of
    task i, 0 by default; $\\epsilon = 10^{-8}$) the objective is

    $$\\mathcal{L} = c \\sum_{i=1}^{K} z_i \\log D_i, \\qquad
    c = \\Bigl(\\sum_{j=1}^{K} \\frac{z_j}{D_j}\\Bigr)^{-1}
    \\text{ (a constant in the backward pass)},$$

    so the update direction is $\\sum_i w_i \\nabla L_i$ with the effective
    weights $w_i = c\\, z_i / D_i$ (they sum to 1). After each step the
    logits follow the observed decrease of the log losses,
    $\\delta_i = \\log D_i(\\text{before}) - \\log D_i(\\text{after})$:

    $$\\xi \\leftarrow \\mathrm{Adam}\\bigl(\\xi;\\
      J_{\\mathrm{softmax}}(\\xi)^{\\top} \\delta + \\gamma\\, \\xi\\bigr),
    \\qquad J_{\\mathrm{softmax}}(\\xi)^{\\top} \\delta
      = z \\odot (\\delta - z^{\\top} \\delta),$$

    a step of Adam (learning rate $\\beta$, PyTorch defaults
    $\\beta_1 = 0.9$, $\\beta_2 = 0.999$, $10^{-8}$; weight decay
    $\\gamma$ added to the gradient) that lowers the weight of the tasks
    whose losses fell the most. The Adam moments and step count are
    variables (`adam_m`, `adam_v`, `adam_step`).

    **No extra forward pass.** The paper (and its code) evaluates the
    losses again on the *same* batch after the optimizer step to get
    $\\delta$. Here the losses of the next step's forward pass (a new
    batch) serve as the "after" losses: at step $t$, before its weights
    are formed, the logits take the update for
    $\\delta = \\log D(t-1) - \\log D(t)$ (the losses of step $t-1$ are
    kept in `previous_losses`, flag `has_previous`). So the weights of
    step $t$ follow the same information as the paper's, with batch noise
    in $\\delta$ and no extra cost. The first step uses $\\xi = 0$; a new
    `fit` continues from the last stored losses.

    **Tasks without labels.** In a step where a task has no labelled
    example `MultiTaskModel` keeps its entries of `logits`,
    `previous_losses`, `adam_m` and `adam_v`, so its previous loss is that
    of the last step that observed it. Until a task has been observed
    once, its previous loss holds the lowest float32 (not a loss); such a
    task takes no logit update (the step it is first observed stores its
    loss) and the update of the others is FAMO's over them alone: the
    softmax and $z^\\top\\delta$ over the tasks with a $\\delta$, their
    logits, moments and weight decay only. The Adam step count is shared
    (one per update). When every task has a previous loss (every step of
    a model whose tasks are all labelled) this is the update above.

    `training=False` forms the weights from the current logits and
    changes nothing. The losses are assumed to be non-negative (gaps below
    the minimum are clipped to $\\epsilon$).

    Reference: B. Liu, Y. Feng, P. Stone and Q. Liu, "FAMO: Fast Adaptive
    Multitask Optimization", NeurIPS 2023.

    Args:
        learning_rate: Adam learning rate $\\beta$ of the logits (the
            paper's 0.025).
        weight_decay: $\\gamma \\ge 0$, pulls the logits towards 0 (the
            official code's class default is 0.01; 1e-3 here).
        min_losses: $m_i$, the lowest value each loss can reach: a number
            for every task or a list of K numbers (default 0).

    Example:

    ```python
    w = keras_mtl.weighting.get("famo")
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    # first step, z = [0.5, 0.5]: weights = [0.8, 0.2] (proportional to
    # 1 / L_i, summing to 1); objective = 0.4 log 0.5 + 0.4 log 2 = 0
    ```
    """

    def __init__(
        self,
        learning_rate: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: float | Sequence[float] = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.learning_rate = check_lower_bound(
            learning_rate, "learning_rate", "FAMO", 0.0, True
        )
        self.weight_decay = check_lower_bound(
            weight_decay, "weight_decay", "FAMO", 0.0, False
        )
        if isinstance(min_losses, Sequence) and not isinstance(min_losses, str):
            self.min_losses: float | list[float] = [
                check_lower_bound(m, "min_losses", "FAMO", -math.inf, False)
                for m in min_losses
            ]
        else:
            self.min_losses = check_lower_bound(
                min_losses, "min_losses", "FAMO", -math.inf, False
            )

    def build_state(self, num_tasks: int) -> None:
        if isinstance(self.min_losses, list) and len(self.min_losses) != num_tasks:
            raise ValueError(
                f"FAMO: min_losses has {len(self.min_losses)} values "
                f"{self.min_losses}; there are {num_tasks} tasks"
                + (f" {self.task_names}." if self.task_names else ".")
            )

        def variable(name: str, dtype: str = "float32") -> Any:
            return self.add_weight(
                shape=(num_tasks,),
                dtype=dtype,
                initializer="zeros",
                trainable=False,
                name=name,
            )

        self.logits = variable("logits")
        self.previous_losses = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(NOT_OBSERVED),
            trainable=False,
            name="previous_losses",
        )
        self.adam_m = variable("adam_m")
        self.adam_v = variable("adam_v")
        self.has_previous = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="has_previous",
        )
        self.adam_step = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="adam_step",
        )

    def gaps(self, losses: Any) -> Any:
        """$D_i = \\max(L_i - m_i, 0) + \\epsilon$."""
        minimum = ops.convert_to_tensor(self.min_losses, dtype="float32")
        return ops.maximum(losses - minimum, 0.0) + _EPSILON

    def observed_before(self) -> Any:
        """`[K]` bool: the tasks with a previous loss (observed at an
        earlier training step)."""
        stored = ops.not_equal(self.previous_losses, NOT_OBSERVED)
        return ops.logical_and(ops.equal(self.has_previous, 1), stored)

    def logit_update(
        self, losses: Any, present: Any = None
    ) -> tuple[Any, Any, Any, Any]:
        """`(logits, adam_m, adam_v, adam_step)` after the update for the
        loss decrease from `previous_losses` to `losses`, over the tasks
        observed now (`present`, `[K]` bool; all if `None`) with a previous
        loss (unchanged if there is none, as on the first step)."""
        logits = ops.convert_to_tensor(self.logits)
        valid = self.observed_before()
        if present is not None:
            valid = ops.logical_and(valid, present)
        update = ops.any(valid)
        # The softmax over the tasks with a delta (all of them, when there
        # is none: its values are then not used).
        z = ops.softmax(
            ops.where(ops.logical_or(valid, ops.logical_not(update)), logits, -np.inf)
        )
        delta = ops.log(self.gaps(self.previous_losses)) - ops.log(self.gaps(losses))
        delta = ops.where(valid, delta, 0.0)
        gradient = z * (delta - ops.sum(z * delta)) + self.weight_decay * logits
        step = self.adam_step + 1
        t = ops.cast(step, "float32")
        # A task without a delta keeps its moments and logit: its decay
        # rates are 1 and its learning rate 0 (exactly its old values).
        # Rates, not a per-task select of the results: with every delta
        # XLA then compiles the arithmetic as before, bit for bit.
        beta_1 = ops.where(valid, _BETA_1, 1.0)
        beta_2 = ops.where(valid, _BETA_2, 1.0)
        m = beta_1 * self.adam_m + ops.where(valid, 1.0 - _BETA_1, 0.0) * gradient
        v = (
            beta_2 * self.adam_v
            + ops.where(valid, 1.0 - _BETA_2, 0.0) * gradient * gradient
        )
        m_hat = m / (1.0 - ops.power(_BETA_1, t))
        v_hat = v / (1.0 - ops.power(_BETA_2, t))
        stepped = logits - ops.where(valid, self.learning_rate, 0.0) * m_hat / (
            ops.sqrt(v_hat) + _ADAM_EPSILON
        )
        return (
            ops.where(update, stepped, logits),
            ops.where(update, m, self.adam_m.value),
            ops.where(update, v, self.adam_v.value),
            ops.where(update, step, self.adam_step.value),
        )

    def combine(self, losses: Any, training: bool = True) -> tuple[Any, Any]:
        return self.combine_present(losses, None, training=training)

    def combine_present(
        self, losses: Any, present: Any, training: bool = True
    ) -> tuple[Any, Any]:
        # An absent task's stand-in loss is no delta: it stays out of the
        # present tasks' update (the model keeps its own entries).
        observed = ops.stop_gradient(losses)
        if training:
            logits, m, v, step = self.logit_update(observed, present)
            self.logits.assign(logits)
            self.adam_m.assign(m)
            self.adam_v.assign(v)
            self.adam_step.assign(step)
            self.previous_losses.assign(observed)
            self.has_previous.assign(1)
        else:
            logits = ops.convert_to_tensor(self.logits)
        z = ops.softmax(logits)
        gaps = self.gaps(losses)
        c = 1.0 / ops.sum(z / ops.stop_gradient(gaps))
        scale = ops.stop_gradient(c * z)
        objective = ops.sum(scale * ops.log(gaps))
        return objective, scale / ops.stop_gradient(gaps)

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(store)
        mark_unobserved_if_never_updated(
            self.has_previous, self.previous_losses, NOT_OBSERVED
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "min_losses": self.min_losses,
        }

"""Expert utilisation of the mixture-of-experts layers' gates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_mtl import _compat

# The variables the gated layers (MMoE, CGC and PLE's levels, DSelectK) keep.
_TASK_GATES = "gate_utilization"
_SHARED_GATE = "shared_gate_utilization"


def _gated_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers (the model itself included, nested ones too) with gate
    statistics, each once, in tracking order."""
    found, seen = [], set()
    stack = [model]
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(getattr(layer, _TASK_GATES, None), keras.Variable):
            found.append(layer)
        # Each layer's direct sublayers (a model's included), in tracking order.
        stack.extend(_compat.direct_sublayers(layer))
    return found


def gate_utilization(model: keras.layers.Layer) -> dict[str, np.ndarray]:
    """The last training batch's mean gate weights of every gated layer.

    Returns `{"<layer>": (K, E) array, "<layer>/shared": (E',) array}`:
    row k is task k's batch-mean gate weight per expert (MMoE, DSelectK:
    all E experts; CGC and each PLE level: the task's own experts, then the
    shared ones); `/shared` entries are the shared gates of PLE's lower
    levels. Before the first training batch every row is uniform.

    Args:
        model: a model or layer containing `MMoE`, `CGC`, `PLE` or
            `DSelectK` layers (at any depth).

    Example:

    ```python
    model.fit(x, y, epochs=3)
    for name, weights in keras_mtl.layers.gate_utilization(model).items():
        print(name, weights.round(2))
    ```
    """
    out = {}
    for layer in _gated_layers(model):
        out[layer.path] = np.asarray(
            keras.ops.convert_to_numpy(getattr(layer, _TASK_GATES))
        )
        shared = getattr(layer, _SHARED_GATE, None)
        if isinstance(shared, keras.Variable):
            out[f"{layer.path}/shared"] = np.asarray(keras.ops.convert_to_numpy(shared))
    return out


def normalized_entropy(weights: np.ndarray) -> np.ndarray:
    """$H(p) / \\log E$ of each row of `weights` (renormalised to sum to
    one): 1 for a uniform use of the E experts, 0 for a collapsed gate."""
    p = np.asarray(weights, dtype="float64")
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-12)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1) / math.log(p.shape[-1])


class GateUtilizationLogger(keras.callbacks.Callback):
    """Writes each gate's utilisation entropy into the epoch logs.

    At the end of every epoch, for each gated layer `L` (see
    `gate_utilization`) and task k, adds
    `L_gate_entropy_<task>` = the normalised entropy
    $H(\\bar g_k)/\\log E$ of the last training batch's mean gate weights
    $\\bar g_k$ (1: experts used evenly; near 0: a collapsed gate), and
    `L_gate_entropy_shared` for PLE's shared gates. `History`, `CSVLogger`
    and `TensorBoard` (when listed after this callback) record them.

    Args:
        tasks: names for the task rows (else their indices 0..K-1).

    Example:

    ```python
    model.fit(x, y, epochs=5,
              callbacks=[keras_mtl.layers.GateUtilizationLogger(["click", "buy"])])
    ```
    """

    def __init__(self, tasks: Sequence[str] | None = None) -> None:
        super().__init__()
        self.tasks = None if tasks is None else [str(t) for t in tasks]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        for name, weights in gate_utilization(self.model).items():
            key = name.replace("/", "_")
            if weights.ndim == 1:
                logs[f"{key}_gate_entropy"] = float(normalized_entropy(weights))
                continue
            if self.tasks is not None and len(self.tasks) != weights.shape[0]:
                raise ValueError(
                    f"GateUtilizationLogger: `tasks` names {len(self.tasks)} tasks but "
                    f"{name} has {weights.shape[0]} gates."
                )
            names = self.tasks or [str(k) for k in range(weights.shape[0])]
            for task, value in zip(names, normalized_entropy(weights)):
                logs[f"{key}_gate_entropy_{task}"] = float(value)

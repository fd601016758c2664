"""Per-task values recorded the first time a step observes the task.

FAMO's previous losses, GradNorm's initial losses and ExcessMTL's initial
risks are each set once per task, at the first step that has the task's
labels. Until then the variable holds a marker that no recorded value
takes, so a task that is absent from the first steps is recorded later
instead of keeping a stand-in value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

# The marker of a loss not observed yet: no finite loss a step records is
# this low in practice (non-finite steps change no state).
LOWEST_FLOAT32 = float(np.finfo(np.float32).min)


def mark_unobserved_if_never_updated(
    counter: Any, variable: Any, marker: float
) -> None:
    """Sets every entry of `variable` to `marker` when `counter` is 0.

    For files of keras_mtl 0.1.0, which hold a neutral value (zeros or
    ones) before the first step: once a step that lacks a task moves the
    counter, that value would read as recorded. Called after the layer's
    own variables are loaded.
    """
    if int(ops.convert_to_numpy(counter)) == 0:
        variable.assign(ops.full(tuple(variable.shape), marker, variable.dtype))

"""String aliases of the aggregators that need the task losses as well
(merged into the registry of `keras_mtl.aggregation`)."""

from __future__ import annotations

from keras_mtl.aggregation.base import Aggregator
from keras_mtl.aggregation.grad_norm import GradNorm

ALIASES_C: dict[str, type[Aggregator]] = {
    "gradnorm": GradNorm,
    "grad_norm": GradNorm,
}

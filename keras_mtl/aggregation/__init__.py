"""Gradient-level multi-task methods: aggregators (Jacobian [K, D] -> direction [D]).

```python
agg = keras_mtl.aggregation.get("nash_mtl")
direction = agg(jacobian)  # [K, D] numpy or tensor, eager or traced -> [D]
```

Inside a model: `keras_mtl.MultiTaskModel(net, aggregator="pcgrad")` (per-task
gradients of the shared parameters, or of a shared representation with
`representation=`, in `train_step`).
"""

from __future__ import annotations

from typing import Any

from keras_mtl._registry import resolve
from keras_mtl.aggregation.aligned_mtl import AlignedMTL
from keras_mtl.aggregation.base import Aggregator, GramianWeightedAggregator, gramian
from keras_mtl.aggregation.cagrad import CAGrad
from keras_mtl.aggregation.config import ConFIG
from keras_mtl.aggregation.cr_mogm import CRMOGM
from keras_mtl.aggregation.db_mtl import DBMTL
from keras_mtl.aggregation.dualproj import DualProj
from keras_mtl.aggregation.excess_mtl import ExcessMTL
from keras_mtl.aggregation.fairgrad import FairGrad
from keras_mtl.aggregation.grad_norm import GradNorm
from keras_mtl.aggregation.graddrop import GradDrop
from keras_mtl.aggregation.gradvac import GradVac
from keras_mtl.aggregation.imtl_g import IMTLG
from keras_mtl.aggregation.krum import Krum
from keras_mtl.aggregation.mean import Mean
from keras_mtl.aggregation.mgda import MGDA
from keras_mtl.aggregation.moco import MoCo
from keras_mtl.aggregation.modo import MoDo
from keras_mtl.aggregation.nash_mtl import NashMTL
from keras_mtl.aggregation.pcgrad import PCGrad
from keras_mtl.aggregation.sdmgrad import SDMGrad
from keras_mtl.aggregation.sum import Sum
from keras_mtl.aggregation.trimmed_mean import TrimmedMean
from keras_mtl.aggregation.upgrad import UPGrad

# String alias -> class: the one registry of the aggregators (the names
# LibMTL and TorchJD use; GradNorm answers to both spellings).
ALIASES: dict[str, type[Aggregator]] = {
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
    "config": ConFIG,
    "cr_mogm": CRMOGM,
    "db_mtl": DBMTL,
    "dualproj": DualProj,
    "excess_mtl": ExcessMTL,
    "fairgrad": FairGrad,
    "grad_norm": GradNorm,
    "graddrop": GradDrop,
    "gradnorm": GradNorm,
    "gradvac": GradVac,
    "imtl_g": IMTLG,
    "krum": Krum,
    "mean": Mean,
    "mgda": MGDA,
    "moco": MoCo,
    "modo": MoDo,
    "nash_mtl": NashMTL,
    "pcgrad": PCGrad,
    "sdmgrad": SDMGrad,
    "sum": Sum,
    "trimmed_mean": TrimmedMean,
    "upgrad": UPGrad,
}

# Aliases of the aggregators that can balance the gradients of a
# representation: those whose state (if any) does not have the Jacobian's
# width, which there is batch size x representation size.
REPRESENTATION_AGGREGATORS: tuple[str, ...] = tuple(
    sorted(name for name, cls in ALIASES.items() if not cls.state_has_jacobian_width)
)


def names() -> list[str]:
    """The string aliases `get` accepts."""
    return sorted(ALIASES)


def get(identifier: Any, **kwargs: Any) -> Aggregator:
    """An aggregator from an alias, a class, a config dict or an instance."""
    return resolve(identifier, kwargs, ALIASES, Aggregator, "aggregator")


__all__ = [
    "ALIASES",
    "REPRESENTATION_AGGREGATORS",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "DualProj",
    "IMTLG",
    "MGDA",
    "Mean",
    "Sum",
    "UPGrad",
    "ConFIG",
    "CRMOGM",
    "DBMTL",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GramianWeightedAggregator",
    "Krum",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "SDMGrad",
    "TrimmedMean",
    "get",
    "gramian",
    "names",
]

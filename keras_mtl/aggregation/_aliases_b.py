"""String aliases of the aggregators of this batch, and of SDMGrad, MoDo,
CR-MOGM, Krum and TrimmedMean (merged by the registry)."""

from __future__ import annotations

from keras_mtl.aggregation.base import Aggregator
from keras_mtl.aggregation.config import ConFIG
from keras_mtl.aggregation.cr_mogm import CRMOGM
from keras_mtl.aggregation.db_mtl import DBMTL
from keras_mtl.aggregation.excess_mtl import ExcessMTL
from keras_mtl.aggregation.fairgrad import FairGrad
from keras_mtl.aggregation.graddrop import GradDrop
from keras_mtl.aggregation.gradvac import GradVac
from keras_mtl.aggregation.krum import Krum
from keras_mtl.aggregation.moco import MoCo
from keras_mtl.aggregation.modo import MoDo
from keras_mtl.aggregation.nash_mtl import NashMTL
from keras_mtl.aggregation.pcgrad import PCGrad
from keras_mtl.aggregation.sdmgrad import SDMGrad
from keras_mtl.aggregation.trimmed_mean import TrimmedMean

ALIASES_B: dict[str, type[Aggregator]] = {
    "pcgrad": PCGrad,
    "graddrop": GradDrop,
    "gradvac": GradVac,
    "config": ConFIG,
    "nash_mtl": NashMTL,
    "fairgrad": FairGrad,
    "moco": MoCo,
    "db_mtl": DBMTL,
    "excess_mtl": ExcessMTL,
    "sdmgrad": SDMGrad,
    "modo": MoDo,
    "cr_mogm": CRMOGM,
    "krum": Krum,
    "trimmed_mean": TrimmedMean,
}

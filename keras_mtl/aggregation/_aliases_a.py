"""String aliases of Mean, Sum, MGDA, UPGrad, DualProj, IMTLG, AlignedMTL and
CAGrad (merged into the registry of `keras_mtl.aggregation`)."""

from __future__ import annotations

from keras_mtl.aggregation.aligned_mtl import AlignedMTL
from keras_mtl.aggregation.base import Aggregator
from keras_mtl.aggregation.cagrad import CAGrad
from keras_mtl.aggregation.dualproj import DualProj
from keras_mtl.aggregation.imtl_g import IMTLG
from keras_mtl.aggregation.mean import Mean
from keras_mtl.aggregation.mgda import MGDA
from keras_mtl.aggregation.sum import Sum
from keras_mtl.aggregation.upgrad import UPGrad

ALIASES_A: dict[str, type[Aggregator]] = {
    "mean": Mean,
    "sum": Sum,
    "mgda": MGDA,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "imtl_g": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
}

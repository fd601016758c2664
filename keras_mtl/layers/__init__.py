"""Layers: loss weighting for plain Keras models, and multi-task architectures."""

from keras_mtl.layers.cgc import CGC
from keras_mtl.layers.cross_stitch import CrossStitch
from keras_mtl.layers.dselect_k import DSelectK
from keras_mtl.layers.gate_statistics import GateUtilizationLogger, gate_utilization
from keras_mtl.layers.loss_transform import LossTransform
from keras_mtl.layers.mmoe import MMoE
from keras_mtl.layers.ple import PLE
from keras_mtl.layers.task_attention import TaskAttention
from keras_mtl.layers.uncertainty_weighted_loss import UncertaintyWeightedLoss
from keras_mtl.layers.weighted_task_loss import WeightedTaskLoss

__all__ = [
    "CGC",
    "CrossStitch",
    "DSelectK",
    "GateUtilizationLogger",
    "LossTransform",
    "MMoE",
    "PLE",
    "TaskAttention",
    "UncertaintyWeightedLoss",
    "WeightedTaskLoss",
    "gate_utilization",
]

"""Layers for plain Keras models that want a weighting without MultiTaskModel."""

from keras_mtl.layers.loss_transform import LossTransform
from keras_mtl.layers.uncertainty_weighted_loss import UncertaintyWeightedLoss
from keras_mtl.layers.weighted_task_loss import WeightedTaskLoss

__all__ = ["LossTransform", "UncertaintyWeightedLoss", "WeightedTaskLoss"]

"""Callbacks that drive weighting state through the model's variables."""

from keras_mtl.callbacks.epoch_driver import EpochDriver
from keras_mtl.callbacks.nonfinite_guard import NonFiniteGuard
from keras_mtl.callbacks.task_weight_scheduler import TaskWeightScheduler

__all__ = ["EpochDriver", "NonFiniteGuard", "TaskWeightScheduler"]

"""keras_mtl: multi-task loss balancing for Keras 3."""

from keras_mtl import aggregation, callbacks, layers, weighting
from keras_mtl.malloc_limits import raise_malloc_limits
from keras_mtl.model import MultiTaskModel

__version__ = "0.1.0"

__all__ = [
    "MultiTaskModel",
    "aggregation",
    "callbacks",
    "layers",
    "raise_malloc_limits",
    "weighting",
    "__version__",
]

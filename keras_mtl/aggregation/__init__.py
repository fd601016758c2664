"""Gradient-level multi-task methods: aggregators (Jacobian [K, D] -> direction [D]).

Work in progress: the aggregators are usable standalone; their use inside
`MultiTaskModel` (per-task gradients in `train_step`) comes next.
"""

from keras_mtl.aggregation.base import Aggregator, GramianWeightedAggregator, gramian

__all__ = ["Aggregator", "GramianWeightedAggregator", "gramian"]

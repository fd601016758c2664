"""The aggregation registry: aliases, classes, configs, errors."""

import numpy as np
import pytest

import keras_mtl

pytestmark = pytest.mark.backend_neutral


def test_every_alias_gives_an_aggregator_that_returns_a_direction():
    # Three tasks: Krum and TrimmedMean (defaults) need at least three.
    jacobian = np.array(
        [[1.0, 0.0, 2.0], [-0.5, 1.0, 0.0], [0.3, 0.2, -1.0]], dtype="float32"
    )
    for name in keras_mtl.aggregation.names():
        aggregator = keras_mtl.aggregation.get(name)
        assert isinstance(aggregator, keras_mtl.aggregation.Aggregator)
        # Aggregators that need the task losses get them; the others ignore them.
        losses = np.array([0.5, 2.0, 1.0], dtype="float32")
        direction = np.asarray(aggregator(jacobian, losses=losses))
        assert direction.shape == (3,) and np.all(np.isfinite(direction)), name
        clone = keras_mtl.aggregation.get(
            {"class_name": type(aggregator).__name__, "module": None,
             "registered_name": f"keras_mtl>{type(aggregator).__name__}",
             "config": aggregator.get_config()}
        )  # fmt: skip
        assert type(clone) is type(aggregator)


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="Valid names: .*pcgrad"):
        keras_mtl.aggregation.get("no_such_method")
    instance = keras_mtl.aggregation.get("pcgrad")
    assert keras_mtl.aggregation.get(instance) is instance
    with pytest.raises(ValueError, match="constructor"):
        keras_mtl.aggregation.get(instance, seed=1)
    with pytest.raises(TypeError):
        keras_mtl.aggregation.get(3.0)

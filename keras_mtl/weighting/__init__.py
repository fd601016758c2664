"""Loss-level multi-task weighting methods and their string registry.

```python
w = keras_mtl.weighting.get("adaptive", temperature=2.0)
objective, weights = w(losses)  # losses: 1-D float tensor of K task losses
```
"""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl._registry import resolve
from keras_mtl.weighting.adaptive import AdaptiveWeighting
from keras_mtl.weighting.base import Weighting
from keras_mtl.weighting.bmtl import BMTL
from keras_mtl.weighting.dynamic_weight_average import DynamicWeightAverage
from keras_mtl.weighting.equal import EqualWeighting
from keras_mtl.weighting.famo import FAMO
from keras_mtl.weighting.fixed import FixedWeighting
from keras_mtl.weighting.geometric_loss_strategy import GeometricLossStrategy
from keras_mtl.weighting.imtl_l import IMTLL
from keras_mtl.weighting.random_loss_weighting import RandomLossWeighting
from keras_mtl.weighting.stch import STCH
from keras_mtl.weighting.uncertainty import UncertaintyWeighting

# String alias -> class. Aliases are the short names used across the
# literature (LibMTL uses the same ones).
ALIASES: dict[str, type[Weighting]] = {
    "equal": EqualWeighting,
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "adaptive": AdaptiveWeighting,
    "bmtl": BMTL,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossStrategy,
    "famo": FAMO,
    "stch": STCH,
    "imtl_l": IMTLL,
}


def names() -> list[str]:
    """The string aliases `get` accepts."""
    return sorted(ALIASES)


def get(identifier: Any, **kwargs: Any) -> Weighting:
    """Returns a weighting from an alias, a class, a config dict or an instance.

    Args:
        identifier: a string alias (`"equal"`, `"fixed"`, `"uncertainty"`,
            `"dwa"`, `"adaptive"`, `"bmtl"`, `"rlw"`, `"gls"`, `"famo"`,
            `"stch"`, `"imtl_l"`), a
            `Weighting` subclass, a serialized config (as from `serialize`),
            or a `Weighting` instance (returned as is).
        **kwargs: constructor arguments, with an alias or a class.

    Example:

    ```python
    w = keras_mtl.weighting.get("adaptive", temperature=2.0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    ```
    """
    return resolve(identifier, kwargs, ALIASES, Weighting, "weighting")


def serialize(weighting: Weighting) -> dict[str, Any]:
    """The Keras config of a weighting (for `deserialize` or `get`)."""
    return keras.saving.serialize_keras_object(weighting)


def deserialize(config: dict[str, Any]) -> Weighting:
    """Rebuilds a weighting from `serialize`'s output."""
    return resolve(config, {}, ALIASES, Weighting, "weighting")


__all__ = [
    "ALIASES",
    "AdaptiveWeighting",
    "BMTL",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FAMO",
    "FixedWeighting",
    "GeometricLossStrategy",
    "IMTLL",
    "RandomLossWeighting",
    "STCH",
    "UncertaintyWeighting",
    "Weighting",
    "deserialize",
    "get",
    "names",
    "serialize",
]

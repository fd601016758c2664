"""Loss-level multi-task weighting methods and their string registry.

```python
w = keras_mtl.weighting.get("adaptive", temperature=2.0)
objective, weights = w(losses)  # losses: 1-D float tensor of K task losses
```
"""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.weighting.adaptive import AdaptiveWeighting
from keras_mtl.weighting.base import Weighting
from keras_mtl.weighting.bmtl import BMTL
from keras_mtl.weighting.dynamic_weight_average import DynamicWeightAverage
from keras_mtl.weighting.equal import EqualWeighting
from keras_mtl.weighting.fixed import FixedWeighting
from keras_mtl.weighting.geometric_loss_strategy import GeometricLossStrategy
from keras_mtl.weighting.random_loss_weighting import RandomLossWeighting
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
}


def names() -> list[str]:
    """The string aliases `get` accepts."""
    return sorted(ALIASES)


def get(identifier: Any, **kwargs: Any) -> Weighting:
    """Returns a weighting from an alias, a class, a config dict or an instance.

    Args:
        identifier: a string alias (`"equal"`, `"fixed"`, `"uncertainty"`,
            `"dwa"`, `"adaptive"`, `"bmtl"`, `"rlw"`, `"gls"`), a `Weighting`
            subclass, a serialized config (as from `serialize`), or a
            `Weighting` instance (returned as is).
        **kwargs: constructor arguments, with an alias or a class.

    Example:

    ```python
    w = keras_mtl.weighting.get("adaptive", temperature=2.0)
    objective, weights = w(keras.ops.convert_to_tensor([0.5, 2.0]))
    ```
    """
    if isinstance(identifier, Weighting):
        if kwargs:
            raise ValueError(
                f"Arguments {sorted(kwargs)} were given with a Weighting instance "
                f"({type(identifier).__name__}); pass them to its constructor."
            )
        return identifier
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key not in ALIASES:
            raise ValueError(
                f"Unknown weighting {identifier!r}. Valid names: {', '.join(names())}."
            )
        return ALIASES[key](**kwargs)
    if isinstance(identifier, type) and issubclass(identifier, Weighting):
        return identifier(**kwargs)
    if isinstance(identifier, dict):
        if kwargs:
            raise ValueError("Arguments cannot be combined with a config dict.")
        return deserialize(identifier)
    raise TypeError(
        "A weighting must be a string alias, a Weighting subclass or instance, or "
        f"a config dict; got {identifier!r}. Valid names: {', '.join(names())}."
    )


def serialize(weighting: Weighting) -> dict[str, Any]:
    """The Keras config of a weighting (for `deserialize` or `get`)."""
    return keras.saving.serialize_keras_object(weighting)


def deserialize(config: dict[str, Any]) -> Weighting:
    """Rebuilds a weighting from `serialize`'s output."""
    obj = keras.saving.deserialize_keras_object(config)
    if not isinstance(obj, Weighting):
        raise TypeError(f"Config does not describe a Weighting: {config!r}")
    return obj


__all__ = [
    "ALIASES",
    "AdaptiveWeighting",
    "BMTL",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FixedWeighting",
    "GeometricLossStrategy",
    "RandomLossWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "deserialize",
    "get",
    "names",
    "serialize",
]

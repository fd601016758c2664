"""The `get()` logic shared by the weighting and aggregation registries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras


def resolve(
    identifier: Any,
    kwargs: dict[str, Any],
    aliases: Mapping[str, type],
    base: type,
    kind: str,
) -> Any:
    """An instance of `base` from an alias, a subclass, a config dict or an
    instance, as `keras.losses.get` accepts; errors list the valid aliases.

    `kind` names the family in messages ("weighting", "aggregator").
    """
    valid = ", ".join(sorted(aliases))
    if isinstance(identifier, base):
        if kwargs:
            raise ValueError(
                f"Arguments {sorted(kwargs)} were given with a {kind} instance "
                f"({type(identifier).__name__}); pass them to its constructor."
            )
        return identifier
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key not in aliases:
            raise ValueError(f"Unknown {kind} {identifier!r}. Valid names: {valid}.")
        return aliases[key](**kwargs)
    if isinstance(identifier, type) and issubclass(identifier, base):
        return identifier(**kwargs)
    if isinstance(identifier, dict):
        if kwargs:
            raise ValueError("Arguments cannot be combined with a config dict.")
        obj = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(obj, base):
            raise TypeError(f"Config does not describe a {kind}: {identifier!r}")
        return obj
    raise TypeError(
        f"A {kind} must be a string alias, a {base.__name__} subclass or instance, "
        f"or a config dict; got {identifier!r}. Valid names: {valid}."
    )

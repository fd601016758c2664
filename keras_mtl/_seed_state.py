"""Saving a layer's random-generator state with its weights."""

from __future__ import annotations

from typing import Any

from keras_mtl import _compat


class SavesSeedGeneratorState:
    """Mixin for a Keras layer with a `seed_generator` attribute.

    Keras saves a layer's own variables but not the state of its
    `keras.random.SeedGenerator`s (`Dropout` restarts its stream after
    loading). For our methods the random stream is part of a run, so it is
    saved with the weights (`model.save`, `save_weights`, `BackupAndRestore`)
    and a resumed run continues it instead of replaying it. A file without
    the generator state (saved by a plain layer) loads the other variables
    and keeps the current stream.
    """

    def _saved_variables(self) -> list[Any]:
        return [*_compat.own_variables(self), self.seed_generator.state]

    def save_own_variables(self, store: Any) -> None:
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store: Any) -> None:
        variables = self._saved_variables()
        num_saved = len(store.keys())
        if num_saved not in (len(variables), len(variables) - 1):
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables, but "
                f"received {num_saved} variables during loading. Expected: "
                f"{[v.name for v in variables]}"
            )
        for i, variable in enumerate(variables[:num_saved]):
            variable.assign(store[f"{i}"])

"""Custom nets inside the frozen `.keras` files of tests/saved_models/.

A `.keras` file names a registered class by `package>name` and stores its
`get_config`, so every later version must still be able to build these
classes from those configs: never rename or change one (nor its package);
a release that needs another net adds a new class here.

Imported from its file path (the same module whatever the importer's
`sys.path`) by scripts/freeze_saved_models.py, which writes the files, and by
tests/model/test_saved_model_files.py, which loads them, before
`keras.models.load_model`.
"""

from __future__ import annotations

from typing import Any

import keras

PACKAGE = "keras_mtl_frozen"


@keras.saving.register_keras_serializable(package=PACKAGE)
class SubclassedTwoTaskNet(keras.Model):
    """A subclassed net (no functional graph: its variables and outputs
    exist only after a call): a shared ReLU layer and two heads, "value"
    (one linear unit) and "label" (`classes` softmax units)."""

    def __init__(self, hidden: int = 8, classes: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = hidden
        self.classes = classes
        self.shared = keras.layers.Dense(
            hidden,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=11),
            name="shared",
        )
        self.value = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.GlorotUniform(seed=12),
            name="value",
        )
        self.label = keras.layers.Dense(
            classes,
            activation="softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed=13),
            name="label",
        )

    def call(self, x: Any) -> dict[str, Any]:
        h = self.shared(x)
        return {"value": self.value(h), "label": self.label(h)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden": self.hidden, "classes": self.classes}

"""Multi-task datasets for the keras_mtl benchmark.

```python
from keras_mtl.datasets import load, names

data = load("multi_digits", batch_size=64, seed=0)  # MultiTaskData
data.train, data.validation, data.test  # (x, {task: y}), batched + prefetched
data.tasks  # {task: TaskSpec}, in task order
```

Datasets (one module each, `load_<name>(...)`):

- `multi_digits`: MultiMNIST built from scikit-learn's 8x8 digits (offline);
- `multi_mnist`: MultiMNIST from tfds MNIST (Sener & Koltun, 2018);
- `celeb_a`: CelebA's 40 binary attributes (tfds);
- `goemotions`: three multi-label emotion taxonomies on Reddit comments
  (local files, else tfds);
- `mmoe_synthetic`: two regression tasks of controlled correlation, MMoE's
  synthetic data (Ma et al., KDD 2018; generated offline);
- `toy`: the 2-D two-objective problem of CAGrad / Nash-MTL / FAMO; returns a
  `ToyProblem`, not `tf.data`.

Importing this package imports neither scikit-learn nor tensorflow_datasets;
each loader imports what it needs.
"""

from __future__ import annotations

import inspect
from typing import Any

from keras_mtl.datasets._base import MultiTaskData, TaskSpec
from keras_mtl.datasets.celeb_a import CELEB_A_ATTRIBUTES, load_celeb_a
from keras_mtl.datasets.goemotions import (
    load_goemotions,
    load_goemotions_texts,
    read_goemotions_split,
)
from keras_mtl.datasets.multi_digits import load_multi_digits
from keras_mtl.datasets.multi_mnist import load_multi_mnist
from keras_mtl.datasets.synthetic_correlation import load_mmoe_synthetic
from keras_mtl.datasets.toy import ToyProblem, load_toy, toy_losses

DEFAULT = "multi_digits"

_LOADERS = {
    "multi_digits": load_multi_digits,
    "multi_mnist": load_multi_mnist,
    "celeb_a": load_celeb_a,
    "goemotions": load_goemotions,
    "mmoe_synthetic": load_mmoe_synthetic,
    "toy": load_toy,
}


def names() -> list[str]:
    """The dataset names `load` accepts (the offline default first)."""
    return list(_LOADERS)


def load(name: str, **kwargs: Any) -> MultiTaskData | ToyProblem:
    """Load dataset `name` with its loader's keyword arguments.

    `name` is case-insensitive; "-" counts as "_". Unknown names raise
    `ValueError` listing the valid ones; arguments the loader does not take
    raise `TypeError` listing the ones it does. `load("toy")` returns a
    `ToyProblem`; every other dataset a `MultiTaskData`.
    """
    if not isinstance(name, str):
        raise ValueError(f"Dataset name must be a string; got {name!r}.")
    key = name.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(names())}."
        )
    loader = _LOADERS[key]
    accepted = list(inspect.signature(loader).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"load({key!r}) got unknown argument(s) {unknown}. "
            f"{loader.__name__} accepts: {', '.join(accepted)}."
        )
    return loader(**kwargs)


__all__ = [
    "CELEB_A_ATTRIBUTES",
    "DEFAULT",
    "MultiTaskData",
    "TaskSpec",
    "ToyProblem",
    "load",
    "load_celeb_a",
    "load_goemotions",
    "load_goemotions_texts",
    "load_mmoe_synthetic",
    "load_multi_digits",
    "load_multi_mnist",
    "load_toy",
    "names",
    "read_goemotions_split",
    "toy_losses",
]

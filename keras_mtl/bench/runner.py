"""One benchmark run: a method, a seed, a dataset -> histories and test scores."""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from keras_mtl import aggregation as aggregation_lib
from keras_mtl import weighting as weighting_lib
from keras_mtl.bench import models
from keras_mtl.bench.metrics import task_scores
from keras_mtl.datasets import MultiTaskData
from keras_mtl.model import MultiTaskModel


@dataclass(frozen=True)
class Method:
    """A benchmark method: a loss-level weighting, optionally followed by a
    gradient-level aggregator, each an alias with constructor arguments."""

    spec: str
    weighting: str
    weighting_kwargs: dict[str, Any]
    aggregator: str | None = None
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> dict[str, Any]:
        """Fresh `weighting=` and `aggregator=` arguments for `MultiTaskModel`."""
        return {
            "weighting": weighting_lib.get(self.weighting, **self.weighting_kwargs),
            "aggregator": None
            if self.aggregator is None
            else aggregation_lib.get(self.aggregator, **self.aggregator_kwargs),
        }


def _name_and_arguments(part: str, spec: str) -> tuple[str, dict[str, Any]]:
    name, *pairs = [piece.strip() for piece in part.split(":")]
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(
                f"Method {spec!r}: expected key=value after ':', got {pair!r}."
            )
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return name.lower(), kwargs


def parse_method(spec: str) -> Method:
    """Parses a method specification of the benchmark and the examples.

    `"adaptive:mode=epoch:temperature=2"` is a weighting alias with
    constructor arguments (each `key=value` after a colon; numbers, booleans
    and strings are understood); `"pcgrad"` an aggregator alias (with equal
    weighting); `"adaptive+upgrad"` a weighting followed by an aggregator.
    The arguments are validated now, not mid-run.
    """
    weightings, aggregators = weighting_lib.names(), aggregation_lib.names()
    parts = [part.strip() for part in spec.split("+")]
    if len(parts) > 2 or not all(parts):
        raise ValueError(
            f"Method {spec!r}: expected 'weighting', 'aggregator' or "
            "'weighting+aggregator'."
        )
    parsed = [_name_and_arguments(part, spec) for part in parts]
    valid = (
        f"Valid methods: weightings {', '.join(weightings)}; "
        f"aggregators {', '.join(aggregators)}."
    )
    for name, _ in parsed:
        if name not in weightings and name not in aggregators:
            raise ValueError(f"Unknown method {name!r} in {spec!r}. {valid}")
    if len(parsed) == 1 and parsed[0][0] in aggregators:
        parsed.insert(0, ("equal", {}))
    (weighting, weighting_kwargs), *rest = parsed
    if weighting not in weightings:
        raise ValueError(f"Method {spec!r}: {weighting!r} is not a weighting. {valid}")
    aggregator, aggregator_kwargs = rest[0] if rest else (None, {})
    if aggregator is not None and aggregator not in aggregators:
        raise ValueError(
            f"Method {spec!r}: {aggregator!r} is not an aggregator. {valid}"
        )
    method = Method(spec, weighting, weighting_kwargs, aggregator, aggregator_kwargs)
    method.build()
    return method


def check_task_count(spec: str, num_tasks: int) -> None:
    """Raises `ValueError` if the method `spec` cannot run with `num_tasks`
    tasks (e.g. Krum's and TrimmedMean's minimum number of rows), before any
    training: its aggregator is called once on a random `[num_tasks, 3]`
    Jacobian, a fresh instance that is then discarded."""
    method = parse_method(spec)
    if method.aggregator is None:
        return
    aggregator = method.build()["aggregator"]
    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(num_tasks, 3)).astype("float32")
    kwargs = {}
    if aggregator.needs_losses:
        kwargs["losses"] = np.ones(num_tasks, "float32")
    try:
        aggregator(jacobian, **kwargs)
    except ValueError as error:
        raise ValueError(f"Method {spec!r} on {num_tasks} tasks: {error}") from None


@dataclass
class Prepared:
    """What every run on one dataset shares: the loader arguments, the task
    specs, the network builder and (for text) the tokenizer.

    Each run loads its own pipelines with its seed (`load_for(seed)`), so
    every method sees the same data order for the same seed.
    """

    dataset: str
    load_kwargs: dict[str, Any]
    tasks: dict[str, Any]
    build: Any  # () -> keras.Model
    transform: Any = None  # tf.data map function (x, y) -> (x, y), or None
    extra: dict[str, Any] = field(default_factory=dict)
    architecture: str = "shared_bottom"

    def load_for(self, seed: int) -> tuple[Any, Any, Any]:
        from keras_mtl.datasets import load

        data = load(self.dataset, seed=seed, **self.load_kwargs)
        if self.transform is None:
            return data.train, data.validation, data.test
        # The training pipeline reshuffles every epoch: caching it after the
        # shuffle would replay the first epoch's order. Only the fixed
        # validation and test sets are cached.
        autotune = -1  # tf.data.AUTOTUNE
        train = data.train.map(self.transform, num_parallel_calls=autotune)
        validation, test = (
            ds.map(self.transform, num_parallel_calls=autotune).cache()
            for ds in (data.validation, data.test)
        )
        return train, validation, test


def prepare(
    dataset: str,
    load_kwargs: dict[str, Any] | None = None,
    vocabulary_texts: int = 20000,
    architecture: str = "shared_bottom",
) -> Prepared:
    """Loads `dataset` once to learn its tasks and build what runs share (the
    WordPiece vocabulary is computed from the training text of seed 0).

    `architecture` is the network's multi-task architecture: datasets of
    vector inputs (`info["input"] == "vector"`) take any of
    `models.ARCHITECTURES`, image datasets `models.IMAGE_ARCHITECTURES`
    (a shared bottom or task attention on the CNN), text datasets only
    `"shared_bottom"` (their Transformer); another raises `ValueError`
    naming the architecture, the dataset and the valid ones.
    """
    from keras_mtl.datasets import load

    if architecture not in models.ALL_ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; valid: "
            f"{', '.join(models.ALL_ARCHITECTURES)}."
        )
    load_kwargs = dict(load_kwargs or {})
    data: MultiTaskData = load(dataset, seed=0, **load_kwargs)
    tasks = dict(data.tasks)
    input_kind = data.info.get("input", "image")
    models.check_architecture(architecture, dataset, input_kind)
    if input_kind == "vector":
        (input_dim,) = tuple(data.info["input_shape"])
        return Prepared(
            dataset,
            load_kwargs,
            tasks,
            lambda: models.vector_mlp(input_dim, tasks, architecture),
            architecture=architecture,
        )
    if data.info.get("input") == "text":
        sequence_length = int(data.info.get("sequence_length", 64))
        texts = [
            t.decode("utf-8")
            for t in data.train.unbatch()
            .map(lambda x, y: x)
            .take(vocabulary_texts)
            .as_numpy_iterator()
        ]
        tokenizer = models.word_piece_tokenizer(texts, sequence_length=sequence_length)
        vocabulary_size = int(tokenizer.vocabulary_size())
        return Prepared(
            dataset,
            load_kwargs,
            tasks,
            lambda: models.text_transformer(vocabulary_size, sequence_length, tasks),
            transform=lambda x, y: (tokenizer(x), y),
            extra={"vocabulary_size": vocabulary_size},
        )
    shape = tuple(data.info["input_shape"])
    return Prepared(
        dataset,
        load_kwargs,
        tasks,
        lambda: models.image_cnn(shape, tasks, architecture=architecture),
        architecture=architecture,
    )


@dataclass
class RunResult:
    method: str
    seed: int
    history: dict[str, list[float]]
    test: dict[str, dict[str, float]]
    seconds: float
    architecture: str = "shared_bottom"
    correlation: float | None = None  # the dataset's task correlation, if any


def run(
    prepared: Prepared,
    method: str,
    seed: int,
    epochs: int,
    learning_rate: float = 1e-3,
    jit_compile: bool | str = "auto",
    verbose: int | str = "auto",
) -> RunResult:
    """Trains one network with one method from the seed's initialisation."""
    parsed = parse_method(method)
    keras.utils.set_random_seed(seed)
    tasks = prepared.tasks
    train, validation, test = prepared.load_for(seed)
    model = MultiTaskModel(prepared.build(), **parsed.build())
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={t: models.task_loss(spec) for t, spec in tasks.items()},
        jit_compile=jit_compile,
    )
    start = time.perf_counter()
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        verbose=verbose,
        shuffle=False,  # the pipelines shuffle themselves
    )
    seconds = time.perf_counter() - start
    # The test pipeline is not shuffled: predictions and targets align.
    probabilities = model.predict(test.map(lambda x, y: x), verbose=0)
    truths: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for _, y in test.as_numpy_iterator():
        for t in tasks:
            truths[t].append(y[t])
    scores = {
        t: task_scores(spec, np.concatenate(truths[t]), probabilities[t])
        for t, spec in tasks.items()
    }
    return RunResult(
        method=method,
        seed=seed,
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        test=scores,
        seconds=seconds,
        architecture=prepared.architecture,
        correlation=prepared.load_kwargs.get("correlation"),
    )

"""One benchmark run: a method, a seed, a dataset -> histories and test scores."""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from keras_mtl import weighting as weighting_lib
from keras_mtl.bench import models
from keras_mtl.bench.metrics import task_scores
from keras_mtl.datasets import MultiTaskData
from keras_mtl.model import MultiTaskModel


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """`"adaptive:mode=epoch:temperature=2"` -> `("adaptive", {...})`.

    The name is a weighting alias; each `key=value` after a colon is a
    constructor argument (numbers, booleans and strings are understood).
    """
    name, *pairs = [part.strip() for part in spec.split(":")]
    if name not in weighting_lib.names():
        raise ValueError(
            f"Unknown method {name!r}. Valid methods: {', '.join(weighting_lib.names())}."
        )
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
    weighting_lib.get(name, **kwargs)  # validate the arguments now, not mid-run
    return name, kwargs


@dataclass
class Prepared:
    """A dataset made ready for a network: text tokenized, the network builder."""

    data: MultiTaskData
    train: Any
    validation: Any
    test: Any
    build: Any  # () -> keras.Model
    extra: dict[str, Any] = field(default_factory=dict)


def prepare(data: MultiTaskData, max_vocabulary_texts: int = 20000) -> Prepared:
    """Builds what every run on `data` shares (e.g. the WordPiece vocabulary)."""
    if data.info.get("input") == "text":
        sequence_length = int(data.info.get("sequence_length", 64))
        texts = [
            t.decode("utf-8")
            for t in data.train.unbatch()
            .map(lambda x, y: x)
            .take(max_vocabulary_texts)
            .as_numpy_iterator()
        ]
        tokenizer = models.word_piece_tokenizer(texts, sequence_length=sequence_length)
        vocabulary_size = tokenizer.vocabulary_size()

        def tokenize(ds: Any) -> Any:
            return ds.map(lambda x, y: (tokenizer(x), y)).cache()

        return Prepared(
            data,
            tokenize(data.train),
            tokenize(data.validation),
            tokenize(data.test),
            lambda: models.text_transformer(
                vocabulary_size, sequence_length, data.tasks
            ),
            {"vocabulary_size": vocabulary_size},
        )
    shape = tuple(data.info["input_shape"])
    return Prepared(
        data,
        data.train,
        data.validation,
        data.test,
        lambda: models.image_cnn(shape, data.tasks),
    )


@dataclass
class RunResult:
    method: str
    seed: int
    history: dict[str, list[float]]
    test: dict[str, dict[str, float]]
    seconds: float


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
    name, kwargs = parse_method(method)
    keras.utils.set_random_seed(seed)
    tasks = prepared.data.tasks
    model = MultiTaskModel(
        prepared.build(), weighting=weighting_lib.get(name, **kwargs)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={t: models.task_loss(spec) for t, spec in tasks.items()},
        jit_compile=jit_compile,
    )
    start = time.perf_counter()
    history = model.fit(
        prepared.train,
        validation_data=prepared.validation,
        epochs=epochs,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    # The test pipeline is not shuffled: predictions and targets align.
    probabilities = model.predict(prepared.test.map(lambda x, y: x), verbose=0)
    truths: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for _, y in prepared.test.as_numpy_iterator():
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
    )

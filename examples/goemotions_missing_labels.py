"""Train on GoEmotions where one taxonomy is labelled for part of the comments.

GoEmotions (Demszky et al., 2020) labels every Reddit comment in three
taxonomies (group, ekman, original). Real multi-task data is rarely that
complete: here one taxonomy (--task, default ekman) keeps its labels on a
fraction of the training comments only (--labelled-fraction) and the rest
are NaN. `MultiTaskModel` treats a NaN label as missing: each task's loss is
the mean over its labelled examples, a batch without any gives that task no
gradient, and its `<task>_loss` logs the mean over the steps that saw it
(see docs/missing_labels.md).

For comparison, --zero-fill also trains the same model with the missing
labels filled with 0 ("no emotion"), the usual quick fix, which biases
the task towards predicting no label.

Needs the local files (--data-dir, $KERAS_MTL_GOEMOTIONS_DIR or
../shared/data/goemotions).

    python examples/goemotions_missing_labels.py --labelled-fraction 0.2
    python examples/goemotions_missing_labels.py --zero-fill --max-examples 5000
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

import keras_mtl
from keras_mtl.bench.metrics import task_scores
from keras_mtl.bench.runner import parse_method
from keras_mtl.datasets import load_goemotions
from keras_mtl.datasets.goemotions import find_goemotions_dir, read_goemotions_split


def build_net(vocabulary_size, tasks):
    """Bag of embeddings (masked mean), a shared dense layer and one sigmoid
    head per taxonomy. Input: token ids (0 = padding)."""
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    h = keras.layers.Embedding(vocabulary_size, 64, mask_zero=True)(tokens)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(64, activation="relu", name="shared")(h)
    outputs = {
        name: keras.layers.Dense(
            spec.num_classes, activation=spec.activation, name=name
        )(h)
        for name, spec in tasks.items()
    }
    return keras.Model(tokens, outputs, name="goemotions_bag")


def remove_labels(targets, task, fraction, seed):
    """A copy of `targets` whose `task` rows are NaN (missing) except on a
    random `fraction` of the examples; returns it and the labelled mask."""
    rng = np.random.default_rng(seed)
    labelled = rng.random(len(targets[task])) < fraction
    out = dict(targets)
    out[task] = np.where(labelled[:, None], targets[task], np.nan).astype("float32")
    return out, labelled


def train(args, x_train, y_train, x_val, y_val, tasks, vocabulary_size):
    keras.utils.set_random_seed(args.seed)
    net = build_net(vocabulary_size, tasks)
    model = keras_mtl.MultiTaskModel(net, **parse_method(args.method).build())
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss={t: spec.loss for t, spec in tasks.items()},
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=2,
    )
    return model, history.history


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="equal", help="e.g. equal, dwa, famo")
    parser.add_argument("--task", default="ekman", help="the partly labelled one")
    parser.add_argument("--labelled-fraction", type=float, default=0.3)
    parser.add_argument("--zero-fill", action="store_true", help="also the baseline")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int, default=None, help="per split")
    parser.add_argument("--vocabulary-size", type=int, default=8000)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="GoEmotions files")
    args = parser.parse_args(argv)
    if not 0.0 < args.labelled_fraction <= 1.0:
        parser.error(
            f"--labelled-fraction must be in (0, 1]; got {args.labelled_fraction}"
        )
    root = find_goemotions_dir(args.data_dir)
    if root is None:
        raise FileNotFoundError(
            "GoEmotions files not found: pass --data-dir or set "
            "KERAS_MTL_GOEMOTIONS_DIR (see keras_mtl.datasets.goemotions)."
        )
    # The task specs (names, sizes, losses) without building pipelines twice.
    tasks = load_goemotions(root, max_examples=1).tasks
    if args.task not in tasks:
        parser.error(f"--task must be one of {list(tasks)}; got {args.task!r}")

    # Comments as strings, targets multi-hot float32 (N, 4), (N, 7), (N, 28).
    splits = {
        split: read_goemotions_split(root, split, args.max_examples)[:2]
        for split in ("train", "validation", "test")
    }
    vectorize = keras.layers.TextVectorization(
        max_tokens=args.vocabulary_size,
        output_sequence_length=args.sequence_length,
    )
    vectorize.adapt(tf.constant(splits["train"][0]))
    x = {s: vectorize(tf.constant(texts)).numpy() for s, (texts, _) in splits.items()}
    y = {s: targets for s, (_, targets) in splits.items()}

    y_train, labelled = remove_labels(
        y["train"], args.task, args.labelled_fraction, args.seed
    )
    print(
        f"{args.task}: {int(labelled.sum())} of {len(labelled)} training comments "
        "labelled, the others NaN (missing)"
    )
    runs = {"masked": y_train}
    if args.zero_fill:
        filled = dict(y_train)
        filled[args.task] = np.nan_to_num(y_train[args.task], nan=0.0)
        runs["zero_fill"] = filled

    results = {}
    for name, targets in runs.items():
        model, history = train(
            args,
            x["train"],
            targets,
            x["validation"],
            y["validation"],
            tasks,
            vectorize.vocabulary_size(),
        )
        probs = model.predict(x["test"], batch_size=args.batch_size, verbose=0)
        scores = {
            t: task_scores(spec, y["test"][t], probs[t]) for t, spec in tasks.items()
        }
        results[name] = {"history": history, "scores": scores}
        print(f"\n{name}: test scores")
        for task, row in scores.items():
            print(f"  {task:<10}" + "".join(f"  {k} {v:.4f}" for k, v in row.items()))
    return {"labelled": int(labelled.sum()), "examples": len(labelled), **results}


if __name__ == "__main__":
    main()

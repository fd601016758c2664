"""Balance three tasks on MultiDigits, offline: left digit, right digit, parity.

MultiDigits is MultiMNIST built from the 8x8 digits scikit-learn ships, so
nothing is downloaded. One small CNN with three heads is trained with a
balancing method (a loss weighting, a gradient aggregator or both),
evaluated per task on the test split and exported.

    python examples/multi_digits.py --method adaptive --epochs 5
    python examples/multi_digits.py --method dwa:temperature=2 --max-examples 2000
    python examples/multi_digits.py --method adaptive+pcgrad --epochs 5
"""

import argparse
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

import keras_mtl
from keras_mtl.bench.metrics import task_scores
from keras_mtl.bench.runner import parse_method
from keras_mtl.datasets import load


def build_net(input_shape, tasks):
    """A shared CNN trunk and one head per task (softmax or sigmoid)."""
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu", name="shared")(h)
    outputs = {
        name: keras.layers.Dense(
            spec.num_classes, activation=spec.activation, name=name
        )(h)
        for name, spec in tasks.items()
    }
    return keras.Model(inputs, outputs, name="multi_digits_cnn")


def print_table(scores):
    """One row per task, one column per metric ("-" where it does not apply)."""
    columns = list(dict.fromkeys(k for row in scores.values() for k in row))
    print(f"\n{'task':<12}" + "".join(f"{c:>10}" for c in columns))
    for task, row in scores.items():
        cells = [f"{row[c]:10.4f}" if c in row else f"{'-':>10}" for c in columns]
        print(f"{task:<12}" + "".join(cells))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", default="adaptive", help="e.g. equal, dwa, pcgrad, adaptive+upgrad"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--max-examples", type=int, default=None, help="pairs per split"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-dir", default=None, help="default: a temporary dir")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    # Pipelines yield (x, {task: y}); data.tasks describes each task's target.
    data = load(
        "multi_digits",
        batch_size=args.batch_size,
        seed=args.seed,
        max_examples=args.max_examples,
    )
    tasks = data.tasks  # left, right (10 classes), sum_parity (binary)

    # Wrap the network; the method (a weighting, an aggregator or both,
    # e.g. "adaptive+upgrad") balances the three task losses.
    net = build_net(data.info["input_shape"], tasks)
    model = keras_mtl.MultiTaskModel(net, **parse_method(args.method).build())
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={t: spec.loss for t, spec in tasks.items()},
        metrics={t: ["accuracy"] for t in tasks},
    )
    # The training pipeline reshuffles itself every epoch: shuffle=False.
    model.fit(
        data.train,
        validation_data=data.validation,
        epochs=args.epochs,
        shuffle=False,
        verbose=2,
    )

    # Per-task test scores: Keras' metrics, and task_scores on the predictions
    # (the test pipeline is not shuffled, so predictions and targets align).
    logs = model.evaluate(data.test, return_dict=True, verbose=0)
    probs = model.predict(data.test.map(lambda x, y: x), verbose=0)
    truths = {
        t: np.concatenate([y[t] for _, y in data.test.as_numpy_iterator()])
        for t in tasks
    }
    scores = {
        t: {"loss": logs[f"{t}_loss"], **task_scores(spec, truths[t], probs[t])}
        for t, spec in tasks.items()
    }
    print_table(scores)

    # Export the inference graph and check that the SavedModel serves the same
    # outputs as predict.
    export_dir = args.export_dir or os.path.join(tempfile.mkdtemp(), "multi_digits")
    model.export(export_dir, verbose=False)
    x, _ = next(iter(data.test))  # the first test batch: predicted in probs[t][:n]
    reloaded = tf.saved_model.load(export_dir)  # keep a reference while serving
    served = reloaded.serve(x)
    n = len(x)
    diff = max(float(np.max(np.abs(served[t].numpy() - probs[t][:n]))) for t in tasks)
    print(f"exported to {export_dir}; max |serve - predict| = {diff:.2e}")
    return {"scores": scores, "export_dir": export_dir, "export_max_abs_diff": diff}


if __name__ == "__main__":
    main()

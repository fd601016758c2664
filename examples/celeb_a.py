"""Balance many binary tasks on CelebA: one task per face attribute (40 by default).

CelebA (Liu et al., 2015) comes through tensorflow-datasets: the first run
downloads and prepares it (about 1.4 GB; some mirrors need a manual
download, see the tfds "celeb_a" page) into ~/tensorflow_datasets (or
--data-dir). Images are resized to --image-size. One small CNN with a
sigmoid head per attribute is trained with a balancing method (a loss
weighting, a gradient aggregator or both), evaluated per task on the test
split and exported.

    python examples/celeb_a.py --method adaptive --epochs 3 --max-examples 20000
    python examples/celeb_a.py --attributes Smiling,Male,Eyeglasses,Young
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
    """A shared CNN trunk and one sigmoid head per attribute."""
    inputs = keras.Input(input_shape, name="image")
    h = inputs
    for filters in (32, 64, 128):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(128, activation="relu", name="shared")(h)
    outputs = {
        name: keras.layers.Dense(
            spec.num_classes, activation=spec.activation, name=name
        )(h)
        for name, spec in tasks.items()
    }
    return keras.Model(inputs, outputs, name="celeb_a_cnn")


def print_table(scores):
    """One row per task, one column per metric ("-" where it does not apply)."""
    columns = list(dict.fromkeys(k for row in scores.values() for k in row))
    print(f"\n{'task':<20}" + "".join(f"{c:>10}" for c in columns))
    for task, row in scores.items():
        cells = [f"{row[c]:10.4f}" if c in row else f"{'-':>10}" for c in columns]
        print(f"{task:<20}" + "".join(cells))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", default="adaptive", help="e.g. equal, dwa, pcgrad, adaptive+upgrad"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-examples", type=int, default=None, help="per split")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--attributes", default=None, help="comma-separated; default all 40"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets dir")
    parser.add_argument("--export-dir", default=None, help="default: a temporary dir")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    # Each chosen attribute is a binary task with a float32 (1,) target.
    data = load(
        "celeb_a",
        attributes=args.attributes.split(",") if args.attributes else None,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    tasks = data.tasks

    # Wrap the network; the method (a weighting, an aggregator or both,
    # e.g. "adaptive+upgrad") balances the attribute losses.
    net = build_net(data.info["input_shape"], tasks)
    model = keras_mtl.MultiTaskModel(net, **parse_method(args.method).build())
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={t: spec.loss for t, spec in tasks.items()},
        metrics={t: ["accuracy"] for t in tasks},
    )
    # The training pipeline shuffles itself: shuffle=False.
    model.fit(
        data.train,
        validation_data=data.validation,
        epochs=args.epochs,
        shuffle=False,
        verbose=2,
    )

    # Per-task test scores: accuracy and ROC AUC per attribute (the test
    # pipeline is not shuffled, so predictions and targets align).
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

    # Export the inference graph; the SavedModel must serve what predict gives.
    export_dir = args.export_dir or os.path.join(tempfile.mkdtemp(), "celeb_a")
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

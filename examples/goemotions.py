"""Balance three multi-label tasks on GoEmotions: 4, 7 and 28 emotion labels.

GoEmotions (Demszky et al., 2020): Reddit comments labelled in three
taxonomies (group, ekman, original). The loader reads local files
(--data-dir, $KERAS_MTL_GOEMOTIONS_DIR or ../shared/data/goemotions) and
otherwise downloads through tensorflow-datasets. The text model is built
here without any preset: a WordPiece vocabulary computed from the training
comments, a tokenizer mapped over the tf.data pipelines, and a small
Transformer encoder with one sigmoid head per taxonomy.

    python examples/goemotions.py --method bmtl --epochs 3
    python examples/goemotions.py --method equal --max-examples 5000
"""

import argparse
import os
import tempfile
import warnings

import keras
import keras_nlp
import numpy as np
import tensorflow as tf

import keras_mtl
from keras_mtl.bench.metrics import task_scores
from keras_mtl.bench.runner import parse_method
from keras_mtl.datasets import load, load_goemotions_texts

# keras-nlp's position embedding warns that it drops the padding mask; the
# token embedding's mask still reaches the encoder and the pooling.
warnings.filterwarnings("ignore", message=".*does not support masking.*")


def build_net(vocabulary_size, sequence_length, tasks):
    """Token + position embedding, one Transformer block, masked mean pooling,
    and one sigmoid head per task. Input: token ids (0 = padding)."""
    tokens = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    h = keras_nlp.layers.TokenAndPositionEmbedding(
        vocabulary_size, sequence_length, 64, mask_zero=True
    )(tokens)
    h = keras_nlp.layers.TransformerEncoder(intermediate_dim=128, num_heads=2)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(64, activation="relu", name="shared")(h)
    outputs = {
        name: keras.layers.Dense(
            spec.num_classes, activation=spec.activation, name=name
        )(h)
        for name, spec in tasks.items()
    }
    return keras.Model(tokens, outputs, name="goemotions_transformer")


def print_table(scores):
    """One row per task, one column per metric."""
    columns = list(dict.fromkeys(k for row in scores.values() for k in row))
    print(f"\n{'task':<12}" + "".join(f"{c:>10}" for c in columns))
    for task, row in scores.items():
        print(f"{task:<12}" + "".join(f"{row[c]:10.4f}" for c in columns))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", default="bmtl", help="e.g. equal, dwa, pcgrad, bmtl+upgrad"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int, default=None, help="per split")
    parser.add_argument("--vocabulary-size", type=int, default=8000)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="GoEmotions files")
    parser.add_argument("--export-dir", default=None, help="default: a temporary dir")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    # x: raw comment strings; targets: multi-hot float32 (4,), (7,), (28,).
    data = load(
        "goemotions",
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        seed=args.seed,
    )
    tasks = data.tasks  # group, ekman, original

    # A WordPiece vocabulary from the training comments (offline, no preset),
    # and a tokenizer mapped over the three pipelines: x becomes token ids.
    texts = load_goemotions_texts(args.data_dir, "train", args.max_examples)
    vocabulary = keras_nlp.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(1024),
        vocabulary_size=args.vocabulary_size,
        lowercase=True,
        reserved_tokens=["[PAD]", "[UNK]"],  # [PAD] gets id 0: the mask value
    )
    tokenizer = keras_nlp.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        sequence_length=args.sequence_length,
        lowercase=True,
        oov_token="[UNK]",
    )
    # (No .cache() on train: it would freeze the first epoch's shuffled order.)
    train, validation, test = (
        ds.map(lambda x, y: (tokenizer(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        for ds in (data.train, data.validation, data.test)
    )

    # Wrap the network; the method (a weighting, an aggregator or both,
    # e.g. "adaptive+upgrad") balances the three taxonomy losses.
    net = build_net(tokenizer.vocabulary_size(), args.sequence_length, tasks)
    model = keras_mtl.MultiTaskModel(net, **parse_method(args.method).build())
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={t: spec.loss for t, spec in tasks.items()},
        metrics={t: [keras.metrics.AUC(multi_label=True, name="auc")] for t in tasks},
    )
    model.fit(
        train, validation_data=validation, epochs=args.epochs, shuffle=False, verbose=2
    )

    # Per-task test scores: macro-F1 at 0.5 and macro ROC AUC over the labels.
    logs = model.evaluate(test, return_dict=True, verbose=0)
    probs = model.predict(test.map(lambda x, y: x), verbose=0)
    truths = {
        t: np.concatenate([y[t] for _, y in test.as_numpy_iterator()]) for t in tasks
    }
    scores = {
        t: {"loss": logs[f"{t}_loss"], **task_scores(spec, truths[t], probs[t])}
        for t, spec in tasks.items()
    }
    print_table(scores)

    # Export the inference graph (token ids in, one output per task) with the
    # vocabulary beside it; the SavedModel must serve what predict gives.
    export_dir = args.export_dir or os.path.join(tempfile.mkdtemp(), "goemotions")
    model.export(export_dir, verbose=False)
    with open(os.path.join(export_dir, "vocabulary.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + "\n")
    x, _ = next(iter(test))  # the first test batch: predicted in probs[t][:n]
    reloaded = tf.saved_model.load(export_dir)  # keep a reference while serving
    served = reloaded.serve(x)
    n = len(x)
    diff = max(float(np.max(np.abs(served[t].numpy() - probs[t][:n]))) for t in tasks)
    print(f"exported to {export_dir}; max |serve - predict| = {diff:.2e}")
    return {"scores": scores, "export_dir": export_dir, "export_max_abs_diff": diff}


if __name__ == "__main__":
    main()

"""Compare loss-balancing methods on real handwritten digits, offline.

Two tasks share one network: the digit (10 classes) and its parity
(binary), from the 1,797 real 8x8 images scikit-learn ships. Every method
trains the same network from the same initialisation on the same split;
the table reports test accuracy per task, the mean of the two, and the
mean task weights of the last epoch.

    python examples/digits_demo.py --epochs 15 --seeds 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_mtl  # noqa: E402

METHODS = ["equal", "uncertainty", "dwa", "adaptive", "bmtl", "rlw", "gls"]


def load(seed: int) -> tuple:
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = {"digit": digits.target, "parity": (digits.target % 2).astype("float32")}
    index = np.arange(len(x))
    train, test = train_test_split(index, test_size=0.3, random_state=seed)
    pick = lambda idx: (x[idx], {k: v[idx] for k, v in y.items()})  # noqa: E731
    return pick(train), pick(test)


def build_net(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(64, activation="relu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    return keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(10, activation="softmax", name="digit")(h),
            "parity": keras.layers.Dense(1, activation="sigmoid", name="parity")(h),
        },
    )


def run(method: str, seed: int, epochs: int) -> dict:
    (x_train, y_train), (x_test, y_test) = load(seed)
    model = keras_mtl.MultiTaskModel(build_net(seed), weighting=method)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"digit": "sparse_categorical_crossentropy", "parity": "binary_crossentropy"},
        metrics={"digit": ["accuracy"], "parity": ["accuracy"]},
    )
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, epochs=epochs, batch_size=64, verbose=0, shuffle=True
    )
    seconds = time.perf_counter() - start
    scores = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    return {
        "digit_acc": scores["digit_accuracy"],
        "parity_acc": scores["parity_accuracy"],
        "digit_w": history.history["digit_weight"][-1],
        "parity_w": history.history["parity_weight"][-1],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in keras_mtl.weighting.names()]
    if unknown:
        parser.error(
            f"unknown method(s) {unknown}; valid: {', '.join(keras_mtl.weighting.names())}"
        )
    rows = []
    for method in methods:
        runs = [run(method, seed, args.epochs) for seed in range(args.seeds)]
        row = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        row["std"] = float(np.std([(r["digit_acc"] + r["parity_acc"]) / 2 for r in runs]))
        row["method"] = method
        rows.append(row)
        print(f"{method:12s} done in {row['seconds']:.1f} s per run", flush=True)
    print(
        f"\nTest accuracy on real digits, {args.epochs} epochs, mean over "
        f"{args.seeds} seed(s)\n"
    )
    print("| method | digit acc | parity acc | mean acc (± std) | digit w | parity w |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -(r["digit_acc"] + r["parity_acc"])):
        mean = (r["digit_acc"] + r["parity_acc"]) / 2
        print(
            f"| {r['method']} | {r['digit_acc']:.4f} | {r['parity_acc']:.4f} | "
            f"{mean:.4f} ± {r['std']:.4f} | {r['digit_w']:.3f} | {r['parity_w']:.3f} |"
        )


if __name__ == "__main__":
    main()

"""MMoE against a shared bottom on a generated click / conversion problem.

A recommender-style data set is generated (no download): three categorical
features (user segment, item category, hour of day) and two numeric ones;
a click depends on user x item affinities, a conversion on other
affinities and the hour, so the two tasks share some structure but not all
of it (the case MMoE was designed for). Both nets embed the categorical
features the same way; the shared bottom puts one MLP under both towers, the
MMoE a mixture of experts with a gate per task. Both train in a
`keras_mtl.MultiTaskModel` (uncertainty weighting by default) and are
scored by AUC on held-out data; the MMoE's gate utilisation is printed.

    python examples/recommender_mmoe.py
    python examples/recommender_mmoe.py --weighting equal --epochs 10
"""

import argparse

import keras
import numpy as np

import keras_mtl

FEATURES = {"user": 50, "item": 30, "hour": 24}  # categorical: vocabulary sizes
TASKS = ("click", "conversion")


def generate(num_examples: int, seed: int = 0):
    """Features dict and targets dict of the generated problem."""
    rng = np.random.default_rng(seed)
    x = {name: rng.integers(0, size, num_examples) for name, size in FEATURES.items()}
    x["dense"] = rng.normal(size=(num_examples, 2)).astype("float32")
    u, v = (
        rng.normal(size=(FEATURES["user"], 4)),
        rng.normal(size=(FEATURES["item"], 4)),
    )
    w = rng.normal(size=(FEATURES["item"], 4))
    hour = np.sin(2 * np.pi * x["hour"] / 24)
    click = (u[x["user"]] * v[x["item"]]).sum(1) + 0.5 * x["dense"][:, 0]
    conversion = (u[x["user"]] * (0.5 * v + w)[x["item"]]).sum(1) + hour - 1.0
    y = {
        "click": rng.random(num_examples) < 1 / (1 + np.exp(-click)),
        "conversion": rng.random(num_examples) < 1 / (1 + np.exp(-conversion)),
    }
    return x, {k: v.astype("float32")[:, None] for k, v in y.items()}


def build_net(architecture: str, seed: int = 0) -> keras.Model:
    inputs = {name: keras.Input((), dtype="int32", name=name) for name in FEATURES}
    inputs["dense"] = keras.Input((2,), name="dense")
    embedded = [
        keras.layers.Embedding(size, 8, name=f"{name}_embedding")(inputs[name])
        for name, size in FEATURES.items()
    ]
    features = keras.layers.Concatenate()([*embedded, inputs["dense"]])
    if architecture == "mmoe":
        towers = keras_mtl.layers.MMoE(
            len(TASKS), num_experts=4, expert_units=32, name="mmoe"
        )(features)
    else:
        bottom = keras.layers.Dense(64, activation="relu", name="bottom")(features)
        towers = [bottom] * len(TASKS)
    outputs = {}
    for task, h in zip(TASKS, towers):
        h = keras.layers.Dense(16, activation="relu", name=f"{task}_tower")(h)
        outputs[task] = keras.layers.Dense(1, activation="sigmoid", name=task)(h)
    return keras.Model(inputs, outputs, name=architecture)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--weighting", default="uncertainty")
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="XLA: 'auto' is Keras' default (on on JAX, off on TensorFlow/CPU)",
    )
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    x, y = generate(args.num_examples)
    split = int(0.8 * args.num_examples)

    def part(data, sl):
        return {k: v[sl] for k, v in data.items()}

    train, test = slice(0, split), slice(split, None)
    scores, utilization = {}, {}
    for architecture in ("shared_bottom", "mmoe"):
        model = keras_mtl.MultiTaskModel(
            build_net(architecture), weighting=args.weighting
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss={t: "binary_crossentropy" for t in TASKS},
            metrics={t: [keras.metrics.AUC(name="auc")] for t in TASKS},
            jit_compile={"auto": "auto", "true": True, "false": False}[
                args.jit_compile
            ],
        )
        callbacks = []
        if architecture == "mmoe":
            callbacks.append(keras_mtl.layers.GateUtilizationLogger(tasks=TASKS))
        model.fit(
            part(x, train), part(y, train), batch_size=args.batch_size,
            epochs=args.epochs, verbose=0, callbacks=callbacks,
        )  # fmt: skip
        logs = model.evaluate(
            part(x, test), part(y, test), batch_size=args.batch_size,
            verbose=0, return_dict=True,
        )  # fmt: skip
        scores[architecture] = {t: float(logs[f"{t}_auc"]) for t in TASKS}
        if architecture == "mmoe":
            utilization = keras_mtl.layers.gate_utilization(model)
    print(f"{'':15s}" + "".join(f"{t + ' AUC':>16s}" for t in TASKS))
    for architecture, row in scores.items():
        print(f"{architecture:15s}" + "".join(f"{row[t]:16.4f}" for t in TASKS))
    for name, weights in utilization.items():
        print(f"gate utilisation of {name} (task x expert):\n{np.round(weights, 3)}")
    return {"scores": scores, "gate_utilization": utilization}


if __name__ == "__main__":
    main()

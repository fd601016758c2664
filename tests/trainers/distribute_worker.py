"""Worker process of tests/trainers/test_distribute_sequence.py (run as
`python distribute_worker.py OUT_DIR`; the test starts it with a timeout).

Logical CPU devices must be set before TensorFlow initialises, so this run
cannot share the pytest process. On 2 logical CPUs, one process trains a
sequence of models, each under a new `MirroredStrategy`, as a notebook or a
sweep does:

1. a stock Keras model (its collectives leave records at the keys every
   strategy starts from, with its own gradient's shape);
2. a MultiTaskModel with a weighting;
3. MultiTaskModels with an aggregator (`AGGREGATOR_CASES`), each compared
   with the same model trained on one device with the same global batch;
4. a MultiTaskModel compiled with `jit_compile=True` (turned off with a
   warning) and one in representation mode (rejected at compile);
5. the stock model again, under a new strategy.

Results go to `sequence.json`; the test asserts on them. Nets are tiny and
each model trains `scale_worker.EPOCHS * scale_worker.STEPS` steps.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
# This checkout's keras_mtl, tests/conftest.py and the workers beside this one.
sys.path[:0] = [os.path.dirname(TESTS), TESTS, HERE]

import scale_worker  # noqa: E402
import tensorflow as tf  # noqa: E402

# (weighting, aggregator): a seeded stateless aggregator and a
# Gramian-weighted one.
AGGREGATOR_CASES = [("uncertainty", "pcgrad"), ("dwa", "upgrad")]
# The stock model's hidden width: not that of scale_worker's nets (16), so
# its gradient all-reduce has another shape than any of theirs.
STOCK_HIDDEN = 24


def strategy() -> tf.distribute.MirroredStrategy:
    made = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert made.num_replicas_in_sync == 2
    return made


def losses(history) -> list[float]:
    return [float(v) for v in history.history["loss"]]


def stock() -> list[float]:
    import keras
    from conftest import TASK_LOSSES, build_net

    keras.utils.set_random_seed(1234)
    with strategy().scope():
        net = build_net(hidden=STOCK_HIDDEN)
        net.compile(optimizer=keras.optimizers.Adam(1e-2), loss=dict(TASK_LOSSES))
    return losses(scale_worker.fit(net, distributed=True))


def main(out_dir: str) -> None:
    import keras
    from conftest import TASK_LOSSES, build_net

    import keras_mtl

    result: dict = {"stock": stock()}

    with strategy().scope():
        model = scale_worker.build(("uncertainty", None))
    result["weighting"] = losses(scale_worker.fit(model, distributed=True))

    for case in AGGREGATOR_CASES:
        name = scale_worker.case_name(case)
        single = scale_worker.build(case, optimizer_built=True)
        scale_worker.fit(single)
        with strategy().scope():
            model = scale_worker.build(case)
        trained = losses(scale_worker.fit(model, distributed=True))
        x, y = scale_worker.data()
        evaluated = model.evaluate(
            x, y, batch_size=scale_worker.BATCH, verbose=0, return_dict=True
        )
        result[name] = {
            "losses": trained,
            "evaluate_loss": float(evaluated["loss"]),
            "steps": int(model.train_steps.numpy()),
            "difference": scale_worker.largest_difference(
                scale_worker.state(single), scale_worker.state(model)
            ),
        }

    with strategy().scope():
        keras.utils.set_random_seed(1234)
        model = keras_mtl.MultiTaskModel(build_net(hidden=16), aggregator="upgrad")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(
                optimizer=keras.optimizers.Adam(1e-2),
                loss=dict(TASK_LOSSES),
                jit_compile=True,
            )
    result["jit"] = {
        "warnings": [
            str(w.message) for w in caught if issubclass(w.category, UserWarning)
        ],
        "jit_compile_after_compile": model.jit_compile,
        "losses": losses(scale_worker.fit(model, distributed=True)),
        "jit_compile_after_fit": model.jit_compile,
    }
    with strategy().scope():
        model = keras_mtl.MultiTaskModel(build_net(hidden=16), aggregator="upgrad")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(optimizer="adam", loss=dict(TASK_LOSSES))
    result["jit_auto"] = {
        "warnings": [str(w.message) for w in caught],
        "jit_compile": model.jit_compile,
    }

    with strategy().scope():
        model = keras_mtl.MultiTaskModel(
            build_net(hidden=16), aggregator="upgrad", representation="hidden"
        )
        try:
            model.compile(optimizer="adam", loss=dict(TASK_LOSSES))
            result["representation"] = None
        except NotImplementedError as error:
            result["representation"] = str(error)

    result["stock_again"] = stock()
    with open(os.path.join(out_dir, "sequence.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    # No `enable_op_determinism()`: with it Keras turns `jit_compile=True`
    # off itself, before the model's own check could be seen.
    main(sys.argv[1])

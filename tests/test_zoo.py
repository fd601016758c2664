"""The conformance zoo: the models users bring (tests/zoo/models.py), each
trained with a loss-level weighting, a parameter-mode aggregator and (where
the net has a representation layer) representation mode, on TensorFlow and
JAX: `fit` under XLA, `.keras` save and load in a new process (the next
training steps of the loaded model equal the original's), and `export`
whose `serve` equals `predict`.

The normal suite runs a fast slice (every model with one method, the
methods rotated across the models; save-and-load for three of them in one
worker process; export for two). `KERAS_MTL_ZOO=full` runs the whole
matrix: `bash scripts/zoo.sh`; so does KERAS_MTL_FULL_MATRIX=1, with the
full matrices of the other suites (`conftest.full_matrix`).

Before them, the shared-parameter discovery these models need: a
functional net is fed through its own input structure (a dict in any key
order, nested lists), and `shared=` takes nested model and layer names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import full_matrix
from zoo import models as zoo

import keras_mtl
from keras_mtl.gradients import zero_batch

pytestmark = pytest.mark.backend_neutral

HERE = Path(__file__).resolve().parent
FULL = os.environ.get("KERAS_MTL_ZOO", "") == "full" or full_matrix()


def _cases() -> list[tuple[str, str]]:
    return [
        (name, method)
        for name, spec in zoo.MODELS.items()
        for method in zoo.METHODS
        if method != "representation" or spec.representation is not None
    ]


ALL_CASES = _cases()
# The fast slice: each model once, the three methods rotated over them.
FAST_FIT = [
    ("bert", "parameter"),
    ("image", "loss"),
    ("nested", "representation"),
    ("subclassed", "parameter"),
    ("multi_input", "representation"),
    ("recommender", "parameter"),
]
FAST_SAVE = [
    ("subclassed", "parameter"),
    ("multi_input", "representation"),
    ("recommender", "parameter"),
]
FAST_EXPORT = [("bert", "parameter"), ("subclassed", "parameter")]
FIT_CASES = ALL_CASES if FULL else FAST_FIT
SAVE_CASES = ALL_CASES if FULL else FAST_SAVE
EXPORT_CASES = ALL_CASES if FULL else FAST_EXPORT
# The models without a representation layer (no representation-mode case).
NO_REPRESENTATION = sorted(
    name for name, spec in zoo.MODELS.items() if spec.representation is None
)


def _id(case: tuple[str, str]) -> str:
    return "-".join(case)


# -------------------------------------------------- shared-parameter discovery
def _unsorted_dict_net() -> keras.Model:
    return zoo.build_multi_input()


def test_dict_input_net_with_an_aggregator_finds_its_shared_parameters():
    """A net whose input dict is not in sorted order: the zero batch of the
    shared-parameter probe is a dict keyed as the net's inputs (before, a
    list in `net.inputs` order was fed: Keras' "structure of `inputs`
    doesn't match")."""
    net = _unsorted_dict_net()
    model = keras_mtl.MultiTaskModel(net, aggregator="nash_mtl")
    expected = [v.path for v in net.get_layer("representation").trainable_variables]
    assert [v.path for v in model._shared_variables] == expected
    batch = zero_batch(net)
    assert list(batch) == ["z", "a"]
    assert [tuple(batch[k].shape) for k in ("z", "a")] == [(1, 6), (1, 3)]


def test_bert_backbone_with_an_aggregator_is_constructed():
    """The measured failure: a keras-hub BertBackbone (dict inputs with an
    unknown sequence length) under a parameter-mode aggregator."""
    net = zoo.build_bert()
    model = keras_mtl.MultiTaskModel(net, aggregator="nash_mtl")
    backbone = net.get_layer("bert_backbone")
    assert {id(v) for v in model._shared_variables} == {
        id(v) for v in backbone.trainable_variables
    }


def test_nested_list_single_input_and_sequential_nets_are_fed_their_structure():
    a, b, c = (keras.Input((n,), name=f"in{n}") for n in (2, 3, 4))
    joined = keras.layers.Concatenate()([a, b, c])
    h = keras.layers.Dense(4, name="h")(joined)
    heads = {t: keras.layers.Dense(1, name=t)(h) for t in ("p", "q")}
    nested = keras.Model([a, [b, c]], heads)
    batch = zero_batch(nested)
    assert isinstance(batch, list) and isinstance(batch[1], list)
    assert [tuple(t.shape) for t in (batch[0], *batch[1])] == [(1, 2), (1, 3), (1, 4)]
    model = keras_mtl.MultiTaskModel(nested, aggregator="upgrad")
    assert [v.path for v in model._shared_variables] == ["h/kernel", "h/bias"]

    x = keras.Input((5,))
    single = keras.Model([x], {t: keras.layers.Dense(1, name=t)(x) for t in "uv"})
    assert isinstance(zero_batch(single), list)  # built with a list of one

    trunk = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="d")])
    assert tuple(zero_batch(trunk).shape) == (1, 5)


def test_shared_takes_a_nested_model_or_a_layer_inside_it():
    """`shared=` by a nested model's name (its variables' paths leave that
    name out), a layer inside it by name or by path, as today a top-level
    layer or a variable path."""
    net = zoo.build_bert()
    backbone = net.get_layer("bert_backbone")
    model = keras_mtl.MultiTaskModel(net, aggregator="nash_mtl", shared="bert_backbone")
    assert [id(v) for v in model._shared_variables] == [
        id(v) for v in net.trainable_variables if id(v) in _ids(backbone)
    ]
    encoder = backbone.get_layer("transformer_layer_0")
    for name in ("transformer_layer_0", "bert_backbone/transformer_layer_0"):
        inner = keras_mtl.MultiTaskModel(net, aggregator="upgrad", shared=[name])
        assert {id(v) for v in inner._shared_variables} == _ids(encoder)
    both = keras_mtl.MultiTaskModel(
        net, aggregator="upgrad", shared=["pooled_dense/kernel", "token_embedding"]
    )
    assert [v.path for v in both._shared_variables] == [
        "token_embedding/embeddings",
        "pooled_dense/kernel",
    ]

    nested = zoo.build_nested()
    block = keras_mtl.MultiTaskModel(nested, aggregator="upgrad", shared="block")
    assert [v.path for v in block._shared_variables] == [
        "block_dense/kernel",
        "block_dense/bias",
    ]


def _ids(layer: keras.layers.Layer) -> set[int]:
    return {id(v) for v in layer.trainable_variables}


def test_unknown_shared_name_lists_the_candidates():
    net = zoo.build_bert()
    with pytest.raises(ValueError) as caught:
        keras_mtl.MultiTaskModel(net, aggregator="upgrad", shared="bert")
    message = str(caught.value)
    assert "'bert' is neither a layer" in message
    for candidate in ("'bert_backbone'", "'toxic'", "'spam'", "'question'"):
        assert candidate in message
    # Layers inside the backbone are accepted but not listed (they are many).
    assert "'transformer_layer_0'" not in message


def test_a_name_of_several_different_layers_is_ambiguous():
    def block(name: str) -> keras.Model:
        x = keras.Input((4,))
        return keras.Model(x, keras.layers.Dense(4, name="dense")(x), name=name)

    x = keras.Input((4,))
    h = block("second")(block("first")(x))
    net = keras.Model(x, {t: keras.layers.Dense(1, name=t)(h) for t in "ab"})
    with pytest.raises(ValueError, match="'first/dense', 'second/dense'"):
        keras_mtl.MultiTaskModel(net, aggregator="upgrad", shared="dense")
    model = keras_mtl.MultiTaskModel(net, aggregator="upgrad", shared="first/dense")
    assert len(model._shared_variables) == 2


def test_recommender_shares_only_the_item_embedding():
    net = zoo.build_recommender()
    model = keras_mtl.MultiTaskModel(net, aggregator="upgrad")
    assert [v.path for v in model._shared_variables] == ["item_embedding/embeddings"]


# --------------------------------------------------------------------- the zoo
# Per case: the trained model, its net's weights after the first of its two
# steps, its history.
_trained: dict[tuple[str, str], tuple[keras.Model, list[np.ndarray], dict]] = {}


def _trained_model(case: tuple[str, str]) -> keras.Model:
    """The zoo model of `case` after one XLA-compiled epoch (two steps),
    built once per test process."""
    if case not in _trained:
        name, method = case
        model = zoo.build_model(name, method, jit_compile=True)
        x, y = zoo.MODELS[name].data(2 * zoo.BATCH, 1)
        before: list[np.ndarray] = []
        # Read after the first step (a subclassed net is built in it on
        # TensorFlow): the second step must change every trainable variable.
        snapshot = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: (
                batch == 0
                and before.extend(
                    np.array(keras.ops.convert_to_numpy(v)) for v in model.net.weights
                )
            )
        )
        history = model.fit(
            x, y, batch_size=zoo.BATCH, epochs=1, verbose=0, callbacks=[snapshot]
        )
        _trained[case] = (model, before, history.history)
    return _trained[case][0]


@pytest.mark.parametrize("case", FIT_CASES, ids=_id)
def test_fit_under_xla(case):
    model = _trained_model(case)
    _, before, history = _trained[case]
    name, method = case
    assert model.jit_compile is True
    assert np.isfinite(history["loss"][0])
    for task in zoo.MODELS[name].losses:
        assert np.isfinite(history[f"{task}_loss"][0])
    assert len(before) == len(model.net.weights)
    changed = [
        not np.array_equal(old, keras.ops.convert_to_numpy(v))
        for old, v in zip(before, model.net.weights)
    ]
    assert all(changed[i] for i, v in enumerate(model.net.weights) if v.trainable), (
        "the second step updates every trainable variable of the net"
    )
    if method == "parameter":
        assert model._shared_variables
    if method == "representation":
        assert model.representation_mode


def test_the_models_without_a_representation_layer():
    """Representation mode needs a layer whose output alone feeds the heads:
    the subclassed net has no layers graph, the recommender's towers read
    features of their own besides the shared item embedding."""
    assert NO_REPRESENTATION == ["recommender", "subclassed"]
    with pytest.raises(ValueError, match="do not depend on the net's inputs"):
        keras_mtl.MultiTaskModel(
            zoo.build_recommender(),
            aggregator="upgrad",
            representation="item_embedding",
        )


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory) -> dict[str, tuple[list[float], list[float]]]:
    """Per case: the original's next two training losses on a fixed batch
    and those of its `.keras` file loaded in one new process (all cases in
    one worker: an interpreter with TensorFlow and keras-hub costs seconds
    to start)."""
    directory = tmp_path_factory.mktemp("zoo_saved")
    jobs = []
    for case in SAVE_CASES:
        path = directory / f"{_id(case)}.keras"
        _trained_model(case).save(path)
        jobs.append(
            {
                "case": _id(case),
                "model": case[0],
                "path": str(path),
                "seed": 7,
                "steps": 2,
            }
        )
    (directory / "jobs.json").write_text(json.dumps(jobs))
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "zoo_worker.py"),
            str(directory / "jobs.json"),
            str(directory / "result.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads((directory / "result.json").read_text())
    result = {}
    for case in SAVE_CASES:
        model = _trained_model(case)
        x, y = zoo.MODELS[case[0]].data(zoo.BATCH, 7)
        original = [
            float(model.train_on_batch(x, y, return_dict=True)["loss"])
            for _ in range(2)
        ]
        result[_id(case)] = (original, loaded[_id(case)])
    return result


@pytest.mark.parametrize("case", SAVE_CASES, ids=_id)
def test_save_and_load_in_a_new_process(reloaded, case):
    """The loaded model's next two steps (the second after an update with
    the restored optimizer, weighting and aggregator state) give the
    original's losses: the same XLA program on the same float32 values; a
    few float32 ulps (1e-5 relative) of margin for a different fusion of
    the reductions in another compilation."""
    original, loaded = reloaded[_id(case)]
    np.testing.assert_allclose(loaded, original, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras 3.15 exports no SavedModel from torch 2.13, for any model; "
    "the routes from torch are tested in tests/trainers/test_torch_export.py",
)
@pytest.mark.parametrize("case", EXPORT_CASES, ids=_id)
def test_export_serves_like_predict(case, tmp_path):
    import tensorflow as tf

    model = _trained_model(case)
    x, _ = zoo.MODELS[case[0]].data(zoo.BATCH, 11)
    expected = model.predict(x, verbose=0)
    kwargs = {}
    if case[0] == "bert" and keras.backend.backend() == "jax":
        # jax2tf cannot prove a symbolic sequence length at most
        # keras-hub's `max_sequence_length` (PositionEmbedding's check):
        # on JAX the text model is exported for one sequence length.
        kwargs["input_signature"] = [
            {k: tf.TensorSpec((None, zoo.SEQUENCE), "int32", name=k) for k in x}
        ]
    model.export(str(tmp_path / "exported"), verbose=False, **kwargs)
    # Kept in a variable: the chained call loses the variables (PITFALLS).
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    served = loaded.serve(x)
    assert sorted(served) == sorted(expected)
    for task, value in expected.items():
        # XLA's fused predict against TensorFlow's graph kernels: the same
        # sums in another order, at most a few float32 ulps per term of the
        # longest reduction (3x3x64 = 576 terms): 1e-4 relative.
        np.testing.assert_allclose(
            np.asarray(served[task]), value, rtol=1e-4, atol=1e-5
        )

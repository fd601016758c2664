"""MTAN-style task attention (`keras_mtl.layers.TaskAttention`) in the
benchmark: the image network, training under XLA on the bench path,
representation mode, the side-by-side run and the usage errors."""

import json

import keras
import numpy as np
import pytest

from keras_mtl import layers
from keras_mtl.bench import models
from keras_mtl.bench.cli import bench
from keras_mtl.bench.runner import parse_method, prepare
from keras_mtl.datasets import TaskSpec
from keras_mtl.gradients import shared_variable_indices
from keras_mtl.model import MultiTaskModel

# MultiDigits' tasks and image shape.
TASKS = {
    "left": TaskSpec("multiclass", 10),
    "right": TaskSpec("multiclass", 10),
    "sum_parity": TaskSpec("binary", 1),
}
SHAPE = (12, 16, 1)
TINY = {"max_examples": 64, "batch_size": 32}


def _trunk_count(width: int = 32) -> int:
    """Parameters of the two 3x3 convolutions both CNNs share."""
    return (9 * 1 * width + width) + (9 * width * 2 * width + 2 * width)


@pytest.mark.backend_neutral
def test_image_cnn_architectures_and_their_sizes():
    shared_bottom = models.image_cnn(SHAPE, TASKS)
    attention = models.image_cnn(SHAPE, TASKS, architecture="task_attention")
    # Shared bottom: Flatten(3x4x64) -> Dense(128) -> heads.
    heads = (128 * 10 + 10) * 2 + (128 + 1)
    assert shared_bottom.count_params() == _trunk_count() + (768 * 128 + 128) + heads
    assert not any(isinstance(x, layers.TaskAttention) for x in shared_bottom.layers)
    ta = attention.get_layer("task_attention")
    assert isinstance(ta, layers.TaskAttention) and ta.num_tasks == 3
    assert (ta.filters, ta.mask_filters) == (32, 32)
    # Per task: the mask (1x1 64->32, BN, 1x1 32->64, BN), the 3x3 64->32
    # convolution and its BN, then Flatten(3x4x32) -> Dense(32) -> head.
    mask = (64 * 32 + 32) + 4 * 32 + (32 * 64 + 64) + 4 * 64
    branch = mask + (9 * 64 * 32 + 32) + 4 * 32 + (384 * 32 + 32)
    heads = (32 * 10 + 10) * 2 + (32 + 1)
    assert attention.count_params() == _trunk_count() + 3 * branch + heads
    # Comparable sizes: within 6% of each other.
    ratio = attention.count_params() / shared_bottom.count_params()
    assert 1.0 < ratio < 1.06
    # The attended map is the second convolution's, before any pooling.
    assert tuple(attention.get_layer("shared").output.shape) == (None, 6, 8, 64)
    x = np.random.default_rng(0).random((4, *SHAPE)).astype("float32")
    outputs = attention(x)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "left": (4, 10),
        "right": (4, 10),
        "sum_parity": (4, 1),
    }
    # Each task has its own tower on its own attended map.
    towers = [attention.get_layer(f"{t}_tower") for t in TASKS]
    assert len({id(t.input) for t in towers}) == 3
    with pytest.raises(ValueError, match="'mmoe'.*shared_bottom, task_attention"):
        models.image_cnn(SHAPE, TASKS, architecture="mmoe")


def _fit_one_epoch(prepared, method: str, jit_compile=True, **model_kwargs):
    """What `runner.run` does, keeping the model: one epoch, by default
    under XLA (without validation, which would compile a second function)."""
    keras.utils.set_random_seed(0)
    train, _, _ = prepared.load_for(0)
    net = prepared.build()
    model = MultiTaskModel(net, **parse_method(method).build(), **model_kwargs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={t: models.task_loss(s) for t, s in prepared.tasks.items()},
        jit_compile=jit_compile,
    )
    before = {v.path: np.array(v) for v in net.weights}
    history = model.fit(train, epochs=1, verbose=0, shuffle=False)
    return model, net, before, history.history


def _assert_trained(net, before, history):
    for key in ("loss", "left_loss", "right_loss", "sum_parity_loss"):
        assert np.isfinite(history[key][0]), key
    changed = {v.path for v in net.weights if not np.array_equal(before[v.path], v)}
    ta = net.get_layer("task_attention")
    # The trunk, every task's attention module and its batch-normalisation
    # statistics (non-trainable state updated in the compiled step) moved.
    assert {v.path for v in net.get_layer("shared").weights} <= changed
    assert {v.path for v in ta.trainable_weights} <= changed
    assert {v.path for v in ta.non_trainable_weights} <= changed


@pytest.mark.backend_neutral
@pytest.mark.parametrize("method", ["equal", "adaptive+pcgrad"])
def test_task_attention_trains_under_xla_on_the_bench_path(method):
    prepared = prepare("multi_digits", TINY, architecture="task_attention")
    assert prepared.architecture == "task_attention"
    model, net, before, history = _fit_one_epoch(prepared, method)
    _assert_trained(net, before, history)
    if "pcgrad" in method:
        # Parameter mode: the trunk is shared, each attention branch is not.
        variables = net.trainable_variables
        indices = shared_variable_indices(net, variables, list(TASKS))
        shared = {variables[i].path for i in indices}
        assert {v.path for v in net.get_layer("shared").trainable_weights} <= shared
        ta = net.get_layer("task_attention")
        assert not shared & {v.path for v in ta.trainable_weights}


@pytest.mark.backend_neutral
def test_task_attention_representation_mode():
    # docs/architectures.md: with one TaskAttention the shared map it
    # attends is the representation; the bench names that layer "shared".
    prepared = prepare("multi_digits", TINY, architecture="task_attention")
    # "auto": XLA on JAX (where the alternative is eager), not on TensorFlow
    # (covered above; compiling the representation-mode step is slow on CPU).
    model, net, before, history = _fit_one_epoch(
        prepared, "mgda", jit_compile="auto", representation="shared"
    )
    assert model.representation_mode
    _assert_trained(net, before, history)
    x = np.zeros((5, *SHAPE), "float32")
    outputs, representation = model(x, return_representation=True)
    assert tuple(representation.shape) == (5, 6, 8, 64)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["left"]),
        keras.ops.convert_to_numpy(net(x)["left"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bench_runs_architectures_side_by_side(tmp_path):
    """Each run (`runner.run`) records its architecture and scores every
    task on the test split."""
    out = tmp_path / "side_by_side"
    code = bench(
        [
            "--dataset", "multi_digits",
            "--architectures", "shared_bottom,task_attention",
            "--methods", "equal", "--seeds", "1", "--epochs", "1",
            "--max-examples", "64", "--batch-size", "32", "--verbose", "0",
            "--out", str(out), "--no-plots",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["architectures"] == ["shared_bottom", "task_attention"]
    assert [r["architecture"] for r in results["runs"]] == [
        "shared_bottom",
        "task_attention",
    ]
    for r in results["runs"]:
        assert set(r["test"]) == set(TASKS)
        assert 0.0 <= r["test"]["left"]["accuracy"] <= 1.0
    summary = results["summary"]
    assert summary["baseline"] == "shared_bottom/equal"
    entries = summary["methods"]
    assert set(entries) == {"shared_bottom/equal", "task_attention/equal"}
    assert entries["shared_bottom/equal"]["delta_m"] == pytest.approx(0.0)
    assert entries["task_attention/equal"]["architecture"] == "task_attention"
    table = (out / "results.md").read_text()
    assert "| architecture | method |" in table
    assert "| `task_attention` | `equal` |" in table
    assert "Δm% vs shared_bottom/equal" in table
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == "architecture,method,seed,task,metric,value"


@pytest.mark.parametrize(
    "dataset, architecture, valid",
    [
        ("mmoe_synthetic", "task_attention", "shared_bottom, mmoe, cgc, ple"),
        ("goemotions", "task_attention", "valid for it: shared_bottom."),
        ("multi_digits", "ple", "shared_bottom, task_attention"),
        ("multi_mnist", "mmoe", "shared_bottom, task_attention"),
    ],
)
def test_an_architecture_the_dataset_lacks_is_a_usage_error(
    dataset, architecture, valid, capsys, tmp_path
):
    with pytest.raises(SystemExit) as exit_info:
        bench(
            [
                "--dataset", dataset, "--architectures", f"shared_bottom,{architecture}",
                "--out", str(tmp_path / "out"),
            ]
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert f"Architecture {architecture!r}" in err and repr(dataset) in err
    assert valid in err
    assert not (tmp_path / "out").exists()  # nothing was loaded, run or written


def test_prepare_refuses_an_architecture_the_dataset_lacks():
    with pytest.raises(ValueError, match="'multi_digits'.*shared_bottom, task_att"):
        prepare("multi_digits", {"max_examples": 8}, architecture="cgc")
    with pytest.raises(ValueError, match="'mmoe_synthetic'.*image inputs"):
        prepare("mmoe_synthetic", {"max_examples": 8}, architecture="task_attention")

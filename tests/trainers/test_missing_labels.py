"""Missing labels: a zero sample weight, a NaN float label or the task's
`missing_label` value. Each task's loss is the mean over its labelled
examples; a task with none in a batch changes nothing and logs NaN."""

import keras
import numpy as np
import pytest

import keras_mtl

pytestmark = pytest.mark.backend_neutral

N = 16


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 4)).astype("float32")
    y = {
        "a": rng.integers(0, 3, N).astype("int32"),
        "b": rng.standard_normal(N).astype("float32"),
    }
    return x, y


def _model(weighting="equal", aggregator=None, optimizer="sgd", **kwargs):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
    net = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(3, activation="softmax", name="a")(h),
            "b": keras.layers.Dense(1, name="b")(h),
        },
    )
    model = keras_mtl.MultiTaskModel(
        net, weighting=weighting, aggregator=aggregator, **kwargs
    )
    model.compile(
        optimizer=optimizer,
        loss={"a": "sparse_categorical_crossentropy", "b": "mse"},
        jit_compile=False,
    )
    return model


def _per_example(model, x, y):
    """Unreduced per-example losses from the model's predictions (float64)."""
    pred = model.predict(x, verbose=0)
    p_a = pred["a"].astype("float64")
    ce = -np.log(np.clip(p_a[np.arange(len(x)), np.maximum(y["a"], 0)], 1e-7, 1.0))
    se = (pred["b"][:, 0].astype("float64") - np.nan_to_num(y["b"])) ** 2
    return ce, se


def test_masked_means_by_nan_ignore_value_and_sample_weight():
    x, y = _data()
    model = _model(missing_label={"a": -1})
    y["a"][[1, 4, 5]] = -1  # ignore value
    y["b"][::3] = np.nan  # NaN labels
    weights = {"a": np.ones(N, "float32"), "b": np.ones(N, "float32")}
    weights["a"][[0, 7]] = 0.0  # masked by weight
    weights["b"][1] = 0.0
    logs = model.test_on_batch(x, y, sample_weight=weights, return_dict=True)
    ce, se = _per_example(model, x, y)
    keep_a = (y["a"] >= 0) & (weights["a"] > 0)
    keep_b = ~np.isnan(y["b"]) & (weights["b"] > 0)
    # float32 losses of O(1): a few ulps of the mean.
    assert logs["a_loss"] == pytest.approx(ce[keep_a].mean(), rel=1e-5)
    assert logs["b_loss"] == pytest.approx(se[keep_b].mean(), rel=1e-5)
    # The biased value the issue measured (masked sum / batch size) is gone.
    assert logs["b_loss"] != pytest.approx(se[keep_b].sum() / N, rel=1e-3)
    assert np.isfinite(logs["loss"])


def test_non_binary_weights_are_a_mean_over_labelled_examples():
    x, y = _data(1)
    model = _model()
    weights = np.linspace(0.5, 2.0, N).astype("float32")
    weights[:5] = 0.0
    logs = model.test_on_batch(x, y, sample_weight=weights, return_dict=True)
    _, se = _per_example(model, x, y)
    labelled = weights > 0
    expected = (weights * se)[labelled].sum() / labelled.sum()
    assert logs["b_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weighting", ["equal", "uncertainty", "famo"])
def test_a_step_equals_a_step_on_the_labelled_subset(weighting):
    """Both tasks labelled on the same half of the batch (NaN / ignore value
    elsewhere): the update is the one on that half alone."""
    x, y = _data(2)
    labelled = np.arange(N) % 2 == 0
    masked = {"a": np.where(labelled, y["a"], -1).astype("int32")}
    masked["b"] = np.where(labelled, y["b"], np.nan).astype("float32")
    full = _model(weighting, missing_label={"a": -1})
    subset = _model(weighting, missing_label={"a": -1})
    for _ in range(2):
        full.train_on_batch(x, masked)
        subset.train_on_batch(x[labelled], {k: v[labelled] for k, v in y.items()})
    for u, v in zip(full.variables, subset.variables):
        # The same sums over 8 examples in another order: float32 rounding.
        np.testing.assert_allclose(
            np.asarray(u.numpy() if hasattr(u, "numpy") else u),
            np.asarray(v.numpy() if hasattr(v, "numpy") else v),
            rtol=1e-5,
            atol=1e-6,
            err_msg=u.path,
        )


def _values(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


@pytest.mark.parametrize(
    "weighting, aggregator",
    [("uncertainty", None), ("famo", None), ("dwa", None), ("equal", "mgda")],
)
def test_a_batch_without_labels_for_a_task(weighting, aggregator):
    x, y = _data(3)
    model = _model(weighting, aggregator, optimizer="adam")
    model.train_on_batch(x, y)  # some state and optimizer moments first
    state_before = _values(model.weighting.variables)
    absent = {"a": y["a"], "b": np.full(N, np.nan, "float32")}
    logs = model.train_on_batch(x, absent, return_dict=True)
    assert np.isnan(logs["b_loss"]) and np.isnan(logs["b_weight"])
    assert np.isfinite(logs["a_loss"]) and np.isfinite(logs["loss"])
    assert int(keras.ops.convert_to_numpy(model.skipped_steps)) == 0
    # The weighting's entries of task b are kept (its head: the next test).
    for before, variable in zip(state_before, model.weighting.variables):
        after = np.array(keras.ops.convert_to_numpy(variable))
        axes = model.weighting.state_task_axes(variable)
        if not axes:
            continue
        index = [slice(None)] * after.ndim
        for axis in axes:
            index[axis] = 1
            np.testing.assert_array_equal(
                after[tuple(index)], before[tuple(index)], err_msg=variable.path
            )
            index[axis] = slice(None)


def test_absent_task_head_is_not_trained_and_mgda_is_not_zero():
    x, y = _data(4)
    absent = {"a": y["a"], "b": np.full(N, np.nan, "float32")}
    mgda = _model("equal", "mgda")
    plain = _model("equal")
    head = _values(mgda.net.get_layer("b").variables)
    trunk = _values(mgda.net.get_layer("trunk").variables)
    mgda.train_on_batch(x, absent)
    plain.train_on_batch(x, absent)
    for before, v in zip(head, mgda.net.get_layer("b").variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before)
    # A zero row in MGDA's hull would give a zero direction: the trunk
    # moves, as with the gradient of task a alone.
    moved = _values(mgda.net.get_layer("trunk").variables)
    assert any(np.abs(m - t).max() > 0 for m, t in zip(moved, trunk))
    for u, v in zip(
        mgda.net.get_layer("trunk").variables, plain.net.get_layer("trunk").variables
    ):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(u),
            keras.ops.convert_to_numpy(v),
            rtol=1e-5,
            atol=1e-7,
        )


def test_absent_steps_do_not_enter_the_epoch_mean():
    x, y = _data(5)
    model = _model()
    # Batches of 4: task b labelled in the first two batches only.
    yb = y["b"].copy()
    yb[8:] = np.nan
    history = model.fit(
        x, {"a": y["a"], "b": yb}, batch_size=4, epochs=1, shuffle=False, verbose=0
    )
    b_loss = history.history["b_loss"][0]
    assert np.isfinite(b_loss) and np.isfinite(history.history["a_loss"][0])
    # Its first two steps are those of a run on the first 8 examples: b's
    # epoch mean is the mean of those 2 observed steps (not halved).
    ref = _model()
    ref_hist = ref.fit(
        x[:8],
        {"a": y["a"][:8], "b": y["b"][:8]},
        batch_size=4,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    assert b_loss == pytest.approx(ref_hist.history["b_loss"][0], rel=1e-5)


# ------------------------------------ aggregators over the present rows only
# Three tasks (a: 3 classes, b and c: regression). All three heads are
# created in every model, so any subset of them starts from the same weights.
THREE = ("a", "b", "c")


def _data3(seed: int = 10):
    x, y = _data(seed)
    y["c"] = np.random.default_rng(seed + 1).standard_normal(N).astype("float32")
    return x, y


def _model3(tasks, aggregator, jit_compile="auto", representation=False, **kwargs):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
    heads = {
        "a": keras.layers.Dense(3, activation="softmax", name="a")(h),
        "b": keras.layers.Dense(1, name="b")(h),
        "c": keras.layers.Dense(1, name="c")(h),
    }
    net = keras.Model(inputs, {t: heads[t] for t in tasks})
    if representation:
        kwargs["representation"] = "trunk"
    if isinstance(aggregator, tuple):  # (alias, options): a fresh instance
        aggregator = keras_mtl.aggregation.get(aggregator[0], **aggregator[1])
    model = keras_mtl.MultiTaskModel(net, aggregator=aggregator, **kwargs)
    losses = {"a": "sparse_categorical_crossentropy", "b": "mse", "c": "mse"}
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={t: losses[t] for t in tasks},
        jit_compile=jit_compile,
    )
    return model


def _layer_values(model, names):
    return {
        f"{name}/{v.name}": np.array(keras.ops.convert_to_numpy(v))
        for name in names
        for v in model.net.get_layer(name).variables
    }


def _assert_same_step(full, pair, names=("trunk", "a", "c")):
    """The parameters of `full` (tasks a, b, c; b absent) equal those of
    `pair` (tasks a and c). The same rows in a Gramian or Jacobian of
    another size round differently in float32, and an iterative solver
    returns its direction to ~1e-4 of its norm (measured between XLA and
    op-by-op runs on one CPU): two steps of 0.1 x a direction of norm O(1)
    differ by up to ~2e-5. Another direction (the sum of the rows instead
    of the aggregator's) moves the trunk by ~1e-2 differently."""
    got, want = _layer_values(full, names), _layer_values(pair, names)
    for key in want:
        np.testing.assert_allclose(
            got[key], want[key], rtol=1e-5, atol=3e-5, err_msg=key
        )


def _assert_state_gathered(full, pair, before, absent=1):
    """The aggregator's state: the entries of tasks a and c (along the
    axes of length 3 in `full`, 2 in `pair`) are `pair`'s, those of the
    absent task b are `before`; variables without a task axis are `pair`'s.
    Normalised entries (weights on the simplex, or summing to the number of
    tasks) are `pair`'s up to the share of a and c in `full`."""
    kept = [i for i in range(3) if i != absent]
    for variable, other, old in zip(
        full.aggregator.variables, pair.aggregator.variables, before, strict=True
    ):
        value = np.array(keras.ops.convert_to_numpy(variable))
        theirs = np.array(keras.ops.convert_to_numpy(other))
        axes = [i for i, (k, m) in enumerate(zip(value.shape, theirs.shape)) if k != m]
        assert all(value.shape[i] == 3 and theirs.shape[i] == 2 for i in axes)
        present = value
        for axis in axes:
            present = np.take(present, kept, axis=axis)
        total = full.aggregator.state_task_total(variable)
        if total is not None:
            present = present / present.sum() * (1.0 if total == "one" else 2.0)
        # O(1) weights and gradients from the same solvers: ~1e-4 of them.
        np.testing.assert_allclose(
            present, theirs, rtol=1e-4, atol=1e-6, err_msg=variable.path
        )
        for axis in axes:
            np.testing.assert_array_equal(
                np.take(value, [absent], axis=axis),
                np.take(old, [absent], axis=axis),
                err_msg=variable.path,
            )


# Gramian route (MGDA, UPGrad, PCGrad and GradVac with their random orders,
# CAGrad, IMTL-G, Nash-MTL with stored weights, SDMGrad's simplex weights)
# and Jacobian route (MoCo's tracked gradients [K, D] and simplex weights,
# GradNorm's losses and weights, which sum to the number of tasks).
PRESENT_ROWS = {
    "mgda": ("mgda", {}),
    "upgrad": ("upgrad", {}),
    "pcgrad": ("pcgrad", {"seed": 3}),
    "cagrad": ("cagrad", {}),
    "imtl_g": ("imtl_g", {}),
    "nash_mtl": ("nash_mtl", {"update_every": 2}),
    "gradvac": ("gradvac", {"seed": 3, "beta": 0.5}),
    "sdmgrad": ("sdmgrad", {}),
    "moco": ("moco", {}),
    "gradnorm": ("gradnorm", {"learning_rate": 0.5}),
}


def _check_absent_task_left_out(name, **options):
    """Task b without labels in two steps (the second uses the state of
    the first): the model of tasks a, b, c takes the steps of the same
    aggregator on the model of tasks a and c alone, and b's entries of the
    aggregator's state are untouched."""
    x, y = _data3()
    absent = {**y, "b": np.full(N, np.nan, "float32")}
    full = _model3(THREE, PRESENT_ROWS[name], **options)
    pair = _model3(("a", "c"), PRESENT_ROWS[name], **options)
    before = _values(full.aggregator.variables)
    start = _layer_values(full, ["trunk"])
    for _ in range(2):
        full.train_on_batch(x, absent)
        pair.train_on_batch(x, {t: y[t] for t in ("a", "c")})
    _assert_same_step(full, pair)
    _assert_state_gathered(full, pair, before)
    moved = _layer_values(full, ["trunk"])
    assert max(np.abs(moved[k] - start[k]).max() for k in start) > 1e-3


@pytest.mark.parametrize("name", [n for n in PRESENT_ROWS if n != "upgrad"])
def test_an_absent_task_is_left_out_of_the_aggregation(name):
    _check_absent_task_left_out(name)


@pytest.mark.parametrize(
    "name, jit_compile, representation",
    # "auto": XLA on JAX, not on TensorFlow on the CPU.
    [("nash_mtl", True, False), ("pcgrad", "auto", True), ("upgrad", "auto", True)],
    ids=["nash_mtl_xla", "pcgrad_representation", "upgrad_representation"],
)
def test_an_absent_task_under_xla_and_in_representation_mode(
    name, jit_compile, representation
):
    _check_absent_task_left_out(
        name, jit_compile=jit_compile, representation=representation
    )


def test_a_single_present_task_gets_the_aggregators_one_row_direction():
    """Only task a labelled: MGDA's direction of one row is the row itself
    (the trunk moves as with the plain sum), Nash-MTL's the row scaled to
    norm 1."""
    x, y = _data3(12)
    nan = np.full(N, np.nan, "float32")
    only_a = {**y, "b": nan, "c": nan}
    steps = {}
    for name in ("sum", "mgda", "nash_mtl"):
        model = _model3(THREE, name)
        start = _layer_values(model, ["trunk"])
        model.train_on_batch(x, only_a)
        after = _layer_values(model, ["trunk"])
        steps[name] = np.concatenate([(after[k] - start[k]).ravel() for k in start])
    # SGD(0.1): the step is -0.1 x the direction.
    np.testing.assert_allclose(steps["mgda"], steps["sum"], rtol=1e-5, atol=1e-7)
    gradient = steps["sum"] / -0.1
    expected = -0.1 * gradient / np.linalg.norm(gradient)
    np.testing.assert_allclose(steps["nash_mtl"], expected, rtol=1e-4, atol=1e-7)


def test_an_aggregator_that_needs_more_rows_sums_them_and_warns():
    """TrimmedMean(trim_number=1) combines at least 3 rows: with task b
    absent the step sums the other two (as `sum` does) and says so."""
    x, y = _data3(13)
    absent = {**y, "b": np.full(N, np.nan, "float32")}
    full = _model3(THREE, ("trimmed_mean", {"trim_number": 1}))
    summed = _model3(("a", "c"), "sum")
    with pytest.warns(
        UserWarning, match=r"only 1 or 2 of them.*TrimmedMean combines at least 3 rows"
    ):
        full.train_on_batch(x, absent)
    summed.train_on_batch(x, {t: y[t] for t in ("a", "c")})
    _assert_same_step(full, summed)


def test_more_absent_tasks_than_branches_sum_the_present_rows(monkeypatch):
    from keras_mtl.trainers import present_rows

    x, y = _data3(14)
    nan = np.full(N, np.nan, "float32")
    only_a = {**y, "b": nan, "c": nan}
    summed = _model3(THREE, "sum")
    summed.train_on_batch(x, only_a)
    # Read when the model's step is first built.
    monkeypatch.setattr(present_rows, "MAX_ABSENT_BRANCHES", 1)
    full = _model3(THREE, "mgda")
    with pytest.warns(UserWarning, match=r"3 tasks.*only 1 of them.*at most 1 absent"):
        full.train_on_batch(x, only_a)
    _assert_same_step(full, summed, names=("trunk", "a"))


def test_missing_label_is_validated_and_saved():
    with pytest.raises(ValueError, match="unknown task"):
        _model(missing_label={"c": -1})
    with pytest.raises(ValueError, match="missing_label"):
        _model(missing_label={"a": "none"})
    model = _model(missing_label={"a": -1})
    assert model.get_config()["missing_label"] == {"a": -1}
    clone = keras_mtl.MultiTaskModel.from_config(model.get_config())
    assert clone.missing_label == {"a": -1}


# ------------------------------------------------------ compiled metrics
def _metric_model(jit_compile, **compile_kwargs):
    model = _model(missing_label={"a": -1})
    model.compile(
        optimizer="sgd",
        loss={"a": "sparse_categorical_crossentropy", "b": "mse"},
        jit_compile=jit_compile,
        **compile_kwargs,
    )
    return model


def _labelled_references(model, x, y, weight_b=None):
    """Accuracy of `a` and MAE of `b` over the labelled examples (numpy)."""
    pred = model.predict(x, verbose=0)
    ok_a = y["a"] >= 0
    accuracy = np.mean(pred["a"][ok_a].argmax(-1) == y["a"][ok_a])
    ok_b = ~np.isnan(y["b"])
    errors = np.abs(pred["b"][:, 0] - y["b"])[ok_b]
    weights = np.ones(N) if weight_b is None else weight_b
    mae = np.sum(errors * weights[ok_b]) / np.sum(weights[ok_b])
    return accuracy, mae


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("argument", ["metrics", "weighted_metrics"])
def test_compiled_metrics_see_the_labelled_examples_only(argument, jit_compile):
    x, y = _data()
    y["a"][[1, 4, 5]] = -1
    y["b"][[0, 4, 9]] = np.nan
    metrics = {"a": ["sparse_categorical_accuracy"], "b": ["mae"]}
    model = _metric_model(jit_compile, **{argument: metrics})
    weight_b = None
    sample_weight = None
    if argument == "weighted_metrics":
        # A zero sample weight marks a missing label too; others weigh in.
        weight_b = np.linspace(0.5, 2.0, N).astype("float32")
        weight_b[[2, 3]] = 0.0
        sample_weight = {"a": np.ones(N, "float32"), "b": weight_b}
    logs = model.evaluate(
        x, y, sample_weight=sample_weight, batch_size=N, verbose=0, return_dict=True
    )
    accuracy, mae = _labelled_references(model, x, y, weight_b)
    # Metric names are Keras' own for either argument (no "weighted_" prefix).
    assert logs["a_sparse_categorical_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert logs["b_mae"] == pytest.approx(mae, rel=1e-5)
    # `metrics` are unweighted, as in Keras: the sample weight is not used.
    if argument == "metrics":
        weighted = model.evaluate(
            x,
            y,
            sample_weight={"a": np.ones(N), "b": np.linspace(0.5, 2.0, N)},
            batch_size=N,
            verbose=0,
            return_dict=True,
        )
        assert weighted["b_mae"] == pytest.approx(mae, rel=1e-5)


def test_metrics_with_weighted_metrics_warn_that_they_count_missing_labels():
    with pytest.warns(UserWarning, match="count every example"):
        _metric_model(False, metrics={"b": ["mae"]}, weighted_metrics={"b": ["mse"]})


def test_compiled_metrics_are_saved_as_given(tmp_path):
    x, y = _data()
    y["b"][[0, 4]] = np.nan
    model = _metric_model(False, metrics={"a": ["sparse_categorical_accuracy"]})
    config = model.get_compile_config()
    assert config["metrics"] == {"a": ["sparse_categorical_accuracy"]}
    assert config["weighted_metrics"] is None
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    before = model.evaluate(x, y, batch_size=N, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, batch_size=N, verbose=0, return_dict=True)
    assert sorted(after) == sorted(before)
    assert after["a_sparse_categorical_accuracy"] == pytest.approx(
        before["a_sparse_categorical_accuracy"]
    )


# ------------------------------------------- labels a task's loss cannot take
@pytest.mark.parametrize("call", ["fit", "train_on_batch", "evaluate"])
@pytest.mark.parametrize(
    "task, labels, shapes",
    [
        # Ten classes (the net's "a" has three): labels (N, 3) for a sparse
        # crossentropy fail in Keras; labels (N, 2) against the output
        # (N, 1) of an MSE would broadcast silently.
        ("a", np.zeros((N, 3), "int32"), r"labels of shape \((16|None), 3\)"),
        ("b", np.zeros((N, 2), "float32"), r"labels of shape \((16|None), 2\)"),
    ],
    ids=["sparse_ce_labels_n_3", "mse_labels_n_2"],
)
def test_a_label_shape_error_names_the_task(call, task, labels, shapes):
    x, y = _data(6)
    y[task] = labels
    model = _model()
    run = {
        "fit": lambda: model.fit(x, y, epochs=1, verbose=0),
        "train_on_batch": lambda: model.train_on_batch(x, y),
        "evaluate": lambda: model.evaluate(x, y, verbose=0),
    }[call]
    with pytest.raises(ValueError, match=rf"Task '{task}'.*{shapes}.*outputs") as info:
        run()
    other = "b" if task == "a" else "a"
    assert f"Task '{other}'" not in str(info.value)


def test_keras_shape_error_is_kept_as_the_cause():
    """Checked on the task losses: Keras' traceback filtering drops the
    cause of an error raised through `fit`, so the message repeats it."""
    x, y = _data(7)
    model = _model()
    y["a"] = np.zeros((N, 3), "int32")
    outputs = model(x)
    with pytest.raises(ValueError, match="Task 'a'") as info:
        model._task_losses.masked(y, outputs)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and "Task" not in str(cause)
    assert str(cause) in str(info.value)


@pytest.mark.parametrize("call", ["fit", "train_on_batch", "test_on_batch"])
def test_string_labels_name_the_task(call):
    x, y = _data(8)
    y["b"] = np.array(["yes", "no"] * (N // 2))
    model = _model()
    with pytest.raises(ValueError, match=r"Task 'b'.*dtype str.*StringLookup"):
        if call == "fit":
            model.fit(x, y, epochs=1, verbose=0)
        else:
            getattr(model, call)(x, y)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="string tensors: TensorFlow"
)
def test_string_labels_from_a_dataset_name_the_task_at_trace_time():
    import tensorflow as tf

    x, y = _data(9)
    y["b"] = np.array(["yes", "no"] * (N // 2))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = _model()
    with pytest.raises(ValueError, match=r"Task 'b'.*dtype string"):
        model.fit(data, epochs=1, verbose=0)


# ------------------------------------------- two replicas (MirroredStrategy)
_MIRRORED = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras
import keras_mtl

def build(weighting="uncertainty", aggregator=None):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
    net = keras.Model(inputs, {"a": keras.layers.Dense(3, activation="softmax", name="a")(h), "b": keras.layers.Dense(1, name="b")(h)})
    model = keras_mtl.MultiTaskModel(net, weighting=weighting, aggregator=aggregator, missing_label={"a": -1})
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"a": "sparse_categorical_crossentropy", "b": "mse"})
    return model

rng = np.random.default_rng(0)
x = rng.standard_normal((32, 4)).astype("float32")
y = {"a": rng.integers(0, 3, 32).astype("int32"), "b": rng.standard_normal(32).astype("float32")}
# Batch 1: b labelled on 3 + 4 rows (unequal per half), a on all but 5.
y["b"][3:12] = np.nan
y["a"][[0, 2, 9, 10, 11]] = -1
# Batch 2: b labelled in its first half only (one replica has none).
y["b"][24:32] = np.nan
# Nash-MTL (stored weights): b labelled in batch 1 only, so batch 2 is
# aggregated over a's row alone.
y_nash = {"a": y["a"], "b": y["b"].copy()}
y_nash["b"][16:32] = np.nan
runs = {"uncertainty": ({}, y), "nash_mtl": ({"weighting": "equal", "aggregator": "nash_mtl"}, y_nash)}
out = {}
for run, (options, targets) in runs.items():
    out[run] = {}
    for name in ("single", "mirrored"):
        if name == "mirrored":
            with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
                model = build(**options)
        else:
            model = build(**options)
        history = model.fit(x, targets, batch_size=16, epochs=1, shuffle=False, verbose=0)
        out[run][name] = {
            "weights": [np.asarray(v).ravel().tolist() for v in model.get_weights()],
            "history": {k: v[0] for k, v in history.history.items()},
        }
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute: TensorFlow"
)
def test_two_replicas_give_the_one_device_masked_mean(tmp_path):
    """Each task's loss is the mean over the labelled examples of the
    global batch, also when the replicas hold different numbers of them
    (and one holds none): the same training as on one device; and with
    an aggregator, a batch without b's labels is aggregated over the
    present row on both replicas alike."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for run, result in json.loads(out.read_text()).items():
        single, mirrored = result["single"], result["mirrored"]
        assert set(single["history"]) == set(mirrored["history"]), run
        for key, value in single["history"].items():
            # Sums of 16 float32 terms split over 2 replicas: a few ulps.
            assert mirrored["history"][key] == pytest.approx(value, rel=1e-5), key
        for u, v in zip(single["weights"], mirrored["weights"], strict=True):
            np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6, err_msg=run)

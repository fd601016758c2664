"""Bad inputs give clear errors; a non-finite step never reaches the weights."""

import re

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.weighting import BMTL

pytestmark = pytest.mark.backend_neutral


# ------------------------------------------------------ configuration errors
def test_loss_dict_naming_an_unknown_task(make_net, task_losses):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=r"unknown task.*'colour'"):
        model.compile(loss={**task_losses, "colour": "mse"})


def test_loss_dict_missing_a_task(make_net):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=r"no entry for task.*'parity'"):
        model.compile(loss={"digit": "sparse_categorical_crossentropy"})


def test_loss_none_for_a_task(make_net):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=r"Task 'parity' has no loss"):
        model.compile(loss={"digit": "sparse_categorical_crossentropy", "parity": None})
    with pytest.raises(ValueError, match=r"needs a loss for every task"):
        model.compile(loss=None)


def test_loss_list_of_the_wrong_length(make_net):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=r"list of 1 entries for 2 tasks"):
        model.compile(loss=["mse"])


def test_unknown_loss_name_names_the_task(make_net):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=r"Task 'parity': unknown loss 'no_such_loss'"):
        model.compile(loss={"digit": "mse", "parity": "no_such_loss"})


def test_fewer_than_two_tasks():
    inputs = keras.Input((64,))
    single = keras.Model(inputs, keras.layers.Dense(1, name="only")(inputs))
    with pytest.raises(ValueError, match=r"at least 2 tasks.*'only'"):
        keras_mtl.MultiTaskModel(single)
    one_key = keras.Model(inputs, {"only": keras.layers.Dense(1)(inputs)})
    with pytest.raises(ValueError, match=r"at least 2 tasks"):
        keras_mtl.MultiTaskModel(one_key)


def test_tasks_not_matching_the_outputs(make_net):
    with pytest.raises(ValueError, match=r"'colour'.*do not match"):
        keras_mtl.MultiTaskModel(make_net(), tasks=["digit", "colour"])


def test_unknown_weighting_lists_the_valid_names(make_net):
    with pytest.raises(ValueError, match="Unknown weighting 'nope'") as info:
        keras_mtl.MultiTaskModel(make_net(), weighting="nope")
    for name in keras_mtl.weighting.names():
        assert name in str(info.value)


@pytest.mark.parametrize("alias", ["adaptive", "dwa", "bmtl"])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_temperature_must_be_positive(alias, temperature):
    with pytest.raises(ValueError, match="temperature must be"):
        keras_mtl.weighting.get(alias, temperature=temperature)


def test_bmtl_transform_must_be_increasing_and_convex():
    with pytest.raises(ValueError, match="not increasing"):
        BMTL(transform=lambda loss: -loss)
    with pytest.raises(ValueError, match="not convex"):
        BMTL(transform=lambda loss: keras.ops.sqrt(loss + 1.0))
    BMTL(transform=lambda loss: loss * loss + loss)  # increasing and convex


def test_metrics_naming_an_unknown_task(make_net, task_losses):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=r"metrics names unknown task.*'colour'"):
        model.compile(loss=task_losses, metrics={"colour": ["accuracy"]})
    with pytest.raises(ValueError, match=r"weighted_metrics.*'colour'"):
        model.compile(loss=task_losses, weighted_metrics={"colour": ["accuracy"]})


@pytest.mark.parametrize(
    "loss_weights, pattern",
    [
        ({"digit": 1.0, "colour": 1.0}, r"unknown task.*'colour'"),
        ({"digit": 1.0}, r"no entry for task.*'parity'"),
        (
            {"digit": 1.0, "parity": -0.5},
            r"loss_weights\['parity'\] must be finite and >= 0",
        ),
        ({"digit": 1.0, "parity": float("inf")}, r"loss_weights\['parity'\]"),
        (
            {"digit": 1.0, "parity": "heavy"},
            r"loss_weights\['parity'\] must be a number",
        ),
        ([1.0], r"list of 1 entries for 2 tasks"),
    ],
)
def test_bad_loss_weights(loss_weights, pattern, make_net, task_losses):
    model = keras_mtl.MultiTaskModel(make_net())
    with pytest.raises(ValueError, match=pattern):
        model.compile(loss=task_losses, loss_weights=loss_weights)


def test_targets_missing_a_task_or_with_an_extra_key(digits, make_model):
    model = make_model()
    x, y = digits.batch()
    with pytest.raises(ValueError, match=r"missing task.*'parity'"):
        model.fit(x, {"digit": y["digit"]}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"'colour'.*not tasks"):
        model.fit(x, {**y, "colour": y["parity"]}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"single"):
        model.train_on_batch(x, y["digit"])


def test_on_nonfinite_must_be_raise_or_skip(make_net):
    with pytest.raises(ValueError, match=r"on_nonfinite.*'ignore'"):
        keras_mtl.MultiTaskModel(make_net(), on_nonfinite="ignore")


# ------------------------------------------------------- non-finite at run time
BAD_BATCH = 3  # 0-based index of the batch with an infinite parity target
# torch checks a binary cross-entropy target: an infinite one raises a
# RuntimeError in Keras' loss, before any loss exists (eagerly always, under
# torch.compile at times). tests/trainers/test_torch_trainer.py skips
# non-finite steps on torch with a regression loss instead.
_TORCH_REJECTS_INF_TARGET = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="torch's binary_cross_entropy raises on a target outside [0, 1]",
)


def _inf_targets(digits):
    # inf, not NaN: a NaN label is a missing label (no loss, no error); an
    # infinite one makes the parity loss alone non-finite.
    y = {k: v.copy() for k, v in digits.y.items()}
    y["parity"][BAD_BATCH * 64 + 5] = np.inf
    return y


class Snapshot(keras.callbacks.Callback):
    """Copies every weight, weighting and optimizer variable before a batch."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch
        self.values = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch and self.values is None:
            self.values = _state(self.model)


def _state(model):
    variables = (
        model.net.variables + model.weighting.variables + model.optimizer.variables
    )
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in variables}


@_TORCH_REJECTS_INF_TARGET
@pytest.mark.parametrize("alias, jit_compile", [("dwa", False), ("uncertainty", True)])
def test_nonfinite_raise_names_task_and_step_and_changes_nothing(
    alias, jit_compile, digits, make_model
):
    model = make_model(alias, jit_compile=jit_compile)
    snapshot = Snapshot(BAD_BATCH)
    with pytest.raises(FloatingPointError) as info:
        model.fit(
            digits.x,
            _inf_targets(digits),
            epochs=2,
            batch_size=64,
            shuffle=False,
            verbose=0,
            callbacks=[snapshot],
        )
    message = str(info.value)
    assert "'parity'" in message and "'digit'" not in message
    assert re.search(rf"step {BAD_BATCH}\b", message), message
    assert f"batch {BAD_BATCH + 1}" in message

    after = _state(model)
    assert snapshot.values is not None and set(after) == set(snapshot.values)
    assert any(k.endswith("log_variances") or "epoch_history" in k for k in after)
    for path, value in after.items():
        assert np.all(np.isfinite(value)), path
        np.testing.assert_array_equal(value, snapshot.values[path], err_msg=path)
    assert int(model.optimizer.iterations.numpy()) == BAD_BATCH
    assert int(model.skipped_steps.numpy()) == 1
    assert int(model.last_nonfinite_step.numpy()) == BAD_BATCH
    np.testing.assert_array_equal(model.nonfinite_tasks.numpy(), [0, 1])


@_TORCH_REJECTS_INF_TARGET
@pytest.mark.parametrize("alias, jit_compile", [("dwa", True), ("rlw", False)])
def test_nonfinite_skip_goes_on(alias, jit_compile, digits, make_model):
    model = make_model(alias, on_nonfinite="skip", jit_compile=jit_compile)
    history = model.fit(
        digits.x,
        _inf_targets(digits),
        epochs=3,
        batch_size=64,
        shuffle=False,
        verbose=0,
    )
    assert int(model.skipped_steps.numpy()) == 3  # one bad batch per epoch
    assert int(model.train_steps.numpy()) == 3 * 8
    assert int(model.optimizer.iterations.numpy()) == 3 * 7
    assert int(model.last_nonfinite_step.numpy()) == 2 * 8 + BAD_BATCH
    for path, value in _state(model).items():
        assert np.all(np.isfinite(value)), path
    for key, values in history.history.items():
        assert np.all(np.isfinite(values)), (key, values)
    # The good steps still train both tasks.
    for task in ("digit", "parity"):
        values = history.history[f"{task}_loss"]
        assert values[-1] < values[0], (task, values)
    if alias == "dwa":  # epoch history stayed clean: real DWA weights
        assert abs(history.history["digit_weight"][-1] - 1.0) > 1e-4


@_TORCH_REJECTS_INF_TARGET
def test_train_on_batch_raises_and_leaves_weights_alone(digits, make_model):
    model = make_model("uncertainty")
    x, y = digits.batch(BAD_BATCH * 64)
    y["parity"] = np.full_like(y["parity"], np.inf)  # NaN would be missing
    model.optimizer.build(model.trainable_variables)
    before = _state(model)
    with pytest.raises(FloatingPointError, match=r"'parity'.*step 0"):
        model.train_on_batch(x, y)
    for path, value in _state(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
    # A later finite batch trains normally.
    logs = model.train_on_batch(*digits.batch(), return_dict=True)
    assert np.isfinite(logs["loss"])
    assert int(model.optimizer.iterations.numpy()) == 1


def test_nonfinite_objective_with_finite_task_losses(digits, make_model):
    # The literal BMTL objective exp(L / T) overflows at L / T > 88.
    model = make_model(BMTL(temperature=0.01, normalize=False))
    with pytest.raises(FloatingPointError, match="objective or its gradient"):
        model.train_on_batch(*digits.batch())
    assert int(model.optimizer.iterations.numpy()) == 0

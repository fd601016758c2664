"""Tests of AdaptiveWeighting (Huq & Pervin 2022): harder tasks weigh more."""

import keras
import numpy as np
import pytest
from _backend import compiled, dtype_of, tensor, to_numpy, value_and_gradient
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_mtl
from keras_mtl.weighting import AdaptiveWeighting

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.5, 2.0, 1.0, 3.5], np.float32)


def np_softmax_weights(losses, temperature):
    z = np.asarray(losses, np.float64) / temperature
    e = np.exp(z - z.max())
    return len(z) * e / e.sum()


def np_proportional_weights(losses):
    levels = np.asarray(losses, np.float64)
    return len(levels) * levels / levels.sum()


def weights_of(w, losses, **kwargs):
    return to_numpy(w(tensor(losses, "float32"), **kwargs)[1])


# ---------------------------------------------------------------- step mode
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0, 10.0])
def test_softmax_form(temperature):
    w = AdaptiveWeighting(temperature=temperature)
    objective, weights = w(tensor(LOSSES))
    expected = np_softmax_weights(LOSSES, temperature)
    np.testing.assert_allclose(to_numpy(weights), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(objective), np.sum(expected * LOSSES), rtol=1e-5)


def test_docstring_example():
    w = keras_mtl.weighting.get("adaptive", temperature=1.0)
    _, weights = w(tensor([0.5, 2.0]))
    np.testing.assert_allclose(to_numpy(weights), [0.365, 1.635], atol=1e-3)


def test_proportional_form():
    w = AdaptiveWeighting(form="proportional")
    objective, weights = w(tensor(LOSSES))
    expected = np_proportional_weights(LOSSES)
    np.testing.assert_allclose(to_numpy(weights), expected, rtol=1e-6)
    np.testing.assert_allclose(float(objective), np.sum(expected * LOSSES), rtol=1e-6)


def test_proportional_form_ignores_temperature():
    a = weights_of(AdaptiveWeighting(form="proportional", temperature=0.1), LOSSES)
    b = weights_of(AdaptiveWeighting(form="proportional", temperature=50.0), LOSSES)
    np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("scale", [7.0, 1e-3, 1e4])
def test_proportional_form_is_scale_invariant(scale):
    w = AdaptiveWeighting(form="proportional")
    np.testing.assert_allclose(
        weights_of(w, LOSSES * scale), weights_of(w, LOSSES), rtol=1e-6
    )


@pytest.mark.parametrize("scale", [1e-35, 1e-25, 1e30, 5e37])
def test_proportional_form_at_extreme_scales(scale):
    # The weights must sum to K and be scale-free at any representable scale
    # (no underflow of the normaliser, no overflow of the sum).
    losses = np.array([1.0, 3.0, 0.0, 4.0])
    got = weights_of(AdaptiveWeighting(form="proportional"), losses * scale)
    np.testing.assert_allclose(got, np_proportional_weights(losses), rtol=1e-5)


def test_proportional_all_zero_losses_gives_equal_weights():
    got = weights_of(AdaptiveWeighting(form="proportional"), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(got, np.ones(3))


def test_proportional_clamps_negative_losses():
    got = weights_of(AdaptiveWeighting(form="proportional"), [-1.0, 1.0, 3.0])
    np.testing.assert_allclose(got, [0.0, 0.75, 2.25], rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_softmax_weights_sum_to_k_and_are_monotone(temperature):
    losses = np.array([0.1, 0.7, 0.7, 2.0, 5.0], np.float32)
    got = weights_of(AdaptiveWeighting(temperature=temperature), losses)
    np.testing.assert_allclose(got.sum(), 5.0, rtol=1e-6)
    assert np.all(np.diff(got) >= 0)
    assert got[1] == got[2]
    assert got[-1] > got[0]  # the harder task gets more


def test_large_temperature_gives_nearly_equal_weights():
    got = weights_of(AdaptiveWeighting(temperature=1e6), LOSSES)
    np.testing.assert_allclose(got, np.ones(4), rtol=1e-5)


def test_small_temperature_puts_weight_on_hardest_task():
    got = weights_of(AdaptiveWeighting(temperature=1e-3), LOSSES)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 4.0], atol=1e-6)


@pytest.mark.parametrize("form", ["softmax", "proportional"])
def test_huge_losses_give_finite_weights(form):
    w = AdaptiveWeighting(form=form)
    objective, weights = w(tensor([1e4, 3e4]))
    assert np.all(np.isfinite(to_numpy(weights)))
    assert np.isfinite(float(objective))
    np.testing.assert_allclose(to_numpy(weights).sum(), 2.0, rtol=1e-6)
    expected = [0.0, 2.0] if form == "softmax" else [0.5, 1.5]
    np.testing.assert_allclose(to_numpy(weights), expected, atol=1e-6)


@pytest.mark.parametrize("form", ["softmax", "proportional"])
@pytest.mark.parametrize("mode", ["step", "epoch"])
def test_gradient_equals_weights(form, mode):
    w = AdaptiveWeighting(temperature=1.5, form=form, mode=mode)
    losses = tensor([0.4, 1.2, 2.6])
    w.build((3,))
    if mode == "epoch":
        w.on_epoch_begin(0)
        w(tensor([1.0, 2.0, 0.5]))
        w.on_epoch_begin(1)
    (_, weights), grad, _ = value_and_gradient(w, losses)
    grad = to_numpy(grad)
    np.testing.assert_allclose(grad, to_numpy(weights), rtol=1e-6)
    if mode == "step":  # the weights depend on the losses but are constants
        assert not np.allclose(grad, 1.0)


def test_float16_input_is_cast():
    w = AdaptiveWeighting()
    objective, weights = w(tensor([0.5, 2.0], "float16"))
    assert dtype_of(weights) == "float32" and dtype_of(objective) == "float32"
    np.testing.assert_allclose(
        to_numpy(weights), np_softmax_weights([0.5, 2.0], 1.0), rtol=1e-5
    )


# --------------------------------------------------------------- epoch mode
EPOCHS = [
    [[1.0, 2.0, 0.5], [0.8, 1.6, 0.7], [0.9, 2.2, 0.6]],
    [[0.7, 1.9, 0.2], [0.5, 1.5, 0.3]],
    [[0.4, 1.0, 0.2], [0.6, 1.4, 0.2], [0.5, 1.2, 0.2], [0.3, 1.6, 0.2]],
    [[0.3, 0.9, 0.1]],
]


def epoch_means():
    return [np.mean(np.asarray(e, np.float64), axis=0) for e in EPOCHS]


def run_epochs(w, step):
    out = []
    for e, steps in enumerate(EPOCHS):
        w.on_epoch_begin(e)
        out.append([to_numpy(step(tensor(s, "float32"))[1]) for s in steps])
    return out


def make_epoch(**kwargs):
    w = AdaptiveWeighting(mode="epoch", **kwargs)
    w.build((3,))
    return w


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_epoch_mode_softmax(temperature):
    w = make_epoch(temperature=temperature)
    weights = run_epochs(w, w)
    means = epoch_means()
    for step_w in weights[0]:
        np.testing.assert_array_equal(step_w, np.ones(3))
    for e in (1, 2, 3):
        expected = np_softmax_weights(means[e - 1], temperature)
        for step_w in weights[e]:
            np.testing.assert_allclose(step_w, expected, rtol=1e-5)


def test_epoch_mode_proportional():
    w = make_epoch(form="proportional")
    weights = run_epochs(w, w)
    means = epoch_means()
    for e in (1, 2, 3):
        for step_w in weights[e]:
            np.testing.assert_allclose(
                step_w, np_proportional_weights(means[e - 1]), rtol=1e-5
            )


def test_epoch_mode_objective_uses_current_losses():
    w = make_epoch()
    run_epochs(w, w)
    w.on_epoch_begin(4)
    current = np.array([2.0, 0.1, 0.4], np.float32)
    objective, weights = w(tensor(current))
    expected = np_softmax_weights(np.asarray(EPOCHS[3][0]), 1.0)
    np.testing.assert_allclose(to_numpy(weights), expected, rtol=1e-5)
    np.testing.assert_allclose(float(objective), np.sum(expected * current), rtol=1e-5)


def test_training_false_changes_no_variable():
    w = make_epoch()
    w.on_epoch_begin(0)
    for s in EPOCHS[0]:
        w(tensor(s))
    w.on_epoch_begin(1)
    before = [to_numpy(v).copy() for v in w.variables]
    _, eval_weights = w(tensor([9.0, 9.0, 9.0]), training=False)
    _, eval_again = w(tensor([0.0, 5.0, 1.0]), training=False)
    for a, v in zip(before, w.variables, strict=True):
        np.testing.assert_array_equal(a, to_numpy(v))
    expected = np_softmax_weights(epoch_means()[0], 1.0)
    np.testing.assert_allclose(to_numpy(eval_weights), expected, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(eval_again), expected, rtol=1e-5)
    # The next training step sees the same weights as evaluation did.
    _, train_weights = w(tensor(EPOCHS[1][0]))
    np.testing.assert_allclose(to_numpy(train_weights), expected, rtol=1e-5)


def test_training_false_during_first_epoch():
    w = make_epoch()
    w.on_epoch_begin(0)
    w(tensor(EPOCHS[0][0]))
    before = [to_numpy(v).copy() for v in w.variables]
    _, weights = w(tensor([5.0, 0.0, 1.0]), training=False)
    np.testing.assert_array_equal(to_numpy(weights), np.ones(3))
    for a, v in zip(before, w.variables, strict=True):
        np.testing.assert_array_equal(a, to_numpy(v))


def test_step_mode_has_no_state():
    w = AdaptiveWeighting()
    w(tensor(LOSSES))
    assert w.variables == []
    w.on_epoch_begin(3)  # no-ops in step mode
    w.on_train_end()


@pytest.mark.parametrize("mode", ["step", "epoch"])
@pytest.mark.parametrize("form", ["softmax", "proportional"])
def test_eager_and_xla_agree(mode, form):
    eager = AdaptiveWeighting(mode=mode, form=form, temperature=0.7)
    jitted = AdaptiveWeighting(mode=mode, form=form, temperature=0.7)
    eager.build((3,))
    jitted.build((3,))
    step = compiled(lambda x: jitted(x), state=jitted, jit_compile=True)
    for a, b in zip(run_epochs(eager, eager), run_epochs(jitted, step), strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5)
    objective_e, _ = eager(tensor([0.3, 0.2, 1.0]))
    objective_j, _ = step(tensor([0.3, 0.2, 1.0]))
    np.testing.assert_allclose(float(objective_e), float(objective_j), rtol=1e-5)


# ------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 3.0},
        {"temperature": 0.25, "mode": "epoch"},
        {"form": "proportional", "mode": "epoch"},
    ],
)
def test_config_round_trip(kwargs):
    w = keras_mtl.weighting.get("adaptive", **kwargs)
    assert type(w) is AdaptiveWeighting
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert type(restored) is AdaptiveWeighting
    for key in ("temperature", "mode", "form"):
        assert getattr(restored, key) == getattr(w, key)
    via_get = keras_mtl.weighting.get(keras_mtl.weighting.serialize(w))
    assert via_get.get_config() == w.get_config()
    np.testing.assert_allclose(weights_of(restored, LOSSES), weights_of(w, LOSSES))


def test_defaults():
    w = keras_mtl.weighting.get("adaptive")
    assert (w.temperature, w.mode, w.form) == (1.0, "step", "softmax")


def test_epoch_state_survives_set_weights():
    w = make_epoch(temperature=0.5)
    for e, steps in enumerate(EPOCHS[:3]):
        w.on_epoch_begin(e)
        for s in steps:
            w(tensor(s))
    clone = AdaptiveWeighting.from_config(w.get_config())
    clone.build((3,))
    clone.set_weights(w.get_weights())
    for x in (w, clone):
        x.on_epoch_begin(3)
    np.testing.assert_allclose(
        weights_of(clone, EPOCHS[3][0]), weights_of(w, EPOCHS[3][0])
    )


@pytest.mark.parametrize(
    "bad", [0.0, -1.0, float("nan"), float("inf"), "hot", None, [1.0]]
)
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        AdaptiveWeighting(temperature=bad)


@pytest.mark.parametrize("mode", ["batch", "Epoch", None])
def test_bad_mode(mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        AdaptiveWeighting(mode=mode)


@pytest.mark.parametrize("form", ["linear", "Softmax", None])
def test_bad_form(form):
    with pytest.raises(ValueError, match="form must be one of"):
        AdaptiveWeighting(form=form)


@pytest.mark.parametrize("mode", ["step", "epoch"])
def test_fewer_than_two_tasks(mode):
    with pytest.raises(ValueError, match="at least 2 tasks"):
        AdaptiveWeighting(mode=mode)(tensor([1.0]))


@pytest.mark.parametrize("shape", [(), (2, 3), (1, 4)])
def test_non_vector_input(shape):
    with pytest.raises(ValueError, match="1-D"):
        AdaptiveWeighting()(keras.ops.ones(shape))


def test_unknown_alias_lists_valid_names():
    with pytest.raises(ValueError, match="adaptive.*bmtl"):
        keras_mtl.weighting.get("adaptiv")


# ------------------------------------------------------- property tests
loss_vectors = st.integers(2, 8).flatmap(
    lambda k: st.lists(
        st.floats(0.0, 50.0, width=32, allow_nan=False), min_size=k, max_size=k
    )
)
_SOFTMAX = {T: AdaptiveWeighting(temperature=T) for T in (1.0, 5.0)}
_PROPORTIONAL = AdaptiveWeighting(form="proportional")


def _call(w, losses):
    # A fresh layer per K (a layer is built for one number of tasks).
    fresh = AdaptiveWeighting.from_config(w.get_config())
    return to_numpy(fresh(tensor(losses, "float32"))[1]).astype(np.float64)


def _check_common(losses, weights):
    k = len(losses)
    assert weights.shape == (k,)
    assert np.all(np.isfinite(weights))
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(), k, rtol=1e-4)
    order = np.argsort(np.asarray(losses, np.float32), kind="stable")
    assert np.all(np.diff(weights[order]) >= 0), (losses, weights)


@settings(deadline=None, max_examples=30)
@given(losses=loss_vectors, temperature=st.sampled_from([1.0, 5.0]), data=st.data())
def test_property_softmax(losses, temperature, data):
    weights = _call(_SOFTMAX[temperature], losses)
    perm = data.draw(st.permutations(range(len(losses))))
    _check_common(losses, weights)
    assert np.all(weights > 0)
    permuted = _call(_SOFTMAX[temperature], [losses[i] for i in perm])
    np.testing.assert_allclose(permuted, weights[list(perm)], rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(
        weights, np_softmax_weights(np.float32(losses), temperature), rtol=1e-4
    )


@settings(deadline=None, max_examples=30)
@given(losses=loss_vectors, data=st.data())
def test_property_proportional(losses, data):
    weights = _call(_PROPORTIONAL, losses)
    perm = data.draw(st.permutations(range(len(losses))))
    _check_common(losses, weights)
    levels = np.asarray(losses, np.float32)
    # TensorFlow flushes subnormal floats to zero on CPU: a vector whose
    # largest loss is subnormal counts as all-zero (equal weights).
    if levels.max() >= np.finfo(np.float32).tiny:
        assert np.all(weights[levels == 0] == 0)
        assert weights[np.argmax(levels)] > 0
    permuted = _call(_PROPORTIONAL, [losses[i] for i in perm])
    np.testing.assert_allclose(permuted, weights[list(perm)], rtol=1e-5, atol=1e-30)
    # Scale invariance, where no loss is subnormal: one that 7x makes normal
    # (1e-38 -> 7e-38) would count as zero before and not after.
    if np.all((levels == 0) | (levels >= np.finfo(np.float32).tiny)):
        scaled = _call(_PROPORTIONAL, list(levels * np.float32(7.0)))
        np.testing.assert_allclose(scaled, weights, rtol=1e-5, atol=1e-6)

"""Tests of STCH (smooth Tchebycheff scalarization, Lin et al. 2024),
keras_mtl/weighting/stch.py."""

import numpy as np
import pytest
from _backend import compiled, tensor, to_numpy, value_and_gradient

import keras_mtl
from keras_mtl.weighting import STCH

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.7, 2.0, 0.1], dtype=np.float32)


def logsumexp(x):
    return x.max() + np.log(np.sum(np.exp(x - x.max())))


def plain_reference(losses, mu, preference, ideal):
    """K * mu * logsumexp(w (L - z) / mu) and its gradient, float64."""
    losses = np.asarray(losses, np.float64)
    k = len(losses)
    scaled = np.asarray(preference, np.float64) * (losses - ideal) / mu
    softmax = np.exp(scaled - logsumexp(scaled))
    return k * mu * logsumexp(scaled), k * softmax * np.asarray(preference)


def libmtl_reference(epochs, warmup, mu):
    """LibMTL's `STCH.backward` in float64: [(objective, gradient)] per
    step, with `epochs` a list of epochs, each a list of loss vectors."""
    out, total, count, nadir = [], 0.0, 0, None
    for epoch, steps in enumerate(epochs):
        for losses in steps:
            losses = np.asarray(losses, np.float64)
            if epoch <= warmup:
                if epoch == warmup:
                    total, count = total + losses, count + 1
                out.append((np.sum(np.log(losses + 1e-20)), 1.0 / (losses + 1e-20)))
                continue
            if nadir is None:
                nadir = total / count
            terms = np.log(losses / nadir + 1e-20)
            k = len(losses)
            softmax = np.exp(terms / mu - logsumexp(terms / mu))
            grad = k * softmax / (nadir * (losses / nadir + 1e-20))
            out.append((k * mu * logsumexp(terms / mu), grad))
    return out


def test_plain_form_matches_reference_and_autodiff():
    preference, ideal = [0.5, 1.0, 2.0], [0.1, -0.2, 0.0]
    w = STCH(mu=0.3, warmup_epoch=None, preference=preference, ideal_point=ideal)
    (objective, weights), gradient, _ = value_and_gradient(w, tensor(LOSSES))
    exp_obj, exp_w = plain_reference(LOSSES, 0.3, preference, np.array(ideal))
    np.testing.assert_allclose(float(objective), exp_obj, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), exp_w, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(gradient), exp_w, rtol=1e-5)
    assert w.variables == []


def test_small_mu_tends_to_the_tchebycheff_maximum():
    w = STCH(mu=1e-3, warmup_epoch=None)
    objective, weights = w(tensor(LOSSES))
    # K * max_i L_i; all the weight (K) on the largest loss.
    np.testing.assert_allclose(float(objective), 3 * 2.0, rtol=1e-3)
    np.testing.assert_allclose(to_numpy(weights), [0.0, 3.0, 0.0], atol=1e-5)


def test_libmtl_schedule():
    rng = np.random.default_rng(0)
    epochs = [rng.uniform(0.05, 3.0, size=(2, 3)).astype(np.float32) for _ in range(4)]
    expected = libmtl_reference(epochs, warmup=1, mu=0.5)
    w = STCH(mu=0.5, warmup_epoch=1)
    got = []
    for epoch, steps in enumerate(epochs):
        w.on_epoch_begin(epoch)
        for losses in steps:
            (objective, weights), gradient, _ = value_and_gradient(w, tensor(losses))
            np.testing.assert_allclose(to_numpy(gradient), to_numpy(weights), rtol=1e-5)
            got.append((float(objective), to_numpy(weights)))
    for (obj, weights), (exp_obj, exp_w) in zip(got, expected, strict=True):
        np.testing.assert_allclose(obj, exp_obj, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights, exp_w, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(w.nadir), epochs[1].mean(axis=0), rtol=1e-6)
    # A later `fit` starting again at epoch 0 keeps the measured nadir.
    w.on_epoch_begin(0)
    _, weights = w(tensor(epochs[0][0]))
    assert not np.allclose(to_numpy(weights), 1.0 / epochs[0][0], rtol=1e-3)


def test_resumed_past_the_measured_epoch_uses_its_first_batch():
    w = STCH(warmup_epoch=0)
    w.build((3,))
    w.on_epoch_begin(3)
    objective, weights = w(tensor(LOSSES))
    np.testing.assert_allclose(to_numpy(w.nadir), LOSSES)
    # Every normalised term is log(1 + 1e-20) = 0: logsumexp = log 3.
    np.testing.assert_allclose(float(objective), 3 * np.log(3.0), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(weights), 1.0 / LOSSES, rtol=1e-5)


def test_training_false_changes_no_variable_and_xla_agrees():
    w = STCH(warmup_epoch=0)
    w.build((3,))
    w(tensor(LOSSES))
    before = [to_numpy(v).copy() for v in w.variables]
    w.on_epoch_begin(1)
    w(tensor(LOSSES), training=False)
    for a, v in zip(before[1:], w.variables[1:], strict=True):
        np.testing.assert_array_equal(a, to_numpy(v))
    jitted = compiled(lambda x: w(x), state=w, jit_compile=True)
    eager = STCH.from_config(w.get_config())
    eager.build((3,))
    eager.set_weights(w.get_weights())
    for a, b in zip(eager(tensor(LOSSES)), jitted(tensor(LOSSES)), strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6)


def test_extreme_losses_stay_finite():
    for warmup in (None, 0):
        w = STCH(warmup_epoch=warmup)
        w.build((3,))
        if warmup is not None:
            w.on_epoch_begin(0)
            w(tensor(LOSSES))
            w.on_epoch_begin(1)
        for losses in ([0.0, 0.0, 0.0], [1e30, 1e-30, 0.0], [1e37, 1.0, 2.0]):
            objective, weights = w(tensor(np.array(losses, np.float32)))
            assert np.isfinite(float(objective)), (warmup, losses)
            assert np.all(np.isfinite(to_numpy(weights))), (warmup, losses)


def test_config_and_errors():
    w = keras_mtl.weighting.get("stch", mu=0.2, warmup_epoch=2, preference=[1, 2])
    config = w.get_config()
    assert type(w) is STCH and config["preference"] == [1.0, 2.0]
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(w))
    assert restored.get_config() == config
    for kwargs, name in (
        ({"mu": 0.0}, "mu"),
        ({"mu": float("inf")}, "mu"),
        ({"warmup_epoch": -1}, "warmup_epoch"),
        ({"warmup_epoch": 1.5}, "warmup_epoch"),
        ({"preference": [1.0, -1.0]}, "preference"),
        ({"ideal_point": float("nan")}, "ideal_point"),
    ):
        with pytest.raises(ValueError, match=name):
            STCH(**kwargs)
    with pytest.raises(ValueError, match="preference has 2 entries"):
        STCH(preference=[1.0, 2.0])(tensor(LOSSES))

"""Tests of BMTL (Liang & Zhang 2020): sum of increasing convex loss transforms."""

import functools

import keras
import numpy as np
import pytest
from _backend import compiled, dtype_of, tensor, to_numpy, value_and_gradient
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_mtl
from keras_mtl.weighting import BMTL, AdaptiveWeighting

pytestmark = pytest.mark.backend_neutral

LOSSES = np.array([0.3, 1.2, 2.5, 0.8], np.float32)


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
def square_plus_identity(losses):
    return keras.ops.square(losses) + losses


def np_softmax_weights(losses, temperature):
    z = np.asarray(losses, np.float64) / temperature
    e = np.exp(z - z.max())
    return len(z) * e / e.sum()


def objective_and_gradient(w, losses):
    (objective, weights), grad, _ = value_and_gradient(
        w, tensor(np.asarray(losses, np.float32))
    )
    return to_numpy(objective), to_numpy(grad), to_numpy(weights)


# ------------------------------------------------ exponential (default)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5, 4.0])
def test_exp_weights_are_k_softmax(temperature):
    w = BMTL(temperature=temperature)
    objective, grad, weights = objective_and_gradient(w, LOSSES)
    expected = np_softmax_weights(LOSSES, temperature)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    np.testing.assert_allclose(objective, np.sum(expected * LOSSES), rtol=1e-5)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5, 4.0])
def test_exp_gradient_is_parallel_to_literal_gradient(temperature):
    _, grad, _ = objective_and_gradient(BMTL(temperature=temperature), LOSSES)
    # d/dL_i sum_j exp(L_j / T) = exp(L_i / T) / T, by hand in float64.
    literal = np.exp(LOSSES.astype(np.float64) / temperature) / temperature
    cosine = grad @ literal / (np.linalg.norm(grad) * np.linalg.norm(literal))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)
    np.testing.assert_allclose(grad, len(LOSSES) * literal / literal.sum(), rtol=1e-5)


def test_docstring_example():
    w = keras_mtl.weighting.get("bmtl", temperature=1.0)
    _, weights = w(tensor([0.5, 2.0]))
    np.testing.assert_allclose(to_numpy(weights), [0.365, 1.635], atol=1e-3)


@pytest.mark.parametrize("temperature", [0.2, 1.0, 3.0])
def test_normalised_exp_equals_adaptive_step(temperature):
    losses = [[0.3, 1.2, 2.5, 0.8], [10.0, 0.0, 3.0, 3.0], [1e3, 2e3, 0.5, 1.0]]
    bmtl = BMTL(temperature=temperature)
    adaptive = AdaptiveWeighting(temperature=temperature, mode="step")
    # BMTL shifts the logits by log T before the softmax: the two agree to a
    # few float32 ulps of the logits (|L / T| up to 50 here).
    for value in losses:
        ob, gb, wb = objective_and_gradient(bmtl, value)
        oa, ga, wa = objective_and_gradient(adaptive, value)
        np.testing.assert_allclose(wb, wa, rtol=2e-5, atol=1e-30)
        np.testing.assert_allclose(gb, ga, rtol=2e-5, atol=1e-30)
        np.testing.assert_allclose(ob, oa, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_large_losses_stay_finite(dtype):
    w = BMTL(temperature=1.0)
    var = tensor([100.0, 300.0, 1000.0], dtype)
    (objective, weights), grad, _ = value_and_gradient(w, var)
    assert dtype_of(objective) == "float32" and dtype_of(weights) == "float32"
    assert dtype_of(grad) == dtype
    for value in (objective, weights, grad):
        assert np.all(np.isfinite(np.asarray(value, np.float64)))
    np.testing.assert_allclose(to_numpy(weights), [0.0, 0.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(float(objective), 3000.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad, np.float64), [0.0, 0.0, 3.0])


def test_literal_exp_objective_and_gradient():
    w = BMTL(temperature=2.0, normalize=False)
    objective, grad, weights = objective_and_gradient(w, LOSSES)
    l64 = LOSSES.astype(np.float64)
    np.testing.assert_allclose(objective, np.sum(np.exp(l64 / 2.0)), rtol=1e-6)
    np.testing.assert_allclose(grad, np.exp(l64 / 2.0) / 2.0, rtol=1e-6)
    # The reported weights are the normalised ones in both modes.
    np.testing.assert_allclose(weights, np_softmax_weights(LOSSES, 2.0), rtol=1e-5)


def test_literal_exp_overflows_for_large_losses():
    objective, _ = BMTL(normalize=False)(tensor([100.0, 300.0]))
    assert not np.isfinite(float(objective))


# ------------------------------------------------------ other transforms
@pytest.mark.parametrize("normalize", [True, False])
def test_identity_transform_is_equal_weighting(normalize):
    w = BMTL(transform="identity", normalize=normalize)
    objective, grad, weights = objective_and_gradient(w, LOSSES)
    np.testing.assert_allclose(weights, np.ones(4), rtol=1e-6)
    np.testing.assert_allclose(grad, np.ones(4), rtol=1e-6)
    np.testing.assert_allclose(objective, LOSSES.astype(np.float64).sum(), rtol=1e-6)


def test_power_transform():
    w = BMTL(transform="power", power=3.0)
    objective, grad, weights = objective_and_gradient(w, LOSSES)
    sq = LOSSES.astype(np.float64) ** 2
    expected = 4 * sq / sq.sum()
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    np.testing.assert_allclose(objective, np.sum(expected * LOSSES), rtol=1e-5)


def test_power_transform_literal():
    w = BMTL(transform="power", power=3.0, normalize=False)
    objective, grad, _ = objective_and_gradient(w, LOSSES)
    l64 = LOSSES.astype(np.float64)
    np.testing.assert_allclose(objective, np.sum(l64**3), rtol=1e-5)
    np.testing.assert_allclose(grad, 3 * l64**2, rtol=1e-5)


def test_power_transform_with_a_zero_loss():
    _, weights = BMTL(transform="power")(tensor([0.0, 1.0, 3.0]))
    np.testing.assert_allclose(
        to_numpy(weights), [0.0, 0.75, 2.25], rtol=1e-6, atol=1e-20
    )


def test_power_one_is_equal_weighting():
    _, weights = BMTL(transform="power", power=1.0)(tensor(LOSSES))
    np.testing.assert_allclose(to_numpy(weights), np.ones(4), rtol=1e-6)


def h_prime(losses):  # derivative of l**2 + l, by hand
    return 2.0 * np.asarray(losses, np.float64) + 1.0


@pytest.mark.parametrize(
    "transform", [lambda x: keras.ops.square(x) + x, square_plus_identity]
)
def test_user_callable(transform):
    w = BMTL(transform=transform)
    objective, grad, weights = objective_and_gradient(w, LOSSES)
    expected = 4 * h_prime(LOSSES) / h_prime(LOSSES).sum()
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    np.testing.assert_allclose(objective, np.sum(expected * LOSSES), rtol=1e-5)


def test_user_callable_literal():
    w = BMTL(transform=square_plus_identity, normalize=False)
    objective, grad, _ = objective_and_gradient(w, LOSSES)
    l64 = LOSSES.astype(np.float64)
    np.testing.assert_allclose(objective, np.sum(l64**2 + l64), rtol=1e-5)
    np.testing.assert_allclose(grad, h_prime(LOSSES), rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_user_callable_under_xla(normalize):
    w = BMTL(transform=lambda x: keras.ops.square(x) + x, normalize=normalize)
    var = tensor(LOSSES)

    @functools.partial(compiled, state=w, jit_compile=True)
    def step(x):
        (objective, weights), grad, _ = value_and_gradient(w, x)
        return objective, weights, grad

    objective, weights, grad = step(var)
    eager_objective, eager_grad, eager_weights = objective_and_gradient(w, LOSSES)
    expected = 4 * h_prime(LOSSES) / h_prime(LOSSES).sum()
    np.testing.assert_allclose(to_numpy(weights), expected, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(weights), eager_weights, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(grad), eager_grad, rtol=1e-6)
    np.testing.assert_allclose(float(objective), eager_objective, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 0.3},
        {"transform": "identity"},
        {"transform": "power", "power": 3.0},
        {"transform": "power", "power": 2.0, "normalize": False},
    ],
)
def test_eager_and_xla_agree(kwargs):
    w = BMTL(**kwargs)
    step = compiled(lambda x: w(x), state=w, jit_compile=True)
    for value in (LOSSES, [5.0, 0.0, 2.0, 2.0]):
        x = tensor(value, "float32")
        eager, jitted = w(x), step(x)
        np.testing.assert_allclose(float(eager[0]), float(jitted[0]), rtol=1e-5)
        np.testing.assert_allclose(to_numpy(eager[1]), to_numpy(jitted[1]), rtol=1e-5)


def test_stateless_and_training_flag_is_irrelevant():
    w = BMTL()
    a = w(tensor(LOSSES))
    b = w(tensor(LOSSES), training=False)
    assert w.variables == []
    np.testing.assert_array_equal(to_numpy(a[1]), to_numpy(b[1]))


@pytest.mark.parametrize(
    "transform, derivative",
    [
        (lambda x: keras.ops.exp(x / 3.0), lambda x: np.exp(x / 3.0) / 3.0),
        (lambda x: keras.ops.softplus(x), lambda x: 1.0 / (1.0 + np.exp(-x))),
        (lambda x: 2.0 * x + 1.0, lambda x: np.full_like(x, 2.0)),
        (
            lambda x: keras.ops.where(x > 1.0, 3.0 * x - 2.0, x),
            lambda x: np.where(x > 1.0, 3.0, 1.0),
        ),
    ],
)
def test_accepts_increasing_convex_callables(transform, derivative):
    _, weights = BMTL(transform=transform)(tensor(LOSSES))
    slopes = derivative(LOSSES.astype(np.float64))
    np.testing.assert_allclose(to_numpy(weights), 4 * slopes / slopes.sum(), rtol=1e-5)


# ------------------------------------------------------ rejected inputs
@pytest.mark.parametrize(
    "transform",
    [lambda x: -x, lambda x: 5.0 - keras.ops.square(x), lambda x: keras.ops.exp(-x)],
)
def test_rejects_decreasing_transform(transform):
    with pytest.raises(ValueError, match="increasing"):
        BMTL(transform=transform)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: keras.ops.sqrt(x + 1.0),
        lambda x: keras.ops.log(x + 1.0),
        lambda x: keras.ops.minimum(x, 5.0) + 1e-3 * x,
    ],
)
def test_rejects_non_convex_transform(transform):
    with pytest.raises(ValueError, match="convex"):
        BMTL(transform=transform)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: keras.ops.sum(x),
        lambda x: keras.ops.stack([x, x]),
        lambda x: x[:3],
        # Same shape, increasing and convex along the grid, but mixes the
        # losses of different tasks: not a per-task transform.
        lambda x: x * keras.ops.sum(x),
        lambda x: keras.ops.square(x) + keras.ops.mean(x),
    ],
)
def test_rejects_non_elementwise_transform(transform):
    with pytest.raises(ValueError, match="elementwise"):
        BMTL(transform=transform)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: keras.ops.exp(100.0 * x),
        lambda x: 1.0 / (x - 5.0) ** 2,
        lambda x: x * float("nan"),
    ],
)
def test_rejects_non_finite_transform(transform):
    with pytest.raises(ValueError, match="finite"):
        BMTL(transform=transform)


def test_rejects_transform_that_fails_on_tensors():
    def numpy_only(losses):
        return np.asarray(losses).tolist() ** 2

    with pytest.raises(ValueError, match="keras.ops"):
        BMTL(transform=numpy_only)


@pytest.mark.parametrize("power", [0.5, 0.0, -2.0, float("nan"), float("inf"), "x"])
def test_rejects_bad_power(power):
    with pytest.raises(ValueError, match="power"):
        BMTL(transform="power", power=power)


@pytest.mark.parametrize("transform", ["softplus", "EXP", "", 3, None])
def test_rejects_unknown_transform(transform):
    with pytest.raises(ValueError, match="'exp', 'identity', 'power'"):
        BMTL(transform=transform)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "warm"])
def test_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        BMTL(temperature=bad)


def test_fewer_than_two_tasks_and_non_vector():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        BMTL()(tensor([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        BMTL()(keras.ops.ones((2, 2)))


# ------------------------------------------------------ config round trip
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"transform": "exp", "temperature": 2.5, "normalize": False},
        {"transform": "identity"},
        {"transform": "power", "power": 3.0},
        {"transform": square_plus_identity},
    ],
)
def test_config_round_trip(kwargs):
    w = keras_mtl.weighting.get("bmtl", **kwargs)
    assert type(w) is BMTL
    config = keras_mtl.weighting.serialize(w)
    restored = keras_mtl.weighting.deserialize(config)
    assert type(restored) is BMTL
    assert restored.transform == w.transform
    for key in ("temperature", "power", "normalize"):
        assert getattr(restored, key) == getattr(w, key)
    assert restored.get_config() == w.get_config()
    a, b = w(tensor(LOSSES)), restored(tensor(LOSSES))
    np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(a[1]), to_numpy(b[1]), rtol=1e-6)
    again = keras_mtl.weighting.get(config)
    assert again.get_config() == w.get_config()


def test_registered_callable_config_is_json_friendly():
    import json

    config = keras_mtl.weighting.serialize(BMTL(transform=square_plus_identity))
    restored = keras_mtl.weighting.deserialize(json.loads(json.dumps(config)))
    assert restored.transform is square_plus_identity


def test_defaults():
    w = keras_mtl.weighting.get("bmtl")
    assert (w.transform, w.temperature, w.normalize) == ("exp", 1.0, True)


# ------------------------------------------------------- property tests
loss_vectors = st.integers(2, 8).flatmap(
    lambda k: st.lists(
        st.floats(0.0, 50.0, width=32, allow_nan=False), min_size=k, max_size=k
    )
)
_CONFIGS = {
    "exp1": {"temperature": 1.0},
    "exp5": {"temperature": 5.0},
    "exp_literal": {"temperature": 1.0, "normalize": False},
    "power": {"transform": "power", "power": 2.0},
    "callable": {"transform": square_plus_identity},
}


def _weights(name, losses):
    w = BMTL(**_CONFIGS[name])  # one layer per call: K varies
    return to_numpy(w(tensor(losses, "float32"))[1]).astype(np.float64)


@settings(deadline=None, max_examples=30)
@given(losses=loss_vectors, name=st.sampled_from(sorted(_CONFIGS)), data=st.data())
def test_property_weights(losses, name, data):
    k = len(losses)
    weights = _weights(name, losses)
    assert weights.shape == (k,)
    assert np.all(np.isfinite(weights))
    if name == "power":  # h'(0) = 0: a zero loss gets no weight
        assert np.all(weights >= 0)
    else:
        assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(), k, rtol=1e-4)
    order = np.argsort(np.asarray(losses, np.float32), kind="stable")
    assert np.all(np.diff(weights[order]) >= 0), (losses, weights)
    perm = list(data.draw(st.permutations(range(k))))
    permuted = _weights(name, [losses[i] for i in perm])
    np.testing.assert_allclose(permuted, weights[perm], rtol=1e-5, atol=1e-30)


@settings(deadline=None, max_examples=30)
@given(losses=loss_vectors, temperature=st.sampled_from([1.0, 2.0, 7.5]))
def test_property_exp_matches_numpy_and_adaptive(losses, temperature):
    weights = BMTL(temperature=temperature)(tensor(losses, "float32"))[1]
    expected = np_softmax_weights(np.float32(losses), temperature)
    np.testing.assert_allclose(to_numpy(weights), expected, rtol=1e-4, atol=1e-30)
    adaptive = AdaptiveWeighting(temperature=temperature)
    # Equal up to float32 rounding of the logits (BMTL subtracts log T).
    np.testing.assert_allclose(
        to_numpy(weights),
        to_numpy(adaptive(tensor(losses, "float32"))[1]),
        rtol=2e-5,
        atol=1e-30,
    )

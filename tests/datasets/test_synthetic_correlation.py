"""MMoE's synthetic data (Ma et al., KDD 2018): construction, label correlation
as a function of the weight correlation p, shapes, determinism, errors."""

import math

import numpy as np
import pytest

from keras_mtl.datasets import load, load_mmoe_synthetic
from keras_mtl.datasets.synthetic_correlation import synthetic_labels


def _arrays(dataset):
    xs, ys = [], {"task_1": [], "task_2": []}
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        for task in ys:
            ys[task].append(y[task])
    return np.concatenate(xs), {t: np.concatenate(v) for t, v in ys.items()}


def population_correlation(structure, correlation, noise_std, nodes=80):
    """corr(y1, y2) from the construction alone, by Gauss-Hermite quadrature:
    s1 = c Z1, s2 = c (p Z1 + sqrt(1 - p^2) Z2) with Z1, Z2 ~ N(0, 1) i.i.d.,
    y_i = g(s_i) + eps_i, g(s) = s + sum_j sin(alpha_j s + beta_j)."""
    z, weights = np.polynomial.hermite_e.hermegauss(nodes)
    weights = weights / weights.sum()  # probabilists' nodes: a N(0, 1) average
    c = float(np.linalg.norm(structure["w1"]))
    p = correlation

    def g(s):
        return s + np.sin(
            np.multiply.outer(s, structure["alphas"]) + structure["betas"]
        ).sum(-1)

    z1, z2 = np.meshgrid(z, z, indexing="ij")
    w = np.outer(weights, weights)
    g1 = g(c * z1)
    g2 = g(c * (p * z1 + math.sqrt(1 - p * p) * z2))
    mean = np.sum(weights * g(c * z))
    variance = np.sum(weights * g(c * z) ** 2) - mean**2
    covariance = np.sum(w * g1 * g2) - mean**2
    return covariance / (variance + noise_std**2)


def test_construction_matches_the_paper():
    data = load_mmoe_synthetic(
        correlation=0.7, num_train=50, num_validation=20, num_test=20, batch_size=16
    )
    s = data.info["structure"]
    d = 100
    assert s["u1"].shape == s["u2"].shape == (d,)
    # Orthonormal u's; w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2), cos = p.
    np.testing.assert_allclose(
        [s["u1"] @ s["u1"], s["u2"] @ s["u2"], s["u1"] @ s["u2"]],
        [1.0, 1.0, 0.0],
        atol=1e-12,
    )
    np.testing.assert_allclose(s["w1"], s["u1"], atol=1e-15)
    np.testing.assert_allclose(s["w2"], 0.7 * s["u1"] + math.sqrt(1 - 0.49) * s["u2"])
    cosine = s["w1"] @ s["w2"] / np.linalg.norm(s["w1"]) / np.linalg.norm(s["w2"])
    assert cosine == pytest.approx(0.7, abs=1e-12)
    assert s["alphas"].shape == s["betas"].shape == (10,)
    # Labels are the formula plus noise of std 0.1 (float32 storage).
    x, y = _arrays(data.test)
    for task, w in (("task_1", s["w1"]), ("task_2", s["w2"])):
        clean = synthetic_labels(x, w, s["alphas"], s["betas"])
        residual = y[task][:, 0] - clean
        assert np.all(np.abs(residual) < 0.1 * 6)  # 6 sigma on 20 draws
        assert np.std(residual) > 0.02  # there is noise


def test_shapes_kinds_and_sizes():
    data = load(
        "mmoe_synthetic",
        correlation=0.5,
        num_train=40,
        num_validation=12,
        num_test=10,
        input_dim=7,
        num_sines=3,
        batch_size=16,
    )
    assert data.name == "mmoe_synthetic" and data.task_names == ["task_1", "task_2"]
    for spec in data.tasks.values():
        assert (spec.kind, spec.num_classes, spec.target_shape) == (
            "regression",
            1,
            (1,),
        )
        assert spec.loss == "mean_squared_error" and spec.activation == "linear"
    assert data.info["input_shape"] == (7,)
    for split, size in (("train", 40), ("validation", 12), ("test", 10)):
        x, y = _arrays(getattr(data, split))
        assert x.shape == (size, 7) and x.dtype == np.float32
        assert y["task_1"].shape == y["task_2"].shape == (size, 1)
        assert y["task_1"].dtype == np.float32
    first = next(iter(data.train))
    assert first[0].shape == (16, 7)
    capped = load_mmoe_synthetic(num_train=100, max_examples=9, batch_size=4)
    assert capped.info["counts"] == {"train": 9, "validation": 9, "test": 9}


def test_deterministic_in_the_seed():
    kwargs = {"num_train": 64, "num_validation": 16, "num_test": 16, "batch_size": 16}
    a, b = load_mmoe_synthetic(seed=3, **kwargs), load_mmoe_synthetic(seed=3, **kwargs)
    other = load_mmoe_synthetic(seed=4, **kwargs)
    for split in ("train", "validation", "test"):
        xa, ya = _arrays(getattr(a, split))
        xb, yb = _arrays(getattr(b, split))
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya["task_2"], yb["task_2"])
        assert not np.array_equal(xa, _arrays(getattr(other, split))[0])
    # A new training order each epoch, the same examples.
    first, second = _arrays(a.train)[0], _arrays(a.train)[0]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first, 0), np.sort(second, 0))
    # The correlation changes w2 only: same inputs and task-1 labels.
    c = load_mmoe_synthetic(seed=3, correlation=0.9, **kwargs)
    xa, ya = _arrays(a.test)
    xc, yc = _arrays(c.test)
    np.testing.assert_array_equal(xa, xc)
    np.testing.assert_array_equal(ya["task_1"], yc["task_1"])
    assert not np.array_equal(ya["task_2"], yc["task_2"])
    # The test set does not depend on the size of the training set.
    d = load_mmoe_synthetic(seed=3, **{**kwargs, "num_train": 200})
    np.testing.assert_array_equal(_arrays(d.test)[0], xa)


@pytest.mark.parametrize("seed", [0, 1])
def test_label_correlation_increases_with_p(seed):
    """The paper's point: the weights' cosine p controls the labels' Pearson
    correlation. On n = 20,000 draws the sample correlation's standard error
    is at most (1 - r^2) / sqrt(n) < 0.0071; it must match the population
    value (by quadrature) within 5 standard errors and increase with p."""
    n = 20000
    correlations = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    measured, expected = [], []
    for p in correlations:
        data = load_mmoe_synthetic(
            correlation=p,
            num_train=n,
            num_validation=1,
            num_test=1,
            batch_size=4096,
            seed=seed,
        )
        _, y = _arrays(data.train)
        r = float(np.corrcoef(y["task_1"][:, 0], y["task_2"][:, 0])[0, 1])
        assert r == pytest.approx(data.info["label_correlation"], abs=1e-9)
        measured.append(r)
        expected.append(population_correlation(data.info["structure"], p, 0.1))
    for r, rho in zip(measured, expected):
        assert abs(r - rho) < 5 * (1 - rho**2) / math.sqrt(n) + 1e-6
    # Increasing in p on [0, 1] in the population (a sum of a_k^2 p^k) ...
    assert np.all(np.diff(expected) > 0)
    # ... and in the samples, where neighbours differ by more than the noise.
    assert measured[0] < measured[2] < measured[4] < measured[5]
    assert measured[-1] > 0.98  # p = 1: the labels differ by the noise only
    assert abs(measured[0]) < 5 / math.sqrt(n)  # p = 0: independent labels


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"correlation": 1.5}, "correlation"),
        ({"correlation": float("nan")}, "correlation"),
        ({"correlation": "high"}, "correlation"),
        ({"num_train": 0}, "num_train"),
        ({"input_dim": 1}, "input_dim"),
        ({"num_sines": 0}, "num_sines"),
        ({"scale": 0.0}, "scale"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"seed": -1}, "seed"),
        ({"max_examples": 0}, "max_examples"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_mmoe_synthetic(**kwargs)

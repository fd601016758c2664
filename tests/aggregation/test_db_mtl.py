"""Tests of DB-MTL (Lin et al. 2023): gradient balancing and the log-loss
terms, keras_mtl/aggregation/db_mtl.py."""

import numpy as np
import pytest
from _backend import tensor, to_numpy
from _stateful_checks import (
    assert_config_round_trip,
    assert_same_values,
    values,
)

from keras_mtl.aggregation import ALIASES
from keras_mtl.aggregation.db_mtl import DBMTL
from keras_mtl.aggregation.mean import Mean

pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(7)


def numpy_db_mtl(sequence, beta=0.9, beta_sigma=0.5):
    """LibMTL's update, written with an explicit ratio of norms."""
    buffer = np.zeros(sequence[0].shape)
    out = []
    for t, j in enumerate(sequence, start=1):
        b = beta / t**beta_sigma
        buffer = j + b * (buffer - j)
        norms = np.linalg.norm(buffer, axis=1)
        alpha = norms.max() / norms
        out.append((alpha[:, None] * buffer).sum(0))
    return out, buffer


@pytest.mark.parametrize("beta_sigma", [0.0, 0.5])
def test_matches_numpy_over_several_calls(beta_sigma):
    seq = [RNG.normal(size=(3, 5)).astype(np.float32) for _ in range(4)]
    expected, buffer = numpy_db_mtl(seq, 0.9, beta_sigma)
    agg = DBMTL(beta=0.9, beta_sigma=beta_sigma)
    for j, d in zip(seq, expected):
        np.testing.assert_allclose(agg(j), d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(agg.smoothed), buffer, rtol=1e-5, atol=1e-6)
    assert to_numpy(agg.step) == 4


def test_docstring_example_and_equal_norm_contributions():
    d = DBMTL()(np.array([[3.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(d, [0.3, 0.3], rtol=1e-5)
    # Without smoothing: every orthogonal gradient is scaled to the max norm.
    j = np.diag([5.0, 0.1, 2.0]).astype(np.float32)
    np.testing.assert_allclose(DBMTL(beta=0.0)(j), [5.0, 5.0, 5.0], rtol=1e-5)


def test_zero_gradient_contributes_nothing():
    j = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(DBMTL(beta=0.0)(j), [1.0, 2.0], rtol=1e-6)


def test_evaluation_keeps_state_and_returns_the_update():
    seq = [RNG.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]
    agg = DBMTL()
    agg(seq[0])
    before = values(agg)
    d_eval = to_numpy(agg(seq[1], training=False))
    assert_same_values(before, values(agg))
    np.testing.assert_allclose(agg(seq[1]), d_eval, rtol=1e-6)


def test_task_terms_are_log_losses():
    losses = tensor([0.5, 2.0, 0.0])
    np.testing.assert_allclose(
        DBMTL().task_terms(losses), np.log([0.5, 2.0, 1e-8]), rtol=1e-6
    )
    assert DBMTL(log_losses=False).task_terms(losses) is losses
    # The base class's hook is the identity (the same tensor).
    assert Mean().task_terms(losses) is losses
    assert not DBMTL.needs_losses


def test_config_and_validation():
    assert ALIASES["db_mtl"] is DBMTL
    assert_config_round_trip(DBMTL(beta=0.5, beta_sigma=0.0))
    assert_config_round_trip(DBMTL(log_losses=False))
    assert DBMTL().get_config()["log_losses"] is True
    with pytest.raises(ValueError, match="log_losses"):
        DBMTL(log_losses="yes")
    for kwargs in ({"beta": 1.0}, {"beta": -0.1}, {"beta_sigma": -1.0}):
        with pytest.raises(ValueError):
            DBMTL(**kwargs)

"""The QP solvers of `aggregation._solvers` run op by op (torch, or any
backend called eagerly): their loops stop at an exact fixed point, with the
numbers of the full fixed-length loop."""

import keras
import numpy as np
import pytest

from keras_mtl.aggregation import _solvers, cagrad

pytestmark = pytest.mark.backend_neutral


# On torch the solvers always run op by op; on TensorFlow and JAX only when
# called eagerly outside the aggregators' compiled calls (`run_eagerly`),
# where 200 eager iterations take seconds: there K = 3 only, without CAGrad.
OP_BY_OP = keras.backend.backend() == "torch"


def gramians() -> list[np.ndarray]:
    """Well-conditioned and nearly parallel task gradients, K = 2, 3, 8
    (K = 3 off torch)."""
    rng = np.random.default_rng(7)
    out = []
    for k in (2, 3, 8) if OP_BY_OP else (3,):
        for nearly_parallel in (False, True):
            jacobian = rng.standard_normal((k, 40))
            if nearly_parallel:
                jacobian[1] = jacobian[0] + 1e-3 * jacobian[1]
            out.append((jacobian @ jacobian.T).astype("float32"))
    return out


SOLVERS = {
    "min_norm_simplex": lambda g: _solvers.min_norm_simplex(g),
    "nonneg_qp": lambda g: _solvers.nonneg_qp(g, -g),
    # CAGrad's own projected-gradient loop and active-set rounds.
    "cagrad": lambda g: cagrad.CAGrad().weights(g),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_stopping_at_a_fixed_point_changes_no_number(name, monkeypatch):
    if name == "cagrad" and not OP_BY_OP:
        pytest.skip("CAGrad's eager loops off torch: a minute, the same `_iterate`")
    solve = SOLVERS[name]
    iterate = _solvers._iterate
    runs = {"early": [0, 0], "full": [0, 0]}  # body calls, loop lengths

    def counted(kind):
        def loop(iterations, body, state, moving):
            def body_counted(i, s):
                runs[kind][0] += 1
                return body(i, s)

            runs[kind][1] += iterations
            if kind == "early":
                return iterate(iterations, body_counted, state, moving)
            # The same op-by-op iterations, all of them.
            for i in range(iterations):
                state = body_counted(i, state)
            return state

        return loop

    results = {}
    for kind in ("early", "full"):
        monkeypatch.setattr(_solvers, "_iterate", counted(kind))
        monkeypatch.setattr(cagrad, "_iterate", counted(kind))
        results[kind] = [keras.ops.convert_to_numpy(solve(g)) for g in gramians()]
    for early, full in zip(results["early"], results["full"]):
        np.testing.assert_array_equal(early, full)
    assert runs["full"][0] == runs["full"][1]
    # The early stop happened (well-conditioned problems settle in tens of
    # FISTA's 200 iterations; nearly parallel ones may run them all), so
    # the comparison above is not vacuous.
    assert runs["early"][0] < runs["early"][1], runs

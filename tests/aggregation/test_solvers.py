"""The QP solvers of `aggregation._solvers` run op by op (torch, or any
backend called eagerly): their loops stop at an exact fixed point, with the
numbers of the full fixed-length loop."""

import keras
import numpy as np
import pytest
from _backend import compiled
from _jacobians import Graph, conflicting_jacobian

from keras_mtl.aggregation import _solvers, cagrad
from keras_mtl.aggregation.dualproj import DualProj
from keras_mtl.aggregation.mgda import MGDA
from keras_mtl.aggregation.upgrad import UPGrad

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


def ill_conditioned_gramian() -> np.ndarray:
    """K = 5 task gradients, two of them nearly opposite: a Gramian of
    condition number ~3e4 (the instance of UPGrad's SciPy test, seed 3)."""
    jacobian = conflicting_jacobian(5, 5, seed=3)
    return jacobian @ jacobian.T


SOLVERS_WITH_ITERATIONS = {
    "min_norm_simplex": lambda g, n: _solvers.min_norm_simplex(g, iterations=n),
    "nonneg_qp": lambda g, n: _solvers.nonneg_qp(g, g, iterations=n),
    "cagrad": lambda g, n: cagrad.CAGrad(iterations=n).weights(g),
}


@pytest.mark.parametrize("name", sorted(SOLVERS_WITH_ITERATIONS))
def test_answer_does_not_depend_on_where_fista_stops(name):
    # FISTA's point is only approximate on an ill-conditioned problem; the
    # active-set rounds then solve the KKT system on its support exactly.
    # Their objectives differ by less than float32 resolves, so choosing
    # between the two points by a plain comparison followed the rounding
    # (4e-4 off the optimum in UPGrad's test with TensorFlow's graph
    # rewriting off). With the support found, the answer is the support
    # solve's, whatever the number of FISTA iterations before it.
    gramian = ill_conditioned_gramian()
    solve = SOLVERS_WITH_ITERATIONS[name]
    answers = [
        keras.ops.convert_to_numpy(compiled(lambda g, n=n: solve(g, n))(gramian))
        for n in (100, 200, 400, 1000)
    ]
    scale = np.abs(answers[0]).max()
    for answer in answers[1:]:
        np.testing.assert_allclose(answer, answers[0], atol=1e-6 * scale)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_compiled_loops_stop_at_a_fixed_point_with_the_full_loops_numbers(
    name, monkeypatch
):
    # Compiled (XLA on TensorFlow and JAX) the loops are while loops that
    # stop once an iteration changes nothing; the full fixed-length loop
    # must give the same numbers (up to the compiler's rounding: the two
    # loops are different programs).
    if OP_BY_OP:
        pytest.skip("torch runs the loops op by op (the test above)")
    solve = SOLVERS[name]
    problems = gramians() + [ill_conditioned_gramian()]
    early = [keras.ops.convert_to_numpy(compiled(solve)(g)) for g in problems]

    def full_loop(iterations, body, state, moving):
        return keras.ops.fori_loop(0, iterations, body, state)

    monkeypatch.setattr(_solvers, "_iterate_compiled", full_loop)
    for g, stopped in zip(problems, early):
        full = keras.ops.convert_to_numpy(compiled(solve)(g))
        np.testing.assert_allclose(stopped, full, rtol=1e-6, atol=1e-7)


def test_parallel_huge_gradients_give_a_finite_direction():
    # Five (nearly) parallel task gradients of size 1e30, found by the
    # property test: the Gramian is numerically rank one, and the
    # active-set solve on it grew along its null space, which changes the
    # objective by less than rounding; the direction `w^T J` overflowed.
    j = np.array(
        [
            [1.30912144e30, -3.06323971e30, -2.11407729e29, 8.64659410e29, -1.22804007e30],
            [9.43418282e29, -2.20752363e30, -1.52350976e29, 6.23116749e29, -8.84987044e29],
            [1.67385357e29, -3.91668392e29, -2.70307667e28, 1.10556068e29, -1.57018223e29],
            [-1.19138015e30, 2.78773458e30, 1.92393895e29, -7.86892687e29, 1.11759125e30],
            [1.15102998e30, -2.69331869e30, -1.85877823e29, 7.60241842e29, -1.07974016e30],
        ],
        np.float32,
    )  # fmt: skip
    for factory in (DualProj, UPGrad, MGDA, cagrad.CAGrad):
        direction = Graph(factory)(j)
        assert np.all(np.isfinite(direction)), (factory.__name__, direction)

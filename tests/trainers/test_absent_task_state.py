"""State that a method records the first time it sees a task (FAMO's
previous losses, GradNorm's initial losses, ExcessMTL's initial risks) is
recorded at the first step where the task is present (has a labelled
example), never from a stand-in (docs/missing_labels.md).

Three tasks (a: 3 classes, b and c: regression, the models of
tests/trainers/test_missing_labels.py); task b has no labels in the first two steps.
The expected values are computed here in float64 from what the model
observed: the task losses it logs and, for the aggregators, each task's
gradient of the trunk written out by hand from the net's weights before
each step."""

import keras
import numpy as np
import pytest
from _backend import to_numpy
from test_missing_labels import THREE, N, _data3, _model3

from keras_mtl.aggregation import excess_mtl, grad_norm
from keras_mtl.weighting import famo

pytestmark = pytest.mark.backend_neutral

STEPS = 5
ABSENT_STEPS = 2  # task b has no labels in steps 0 and 1
B = THREE.index("b")
# "auto" is XLA on JAX and not on TensorFlow on the CPU; True is XLA on both.
JIT = ["auto", True]


def _batches(seed: int = 10):
    x, y = _data3(seed)
    unlabelled = {**y, "b": np.full(N, np.nan, "float32")}
    return x, [unlabelled if t < ABSENT_STEPS else y for t in range(STEPS)]


def _present(step: int) -> np.ndarray:
    return np.array([True, step >= ABSENT_STEPS, True])


def _logged_losses(logs: dict) -> np.ndarray:
    """The step's task losses as logged (NaN for an absent task)."""
    return np.array([float(logs[f"{t}_loss"]) for t in THREE])


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _trunk_rows(model, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Each task's mean loss and its gradient with respect to the trunk's
    kernel and bias (the shared parameters), `[3]` and `[3, 40]`, in
    float64 from the net's current weights: a = sparse crossentropy of a
    softmax, b and c = MSE, every example labelled."""

    def weights(name):
        return [
            to_numpy(v).astype(np.float64) for v in model.net.get_layer(name).weights
        ]

    x = x.astype(np.float64)
    kernel, bias = weights("trunk")
    h = np.tanh(x @ kernel + bias)
    losses, rows = [], []
    for task in THREE:
        w, b = weights(task)
        out = h @ w + b
        if task == "a":
            p = _softmax(out)
            onehot = np.eye(3)[y["a"]]
            losses.append(np.mean(-np.log(p[np.arange(N), y["a"]])))
            d_out = (p - onehot) / N
        else:
            error = out[:, 0] - y[task].astype(np.float64)
            losses.append(np.mean(error**2))
            d_out = (2.0 * error / N)[:, None]
        d_pre = (d_out @ w.T) * (1.0 - h**2)
        rows.append(np.concatenate([(x.T @ d_pre).ravel(), d_pre.sum(axis=0)]))
    return np.array(losses), np.array(rows)


# --------------------------------------------------------------------- FAMO
def _famo_reference(steps, lr=0.025, gamma=1e-3):
    """FAMO's logit update (arXiv 2306.03792, Adam with PyTorch's defaults
    and coupled weight decay) in float64 over the tasks that have a
    previous loss and are observed now: softmax, its Jacobian, weight
    decay and Adam moments over them alone, one shared Adam step count.
    `steps`: the observed losses of each step, NaN where absent."""
    k = len(steps[0])
    xi, m, v, count = np.zeros(k), np.zeros(k), np.zeros(k), 0
    previous = np.full(k, np.nan)
    for losses in steps:
        observed = ~np.isnan(losses)
        valid = observed & ~np.isnan(previous)
        if valid.any():
            z = _softmax(xi[valid])
            delta = np.log(previous[valid] + 1e-8) - np.log(losses[valid] + 1e-8)
            jacobian = np.diag(z) - np.outer(z, z)
            g = jacobian.T @ delta + gamma * xi[valid]
            count += 1
            m[valid] = 0.9 * m[valid] + 0.1 * g
            v[valid] = 0.999 * v[valid] + 0.001 * g * g
            m_hat = m[valid] / (1 - 0.9**count)
            v_hat = v[valid] / (1 - 0.999**count)
            xi[valid] = xi[valid] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        previous = np.where(observed, losses, previous)
    return xi, m, v, count, previous


@pytest.mark.parametrize("jit_compile", JIT)
def test_famo_takes_a_delta_only_between_two_observations(jit_compile):
    x, batches = _batches()
    model = _model3(THREE, None, jit_compile=jit_compile, weighting="famo")
    weighting = model.weighting
    observed = []
    for step, y in enumerate(batches):
        losses = _logged_losses(model.train_on_batch(x, y, return_dict=True))
        assert np.array_equal(~np.isnan(losses), _present(step)), losses
        observed.append(losses)
        previous = to_numpy(weighting.previous_losses)
        logits = to_numpy(weighting.logits)
        if step < ABSENT_STEPS:
            # No loss of b yet: no previous loss, its logit untouched.
            assert previous[B] == famo.NOT_OBSERVED
            assert logits[B] == 0.0
        if step == 1:
            # a and c have a delta: FAMO over the two of them moved theirs.
            assert logits[0] != 0.0 and logits[2] != 0.0
        if step == ABSENT_STEPS:
            # b's first observation is stored; no delta for it yet.
            assert logits[B] == 0.0
        # The stored losses are the observed ones (float32, as logged).
        present = _present(step)
        np.testing.assert_array_equal(previous[present], losses[present])
    xi, m, v, count, previous = _famo_reference(observed)
    # float32 logs and Adam against float64 on the same losses (logits of
    # O(0.1) after 4 updates): a few float32 ulps of O(1) intermediates.
    np.testing.assert_allclose(to_numpy(weighting.logits), xi, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(weighting.adam_m), m, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(to_numpy(weighting.adam_v), v, rtol=1e-4, atol=1e-12)
    assert int(to_numpy(weighting.adam_step)) == count == STEPS - 1
    assert xi[B] != 0.0  # b updated from its second observation on


def test_famo_without_previous_losses_keeps_its_logits():
    """Standalone: a task with no previous loss takes no update, the others
    FAMO's over themselves (two tasks with deltas: a logit step of
    +-learning_rate at the first Adam step)."""
    w = famo.FAMO()
    w.build((3,))
    w.has_previous.assign(1)
    w.previous_losses.assign([0.5, famo.NOT_OBSERVED, 2.0])
    w(keras.ops.convert_to_tensor([0.4, 1.0, 2.1]))
    # delta = [log 1.25, -, log(2/2.1)]: task 0 fell more, it loses weight.
    np.testing.assert_allclose(to_numpy(w.logits), [-0.025, 0.0, 0.025], rtol=1e-5)
    assert to_numpy(w.adam_m)[1] == 0.0 and to_numpy(w.adam_v)[1] == 0.0
    np.testing.assert_array_equal(
        to_numpy(w.previous_losses), np.float32([0.4, 1.0, 2.1])
    )
    assert int(to_numpy(w.adam_step)) == 1
    # Before any step nothing is updated, as before.
    fresh = famo.FAMO()
    fresh.build((2,))
    fresh(keras.ops.convert_to_tensor([0.5, 2.0]))
    np.testing.assert_array_equal(to_numpy(fresh.logits), [0.0, 0.0])
    assert int(to_numpy(fresh.adam_step)) == 0


def test_famo_ignores_a_task_absent_after_it_was_observed():
    x, y = _data3(11)
    unlabelled = {**y, "b": np.full(N, np.nan, "float32")}
    model = _model3(THREE, None, weighting="famo")
    observed = []
    for batch in (y, y, unlabelled):
        logs = model.train_on_batch(x, batch, return_dict=True)
        observed.append(_logged_losses(logs))
    xi = _famo_reference(observed)[0]
    np.testing.assert_allclose(
        to_numpy(model.weighting.logits), xi, rtol=1e-4, atol=1e-6
    )


# ----------------------------------------------------------------- GradNorm
def _grad_norm_reference(steps, alpha=1.5, lr=0.5):
    """GradNorm (Chen et al. 2018) on the present tasks' rows: an n-task
    GradNorm on their weights rescaled to sum to n, its new weights scaled
    back to their share; L_i(0) the loss of task i's first present step.
    `steps`: `(losses, rows, present)` per step."""
    k = len(steps[0][0])
    w = np.ones(k)
    initial = np.full(k, np.nan)
    for losses, rows, present in steps:
        n = present.sum()
        share = w[present].sum() / n
        ws = w[present] / share
        first = np.where(np.isnan(initial[present]), losses[present], initial[present])
        norms = np.linalg.norm(rows[present], axis=1)
        ratios = losses[present] / first
        relative = ratios / ratios.mean()
        g = ws * norms
        target = g.mean() * relative**alpha
        stepped = np.maximum(ws - lr * np.sign(g - target) * norms, 1e-4)
        w[present] = n * stepped / stepped.sum() * share
        initial[present] = first
    return w, initial


def _run_with_rows(model, x, batches):
    """Trains on `batches`; returns, per step, the logged losses, the
    hand-computed losses and trunk gradients before the step, and which
    tasks were present."""
    steps = []
    for y in batches:
        losses, rows = _trunk_rows(model, x, y)
        logs = model.train_on_batch(x, y, return_dict=True)
        logged = _logged_losses(logs)
        present = ~np.isnan(logged)
        labelled = [not np.isnan(y[t]).all() for t in THREE]
        assert np.array_equal(present, labelled), logged
        # The hand-written forward pass is the model's (float32 logs).
        np.testing.assert_allclose(logged[present], losses[present], rtol=1e-5)
        steps.append((logged, rows, present))
    return steps


@pytest.mark.parametrize("jit_compile", JIT)
def test_grad_norm_records_an_initial_loss_at_the_first_present_step(jit_compile):
    x, batches = _batches()
    model = _model3(
        THREE, ("gradnorm", {"learning_rate": 0.5}), jit_compile=jit_compile
    )
    aggregator = model.aggregator
    steps = _run_with_rows(model, x, batches[:1])
    # a and c recorded, b not (no stand-in 1).
    assert to_numpy(aggregator.initial_losses)[B] == grad_norm.NOT_OBSERVED
    assert int(to_numpy(aggregator.has_initial_losses)) == 1
    steps += _run_with_rows(model, x, batches[1 : ABSENT_STEPS + 1])
    # Steps 0 and 1 without b, step 2 with it: L_b(0) is b's loss at step 2.
    expected = [steps[0][0][0], steps[ABSENT_STEPS][0][B], steps[0][0][2]]
    np.testing.assert_array_equal(
        to_numpy(aggregator.initial_losses), np.float32(expected)
    )
    steps += _run_with_rows(model, x, batches[ABSENT_STEPS + 1 :])
    w, initial = _grad_norm_reference(steps)
    np.testing.assert_allclose(to_numpy(aggregator.initial_losses), initial, rtol=0)
    # Norms of 40 float32 gradient entries against float64, then ratios,
    # powers and renormalisations of O(1) weights.
    np.testing.assert_allclose(to_numpy(aggregator.task_weights), w, rtol=1e-4)


# ---------------------------------------------------------------- ExcessMTL
def _excess_mtl_reference(steps, eta):
    """ExcessMTL (He et al. 2024, the authors' update) on the present tasks'
    rows: the Adagrad-style risk g^2 / sqrt(sum of squares so far), r(1)
    a task's risk at its first present call (ratio 1 there), weights
    renormalised over the present tasks' share; the first call keeps them."""
    k, d = steps[0][1].shape
    squares = np.zeros((k, d))
    w = np.ones(k)
    initial = np.full(k, np.nan)
    for call, (_, rows, present) in enumerate(steps):
        n = present.sum()
        squares[present] += rows[present] ** 2
        root = np.sqrt(squares[present])
        safe = np.where(root > 0, root, 1.0)
        risk = np.sum(np.where(root > 0, rows[present] ** 2 / safe, 0.0), axis=1)
        first = np.where(np.isnan(initial[present]), risk, initial[present])
        initial[present] = first
        if call == 0:
            continue
        share = w[present].sum() / n
        ws = w[present] / share * np.exp(eta * risk / first)
        w[present] = n * ws / ws.sum() * share
    return w, initial


@pytest.mark.parametrize("jit_compile", JIT)
def test_excess_mtl_records_an_initial_risk_at_the_first_present_step(jit_compile):
    x, batches = _batches()
    model = _model3(THREE, ("excess_mtl", {"step_size": 0.5}), jit_compile=jit_compile)
    aggregator = model.aggregator
    steps = _run_with_rows(model, x, batches[:ABSENT_STEPS])
    assert to_numpy(aggregator.initial_risk)[B] == excess_mtl.NOT_OBSERVED
    steps += _run_with_rows(model, x, batches[ABSENT_STEPS:])
    w, initial = _excess_mtl_reference(steps, eta=0.5)
    # b's initial risk is its first present step's: with an empty
    # accumulator, sum g^2 / |g| = the L1 norm of its row.
    assert initial[B] == pytest.approx(np.abs(steps[ABSENT_STEPS][1][B]).sum())
    # Sums of 40 float32 terms against float64.
    np.testing.assert_allclose(to_numpy(aggregator.initial_risk), initial, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(aggregator.task_weights), w, rtol=1e-5)


# ------------------------------------------------ files written before this
# Before its first step a keras_mtl 0.1.0 file holds each variable's old
# initial value where a task's first value goes (FAMO 0, GradNorm 1,
# ExcessMTL 0) and its flag unset; loading marks them not observed. A file
# written after a step keeps its values.
OLD_FILES = {
    "famo": ("previous_losses", "has_previous", 0.0, famo.NOT_OBSERVED),
    "gradnorm": ("initial_losses", "has_initial_losses", 1.0, grad_norm.NOT_OBSERVED),
    "excess_mtl": ("initial_risk", "step", 0.0, excess_mtl.NOT_OBSERVED),
}


def _method_model(name):
    if name == "famo":
        return _model3(THREE, None, weighting="famo")
    return _model3(THREE, name)


def _state(model, name):
    return model.weighting if name == "famo" else model.aggregator


@pytest.mark.parametrize("name", sorted(OLD_FILES))
@pytest.mark.parametrize("after_a_step", [False, True])
def test_old_files_load_with_their_meaning(tmp_path, name, after_a_step):
    values_name, flag_name, old_initial, not_observed = OLD_FILES[name]
    x, batches = _batches()
    model = _method_model(name)
    model.train_on_batch(x, batches[-1])  # builds the state
    state = _state(model, name)
    getattr(state, values_name).assign(np.full(3, old_initial, "float32"))
    getattr(state, flag_name).assign(int(after_a_step))
    path = tmp_path / "old.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    values = to_numpy(getattr(_state(loaded, name), values_name))
    if after_a_step:
        # Recorded values (of some earlier step), as the file has them.
        np.testing.assert_array_equal(values, np.full(3, old_initial, "float32"))
    else:
        np.testing.assert_array_equal(values, np.full(3, not_observed, "float32"))
        # b absent first: recorded when first present, as in a new model.
        for y in batches[: ABSENT_STEPS + 1]:
            logs = loaded.train_on_batch(x, y, return_dict=True)
        values = to_numpy(getattr(_state(loaded, name), values_name))
        assert values[B] != old_initial and values[B] != not_observed
        if name != "excess_mtl":
            # The losses FAMO and GradNorm keep are b's logged loss.
            assert values[B] == np.float32(logs["b_loss"])

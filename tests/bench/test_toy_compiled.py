"""The compiled toy loop (`ToyPathRunner`) against a plain loop written here."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import gradients as gradients_lib
from keras_mtl.bench.runner import parse_method
from keras_mtl.bench.toy import STEPS_PER_EPOCH, ToyPathRunner, optimise_path
from keras_mtl.datasets import load


def reference_path(problem, method, start, steps, learning_rate=1e-2):
    """The reference: a freshly built method, one step at a time (a
    `tf.function` without XLA: 0.6-1.9 s a method, against 2.4-6.0 s for
    the same loop op by op), the weighting told of each epoch of
    `STEPS_PER_EPOCH` steps before its first step (as `EpochDriver` does in
    `fit`)."""
    built = parse_method(method).build()
    weighting, aggregator = built["weighting"], built["aggregator"]
    weighting.set_task_names(list(problem.tasks))
    weighting.build((2,))
    if aggregator is not None:
        aggregator.build((2, 2))
    params = keras.Variable(np.asarray(start, dtype="float32"), name="params")
    variables = [params, *weighting.trainable_variables]
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)
    path, losses_path, weights_path = [params.numpy()], [], []
    losses_path.append(np.asarray(problem.losses(params)))

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape(persistent=True) as tape:
            losses = problem.losses(params)
            objective, weights = weighting(losses, training=True)
            if aggregator is not None:
                terms = tf.stop_gradient(weights) * losses
                transformed = aggregator.task_terms(terms)
                task_terms = [transformed[0], transformed[1]]
                transformed_sum = tf.reduce_sum(transformed)
        gradients = tape.gradient(objective, variables)
        if aggregator is not None:
            jacobian = tf.stack([tape.gradient(t, params) for t in task_terms])
            direction = aggregator(jacobian, training=True, losses=losses)
            gradients = [direction, *gradients[1:]]
            weights = weights * gradients_lib.combination_weights(jacobian, direction)
            if transformed is not terms:
                weights = weights * tape.gradient(transformed_sum, terms)
        optimizer.apply(gradients, variables)
        return weights

    for i in range(steps):
        if i % STEPS_PER_EPOCH == 0:
            weighting.on_epoch_begin(i // STEPS_PER_EPOCH)
        weights = step()
        path.append(params.numpy())
        losses_path.append(np.asarray(problem.losses(params)))
        weights_path.append(np.asarray(weights))
    return {
        "params": np.stack(path),
        "losses": np.stack(losses_path),
        "weights": np.stack(weights_path),
    }


# Rounding budget. Every compared path stays within |x| <= 16 (asserted),
# where one float32 ulp is 2**-19 (1.9e-6): each step's rounding (a graph
# without XLA and XLA order their float32 operations differently) can move a
# parameter by about that much, and over `steps` steps those errors add up
# at most linearly (200 steps: 3.8e-4). The start compared is 4: in the
# lower half plane (starts 4 and 5) the losses are smooth quadratics in the
# parameters, and a second start there would test the same loop again.
# Starts 1 and 3 lie where tanh saturates and start 2 on the kink x2 = 0,
# where a task's gradient is itself of rounding size and Adam, dividing by
# its root mean square, turns it into full-size steps: there the paths of
# any two float32 runs (eager, tf.function, XLA) part after a few hundred
# steps, so they are no test of the loop.
PARAM_ULP = float(np.spacing(np.float32(16.0)))
# A loss is a difference of terms up to 20 (q - 20): a few ulps of 20 for
# XLA's own tanh and log and the cancellation.
LOSS_ATOL = 8 * float(np.spacing(np.float32(20.0)))


@pytest.mark.parametrize(
    "method, steps, xla",
    [
        ("uncertainty", 200, True),  # trainable weighting state
        ("moco", 200, True),  # an aggregator with state
        # DWA's weights leave 1 once two epochs have completed (step 200).
        ("dwa", 300, True),
        # Random draws: a tf.function without XLA keeps the seed's stream.
        ("rlw:seed=3", 200, False),
    ],
)
def test_compiled_path_matches_the_plain_loop(method, steps, xla):
    toy = load("toy")
    runner = ToyPathRunner(toy, method)
    assert runner.jit_compile is xla
    # A path first (crossing an epoch): the next must not inherit its state.
    runner.run(toy.start_points[0], 150)
    tolerance = steps * PARAM_ULP
    start = toy.start_points[3]
    compiled = runner.run(start, steps)
    reference = reference_path(toy, method, start, steps)
    assert compiled["params"].shape == (steps + 1, 2)
    assert compiled["weights"].shape == (steps, 2)
    assert np.max(np.abs(reference["params"])) <= 16.0
    np.testing.assert_allclose(
        compiled["params"], reference["params"], rtol=0, atol=tolerance
    )
    # The losses logged at each step are those of that step's parameters.
    np.testing.assert_allclose(
        compiled["losses"],
        np.asarray(toy.losses(compiled["params"])),
        rtol=1e-5,
        atol=LOSS_ATOL,
    )
    np.testing.assert_allclose(
        compiled["weights"], reference["weights"], rtol=tolerance, atol=tolerance
    )


def test_one_path_per_call_and_bad_steps():
    toy = load("toy")
    path = optimise_path(toy, "equal", toy.start_points[4], steps=120)
    np.testing.assert_array_equal(path["params"][0], toy.start_points[4])
    np.testing.assert_allclose(path["weights"], 1.0)
    runner = ToyPathRunner(toy, "equal")
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            runner.run(toy.start_points[0], steps)

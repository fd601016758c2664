"""The trainer of `MultiTaskModel` for the current Keras backend, chosen
once at import, as `keras/src/models/model.py` chooses Keras' own.

- `step.py`: `MultiTaskStep`, the algorithm written once (objective,
  aggregation of per-task gradients, finishing a step, the test step) and
  what a backend trainer must provide;
- `tensorflow_trainer.py`: `TensorFlowTrainer`, the `GradientTape` step and
  `tf.distribute`;
- `jax_trainer.py`: `JaxTrainer`, the stateless `jax.vjp` step;
- `torch_trainer.py`: `TorchTrainer`, the eager `torch.autograd` step;
- `single_device.py`: the replica hooks of the JAX and torch trainers
  (one replica, reductions the identity);
- `present_rows.py`: the aggregator on the present tasks' rows, in a step
  where some task has no labelled example;
- `loops.py`: the model's wrappers of `evaluate` and the one-batch calls.

Only the chosen backend's module is imported (TensorFlow is not imported on
JAX or torch).
"""

from __future__ import annotations

from typing import Any

import keras

from keras_mtl.trainers.step import MultiTaskStep, StepGradients

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")

if keras.backend.backend() == "tensorflow":
    from keras_mtl.trainers.tensorflow_trainer import TensorFlowTrainer as Trainer
elif keras.backend.backend() == "jax":
    from keras_mtl.trainers.jax_trainer import JaxTrainer as Trainer
elif keras.backend.backend() == "torch":
    from keras_mtl.trainers.torch_trainer import TorchTrainer as Trainer
else:

    class Trainer(MultiTaskStep):  # type: ignore[no-redef]
        """A backend without a trainer: the model builds and predicts, and
        training or evaluating says why it cannot."""

        _counter_dtype = "int64"

        def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(
                "MultiTaskModel trains on the Keras backends "
                f"{', '.join(SUPPORTED_BACKENDS)}; the backend is "
                f"{keras.backend.backend()!r} (set KERAS_BACKEND)."
            )

        train_step = test_step = _unsupported


__all__ = ["MultiTaskStep", "StepGradients", "SUPPORTED_BACKENDS", "Trainer"]

"""The PyTorch trainer of `MultiTaskModel`: the training step under
`torch.autograd`.

The algorithm is `MultiTaskStep`'s (`step.py`); this module provides what it
needs from PyTorch. Keras' own torch trainer runs the forward pass eagerly,
calls `loss.backward()` and reads each parameter's `.grad`. Here every
gradient is one `torch.autograd.grad` call on the forward pass's graph
(kept with `retain_graph=True` until the last one): no `.grad` is
accumulated on the parameters, and each call runs only the part of the
backward graph its inputs need.

- no aggregator: one call, the objective's gradient of every trainable
  variable;
- an aggregator on the shared parameters: one call per task term, with
  respect to the shared parameters (the Jacobian's rows) and the net's
  other parameters (the task heads: their gradient is the sum of these
  parts, the heads' objective being the task terms' sum there), and, with
  regularisation, one for its gradient; a weighting's learned parameters
  get the heads' objective's gradient in one more call. Under
  `torch.compile` each call runs the whole compiled backward (the forward
  pass is one autograd node), so the heads take no call of their own: at
  K = 3 the width-1024 MLP's UPGrad step went from four backward passes to
  three (105-118 -> 93-98 ms a step, compiled). K separate calls rather than
  one call with a batched cotangent (`is_grads_batched=True`, a `vmap` over
  the backward pass): on the benchmark's width-1024 MLP (input 64, three
  hidden layers of 1024, three scalar heads, batch 256, two CPU threads)
  the forward pass and the three rows of its six shared tensors took 95 ms
  at best and 175 ms in the median with separate calls, 190 ms and 277 ms
  batched (one plain backward pass: 47 ms at best);
- representation mode: the rows are taken at the trunk's output and the
  trunk gets one backward pass with the aggregated direction as the
  output's gradient.

The update is applied only if the step is finite: a Python branch on the
flag (the step is eager; under `torch.compile` the branch is a graph break).
There is one replica: Keras has no torch implementation of
`keras.distribution`, and a distribution over several devices raises.

With `jit_compile=True` Keras wraps the whole step in `torch.compile`. The
step then runs with backward functions compiled without donated buffers
(`make_train_function`), and the aggregator is left out of the compiled
graph (`torch.compiler.disable`): its solvers' fixed loops would be unrolled
(the digits model's UPGrad step compiled for 187 s with it, 29 s without,
as long as the step without an aggregator). Measured on two CPU threads,
the compiled step was slower than the eager one on small models (Keras'
default on torch, `jit_compile="auto"`, is eager). In representation mode
the heads take the trunk's output across a graph break (`_heads_input`):
the rows are taken at it, which in one graph with the heads is not on the
losses' backward path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import torch

from keras_mtl import _compat
from keras_mtl.trainers.single_device import SingleDevice
from keras_mtl.trainers.step import MultiTaskStep, StepGradients


class TorchTrainer(SingleDevice, MultiTaskStep):
    """`MultiTaskStep` on PyTorch (the model's base on that backend)."""

    # Step counters; a saved int64 value loads into either backend's.
    _counter_dtype = "int64"

    def train_step(self, data: Any) -> dict[str, Any]:
        """One training step (Keras' torch signature)."""
        return self._train_body(data)

    def test_step(self, data: Any) -> dict[str, Any]:
        """One evaluation step (Keras' torch signature; Keras runs it under
        `torch.no_grad`)."""
        return self._test_body(data)

    def get_compile_config(self) -> dict[str, Any]:
        """Keras' compile config, its optimizer saved under the public class
        (`_compat.portable_optimizer_config`): a `.keras` file written on
        torch then compiles with the loading backend's own optimizer."""
        return _compat.portable_optimizer_config(super().get_compile_config())

    def _check_strategy_support(self, strategy: Any) -> None:
        """As `MultiTaskStep`'s, and a `keras.distribution` over several
        devices raises: Keras has no torch implementation of it (stock
        Keras trains on one device and ignores it)."""
        super()._check_strategy_support(strategy)
        distribution = keras.distribution.distribution()
        mesh = getattr(distribution, "device_mesh", None)
        devices = getattr(mesh, "devices", None)
        if distribution is not None and (devices is None or np.size(devices) > 1):
            raise NotImplementedError(
                f"A keras.distribution ({type(distribution).__name__}) is set, "
                "which Keras does not implement on the torch backend: the model "
                "would train on one device. MultiTaskModel trains on one device "
                "on torch; for several devices use the JAX backend "
                "(keras.distribution) or TensorFlow (tf.distribute), or call "
                "keras.distribution.set_distribution(None)."
            )

    def make_train_function(self, force: bool = False) -> Any:
        """Keras' torch training function; with `jit_compile=True` (Keras
        then wraps the step in `torch.compile`) it runs with backward
        functions compiled without donated buffers
        (`_compat.torch_compile_without_donated_buffers`): the step takes
        several gradients of one forward pass, which a backward function
        with donated buffers refuses."""
        self._check_strategy_support(None)
        made = self.train_function is None or force
        super().make_train_function(force=force)
        if made and self.jit_compile:
            compiled = self.train_function

            def one_step_on_data(data: Any) -> Any:
                with _compat.torch_compile_without_donated_buffers():
                    return compiled(data)

            self.train_function = one_step_on_data
        return self.train_function

    # ------------------------------------------------ MultiTaskStep's hooks
    def _apply_if_finite(
        self, finite: Any, gradients: list[Any], variables: list[Any]
    ) -> None:
        # A skipped step leaves the parameters and the optimizer's state
        # (its iteration count, moments) as they were.
        if bool(finite):
            with torch.no_grad():
                self.optimizer.apply(gradients, variables)

    def _heads_input(self, representation: Any) -> Any:
        """The trunk's output as the heads take it in representation mode
        (`MultiTaskModel.call`): eagerly `representation` itself; under
        `torch.compile` the same tensor across a graph break, so that the
        heads and the losses are a compiled graph of their own with
        `representation` as its input.

        Without the break dynamo captures the trunk, the heads and the
        losses in one graph, which AOTAutograd turns into one autograd
        node: the representation is one of its outputs beside the losses,
        not on their backward path. `torch.autograd.grad(loss,
        representation)` then finds it unused (measured with torch 2.13):
        every row of the Jacobian, the aggregated direction and so the
        trunk's gradient were zero, while the heads trained."""
        if torch.compiler.is_compiling():
            return _between_graphs(representation)
        return representation

    def _traced_only(self, fn: Callable[[], Any]) -> Any:
        # The step is eager: `fn` (the search for the shared parameters,
        # which differentiates a forward pass) runs where it is called, with
        # gradients on even inside a `no_grad` region.
        with torch.enable_grad():
            return fn()

    # ------------------------------------------------------------ the step
    def _step_gradients(self, x: Any, y: Any, sample_weight: Any) -> StepGradients:
        """The forward pass and every gradient of the step (see
        `MultiTaskStep`)."""
        # The weighting's trainable variables too: an absent task's part of
        # them is kept (see `_finish_step`).
        state = list(self.weighting.variables)
        state_before = [_detached_copy(v) for v in state]
        representation = None
        if self.representation_mode:
            y_pred, representation = self(x, training=True, return_representation=True)
        else:
            y_pred = self(x, training=True)
        losses, total, weights = self._objective(
            y, y_pred, sample_weight, training=True
        )
        # Read after the forward pass: a subclassed net creates its variables
        # in its first call.
        variables = list(self.trainable_variables)
        if self.aggregator is None:
            gradients = _gradients(self.optimizer.scale_loss(total), variables)
        else:
            if not self.representation_mode:
                self._find_shared_variables()
            aggregator_state = list(self.aggregator.non_trainable_variables)
            state = state + aggregator_state
            state_before = state_before + [_detached_copy(v) for v in aggregator_state]
            gradients, weights = self._aggregated_gradients(
                losses, total, weights, variables, representation
            )
        # The rest of the step (checks, update, trackers, metrics) needs no
        # graph.
        return StepGradients(
            _detached(y_pred),
            _detached(losses),
            _detached(total),
            _detached(weights),
            gradients,
            variables,
            state,
            state_before,
        )

    def _aggregated_gradients(
        self,
        losses: Any,
        total: Any,
        weights: Any,
        variables: list[Any],
        representation: Any,
    ) -> tuple[list[Any], Any]:
        """Gradients with the shared parameters' part replaced by the
        aggregator's direction for the Jacobian of the (loss-level
        weighted, loss-scaled) task terms, taken with respect to the shared
        parameters or, in representation mode, to `representation` (then
        the trunk's parameters are the shared ones); every other parameter
        gets the heads' objective's gradient. Returns the gradients and the
        effective task weights."""
        optimizer = self.optimizer
        if representation is not None and isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            raise NotImplementedError(
                "Representation mode does not support mixed_float16 loss scaling "
                "yet; aggregate over the shared parameters (no "
                "`representation`/`trunk`) instead."
            )
        terms, transformed, heads = self._aggregation_objectives(losses, weights, total)
        scaled_terms = optimizer.scale_loss(transformed)
        regularization = self._regularization()
        if representation is None:
            targets = shared = self._find_shared_variables()
            target_values = [v.value for v in shared]
        else:
            shared = self._trunk_variables()
            targets = target_values = [representation]
        shared_ids = {id(v) for v in shared}
        others = [v for v in variables if id(v) not in shared_ids]
        # Every other parameter of the net (the task heads) is taken in the
        # rows' calls too: the heads' objective differs from the sum of the
        # task terms by the weighting's part, whose gradient with respect to
        # the losses is the (constant) weights, and by the regularisation,
        # so its gradient there is the sum of the rows plus the
        # regularisation's. No separate backward pass for the heads: under
        # `torch.compile` each call runs the whole compiled backward.
        net_ids = {id(v) for v in self.net.trainable_variables}
        in_rows = [v for v in others if id(v) in net_ids]
        rest = [v for v in others if id(v) not in net_ids]
        num_targets = len(target_values)
        in_row_values = [v.value for v in in_rows]
        rows, head_rows = [], []
        for k in range(len(self.task_names)):
            found = _tensor_gradients(scaled_terms[k], target_values + in_row_values)
            rows.append(found[:num_targets])
            head_rows.append(found[num_targets:])
        with torch.no_grad():
            direction, combination, loss_scale = _eager(self._aggregate_rows)(
                rows, targets, _detached(keras.ops.cast(losses, "float32"))
            )
        # The regularisation's gradient, in one call: of the shared
        # parameters (in representation mode it is part of the trunk's
        # backward pass below) and of the heads.
        regularized = (shared if representation is None else []) + in_rows
        extra: dict[int, Any] = {}
        if self.losses and regularized:
            for v, g in zip(regularized, _gradients(regularization, regularized)):
                if g is not None:
                    extra[id(v)] = (g * loss_scale).to(g.dtype)
        head_grads = [
            _sum_present((*parts, extra.get(id(v))))
            for v, parts in zip(in_rows, zip(*head_rows))
        ]
        if representation is None:
            shared_grads = [
                _sum_present((d, extra.get(id(v)))) for v, d in zip(shared, direction)
            ]
        else:
            outputs, output_gradients = [representation], [direction[0]]
            if self.losses and regularization.requires_grad:
                outputs.append(regularization)
                output_gradients.append(torch.ones_like(regularization))
            shared_grads = _tensor_gradients(
                outputs, [v.value for v in shared], output_gradients
            )
        by_id = {id(v): g for v, g in zip(shared, shared_grads)}
        by_id.update((id(v), g) for v, g in zip(in_rows, head_grads))
        # The weighting's parameters (and anything else outside the net):
        # the heads' objective's gradient.
        by_id.update(
            zip((id(v) for v in rest), _gradients(optimizer.scale_loss(heads), rest))
        )
        gradients = [by_id[id(v)] for v in variables]
        if transformed is not terms:
            # Effective weight on grad L_i: d term_i / d (w_i L_i) too.
            (slope,) = torch.autograd.grad(
                transformed,
                terms,
                torch.ones_like(transformed),
                retain_graph=True,
            )
            weights = weights * slope
        return gradients, _detached(weights) * combination


@torch.compiler.disable
def _between_graphs(tensor: Any) -> Any:
    # Called only under dynamo: a graph break, the tensor passed through.
    return tensor


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, left out of `torch.compile` (`jit_compile=True`): run eagerly
    between compiled parts."""
    return torch.compiler.disable(fn, recursive=True)


def _detached(value: Any) -> Any:
    """`value` (a structure of tensors) cut from the autograd graph."""
    return keras.tree.map_structure(
        lambda t: t.detach() if isinstance(t, torch.Tensor) else t, value
    )


def _detached_copy(variable: Any) -> Any:
    """A copy of a variable's value that later assignments do not change."""
    return variable.value.detach().clone()


def _tensor_gradients(
    outputs: Any,
    inputs: Sequence[Any],
    output_gradients: Sequence[Any] | None = None,
) -> list[Any]:
    """`torch.autograd.grad(outputs, inputs)` with the graph kept for the
    step's other gradients; `None` for an input the outputs do not reach
    (or that does not require a gradient), as TensorFlow's tape gives."""
    inputs = list(inputs)
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    result: list[Any] = [None] * len(inputs)
    output_list = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    if not wanted or not any(o.requires_grad for o in output_list):
        return result
    found = torch.autograd.grad(
        outputs,
        [inputs[i] for i in wanted],
        grad_outputs=output_gradients,
        retain_graph=True,
        allow_unused=True,
    )
    for i, g in zip(wanted, found):
        result[i] = g
    return result


def _sum_present(parts: Sequence[Any]) -> Any:
    """The sum of the tensors among `parts` (`None` for none)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    total = present[0]
    for part in present[1:]:
        total = total + part
    return total


def _gradients(output: Any, variables: Sequence[Any]) -> list[Any]:
    """The gradient of the scalar `output` for each of `variables` (Keras
    variables; their values are the `torch.nn.Parameter`s the forward pass
    used)."""
    return _tensor_gradients(output, [v.value for v in variables])

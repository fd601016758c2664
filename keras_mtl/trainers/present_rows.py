"""Aggregating the present tasks' rows of a step where some tasks have no
labelled example (docs/missing_labels.md): the aggregator built again for
fewer rows (`RowSubsets`), its state gathered at the present tasks and
scattered back, the row ordering that puts present tasks first, and
`on_present_rows`, the switch on the number of present tasks that
`MultiTaskStep` (step.py) calls: plain functions of tensors, the
aggregator's state passed in and its new values returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_mtl import _compat
from keras_mtl import gradients as gradients_lib

# The most absent tasks a step can have and still be aggregated over its
# present rows: every number of present tasks is a branch of the step, which
# compiles the aggregator once more (`RowSubsets`). A step with more absent
# tasks sums the present rows' gradients (and warns when it is traced).
MAX_ABSENT_BRANCHES = 4


class RowSubsets:
    """The model's aggregator for steps where only n < K tasks are present
    (have a labelled example): for each n from K - 1 down to
    `max(aggregator.min_tasks, K - MAX_ABSENT_BRANCHES, 1)` a copy of it
    (`from_config`) built for n rows, not tracked (never saved).

    A copy's variables are stand-ins: `run` maps them (a
    `keras.StatelessScope`) to the model aggregator's values gathered at
    the present tasks along their task axes (the axes of length K that
    have length n in the copy) and scatters their new values back; the
    entries of the absent tasks are kept. Variables without a task axis
    (step counters, random streams) take the new values. Entries that are
    normalised (`Aggregator.state_task_total`: weights on the simplex, or
    summing to the number of tasks) are rescaled to the total of n tasks
    and their new values back to the present tasks' share. A copy
    allocates its variables: n x D floats for the state of an aggregator
    with the Jacobian's width (MoCo, DB-MTL, ExcessMTL).
    """

    def __init__(self, aggregator: Any, num_tasks: int, dim: int | None) -> None:
        self.aggregator = aggregator
        self.num_tasks = num_tasks
        self.variables = list(aggregator.variables)
        self.totals = [aggregator.state_task_total(v) for v in self.variables]
        self.copies: dict[int, tuple[Any, list[list[int]]]] = {}
        self.failure: str | None = None
        self.warned = False
        smallest = max(aggregator.min_tasks, num_tasks - MAX_ABSENT_BRANCHES, 1)
        for n in range(num_tasks - 1, smallest - 1, -1):
            try:
                copy = type(aggregator).from_config(aggregator.get_config())
                # Called inside the step only; eagerly (`run_eagerly`) its
                # cached function would keep the stand-ins' first values.
                copy.eager_function = False
                copy.build((n, dim))
                self.copies[n] = (copy, self._task_axes(copy, n))
            except Exception as error:  # noqa: BLE001 - reported when traced
                self.copies.clear()
                self.failure = f"{type(error).__name__}: {error}"
                break

    def _task_axes(self, copy: Any, n: int) -> list[list[int]]:
        """For each variable, the axes that have length K in the model's
        aggregator and n in `copy`; raises if the two differ otherwise."""
        variables = list(copy.variables)
        if [v.name for v in variables] != [v.name for v in self.variables]:
            raise ValueError(
                f"built for {n} rows it has the variables "
                f"{[v.name for v in variables]}, for {self.num_tasks} "
                f"{[v.name for v in self.variables]}"
            )
        axes = []
        for ours, theirs in zip(self.variables, variables):
            if len(ours.shape) != len(theirs.shape) or ours.dtype != theirs.dtype:
                raise ValueError(f"its variable {ours.name!r} changes rank or dtype")
            task_axes = []
            for axis, (k, m) in enumerate(zip(ours.shape, theirs.shape)):
                if k == m:
                    continue
                if (k, m) != (self.num_tasks, n):
                    raise ValueError(
                        f"its variable {ours.name!r} has shape {tuple(ours.shape)} "
                        f"for {self.num_tasks} rows and {tuple(theirs.shape)} for {n}"
                    )
                task_axes.append(axis)
            total = self.aggregator.state_task_total(ours)
            if total is not None and (len(task_axes) != 1 or len(ours.shape) != 1):
                raise ValueError(
                    f"its variable {ours.name!r} is normalised ({total!r}) but "
                    "is not a vector of one entry per task"
                )
            axes.append(task_axes)
        return axes

    def sizes_for(self, fewest: int) -> list[int]:
        """The numbers of present tasks, from `fewest` (at least 1) to
        K - 1, that have a branch; warns (once) about those that do not."""
        possible = range(max(fewest, 1), self.num_tasks)
        sizes = [n for n in possible if n in self.copies]
        others = [n for n in possible if n not in self.copies]
        if others and not self.warned:
            self.warned = True
            warnings.warn(self._fallback_message(others), UserWarning, stacklevel=2)
        return sizes

    def _fallback_message(self, counts: list[int]) -> str:
        aggregator = self.aggregator
        name = type(aggregator).__name__
        if self.failure is not None:
            reasons = [f"no copy of it for fewer rows could be made: {self.failure}"]
        else:
            reasons = []
            if min(counts) < aggregator.min_tasks:
                reasons.append(f"{name} combines at least {aggregator.min_tasks} rows")
            if max(counts) >= aggregator.min_tasks:
                reasons.append(
                    "the present rows are aggregated in a step with at most "
                    f"{MAX_ABSENT_BRANCHES} absent tasks "
                    "(keras_mtl.trainers.present_rows.MAX_ABSENT_BRANCHES)"
                )
        shown = " or ".join(str(n) for n in counts)
        if len(counts) > 2 and counts[-1] - counts[0] == len(counts) - 1:
            shown = f"{counts[0]} to {counts[-1]}"
        return (
            f"With {self.num_tasks} tasks, a training step in which only {shown} "
            f"of them have a labelled example sums their gradients instead of "
            f"applying {name} to them, and keeps {name}'s state: "
            f"{'; '.join(reasons)}. See docs/missing_labels.md."
        )

    def run(
        self,
        n: int,
        call: Callable[[Any], Any],
        state: list[Any],
        order: Any,
        inverse: Any,
    ) -> tuple[Any, list[Any]]:
        """`call(copy)` with the copy for n rows, its variables mapped to
        `state` (the values of the model aggregator's variables) gathered at
        the present tasks `order[:n]`; returns its result and each
        variable's new value (the absent tasks' entries from `state`).
        A pure function of its inputs, as a branch of `ops.switch` must be
        on JAX."""
        copy, axes = self.copies[n]
        rows = order[:n]
        mapping, shares = [], []
        for variable, value, task_axes, total in zip(
            copy.variables, state, axes, self.totals
        ):
            for axis in task_axes:
                value = ops.take(value, rows, axis=axis)
            share = None
            if total is not None:
                # The present tasks' entries as an n-task aggregator's.
                share = ops.sum(value)
                target = 1.0 if total == "one" else float(n)
                positive = ops.where(share > 0.0, share, 1.0)
                value = ops.where(share > 0.0, value * (target / positive), target / n)
                share = share / target
            mapping.append((variable, value))
            shares.append(share)
        with keras.StatelessScope(
            state_mapping=mapping, initialize_variables=False
        ) as scope:
            result = call(copy)
        new_state = []
        for variable, before, task_axes, share in zip(
            copy.variables, state, axes, shares
        ):
            value = scope.get_current_value(variable)
            if share is not None:
                value = value * share
            if task_axes:
                value = self._scattered(before, value, task_axes, order, inverse, n)
            new_state.append(value)
        return result, new_state

    def _scattered(
        self,
        before: Any,
        value: Any,
        task_axes: list[int],
        order: Any,
        inverse: Any,
        n: int,
    ) -> Any:
        """`before` with the entries of the present tasks `order[:n]`
        (along `task_axes`) replaced by `value`'s."""
        k = self.num_tasks
        rank = len(before.shape)
        permuted = before
        padding = [(0, 0)] * rank
        inside = ops.convert_to_tensor(True)
        for axis in task_axes:
            permuted = ops.take(permuted, order, axis=axis)
            padding[axis] = (0, k - n)
            shape = [1] * rank
            shape[axis] = k
            leading = ops.arange(k, dtype="int32") < n
            inside = ops.logical_and(inside, ops.reshape(leading, shape))
        merged = ops.where(inside, ops.pad(value, padding), permuted)
        for axis in task_axes:
            merged = ops.take(merged, inverse, axis=axis)
        return merged


def present_first(present: Any) -> tuple[Any, Any, Any]:
    """The tasks in the order present first (each group in task order),
    `[K]` int32, its inverse permutation and the number present."""
    k = present.shape[0]
    tasks = ops.arange(k, dtype="int32")
    order = ops.cast(ops.argsort(ops.where(present, tasks, tasks + k)), "int32")
    inverse = ops.cast(ops.argsort(order), "int32")
    return order, inverse, ops.sum(ops.cast(present, "int32"))


def absent_as_present(matrix: Any, present: Any, square: bool = False) -> Any:
    """`matrix` (rows per task; and columns, `square`) with each absent
    task's row replaced by a present task's, so that its pairwise cosines
    are those of the present tasks (the identity where all are present)."""
    tasks = ops.arange(present.shape[0], dtype="int32")
    some_present = ops.cast(ops.argmax(ops.cast(present, "int32")), "int32")
    index = ops.where(present, tasks, some_present)
    matrix = ops.take(matrix, index, axis=0)
    if square:
        matrix = ops.take(matrix, index, axis=1)
    return matrix


def made_for(subsets: RowSubsets | None, aggregator: Any) -> bool:
    """Whether `subsets` was made for `aggregator` as it is now (the same
    object, with the same variables); False for None."""
    return (
        subsets is not None
        and subsets.aggregator is aggregator
        and len(subsets.variables) == len(aggregator.variables)
    )


def state_values(subsets: RowSubsets) -> list[Any]:
    """The values of the model aggregator's variables now, as copies (on
    TensorFlow a variable is otherwise read where it is used)."""
    return [ops.copy(v.value) for v in subsets.variables]


def on_present_rows(
    result: Any,
    apply: Callable[[Any, Any], Any],
    fallback: Any,
    *,
    subsets: RowSubsets,
    state: list[Any],
    state_after: list[Any],
    present: Any,
    may_be_absent: tuple[bool, ...],
    per_task: bool,
) -> tuple[Any, list[Any]]:
    """The aggregator's `result` on all K rows where every task is
    `present` (`[K]` bool); else `apply(aggregator, rows)` for the present
    tasks' rows only (`rows`, their indices in task order), with the
    aggregator built for that many rows (`subsets`) and its state gathered
    at them. Returns the result and the new value of each of
    `subsets.variables`: `state_after` (their values after `result`) where
    every task is present, else the present tasks' new entries and the
    absent tasks' from `state` (their values before `result`). A per-task
    result (`per_task`, `[n]`) is returned as `[K]`, 0 for the absent tasks.

    Where the present rows are fewer than the aggregator takes
    (`min_tasks`), or more than `MAX_ABSENT_BRANCHES` tasks are absent, the
    result is `fallback` (the sum of the present rows) and the state is
    `state`; without a labelled example at all, zeros. One branch per number
    of present tasks that can occur (`may_be_absent`, per task; `ops.switch`:
    static shapes, and the aggregator is compiled once per branch)."""
    num_tasks = len(may_be_absent)
    fewest = num_tasks - sum(may_be_absent)
    sizes = subsets.sizes_for(fewest)
    order, inverse, count = present_first(present)

    def nothing() -> tuple[Any, list[Any]]:
        return ops.zeros_like(result), list(state)

    def summed() -> tuple[Any, list[Any]]:
        return fallback, list(state)

    def on_rows(n: int) -> Callable[[], tuple[Any, list[Any]]]:
        def run() -> tuple[Any, list[Any]]:
            rows = order[:n]
            out, new_state = subsets.run(
                n, lambda a: apply(a, rows), state, order, inverse
            )
            if per_task:
                padded = ops.concatenate([out, ops.zeros((num_tasks - n,), out.dtype)])
                out = ops.take(padded, inverse, axis=0)
            return out, new_state

        return run

    branches = [nothing, summed] + [on_rows(n) for n in sizes]
    # Branch of each count of present tasks: 0 for none and for all
    # (where `result` is used), 1 for the sum.
    table = [1] * (num_tasks + 1)
    table[0] = table[num_tasks] = 0
    for i, n in enumerate(sizes):
        table[n] = 2 + i
    index = ops.take(ops.convert_to_tensor(table, "int32"), count, axis=0)
    out, new_state = _compat.switch_with_symbolic_inputs(index, branches)
    every = ops.all(present)
    new_state = [
        ops.where(every, after, value) for after, value in zip(state_after, new_state)
    ]
    return ops.where(every, result, out), new_state


def present_min_cosine(jacobian: Any, present: Any, cosine: Any) -> Any:
    """The smallest cosine between the `present` tasks' rows of `jacobian`:
    `cosine` (that of all rows) where every task is present, else computed
    (an absent task's zero row has cosine 0 with every row)."""
    return ops.cond(
        ops.all(present),
        lambda: cosine,
        lambda: gradients_lib.min_cosine(absent_as_present(jacobian, present)),
    )


def present_mask(present: Any, task_axes: list[int], rank: int) -> Any:
    """Where a state variable of rank `rank` with task axes `task_axes`
    belongs to a `present` task (`[K]` bool), broadcastable to its shape."""
    mask = ops.convert_to_tensor(True)
    for axis in task_axes:
        shape = [1] * rank
        shape[axis] = -1
        mask = ops.logical_and(mask, ops.reshape(present, shape))
    return mask

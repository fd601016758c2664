"""Per-task gradients inside a training step, for aggregators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from keras_mtl import _compat
from keras_mtl.aggregation import _linalg
from keras_mtl.aggregation._rows import combine_rows


def shared_variable_indices(
    net: keras.Model,
    variables: Sequence[Any],
    tasks: Sequence[str],
    feed: Any = None,
) -> list[int]:
    """Indices of the `variables` that two or more task outputs depend on.

    Found once, eagerly, from a forward pass of a zero batch through the
    built `net` (with `training=False`, so no statistics change): a variable
    is shared if the gradients of at least two outputs reach it. `feed` is
    that batch; by default `zero_batch(net)`.
    """
    if keras.backend.backend() == "jax":
        return _jax_shared_variable_indices(net, variables, tasks, _feed(net, feed))
    if keras.backend.backend() == "torch":
        return _torch_shared_variable_indices(net, variables, tasks, _feed(net, feed))
    # Imported here: on JAX, importing keras_mtl must not import TensorFlow.
    import tensorflow as tf

    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        # Built in a strategy's scope: a distributed variable is read only
        # in a replica context. Every replica finds the same indices.
        found: list[list[int]] = []
        tf.distribute.get_strategy().run(
            lambda: found.append(shared_variable_indices(net, variables, tasks, feed))
        )
        return found[0]
    feed = _feed(net, feed)
    counts = [0] * len(variables)
    sources = [v.value for v in variables]
    with tf.GradientTape(persistent=True) as tape:
        outputs = net(feed, training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = dict(zip(tasks, outputs))
        sums = {t: ops.sum(ops.cast(outputs[t], "float32")) for t in tasks}
    for task in tasks:
        grads = tape.gradient(sums[task], sources)
        for i, g in enumerate(grads):
            if g is not None:
                counts[i] += 1
    del tape
    return [i for i, c in enumerate(counts) if c >= 2]


def _feed(net: keras.Model, feed: Any) -> Any:
    """`feed`, or a zero batch of one example in the net's input structure."""
    return zero_batch(net) if feed is None else feed


def _input_structure(net: keras.layers.Layer) -> Any:
    """The symbolic inputs of a functional net (or a Sequential) in the
    structure it was built with, or None if unknown (a subclassed net).

    `net.input` of a functional model is the structure passed to its
    constructor (a dict keeps its keys, nested lists their nesting), while
    `net.inputs` is the flat list in Keras' order (a dict's keys sorted): a
    list in that order is not accepted where a dict, or a dict whose keys
    were not written sorted, is expected."""
    try:
        flat = list(net.inputs)
    except (AttributeError, ValueError):
        return None
    if not flat:
        return None
    if isinstance(net, keras.Sequential):
        # One input; a Sequential has no `input` until it is called.
        return flat[0]
    try:
        structure = net.input
    except (AttributeError, ValueError):
        structure = None
    if structure is not None and sorted(
        id(t) for t in keras.tree.flatten(structure)
    ) == sorted(id(t) for t in flat):
        return structure
    # Not the constructor's structure (a layer's first call): the flat list,
    # which a functional model takes when its inputs were a list.
    return flat[0] if len(flat) == 1 else flat


def _zeros(net: keras.layers.Layer, shape: Any, dtype: Any) -> Any:
    """One zero example of `shape` (its batch dimension is replaced by 1, as
    is any other unknown dimension, e.g. a sequence length)."""
    shape = (1, *(1 if d is None else int(d) for d in tuple(shape)[1:]))
    dtype = keras.backend.standardize_dtype(dtype or "float32")
    if dtype == "string":
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"The net {net.name!r} takes string inputs, which only the "
                "TensorFlow backend has: pass `shared=` to name the shared "
                "parameters instead of finding them from a zero batch."
            )
        import tensorflow as tf

        return tf.fill(shape, "")
    return ops.zeros(shape, dtype=dtype)


def zero_batch(net: keras.layers.Layer) -> Any:
    """A batch of one zero example for the net, in its input structure.

    A functional net (or Sequential) is fed through the structure it was
    built with (`_input_structure`), its inputs' dtypes and shapes. A
    subclassed net has no declared inputs: its shape structure is the one
    recorded at its first call (on the first real batch, in `fit`), with
    the net's `input_dtype`."""
    structure = _input_structure(net)
    if structure is not None:
        return keras.tree.map_structure(
            lambda t: _zeros(net, t.shape, t.dtype), structure
        )
    shapes = list((_compat.build_shapes(net) or {}).values())
    if len(shapes) != 1:
        raise ValueError(
            f"The input shape of the net {net.name!r} is unknown (it takes "
            f"{len(shapes)} recorded inputs): the shared parameters cannot be "
            "found. Call it once on data, pass a functional model, or name the "
            "shared parameters with `shared=`."
        )
    dtype = getattr(net, "input_dtype", None)
    return keras.tree.map_shape_structure(
        lambda shape: _zeros(net, shape, dtype), shapes[0]
    )


def _jax_shared_variable_indices(
    net: keras.Model, variables: Sequence[Any], tasks: Sequence[str], feed: Any
) -> list[int]:
    """The JAX version of `shared_variable_indices`. JAX differentiates an
    unconnected parameter to zeros, not `None` (and a zero batch makes many
    connected gradients zero too), so dependence is read from the program
    instead: the forward pass is traced to a jaxpr (nothing runs) and
    dead-code elimination keeps, for each task output, the inputs it
    depends on."""
    import jax

    def outputs_of(values: list[Any]) -> list[Any]:
        mapping = list(zip(variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            outputs = net(feed, training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = dict(zip(tasks, outputs))
        return [ops.sum(ops.cast(outputs[t], "float32")) for t in tasks]

    traced = jax.make_jaxpr(outputs_of)([v.value for v in variables])
    counts = [0] * len(variables)
    for k in range(len(tasks)):
        used = [i == k for i in range(len(tasks))]
        _, used_inputs = _compat.dce_jaxpr(traced.jaxpr, used)
        for i, needed in enumerate(used_inputs):
            counts[i] += int(needed)
    return [i for i, c in enumerate(counts) if c >= 2]


def _torch_shared_variable_indices(
    net: keras.Model, variables: Sequence[Any], tasks: Sequence[str], feed: Any
) -> list[int]:
    """The torch version of `shared_variable_indices`: as on TensorFlow, a
    variable an output does not reach gets no gradient (`allow_unused`
    gives None), one autograd call per task output."""
    import torch

    sources = [v.value for v in variables]
    wanted = [i for i, s in enumerate(sources) if s.requires_grad]
    if not wanted:
        return []
    counts = [0] * len(variables)
    with torch.enable_grad():
        outputs = net(feed, training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = dict(zip(tasks, outputs))
        for task in tasks:
            total = ops.sum(ops.cast(outputs[task], "float32"))
            if not total.requires_grad:
                continue
            grads = torch.autograd.grad(
                total,
                [sources[i] for i in wanted],
                retain_graph=True,
                allow_unused=True,
            )
            for i, g in zip(wanted, grads):
                if g is not None:
                    counts[i] += 1
    return [i for i, c in enumerate(counts) if c >= 2]


def flatten(tensors: Sequence[Any], like: Sequence[Any]) -> Any:
    """Concatenates tensors into one float32 vector; `None` entries become
    zeros shaped like the matching entry of `like` (a variable, or a tensor
    whose batch size may be known only at run time)."""
    parts = [
        ops.reshape(
            ops.cast(t if t is not None else ops.zeros_like(v), "float32"), (-1,)
        )
        for t, v in zip(tensors, like)
    ]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=0)


def task_blocks(rows: Sequence[Sequence[Any]], like: Sequence[Any]) -> list[list[Any]]:
    """The per-task gradients `rows[k][v]` (task k, target v; `None` for
    zeros) regrouped by target: per target `v` its K gradients as flat
    float32 vectors (the Jacobian's columns of that target, a block
    `[K, n_v]`), without forming the whole `[K, D]`."""
    blocks = []
    for v, target in enumerate(like):
        block = []
        for row in rows:
            g = row[v] if row[v] is not None else ops.zeros_like(target)
            block.append(ops.reshape(ops.cast(g, "float32"), (-1,)))
        blocks.append(block)
    return blocks


def takes_pairwise(block: Sequence[Any]) -> bool:
    """Whether a block's Gramian is summed pair by pair, its rows then kept
    apart (`_linalg.takes_pairwise`)."""
    return _linalg.takes_pairwise(len(block), block[0].shape[0])


def blocks_gramian(blocks: Sequence[Any]) -> Any:
    """`J @ J.T` of the Jacobian whose columns are the blocks', the sum of
    the blocks' Gramians (`_linalg.gramian` of each block: its K rows, or
    on TensorFlow a small block stacked as `[K, n]`)."""
    total = None
    for block in blocks:
        part = _linalg.gramian(block)
        total = part if total is None else total + part
    return total


# The raw Gramian is used when its largest diagonal entry (a
# squared row norm) lies in this range: the products of float32 gradients
# then neither overflow nor lose the rows to underflow.
_GRAMIAN_RANGE = (1e-20, 1e30)


def safe_gramian(blocks: Sequence[Sequence[Any]]) -> tuple[Any, Any]:
    """The Gramian of the rows whose columns are the `blocks`, divided by
    a scale where needed: returns `(gramian, divisor)`, `gramian` the
    Gramian of `rows / divisor`, finite even for non-finite rows.

    The raw Gramian (divisor 1) when it is finite and its largest diagonal
    entry in `_GRAMIAN_RANGE`, the common case; otherwise, in a branch that
    runs only then, `rescaled_gramian`. On TensorFlow rows narrower than
    `_linalg.PAIRWISE_FROM` columns are rescaled always, without the branch
    (`rescales_always`). Measured on XLA's CPU backend (docs/performance.md,
    Profile): every branch-free rescaling tried cost 0.2-0.35 of an ideal
    step more than the branch on JAX and about 0.1 on TensorFlow at width
    1024 (the largest entry of the rows is a pass of its own there); on
    torch (eager) the rescaling's passes over the gradients took 48 of the
    ~100 ms of an UPGrad step of the width-1024 MLP."""
    return raw_unless_unusable(
        lambda: blocks_gramian(blocks),
        lambda raw: (raw, ops.ones((), "float32")),
        lambda: rescaled_gramian(blocks),
        _total_columns(blocks),
    )


def raw_unless_unusable(
    raw_gramian: Callable[[], Any],
    with_raw: Callable[[Any], Any],
    rescaled: Callable[[], Any],
    columns: int | None,
) -> Any:
    """The choice between the raw Gramian and a rescaled one of rows of
    `columns` entries (None: known only at run time), made here for every
    user (`safe_gramian`, the logs of `_from_gramian`): `rescaled()`
    without a branch where `rescales_always(columns)`; otherwise
    `with_raw(raw_gramian())` when that Gramian is usable
    (`usable_gramian`), else `rescaled()`, in a branch that runs only then.
    Both must return the same structure of tensors (a branch's outputs are
    copied: keep them small)."""
    if rescales_always(columns):
        return rescaled()
    raw = raw_gramian()
    return ops.cond(usable_gramian(raw), lambda: with_raw(raw), rescaled)


def rescales_always(columns: int | None) -> bool:
    """Whether a Gramian of rows of `columns` entries is rescaled always,
    without a branch: on TensorFlow when the rows are narrower than
    `_linalg.PAIRWISE_FROM`. There the rescaling's extra pass is short while
    the branch adds to XLA's compile (the test files of the Gramian route
    and the aggregators in a model: 106-123 s with no branch, 120-135 s
    with it); at width 1024 the pass cost 0.07 of an ideal step more than
    the branch, and compiled no faster."""
    return not _linalg.is_wide(columns) and keras.backend.backend() == "tensorflow"


def _total_columns(blocks: Sequence[Sequence[Any]]) -> int | None:
    """The blocks' total column count (their rows are `[n]` vectors; None if
    one's n is known only at run time)."""
    columns = [block[0].shape[0] for block in blocks]
    return None if None in columns else sum(columns)


def usable_gramian(raw: Any) -> Any:
    """Whether a raw Gramian is finite with its largest diagonal entry in
    `_GRAMIAN_RANGE` (a boolean scalar tensor)."""
    largest = ops.max(ops.diagonal(raw))
    low, high = _GRAMIAN_RANGE
    in_range = ops.logical_and(largest > low, largest < high)
    return ops.logical_and(ops.all(ops.isfinite(raw)), in_range)


def rescaled_gramian(blocks: Sequence[Sequence[Any]]) -> tuple[Any, Any]:
    """`(gramian, divisor)`: the Gramian of the rows with non-finite entries
    replaced by 0, divided by their largest absolute entry (`divisor`, 1
    for all-zero rows), as `Aggregator.call` scales the Jacobian: entries
    at most 1 in size, so the products neither overflow nor underflow.

    On TensorFlow each block is stacked first and cleaned, measured and
    divided as one `[K, n]` tensor: row by row, TensorFlow's XLA fused the
    K rows' cleaning, reductions and divisions into kernels whose LLVM
    compile grew exponentially with K (the `a:sum` training step of the
    width-128 MLP: 10 s at K = 3, over 3 minutes at K = 4; stacked, 5 s
    at K = 4 and 9 s at K = 8), except the blocks whose Gramian is taken
    pair by pair (`takes_pairwise`): those are cleaned and divided row by
    row, each product's fusion holding two rows. JAX keeps the rows of
    every block."""
    if keras.backend.backend() != "jax":
        blocks = [list(b) if takes_pairwise(b) else ops.stack(list(b)) for b in blocks]
    # Each leaf (a stacked block, or a row of a block kept as rows) cleaned
    # and measured.
    clean = keras.tree.map_structure(
        lambda t: ops.where(ops.isfinite(t), t, 0.0), blocks
    )
    scale = ops.max(ops.stack([ops.max(ops.abs(t)) for t in keras.tree.flatten(clean)]))
    scale = ops.where(scale > 0.0, scale, 1.0)
    return blocks_gramian(keras.tree.map_structure(lambda t: t / scale, clean)), scale


def combine_blocks(
    weights: Any, blocks: Sequence[Sequence[Any]], like: Sequence[Any]
) -> list[Any]:
    """`weights @ J` split by target: per block, the combination of its K
    rows (`combine_rows`), shaped like the matching entry of `like` and
    cast to its dtype."""
    weights = ops.cast(weights, "float32")
    return [
        ops.cast(
            ops.reshape(combine_rows(weights, list(block)), ops.shape(target)),
            target.dtype,
        )
        for block, target in zip(blocks, like)
    ]


def split_like(vector: Any, like: Sequence[Any]) -> list[Any]:
    """`unflatten(vector, like)`; one target may have a shape known only
    at run time (the representation's batch size)."""
    if len(like) == 1:
        target = like[0]
        return [ops.cast(ops.reshape(vector, ops.shape(target)), target.dtype)]
    return unflatten(vector, like)


def unflatten(vector: Any, like: Sequence[Any]) -> list[Any]:
    """Splits a vector into tensors shaped like the entries of `like`."""
    out, start = [], 0
    for v in like:
        size = 1
        for d in v.shape:
            size *= int(d)
        out.append(
            ops.cast(ops.reshape(vector[start : start + size], v.shape), v.dtype)
        )
        start += size
    return out


def combination_weights(jacobian: Any, direction: Any, ridge: float = 1e-6) -> Any:
    """The weights `w` with `w @ J` closest to `direction` (least squares,
    ridge-regularised): each task's effective weight in the direction."""
    # A non-finite step is skipped anyway; its logs must not make the
    # (non-XLA) solver raise on a NaN system.
    jacobian = ops.where(ops.isfinite(jacobian), jacobian, 0.0)
    return _from_gramian(
        jacobian, lambda j, scale, gram: _combination(j, scale, gram, direction, ridge)
    )


def min_cosine(jacobian: Any) -> Any:
    """The smallest pairwise cosine similarity between the task gradients."""
    return _from_gramian(jacobian, lambda j, scale, gram: gramian_min_cosine(gram))


def combination_weights_and_min_cosine(
    jacobian: Any, direction: Any, ridge: float = 1e-6
) -> tuple[Any, Any]:
    """`combination_weights(jacobian, direction, ridge)` and
    `min_cosine(jacobian)` of a finite `jacobian`, the same values, with
    one Gramian for both (each is a pass over the `[K, D]` Jacobian)."""

    def both(j: Any, scale: Any, gram: Any) -> tuple[Any, Any]:
        return _combination(j, scale, gram, direction, ridge), gramian_min_cosine(gram)

    return _from_gramian(jacobian, both)


def _from_gramian(jacobian: Any, logs: Callable[[Any, Any, Any], Any]) -> Any:
    """`logs(j, scale, gram)` for `j = jacobian / scale` and its Gramian:
    `scale` 1 and the raw Gramian, or `scale` the Jacobian's largest
    absolute entry, as `raw_unless_unusable` chooses. The division by the
    largest entry writes a copy of the Jacobian, which on JAX was most of
    the logs' cost (GradDrop at width 1024: 102 -> 87 ms a step,
    docs/performance.md, Profile). `logs` must return small tensors."""
    return raw_unless_unusable(
        lambda: _linalg.gramian(jacobian),
        lambda raw: logs(jacobian, ops.ones((), "float32"), raw),
        lambda: logs(*_scaled_gram(jacobian)),
        jacobian.shape[1],
    )


def _scaled_gram(jacobian: Any) -> tuple[Any, Any, Any]:
    """The Jacobian divided by its largest absolute entry (so the Gramian
    cannot overflow), that scale and the Gramian of the scaled Jacobian."""
    scale = ops.maximum(ops.max(ops.abs(jacobian)), 1e-30)
    j = jacobian / scale
    return j, scale, _linalg.gramian(j)


def _combination(j: Any, scale: Any, gram: Any, direction: Any, ridge: float) -> Any:
    direction = ops.where(ops.isfinite(direction), direction, 0.0)
    k = gram.shape[0]
    trace = ops.trace(gram) / k
    system = gram + (ridge * ops.maximum(trace, 1e-30)) * ops.eye(k)
    rhs = ops.matmul(j, direction[:, None] / scale)
    return ops.linalg.solve(system, rhs)[:, 0]


def gramian_min_cosine(gram: Any) -> Any:
    """`min_cosine` of the Jacobian whose Gramian is `gram` (any scale)."""
    norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 1e-30))
    cosine = gram / (norms[:, None] * norms[None, :])
    k = gram.shape[0]
    off_diagonal = ops.where(ops.eye(k) > 0, 2.0, cosine)
    return ops.min(off_diagonal)

"""The structure of a multi-task net: its task names, the shared
parameters an aggregator balances (`shared=`), and the split into trunk and
heads of representation mode (`representation=`, or `trunk=` and `heads=`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import keras

from keras_mtl import _compat
from keras_mtl import gradients as gradients_lib


def _output_task_names(net: keras.Model) -> list[str] | None:
    """Task names from a built functional model's output structure."""
    if isinstance(net, _TrunkAndHeads):
        return _output_task_names(net.heads) if net.heads.built else None
    try:
        outputs = net.output
    except (AttributeError, ValueError):
        return None
    if isinstance(outputs, Mapping):
        return [str(k) for k in outputs]
    if isinstance(outputs, (list, tuple)):
        return list(net.output_names)
    return [str(net.output_names[0])] if getattr(net, "output_names", None) else None


def _check_shared(shared: Any, aggregator: Any, representation: Any) -> Any:
    """Validates the `shared` argument: a list of layer names / variable paths."""
    if shared is None:
        return None
    if aggregator is None:
        raise ValueError(
            "`shared` names the parameters an aggregator balances; pass an "
            "`aggregator` too."
        )
    if representation is not None:
        raise ValueError(
            "`shared` and `representation` exclude each other: representation "
            "mode aggregates the gradients of the trunk's output."
        )
    if isinstance(shared, str):
        shared = [shared]
    shared = list(shared)
    if not shared or not all(isinstance(item, str) and item for item in shared):
        raise ValueError(
            "`shared` must be a non-empty list of layer names or variable paths; "
            f"got {shared!r}."
        )
    return shared


def _select_shared(net: keras.Model, shared: list[str]) -> list[Any]:
    """The trainable variables of `net` selected by `shared` (in the net's
    order): for each item, every variable under the layer or nested model
    of that name (a bare name anywhere in the net, or a path of names such
    as `"backbone/encoder"`), else the variable of that path or every
    variable whose path starts with it."""
    variables = list(net.trainable_variables)
    layers = _named_layers(net)
    selected: set[int] = set()
    for item in shared:
        matches = _layer_matches(net, shared, item, layers, variables)
        if not matches:
            matches = [
                i
                for i, v in enumerate(variables)
                if v.path == item or v.path.startswith(item.rstrip("/") + "/")
            ]
        if not matches:
            candidates = ", ".join(
                repr(path)
                for path, layer in layers
                if layer.trainable_variables
                and ("/" not in path or isinstance(layer, keras.Model))
            )
            example = variables[0].path if variables else "layer/kernel"
            raise ValueError(
                f"shared={shared}: {item!r} is neither a layer of the net with "
                "trainable variables nor a variable path. Layers and nested "
                f"models of the net {net.name!r} with trainable variables: "
                f"{candidates}; a variable path looks like {example!r}."
            )
        selected.update(matches)
    if len(selected) == len(variables):
        raise ValueError(
            f"shared={shared} selects every trainable variable of the net: the "
            "task heads must not be shared."
        )
    return [variables[i] for i in sorted(selected)]


def _named_layers(net: keras.layers.Layer) -> list[tuple[str, Any]]:
    """Every layer under `net`, each once, with its path of names from the
    net (`"backbone/encoder"`), outer layers first. Variable paths do not
    give this nesting: a layer of a functional model is built outside the
    model's name scope, so its variables' paths leave the model's name out
    (`"pooled_dense/kernel"` inside `"bert_backbone"`)."""
    found: list[tuple[str, Any]] = []
    seen = {id(net)}

    def walk(layer: Any, prefix: str) -> None:
        # Keras' own walk of the tracked sublayers (nested models and the
        # layers a layer holds as attributes).
        children = _compat.flatten_layers(layer, include_self=False, recursive=False)
        for child in children:
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = prefix + child.name
            found.append((path, child))
            walk(child, path + "/")

    walk(net, "")
    return found


def _layer_matches(
    net: keras.layers.Layer,
    shared: list[str],
    item: str,
    layers: list[tuple[str, Any]],
    variables: list[Any],
) -> list[int]:
    """Indices in `variables` of the trainable variables under the layer
    that `item` names (its path, or its name anywhere in the net); empty if
    no layer with trainable variables has that name."""
    named = [
        (path, layer)
        for path, layer in layers
        if (path == item or layer.name == item) and layer.trainable_variables
    ]
    if not named:
        return []
    distinct = {
        frozenset(id(v) for v in layer.trainable_variables) for _, layer in named
    }
    if len(distinct) > 1:
        paths = ", ".join(repr(path) for path, _ in named)
        raise ValueError(
            f"shared={shared}: {item!r} names {len(named)} different layers of the "
            f"net {net.name!r}: {paths}. Give the path of the one meant."
        )
    ids = set(next(iter(distinct)))
    return [i for i, v in enumerate(variables) if id(v) in ids]


def _tensor_task_name(tensor: Any, index: int) -> str:
    operation = _compat.keras_tensor_operation(tensor)
    if operation is not None:
        return operation.name
    return f"output_{index}"


class _NamedOutputs(keras.Model):
    """Inference-only view of a subclassed net with task-named dict outputs."""

    def __init__(self, net: keras.Model, tasks: list[str]) -> None:
        super().__init__(name=f"{net.name}_inference")
        self.net = net
        self.tasks = list(tasks)

    def call(self, inputs: Any) -> dict[str, Any]:
        outputs = self.net(inputs, training=False)
        if isinstance(outputs, Mapping):
            return dict(outputs)
        return dict(zip(self.tasks, outputs))


def _inference_net(
    net: keras.layers.Layer, tasks: list[str], model_shapes: Any
) -> keras.Model:
    """The inference graph of `net` with task-named dict outputs (what
    `MultiTaskModel.export` exports); `model_shapes`: the model's own
    recorded input shapes (`_build_shapes_dict`)."""
    try:
        outputs = net.output
    except (AttributeError, ValueError):
        outputs = None
    if isinstance(outputs, Mapping):
        return net
    if isinstance(outputs, (list, tuple)):
        # `net.input`, not `net.inputs`: keep the input structure, so a
        # single-input net serves a tensor, not a list of one tensor.
        return keras.Model(net.input, dict(zip(tasks, outputs)))
    wrapper = _NamedOutputs(net, tasks)
    # Export needs a built, called model: call the wrapper symbolically
    # on the input shape the subclassed net recorded at its first call.
    # A trunk-and-heads net trained in representation mode is called
    # through its parts only: the model's own input shape then.
    recorded = _compat.build_shapes(net) or model_shapes
    shapes = list((recorded or {}).values())
    if len(shapes) == 1 and all(
        isinstance(d, (int, type(None))) for d in tuple(shapes[0])
    ):
        shape = (None, *tuple(shapes[0])[1:])
        wrapper(keras.KerasTensor(shape, dtype=net.input_dtype))
    return wrapper


class _Split:
    """The trunk and the heads of representation mode (a plain object)."""

    def __init__(self, trunk: keras.layers.Layer, heads: keras.layers.Layer) -> None:
        self.trunk = trunk
        self.heads = heads


@keras.saving.register_keras_serializable(package="keras_mtl")
class _TrunkAndHeads(keras.Model):
    """`heads(trunk(x))`: the net of `MultiTaskModel(trunk=..., heads=...)`."""

    def __init__(
        self, trunk: keras.layers.Layer, heads: keras.layers.Layer, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.trunk = trunk
        self.heads = heads

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.heads(self.trunk(inputs, training=training), training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trunk": keras.saving.serialize_keras_object(self.trunk),
            "heads": keras.saving.serialize_keras_object(self.heads),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _TrunkAndHeads:
        config = dict(config)
        for key in ("trunk", "heads"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _net_from_trunk_and_heads(
    trunk: Any, heads: Any, net: Any, inputs: Any, representation: Any
) -> _TrunkAndHeads:
    if net is not None or inputs is not None:
        raise ValueError(
            "MultiTaskModel takes either `net` (or `inputs` and `outputs`) or "
            "`trunk` and `heads`, not both."
        )
    if representation is not None:
        raise ValueError(
            "With `trunk` and `heads` the representation is the trunk's output; "
            f"`representation` must be left out (got {representation!r})."
        )
    for name, value in (("trunk", trunk), ("heads", heads)):
        if not isinstance(value, keras.layers.Layer):
            raise TypeError(
                f"MultiTaskModel: `{name}` must be a Keras layer or model (both "
                f"`trunk` and `heads` are needed); got {value!r}."
            )
    # A name of our own: the default one (from the class name) starts with
    # "_", which TensorFlow rejects as a name scope on export.
    name = keras.backend.get_uid("trunk_and_heads")
    return _TrunkAndHeads(trunk, heads, name=f"trunk_and_heads_{name}")


def _check_representation(
    representation: Any, net: keras.layers.Layer, aggregator: Any
) -> str | None:
    if representation is None:
        return None
    if not isinstance(representation, str):
        raise TypeError(
            "`representation` must be the name of a layer of the functional net "
            f"(its output is the shared representation); got {representation!r}."
        )
    if aggregator is None:
        raise ValueError(
            f"representation={representation!r}: representation mode aggregates "
            "per-task gradients of the representation; pass an `aggregator` too."
        )
    return representation


def _split_functional(net: keras.layers.Layer, name: str) -> _Split:
    """Splits a functional net at the output of layer `name` into a trunk
    (inputs -> representation) and heads (representation -> outputs)."""
    try:
        inputs, outputs = net.input, net.output
        # The calls (nodes) of layers that make up this graph.
        by_depth = _compat.functional_nodes_by_depth(net)
        graph_nodes = {id(n) for ns in by_depth.values() for n in ns}
    except (AttributeError, ValueError):
        raise ValueError(
            f"representation={name!r} needs a functional net (a graph of layers "
            f"to split at that layer); {net.name!r} is not one. For a subclassed "
            "net pass `trunk=` and `heads=` instead of `net`."
        ) from None
    try:
        layer = net.get_layer(name)
    except ValueError:
        names = [layer.name for layer in net.layers]
        raise ValueError(
            f"representation={name!r}: the net {net.name!r} has no layer of that "
            f"name. Its layers are {names}."
        ) from None
    # A layer can be called several times (and a nested model has a node of
    # its own graph): keep the calls that belong to this net's graph.
    nodes = [n for n in _compat.layer_inbound_nodes(layer) if id(n) in graph_nodes]
    if len(nodes) != 1:
        raise ValueError(
            f"representation={name!r}: the layer is called {len(nodes)} times in "
            f"the net {net.name!r}; the representation must be the output of a "
            "layer called once."
        )
    tensors = nodes[0].output_tensors
    if len(tensors) != 1:
        raise ValueError(
            f"representation={name!r}: the layer has {len(tensors)} outputs; the "
            "representation must be a single tensor."
        )
    representation = tensors[0]
    trunk = keras.Model(inputs, representation, name=f"{net.name}_trunk")
    try:
        heads = keras.Model(representation, outputs, name=f"{net.name}_heads")
    except ValueError as error:
        raise ValueError(
            f"representation={name!r}: the task outputs of {net.name!r} do not "
            "depend on the net's inputs through that layer's output alone (a skip "
            "connection around it, or a task head that does not read it?); the heads "
            f"may use only the representation. Keras: {error}"
        ) from None
    return _Split(trunk, heads)


def _shared_variable_indices(
    net: keras.Model, variables: list[Any], task_names: list[str]
) -> list[int]:
    """The indices in `variables` (the net's trainable variables) of those
    used by two or more of the tasks `task_names`, found from a forward
    pass of a zero batch (`gradients.shared_variable_indices`); the net's
    own error, if it fails, with what was fed and the way out."""
    feed = gradients_lib.zero_batch(net)
    try:
        # Warnings about the synthetic batch (a softmax over a sequence of
        # length 1) are not the user's to act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return gradients_lib.shared_variable_indices(
                net, variables, task_names, feed=feed
            )
    except Exception as error:
        shapes = keras.tree.map_structure(lambda t: tuple(t.shape), feed)
        raise ValueError(
            "The shared parameters are found from a forward pass of "
            f"a zero batch shaped {shapes} (unknown dimensions set "
            f"to 1) through the net {net.name!r}, which failed: "
            f"{type(error).__name__}: {error}. Name them with "
            "`shared=` (layer or nested model names, or variable "
            "paths) instead."
        ) from error


def _trunk_variables(split: _Split) -> list[Any]:
    """The trainable variables of representation mode's trunk; raises if
    it has none or shares one with the heads."""
    trunk = list(split.trunk.trainable_variables)
    if not trunk:
        raise ValueError(
            f"The trunk {split.trunk.name!r} has no trainable parameters: "
            "there is nothing for the aggregator to balance in representation "
            "mode."
        )
    trunk_ids = {id(v) for v in trunk}
    both = [v.path for v in split.heads.trainable_variables if id(v) in trunk_ids]
    if both:
        raise ValueError(
            f"Variables {both} are used both before and after the "
            "representation (in the trunk and in the heads); representation "
            "mode needs them on one side only."
        )
    return trunk

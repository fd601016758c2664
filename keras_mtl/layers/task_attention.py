"""MTAN-style task attention modules (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mtl.layers import _experts


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskAttention(keras.layers.Layer):
    """Per-task soft attention masks over a shared convolutional feature map.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention"
    (MTAN), CVPR 2019. For the shared feature map $s$ (`(batch, H, W, C)`,
    channels last) and, optionally, task $k$'s attended features from the
    previous block $p_k$ (same H and W), task $k$'s attention module is

    $$a_k = \\sigma\\big(\\mathrm{BN}(h_k^{2}(\\mathrm{ReLU}(\\mathrm{BN}(
    h_k^{1}([s;\\,p_k])))))\\big),\\qquad \\hat s_k = a_k \\odot s,$$
    $$o_k = \\mathrm{ReLU}(\\mathrm{BN}(f_k(\\hat s_k))),$$

    with $h_k^{1}, h_k^{2}$ 1x1 convolutions ($h_k^{2}$ to C channels, so
    the mask matches $s$ elementwise), $[\\cdot;\\cdot]$ concatenation on
    channels (just $s$ without previous features) and $f_k$ a
    `kernel_size` convolution. The layer returns $[o_1, \\dots, o_K]$.
    MTAN takes the mask's input from the middle of a trunk block and
    multiplies the block's output; here both are the given $s$ (call the
    layer on the tensor to attend), and any down-sampling between blocks
    (MTAN pools after $f_k$) is left to the caller.

    With a single TaskAttention its shared map is the representation for
    `MultiTaskModel(representation=...)`; with several none is (the task
    branches read several trunk maps): use parameter mode.

    Args:
        num_tasks: K >= 2.
        filters: output channels of each $f_k$; by default C (the shared
            map's channels).
        mask_filters: channels of $h_k^{1}$; by default C.
        kernel_size: size of $f_k$'s kernel, 3 by default (MTAN).
        **kwargs: `name`, `dtype`, `trainable` as for any layer.

    Call arguments:
        inputs: the shared map `s`, or a list `[s, p_1, ..., p_K]`.
        training: as for BatchNormalization.

    Example:

    ```python
    import keras, keras_mtl
    images = keras.Input((32, 32, 3))
    shared = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(images)
    seg, depth = keras_mtl.layers.TaskAttention(num_tasks=2)(shared)
    shared2 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(shared)
    seg, depth = keras_mtl.layers.TaskAttention(num_tasks=2)([shared2, seg, depth])
    ```
    """

    def __init__(
        self,
        num_tasks: int,
        filters: int | None = None,
        mask_filters: int | None = None,
        kernel_size: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_tasks = _experts.check_positive_int("num_tasks", num_tasks, 2)
        self.filters = (
            None if filters is None else _experts.check_positive_int("filters", filters)
        )
        self.mask_filters = (
            None
            if mask_filters is None
            else _experts.check_positive_int("mask_filters", mask_filters)
        )
        self.kernel_size = _experts.check_positive_int("kernel_size", kernel_size)

    def _split_shapes(self, input_shape: Any) -> tuple[Any, list[Any]]:
        if (
            isinstance(input_shape, (list, tuple))
            and input_shape
            and isinstance(input_shape[0], (list, tuple))
        ):
            if len(input_shape) != self.num_tasks + 1:
                raise ValueError(
                    f"TaskAttention(num_tasks={self.num_tasks}) takes the shared map "
                    f"or a list [shared, previous_1, ..., previous_{self.num_tasks}]; "
                    f"got {len(input_shape)} inputs."
                )
            return input_shape[0], list(input_shape[1:])
        return input_shape, []

    def build(self, input_shape: Any) -> None:
        shared, previous = self._split_shapes(input_shape)
        if len(shared) != 4 or shared[-1] is None:
            raise ValueError(
                "TaskAttention takes (batch, height, width, channels) feature maps "
                f"with known channels; got shared shape {tuple(shared)}."
            )
        for shape in previous:
            if len(shape) != 4 or tuple(shape[1:3]) != tuple(shared[1:3]):
                raise ValueError(
                    "TaskAttention: the previous task features must have the shared "
                    f"map's height and width {tuple(shared[1:3])}; got {tuple(shape)}."
                )
        channels = int(shared[-1])
        mask_in = list(shared)
        if previous:
            mask_in[-1] = channels + int(previous[0][-1])
        filters = self.filters or channels
        self.masks, self.convs = [], []
        for k in range(self.num_tasks):
            mask = [
                keras.layers.Conv2D(
                    self.mask_filters or channels, 1, name=f"mask_{k}_conv_0"
                ),
                keras.layers.BatchNormalization(name=f"mask_{k}_bn_0"),
                keras.layers.Conv2D(channels, 1, name=f"mask_{k}_conv_1"),
                keras.layers.BatchNormalization(name=f"mask_{k}_bn_1"),
            ]
            shape = tuple(mask_in)
            for layer in mask:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
            conv = [
                keras.layers.Conv2D(
                    filters, self.kernel_size, padding="same", name=f"task_{k}_conv"
                ),
                keras.layers.BatchNormalization(name=f"task_{k}_bn"),
            ]
            conv[0].build(tuple(shared))
            conv[1].build(conv[0].compute_output_shape(tuple(shared)))
            self.masks.append(mask)
            self.convs.append(conv)

    def attention_masks(self, inputs: Any, training: bool | None = None) -> list[Any]:
        """The K masks $a_k$, each the shared map's shape, in (0, 1)."""
        shared, previous = self._split_inputs(inputs)
        out = []
        for k, (conv0, bn0, conv1, bn1) in enumerate(self.masks):
            h = shared if not previous else ops.concatenate([shared, previous[k]], -1)
            h = ops.relu(bn0(conv0(h), training=training))
            out.append(ops.sigmoid(bn1(conv1(h), training=training)))
        return out

    def _split_inputs(self, inputs: Any) -> tuple[Any, list[Any]]:
        if isinstance(inputs, (list, tuple)):
            return inputs[0], list(inputs[1:])
        return inputs, []

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        shared, _ = self._split_inputs(inputs)
        outputs = []
        for mask, (conv, bn) in zip(
            self.attention_masks(inputs, training=training), self.convs
        ):
            outputs.append(ops.relu(bn(conv(mask * shared), training=training)))
        return outputs

    def compute_output_shape(self, input_shape: Any) -> list[tuple[Any, ...]]:
        shared, _ = self._split_shapes(input_shape)
        return [(*shared[:3], self.filters or shared[-1])] * self.num_tasks

    def get_config(self) -> dict[str, Any]:
        return _experts.base_config(
            self,
            num_tasks=self.num_tasks,
            filters=self.filters,
            mask_filters=self.mask_filters,
            kernel_size=self.kernel_size,
        )

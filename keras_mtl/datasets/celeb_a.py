"""CelebA: 40 binary face attributes as 40 tasks.

Source: CelebA (Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the
Wild", ICCV 2015) through `tensorflow_datasets.load("celeb_a")`: 202,599
aligned 218x178 face images with 40 binary attributes, split by the official
partition into train (162,770), validation (19,867) and test (19,962). As a
multi-task benchmark (one task per attribute) it is used by Sener & Koltun
(NeurIPS 2018), Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al.,
NeurIPS 2023).

Construction: each image is resized (both sides, aspect not kept, as in the
64x64 setting of FAMO) to `image_size x image_size` and scaled to float32
[0, 1]. Every chosen attribute is a binary task named after the attribute,
target float32 `(1,)`. The training split is shuffled: files with
`seed`, then examples in a buffer of `shuffle_buffer` still-encoded JPEGs
(small), reshuffled each epoch.

Offline: `tfds.load` needs the prepared files in `data_dir` (or tfds'
default); CelebA's download is manual on many mirrors. Tests use
`tfds.testing.mock_data`.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_mtl.datasets._base import (
    MultiTaskData,
    TaskSpec,
    check_positive_int,
    check_seed,
    finish,
    seeded_shuffle,
)

# The 40 attributes in tfds' (and CelebA's list_attr_celeba.txt) order.
CELEB_A_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
SPLITS = ("train", "validation", "test")


def _select_attributes(attributes: Sequence[str] | None) -> tuple[str, ...]:
    """The chosen attributes in the given order, validated."""
    if attributes is None:
        return CELEB_A_ATTRIBUTES
    if isinstance(attributes, str):
        attributes = [attributes]
    chosen = tuple(attributes)
    if not chosen:
        raise ValueError("attributes must name at least one CelebA attribute.")
    unknown = [name for name in chosen if name not in CELEB_A_ATTRIBUTES]
    if unknown:
        raise ValueError(
            f"Unknown CelebA attribute(s) {unknown}. Valid attributes: "
            f"{', '.join(CELEB_A_ATTRIBUTES)}."
        )
    duplicates = sorted({name for name in chosen if chosen.count(name) > 1})
    if duplicates:
        raise ValueError(f"Duplicate CelebA attribute(s): {duplicates}.")
    return chosen


def load_celeb_a(
    attributes: Sequence[str] | None = None,
    image_size: int = 64,
    batch_size: int = 128,
    seed: int = 0,
    max_examples: int | None = None,
    shuffle_buffer: int = 5000,
    data_dir: str | None = None,
    download: bool = True,
) -> MultiTaskData:
    """Load CelebA with one binary task per attribute.

    Args:
        attributes: attribute names (tasks, in this order); default all 40
            (`CELEB_A_ATTRIBUTES`). Unknown names raise `ValueError`.
        image_size: side of the square, resized images.
        batch_size: batch size of the three pipelines (last batch partial).
        seed: file and example shuffling of the training split.
        max_examples: keep only the first examples of each split (quick runs).
        shuffle_buffer: examples in the training shuffle buffer.
        data_dir: tfds data directory (default: tfds' own default).
        download: let tfds download and prepare CelebA if it is missing.

    Returns:
        `MultiTaskData`: `x` float32 `(image_size, image_size, 3)` in [0, 1];
        one binary task per attribute, named after it.
    """
    import tensorflow_datasets as tfds

    chosen = _select_attributes(attributes)
    check_positive_int(image_size, "image_size")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(max_examples, "max_examples", allow_none=True)
    check_positive_int(shuffle_buffer, "shuffle_buffer")
    check_seed(seed)
    size = (image_size, image_size)

    def prepare(example: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        image = tf.io.decode_image(
            example["image"], channels=3, expand_animations=False
        )
        image = tf.image.resize(image, size, antialias=True) / 255.0
        image = tf.clip_by_value(image, 0.0, 1.0)
        image.set_shape((*size, 3))
        targets = {
            name: tf.reshape(tf.cast(example["attributes"][name], tf.float32), (1,))
            for name in chosen
        }
        return image, targets

    pipelines = {}
    for split in SPLITS:
        training = split == "train"
        dataset = tfds.load(
            "celeb_a",
            split=split,
            data_dir=data_dir,
            download=download,
            shuffle_files=training,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        if max_examples is not None:
            dataset = dataset.take(max_examples)
        if training:
            dataset = seeded_shuffle(dataset, shuffle_buffer, seed)
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        pipelines[split] = finish(dataset, batch_size)
    tasks = {name: TaskSpec("binary", 1, ("no", "yes")) for name in chosen}
    return MultiTaskData(
        name="celeb_a",
        train=pipelines["train"],
        validation=pipelines["validation"],
        test=pipelines["test"],
        tasks=tasks,
        info={
            "input_shape": (*size, 3),
            "attributes": chosen,
            "source": "tfds:celeb_a",
            "seed": seed,
            "max_examples": max_examples,
        },
    )

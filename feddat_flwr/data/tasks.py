"""Tasks with different label spaces over the easy-VQA images (task-heterogeneity benchmark).

* ``vqa``: the easy-VQA rows unchanged (13 answers).
* ``verify``: per image, one colour, one shape and one colour-and-shape statement, each true
  or false with probability 1/2 (a false one names another colour and/or shape); answers
  "yes"/"no", question_type "verify".
* ``describe``: per image, "what is in the image?" answered "<colour> <shape>" (24 classes),
  question_type "describe".

verify and describe rows are built per unique image of the split with the colour and shape
that all of easy-VQA's questions and answers of that image's split determine; images they
leave undetermined (about 11%) get no rows. Every word is in the default model's vocabulary.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import easy_vqa
import numpy as np
from datasets import Dataset

from feddat_flwr.data.attributes import COLORS, SHAPES, Attributes, split_attributes
from feddat_flwr.data.easyvqa import SPLITS

TASKS = ("vqa", "verify", "describe")
DESCRIBE_QUESTION = "what is in the image?"
# Two phrasings per kind of statement; {color}/{shape} are the stated (true or false) values.
VERIFY_TEMPLATES = {
    "color": ("the shape is {color}", "there is a {color} shape"),
    "shape": ("there is a {shape}", "the image contains a {shape}"),
    "both": ("the {shape} is {color}", "there is a {color} {shape}"),
}

_COLUMNS = ("image_path", "image_id", "question", "answer", "question_type")


def make_task_split(ds: Dataset, task: str, seed: int) -> Dataset:
    """Rows of ``task`` for the images of ``ds`` (an easy-VQA split or a part of one).

    Same columns as load_easyvqa. verify draws each image's statements from an RNG seeded
    with ``seed``, the split and the image id, so they do not depend on the rest of ``ds``.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if task == "vqa":
        return ds
    rows = []
    for path, image_id in dict(zip(ds["image_path"][:], ds["image_id"][:])).items():
        split, attributes = _image_info(path)
        if attributes is None:
            continue
        if task == "verify":
            pairs = _verify_rows(attributes, np.random.default_rng([seed, SPLITS.index(split), image_id]))
        else:
            pairs = [(DESCRIBE_QUESTION, describe_answer(attributes))]
        rows += [(path, image_id, question, answer, task) for question, answer in pairs]
    return Dataset.from_dict({name: [row[k] for row in rows] for k, name in enumerate(_COLUMNS)})


def describe_answer(attributes: Attributes) -> str:
    """The describe label of an image: "<colour> <shape>"."""
    return f"{attributes.color} {attributes.shape}"


def _verify_rows(attributes: Attributes, rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    """(statement, "yes"/"no") per kind of statement: true with probability 1/2, random phrasing."""
    for kind, templates in VERIFY_TEMPLATES.items():
        true = bool(rng.random() < 0.5)
        color, shape = attributes if true else _falsified(attributes, kind, rng)
        template = templates[rng.integers(len(templates))]
        yield template.format(color=color, shape=shape), "yes" if true else "no"


def _falsified(attributes: Attributes, kind: str, rng: np.random.Generator) -> Attributes:
    """Another colour (kind "color"), shape ("shape") or either of them, 1/2 each ("both")."""
    if kind == "both":
        kind = "color" if rng.random() < 0.5 else "shape"
    if kind == "color":
        return attributes._replace(color=_other(COLORS, attributes.color, rng))
    return attributes._replace(shape=_other(SHAPES, attributes.shape, rng))


def _other(values: tuple[str, ...], value: str, rng: np.random.Generator) -> str:
    others = [v for v in values if v != value]
    return others[rng.integers(len(others))]


def _image_info(path: str) -> tuple[str, Attributes | None]:
    """(split, attributes or None if undetermined) of an easy-VQA image path."""
    try:
        return _images()[path]
    except KeyError:
        raise ValueError(f"{path!r} is not an easy-VQA image (paths as load_easyvqa gives them)") from None


@functools.lru_cache(maxsize=None)
def _images() -> dict[str, tuple[str, Attributes | None]]:
    """Every easy-VQA image's absolute path -> (split, attributes or None)."""
    images = {}
    for split in SPLITS:
        attributes = split_attributes(split)
        for image_id, path in getattr(easy_vqa, f"get_{split}_image_paths")().items():
            images[os.path.abspath(path)] = (split, attributes.get(image_id))
    return images

"""Each easy-VQA image's colour and shape, derived from its questions and answers."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

import easy_vqa

SHAPES = ("circle", "rectangle", "triangle")
COLORS = tuple(sorted(set(easy_vqa.get_answers()) - set(SHAPES) - {"yes", "no"}))


class Attributes(NamedTuple):
    """The colour and the shape of the one shape in an easy-VQA image."""

    color: str
    shape: str


def words(text: str) -> list[str]:
    """Lowercased words and punctuation marks, split like BERT's pre-tokenizer."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def split_attributes(split: str) -> dict[int, Attributes]:
    """image_attributes of all of one easy-VQA split's questions (cached; do not mutate)."""
    if split not in ("train", "test"):
        raise ValueError(f"Unknown easy-VQA split {split!r}; allowed: train, test")
    return _split_attributes(split)


@functools.lru_cache(maxsize=None)
def _split_attributes(split: str) -> dict[int, Attributes]:
    return image_attributes(*getattr(easy_vqa, f"get_{split}_questions")())


def image_attributes(
    questions: Sequence[str], answers: Sequence[str], image_ids: Sequence[int]
) -> dict[int, Attributes]:
    """(colour, shape) of the images whose questions and answers determine both: by a fact
    they assert, or by elimination ("no" to all other shapes). About 11% are left out."""
    present: dict[int, set[str]] = {}
    absent: dict[int, set[str]] = {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        question_words = words(question)
        mentioned = {w for w in question_words if w in COLORS or w in SHAPES}
        if answer in COLORS or answer in SHAPES:
            present.setdefault(image_id, set()).update(mentioned | {answer})
        elif (answer == "yes") != ("not" in question_words or "no" in question_words):
            present.setdefault(image_id, set()).update(mentioned)
        else:
            absent.setdefault(image_id, set()).update(mentioned)
    attributes = {}
    for image_id in present.keys() | absent.keys():
        found = [
            _determined(group, present.get(image_id, set()), absent.get(image_id, set()), image_id)
            for group in (COLORS, SHAPES)
        ]
        if found[0] and found[1]:
            attributes[image_id] = Attributes(found[0], found[1])
    return attributes


def _determined(group: Sequence[str], present: set[str], absent: set[str], image_id: int) -> str | None:
    """The one value of `group` the facts leave possible, or None if they do not tell."""
    if present & absent & set(group) or len(present & set(group)) > 1:
        raise ValueError(f"easy-VQA image {image_id}: contradictory answers about {sorted(group)}.")
    candidates = (present & set(group)) or set(group) - absent
    return candidates.pop() if len(candidates) == 1 else None

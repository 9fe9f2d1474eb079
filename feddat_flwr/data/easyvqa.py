"""The easy-VQA dataset as Hugging Face `datasets.Dataset` objects."""

from __future__ import annotations

import functools
import os

import easy_vqa
from datasets import Dataset

QUESTION_TYPES = ("color", "shape", "yes-no")
SPLITS = ("train", "test")
_SHAPES = frozenset({"circle", "rectangle", "triangle"})
_YES_NO = frozenset({"yes", "no"})


def question_type(answer: str) -> str:
    """Question type ("color", "shape" or "yes-no") implied by an easy-VQA answer."""
    try:
        return _answer_types()[answer]
    except KeyError:
        raise ValueError(f"Unknown easy-VQA answer {answer!r}") from None


@functools.lru_cache(maxsize=None)
def _answer_types() -> dict[str, str]:
    """Map each of the 13 easy-VQA answers to its question type."""
    def kind(answer: str) -> str:
        if answer in _SHAPES:
            return "shape"
        return "yes-no" if answer in _YES_NO else "color"
    return {a: kind(a) for a in easy_vqa.get_answers()}


def load_easyvqa(split: str) -> Dataset:
    """Load one easy-VQA split, in the package's order.

    Columns: image_path (absolute), image_id, question, answer, question_type.
    The result is cached per process and shared: do not mutate it in place
    (e.g. with `set_format`/`set_transform`).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown easy-VQA split {split!r}; allowed: {', '.join(SPLITS)}")
    return _load(split)


@functools.lru_cache(maxsize=None)
def _load(split: str) -> Dataset:
    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    return Dataset.from_dict({
        "image_path": [os.path.abspath(paths[i]) for i in image_ids],
        "image_id": [int(i) for i in image_ids],
        "question": list(questions),
        "answer": list(answers),
        "question_type": [question_type(a) for a in answers],
    })

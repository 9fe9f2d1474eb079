"""Shared pytest fixtures."""

from __future__ import annotations

import re

import easy_vqa
import pytest
from transformers import BertTokenizerFast, ViltImageProcessorPil, ViltProcessor

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session")
def tiny_processor(tmp_path_factory: pytest.TempPathFactory) -> ViltProcessor:
    """ViltProcessor with a word-level vocab of the easy-VQA questions (16 tokens, 64x64 images)."""
    questions = easy_vqa.get_train_questions()[0] + easy_vqa.get_test_questions()[0]
    words = sorted({w for q in questions for w in re.findall(r"\w+|[^\w\s]", q.lower())})
    vocab = tmp_path_factory.mktemp("tiny_processor") / "vocab.txt"
    vocab.write_text("\n".join(_SPECIAL_TOKENS + words) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab), model_max_length=16)
    image_processor = ViltImageProcessorPil(size={"shortest_edge": 64}, size_divisor=32)
    return ViltProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_processor) -> str:
    """A tiny random ViLT + processor saved with save_pretrained (loaded like any checkpoint)."""
    from helpers.tiny_model import save_tiny_vilt

    return str(save_tiny_vilt(tmp_path_factory.mktemp("tiny_vilt"), tiny_processor))


@pytest.fixture(scope="session")
def tiny_cfg(tiny_model_dir):
    """Factory of resolved configs on the tiny model with small client data."""
    from feddat_flwr.config import load_config

    def make(overrides: dict | None = None):
        base = {"model.name-or-path": tiny_model_dir, "data.max-train": 48, "data.max-test": 24,
                "train.batch-size": 16, "train.lr": 0.01}
        return load_config({**base, **(overrides or {})})

    return make


@pytest.fixture
def task_identity():
    """Flower's process-wide task identity, as a ClientApp or ServerApp process has it (restored after)."""
    from flwr.supercore.task_identity import TaskIdentity

    names = ("_run_id", "_node_id", "_task_id")
    saved = [getattr(TaskIdentity, n) for n in names]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield TaskIdentity
    for name, value in zip(names, saved):
        setattr(TaskIdentity, name, value)

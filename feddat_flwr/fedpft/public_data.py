"""The server's public image-text data for FedPFT's distillations (never a client's data).

The embedded default model: its own pretraining corpus, the easy-VQA *train* images, each with a
caption of its colour and shape in the default model's caption templates. A real checkpoint: any
dataset in the client-dataset format (README, "Bring your own data") named by `fedpft.public-data`;
its train split's images and questions are used (the answers are not).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import easy_vqa
import torch
from datasets import Dataset

from feddat_flwr.data.attributes import split_attributes
from feddat_flwr.data.loader import ClientSplit, Collator, make_loader
from feddat_flwr.data.vqa_format import load_vqa, read_split
from feddat_flwr.model.default_model import CAPTIONS


def default_corpus() -> tuple[Dataset, list[str]]:
    """(rows with image_path, captions): every easy-VQA train image whose colour and shape are known."""
    paths = easy_vqa.get_train_image_paths()
    attributes = split_attributes("train")
    ids = sorted(attributes)
    captions = [CAPTIONS[i % len(CAPTIONS)].format(color=attributes[i][0], shape=attributes[i][1]) for i in ids]
    return Dataset.from_dict({"image_path": [str(Path(paths[i]).resolve()) for i in ids]}), captions


def dataset_corpus(path: str, seed: int) -> tuple[Dataset, list[str], Path]:
    """(rows, questions, root) of the train split of a dataset in the client-dataset format (a single
    Dataset: the part outside its seeded 20 % hold-out)."""
    data = load_vqa(Path(path), test_fraction=0.2, seed=seed)
    return data.train, read_split(data.train, path, "train").questions, Path(path)


@functools.lru_cache(maxsize=2)
def _public_split(public_data: str, processor) -> ClientSplit:
    """The public data as a split, once per process: its processed images are kept (within the
    loader's budget) for the next alignment."""
    if public_data:
        rows, texts, root = dataset_corpus(public_data, seed=0)
    else:
        (rows, texts), root = default_corpus(), None
    return ClientSplit(rows, texts, [None] * len(texts), processor.image_processor, root=root)


def public_batches(public_data: str, processor, *, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless model-ready batches of the public data, reshuffled (seeded) every pass."""
    split = _public_split(public_data, processor)
    collator = Collator(processor.tokenizer, num_labels=1, multi_answer=False)
    generator = torch.Generator().manual_seed(seed)
    while True:
        for batch in make_loader(split, collator, batch_size, shuffle=True, generator=generator):
            batch.pop("targets")
            yield batch

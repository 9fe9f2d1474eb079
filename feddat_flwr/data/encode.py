"""Encode a client split into tensors once, so training loops do no image decoding."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset
from PIL import Image

ImageTransform = Callable[[Image.Image], Image.Image]
# Tokenizers without a configured limit report a huge sentinel (int(1e30)) as model_max_length.
_MAX_TEXT_LENGTH = 100_000


@dataclass
class EncodedSplit:
    """A split stored as unique images and unique questions plus per-example indices."""

    pixel_values: torch.Tensor    # [U, 3, H, W] one row per unique image
    pixel_mask: torch.Tensor      # [U, H, W] long
    input_ids: torch.Tensor       # [Q, L] one row per unique question
    attention_mask: torch.Tensor  # [Q, L]
    token_type_ids: torch.Tensor  # [Q, L]
    image_index: torch.Tensor     # [N] long, row into pixel_values
    question_index: torch.Tensor  # [N] long, row into input_ids
    labels: torch.Tensor          # [N] long, index into label_names, -1 if unknown

    def __len__(self) -> int:
        return self.labels.shape[0]


def label_space(ds: Dataset) -> list[str]:
    """Sorted unique answers of a (train) split."""
    return sorted(ds.unique("answer"))


def encode_split(ds: Dataset, processor, label_names: Sequence[str], *,
                 image_transform: ImageTransform | None = None, chunk_size: int = 256) -> EncodedSplit:
    """Encode ``ds`` (columns image_path, question, answer) with a ViltProcessor.

    Each image is opened once, converted to RGB, passed through ``image_transform``
    and the image processor in chunks of ``chunk_size``; questions are padded to
    ``processor.tokenizer.model_max_length``.
    """
    if len(ds) == 0:
        raise ValueError("Cannot encode an empty split")
    if len(set(label_names)) != len(label_names):
        raise ValueError("label_names contains duplicates")
    paths, image_index = _unique_index(ds["image_path"][:])
    questions, question_index = _unique_index(ds["question"][:])
    pixel_values, pixel_mask = _encode_images(paths, processor.image_processor, image_transform, chunk_size)
    input_ids, attention_mask, token_type_ids = _encode_questions(questions, processor.tokenizer)
    label_ids = {name: i for i, name in enumerate(label_names)}
    labels = torch.tensor([label_ids.get(a, -1) for a in ds["answer"][:]], dtype=torch.long)
    return EncodedSplit(pixel_values, pixel_mask, input_ids, attention_mask, token_type_ids,
                        image_index, question_index, labels)


def iterate_batches(split: EncodedSplit, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield model-ready batches covering every example exactly once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    for rows in order.split(batch_size):
        images, texts = split.image_index[rows], split.question_index[rows]
        yield {
            "input_ids": split.input_ids[texts],
            "attention_mask": split.attention_mask[texts],
            "token_type_ids": split.token_type_ids[texts],
            "pixel_values": split.pixel_values[images],
            "pixel_mask": split.pixel_mask[images],
            "labels": split.labels[rows],
        }


def _unique_index(values: Sequence[Hashable]) -> tuple[list, torch.Tensor]:
    """Unique values in first-seen order and each value's row among them."""
    rows: dict = {}
    index = [rows.setdefault(v, len(rows)) for v in values]
    return list(rows), torch.tensor(index, dtype=torch.long)


def _load_image(path: str, transform: ImageTransform | None) -> Image.Image:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return transform(rgb) if transform is not None else rgb


def _encode_images(paths: Sequence[str], image_processor, transform: ImageTransform | None,
                   chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, masks = [], []
    for start in range(0, len(paths), chunk_size):
        images = [_load_image(p, transform) for p in paths[start:start + chunk_size]]
        out = image_processor(images, return_tensors="pt")
        values.append(out["pixel_values"])
        masks.append(out["pixel_mask"].long())
    sizes = {tuple(v.shape[2:]) for v in values}
    if len(sizes) > 1:
        raise ValueError(f"Images were encoded at different sizes {sorted(sizes)}; "
                         "make them one size (e.g. with image_transform)")
    return torch.cat(values), torch.cat(masks)


def _encode_questions(questions: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    max_length = tokenizer.model_max_length
    if max_length > _MAX_TEXT_LENGTH:
        raise ValueError(f"tokenizer.model_max_length is {max_length} (unset); "
                         "configure the tokenizer with the model's text length (ViLT: 40)")
    enc = tokenizer(questions, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]

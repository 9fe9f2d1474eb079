"""A client's split as a torch Dataset decoded per example, and its DataLoader.

Memory does not grow with the dataset: a `ClientSplit` keeps per-example metadata only (the
question, the target, where the image is: a path, or a row of a memory-mapped saved dataset);
images are read, converted, transformed and processed when a batch asks for them, in the
DataLoader's workers when `num_workers` > 0. Questions are tokenized per batch. Processed images
are kept for reuse (across epochs, rounds and the clients a process serves) up to CACHE_BYTES per
process: all of the small embedded images, a few dozen real-size ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from datasets import Dataset
from PIL import Image
from torch.utils.data import DataLoader

ImageTransform = Callable[[Image.Image], Image.Image]
Target = int | dict[int, float] | None  # see feddat_flwr.data.answers.Vocabulary.target
# Tokenizers without a configured limit report a huge sentinel (int(1e30)) as model_max_length.
_MAX_TEXT_LENGTH = 100_000
CACHE_BYTES = 256 * 2**20  # processed images kept per process (see the module docstring)
_cached_bytes = 0  # held by every ClientSplit of this process together


def open_image(rows: Dataset, i: int, root: Path | None) -> Image.Image:
    """Row i's image as RGB: from its `image` (a datasets.Image feature) or its `image_path`
    (relative to `root`, or absolute). A file that cannot be decoded is an error naming it."""
    if "image" in rows.column_names:
        source, image = f"row {i} (column 'image')", rows[i]["image"]
    else:
        path = Path(rows[i]["image_path"])
        path = path if path.is_absolute() or root is None else root / path
        source = f"row {i} ({path})"
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"Cannot decode the image of {source}: {exc}") from None
    if not isinstance(image, Image.Image):
        raise ValueError(f"The image of {source} is not an image (got {type(image).__name__}).")
    return image.convert("RGB")


def _release(held: list[int]) -> None:
    global _cached_bytes
    _cached_bytes -= held[0]


class ClientSplit(torch.utils.data.Dataset):
    """Examples `rows[i]` with their questions and targets; item i is (pixel values, pixel mask,
    question, target), the image processed by `image_processor` after `transform`."""

    def __init__(self, rows: Dataset, questions: Sequence[str], targets: Sequence[Target], image_processor, *,
                 root: Path | None = None, transform: ImageTransform | None = None):
        if len(rows) == 0:
            raise ValueError("Cannot make an empty split")
        if not len(rows) == len(questions) == len(targets):
            raise ValueError(f"{len(rows)} rows, {len(questions)} questions and {len(targets)} targets differ")
        self.rows, self.questions, self.targets = rows, list(questions), list(targets)
        self.image_processor, self.root, self.transform = image_processor, root, transform
        # The same image file (several questions about one image) is processed once.
        self._keys = rows["image_path"][:] if "image_path" in rows.column_names else range(len(rows))
        self._cache: dict = {}
        self._held = [0]  # bytes this split holds of the process's budget, given back when it goes
        weakref.finalize(self, _release, self._held)

    def __len__(self) -> int:
        return len(self.targets)

    def _keep(self, key, pixels: torch.Tensor, mask: torch.Tensor) -> None:
        global _cached_bytes
        size = pixels.nbytes + mask.nbytes
        if _cached_bytes + size <= CACHE_BYTES:
            self._cache[key] = pixels, mask
            _cached_bytes += size
            self._held[0] += size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str, Target]:
        key = self._keys[i]
        if key in self._cache:
            pixels, mask = self._cache[key]
        else:
            image = open_image(self.rows, i, self.root)
            if self.transform is not None:
                image = self.transform(image)
            out = self.image_processor(image, return_tensors="pt")
            pixels, mask = out["pixel_values"][0], out["pixel_mask"][0].to(torch.uint8)
            self._keep(key, pixels, mask)
        return pixels, mask.long(), self.questions[i], self.targets[i]


class Collator:
    """Items -> a model-ready batch: images zero-padded to the batch's largest (with their pixel
    masks), questions tokenized to the tokenizer's max length, and `targets`: label indices (-1:
    none) for single-answer data, or [B, num_labels] VQA scores for multi-answer data."""

    def __init__(self, tokenizer, num_labels: int, multi_answer: bool):
        if tokenizer.model_max_length > _MAX_TEXT_LENGTH:
            raise ValueError(f"tokenizer.model_max_length is {tokenizer.model_max_length} (unset); "
                             "configure the tokenizer with the model's text length (ViLT: 40)")
        self.tokenizer, self.num_labels, self.multi_answer = tokenizer, num_labels, multi_answer

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        pixels, masks, questions, targets = zip(*items)
        height, width = max(p.shape[1] for p in pixels), max(p.shape[2] for p in pixels)
        pixel_values = torch.zeros(len(items), pixels[0].shape[0], height, width)
        pixel_mask = torch.zeros(len(items), height, width, dtype=torch.long)
        for k, (p, m) in enumerate(zip(pixels, masks)):
            pixel_values[k, :, : p.shape[1], : p.shape[2]] = p
            pixel_mask[k, : m.shape[0], : m.shape[1]] = m
        text = self.tokenizer(list(questions), padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                "token_type_ids": text["token_type_ids"], "pixel_values": pixel_values, "pixel_mask": pixel_mask,
                "targets": self._targets(targets)}

    def _targets(self, targets: Sequence[Target]) -> torch.Tensor:
        if not self.multi_answer:
            return torch.tensor([-1 if t is None else t for t in targets], dtype=torch.long)
        dense = torch.zeros(len(targets), self.num_labels)
        for k, scores in enumerate(targets):
            for index, score in (scores or {}).items():
                dense[k, index] = score
        return dense


def make_loader(split: ClientSplit, collator: Collator, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None = None, num_workers: int = 0) -> DataLoader:
    """Batches covering every example exactly once (in a `generator`-seeded order when shuffled)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
                      collate_fn=collator)


def answer_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each example's score of the argmax answer: 1/0 against a label (-1 never matches), or the
    predicted answer's VQA score."""
    pred = logits.argmax(dim=-1)
    if targets.is_floating_point():
        return targets.gather(1, pred[:, None])[:, 0]
    return (pred == targets).float()

"""Client-side evaluation of the three model configurations, plus the majority baseline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from feddat_flwr.data.encode import EncodedSplit, iterate_batches
from feddat_flwr.model.backbone import AdaptedBackbone
from feddat_flwr.model.head import AnswerHead

# Reported variant -> backbone mode. dat: local + teacher (the freshly aggregated adapter);
# shared: the aggregated adapter alone; local: the client's adapter alone.
VARIANTS = {"dat": "dat", "shared": "student", "local": "local"}


@torch.no_grad()
def accuracy(backbone: AdaptedBackbone, head: AnswerHead, data: EncodedSplit, *, mode: str,
             lam: float, batch_size: int) -> float:
    """Share of examples whose argmax answer is right (answers outside the head's labels count wrong)."""
    backbone.set_mode(mode, lam)
    backbone.model.eval()
    head.eval()
    correct = 0
    for batch in iterate_batches(data, batch_size, shuffle=False):
        batch = backbone.to_device(batch)
        pred = head(backbone.pooled(batch)).argmax(dim=-1)
        correct += int((pred == batch["labels"]).sum())
    return correct / max(len(data), 1)


def evaluate_variants(backbone: AdaptedBackbone, head: AnswerHead, data: EncodedSplit, *, lam: float,
                      batch_size: int) -> dict[str, float]:
    return {
        variant: accuracy(backbone, head, data, mode=mode, lam=lam, batch_size=batch_size)
        for variant, mode in VARIANTS.items()
    }


def majority_accuracy(train_answers: Sequence[str], test_answers: Sequence[str]) -> float:
    """Accuracy of always giving the most frequent training answer (ties: alphabetically first)."""
    if not train_answers or not test_answers:
        return 0.0
    counts = Counter(train_answers)
    top = max(sorted(counts), key=counts.__getitem__)
    return sum(a == top for a in test_answers) / len(test_answers)

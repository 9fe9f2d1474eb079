"""Client-side evaluation of the model configurations, plus the majority baseline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from feddat_flwr.data.encode import EncodedSplit, iterate_batches
from feddat_flwr.model.backbone import AdaptedBackbone
from feddat_flwr.model.head import AnswerHead
from feddat_flwr.records import VARIANTS


@torch.no_grad()
def evaluate_variants(backbone: AdaptedBackbone, head: AnswerHead, data: EncodedSplit, *, lam: float,
                      batch_size: int) -> dict[str, float]:
    """Each variant's (model configuration's) share of examples whose argmax answer is right
    (answers outside the head's labels count wrong): dat = local + teacher (the freshly aggregated
    adapter), shared = the aggregated adapter alone, local = the client's adapter alone.
    Every batch is embedded once and run through each configuration."""
    backbone.model.eval()
    head.eval()
    correct = dict.fromkeys(VARIANTS, 0)
    for batch in iterate_batches(data, batch_size, shuffle=False):
        batch = backbone.to_device(batch)
        x = backbone.embed(batch)
        for variant in VARIANTS:
            backbone.set_configuration(variant, lam)
            pred = head(backbone.encode(x)).argmax(dim=-1)
            correct[variant] += int((pred == batch["labels"]).sum())
    return {variant: n / max(len(data), 1) for variant, n in correct.items()}


def majority_accuracy(train_answers: Sequence[str], test_answers: Sequence[str]) -> float:
    """Accuracy of always giving the most frequent training answer (ties: alphabetically first)."""
    if not train_answers or not test_answers:
        return 0.0
    counts = Counter(train_answers)
    top = max(sorted(counts), key=counts.__getitem__)
    return sum(a == top for a in test_answers) / len(test_answers)

"""Client-side evaluation of the model configurations, plus the majority baseline."""

from __future__ import annotations

import torch

from feddat_flwr.data.loader import ClientSplit, Collator, answer_scores, make_loader
from feddat_flwr.model.backbone import AdaptedBackbone
from feddat_flwr.model.head import AnswerHead
from feddat_flwr.records import VARIANTS


@torch.no_grad()
def evaluate_variants(backbone: AdaptedBackbone, head: AnswerHead, data: ClientSplit, collator: Collator, *,
                      lam: float, batch_size: int, num_workers: int = 0,
                      variants: tuple[str, ...] = VARIANTS) -> dict[str, float]:
    """Each variant's (model configuration's) mean score of its argmax answer (accuracy; VQA
    accuracy with several annotators; answers outside the head's labels score 0): dat = local +
    teacher (the freshly aggregated adapter), shared = the aggregated adapter alone, local = the
    client's adapter alone. Every batch is embedded once and run through each configuration."""
    backbone.model.eval()
    head.eval()
    score = dict.fromkeys(variants, 0.0)
    for batch in make_loader(data, collator, batch_size, shuffle=False, num_workers=num_workers):
        batch = backbone.to_device(batch)
        x = backbone.embed(batch)
        for variant in variants:
            backbone.set_configuration(variant, lam)
            score[variant] += float(answer_scores(head(backbone.encode(x)), batch["targets"]).sum())
    return {variant: total / max(len(data), 1) for variant, total in score.items()}

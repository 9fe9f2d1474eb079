"""Loss functions of FedDAT's mutual knowledge distillation (plain torch, no state)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossParts(NamedTuple):
    total: torch.Tensor
    task: torch.Tensor
    kd: torch.Tensor


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(logits / T)), batch mean; the teacher is detached."""
    log_p = F.log_softmax(logits / temperature, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The task loss against a batch's targets (see feddat_flwr.data.loader.Collator): cross-entropy
    for label indices (single-answer data); for VQA scores [B, num_labels] (several annotators),
    binary cross-entropy with those soft targets, summed over the answers and averaged over the
    batch (as ViLT's VQA head is trained)."""
    if targets.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
    return F.cross_entropy(logits, targets)


def mkd_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    temperature: float,
    task_weight: float,
    kd_weight: float,
) -> LossParts:
    """task_weight * task_loss(logits, targets) + kd_weight * KD(logits; teacher_logits).

    Without teacher logits (or with kd_weight 0) the KD part is zero and not computed.
    """
    task = task_loss(logits, targets)
    if teacher_logits is None or kd_weight == 0:
        kd = torch.zeros((), device=logits.device)
    else:
        kd = kd_loss(logits, teacher_logits, temperature)
    return LossParts(task_weight * task + kd_weight * kd, task.detach(), kd.detach())

"""FedDAT local training: mutual knowledge distillation between the student and the DAT.

Plain PyTorch over an `AdaptedBackbone` and a head; no Flower here.

Schedules (per batch x, y):
- reference (the authors' order): z_D0 = DAT(x) without grad; student step on
  L_s = w_t*CE(z_s, y) + w_kd*KD(z_s; z_D0) updating `shared` + head; DAT step on
  L_D = w_t*CE(z_D, y) + w_kd*KD(z_D; z_s) updating `local` + head. 3 forwards, 2 backwards.
- fast: z_s = Student(x) and z_D = DAT(x) once each with gradients; L_s uses z_D detached,
  L_D uses z_s detached; one backward of L_s + L_D and one optimizer step. `shared` receives
  gradient only from L_s (it is inactive in the DAT), `local` only from L_D, the head from both.
  2 forwards, 2 backwards (one fused backward pass).
`teacher` is never trainable, so it stays bit-identical.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from feddat_flwr.data.encode import EncodedSplit, iterate_batches
from feddat_flwr.losses import mkd_loss
from feddat_flwr.model.backbone import AdaptedBackbone
from feddat_flwr.model.head import AnswerHead


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    batch_size: int = 32
    local_epochs: int = 1
    lam: float = 0.5
    temperature: float = 3.0
    task_weight: float = 0.5
    kd_weight: float = 0.5
    schedule: str = "reference"

    @classmethod
    def from_config(cls, cfg, lr: float) -> TrainSettings:
        return cls(
            lr=lr,
            weight_decay=cfg.train["weight-decay"],
            betas=(cfg.train.beta1, cfg.train.beta2),
            batch_size=cfg.train["batch-size"],
            local_epochs=cfg.train["local-epochs"],
            lam=cfg.feddat["lambda"],
            temperature=cfg.feddat["kd-temperature"],
            task_weight=cfg.feddat["task-weight"],
            kd_weight=cfg.feddat["kd-weight"],
            schedule=cfg.feddat.schedule,
        )


@dataclass
class TrainStats:
    """Means over the round's batches; `loss` is L_s + L_D."""

    loss: float = 0.0
    student_task: float = 0.0
    student_kd: float = 0.0
    dat_task: float = 0.0
    dat_kd: float = 0.0
    num_examples: int = 0
    steps: int = 0
    seconds: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        metrics = {f"train-{k.replace('_', '-')}": float(v) for k, v in asdict(self).items()}
        metrics["train-samples-per-s"] = self.num_examples / self.seconds if self.seconds else 0.0
        return metrics


def make_optimizer(backbone: AdaptedBackbone, head: AnswerHead, s: TrainSettings) -> torch.optim.AdamW:
    """One AdamW over `shared`, `local` and the head, fresh every round.

    Parameters whose gradient is None in a step (the adapter not trained by that step) are
    skipped by AdamW entirely, so they do not move: no decay, no stale momentum.
    """
    params = backbone.parameters_of("shared") + backbone.parameters_of("local") + list(head.parameters())
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)


def _logits(backbone: AdaptedBackbone, head: AnswerHead, batch) -> torch.Tensor:
    return head(backbone.pooled(batch))


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def reference_step(backbone, head, optimizer, batch, s: TrainSettings):
    """The authors' order: teacher pass, student step, DAT step. Returns (L_s parts, L_D parts)."""
    y = batch["labels"]
    kd = dict(temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)
    with torch.no_grad():
        backbone.set_mode("dat", s.lam)
        z_dat0 = _logits(backbone, head, batch)
    backbone.set_mode("student", s.lam, trainable=("shared",))
    z_s = _logits(backbone, head, batch)
    student = mkd_loss(z_s, y, z_dat0, **kd)
    _step(optimizer, student.total)
    backbone.set_mode("dat", s.lam, trainable=("local",))
    z_dat = _logits(backbone, head, batch)
    dat = mkd_loss(z_dat, y, z_s.detach(), **kd)
    _step(optimizer, dat.total)
    return student, dat


def fast_step(backbone, head, optimizer, batch, s: TrainSettings):
    """Both configurations once with gradients, each the other's detached teacher; one step."""
    y = batch["labels"]
    kd = dict(temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)
    backbone.set_mode("student", s.lam, trainable=("shared", "local"))
    z_s = _logits(backbone, head, batch)
    backbone.set_mode("dat", s.lam, trainable=("shared", "local"))
    z_dat = _logits(backbone, head, batch)
    student = mkd_loss(z_s, y, z_dat.detach(), **kd)
    dat = mkd_loss(z_dat, y, z_s.detach(), **kd)
    _step(optimizer, student.total + dat.total)
    return student, dat


STEPS = {"reference": reference_step, "fast": fast_step}


def train_round(
    backbone: AdaptedBackbone,
    head: AnswerHead,
    data: EncodedSplit,
    s: TrainSettings,
    *,
    generator: torch.Generator,
) -> TrainStats:
    """One round of local FedDAT training (`local-epochs` passes over the client's data)."""
    if s.schedule not in STEPS:
        raise ValueError(f"Unknown schedule {s.schedule!r}; allowed: {', '.join(STEPS)}.")
    step = STEPS[s.schedule]
    optimizer = make_optimizer(backbone, head, s)
    backbone.model.train()
    head.train()
    stats = TrainStats()
    start = time.perf_counter()
    for _ in range(s.local_epochs):
        for batch in iterate_batches(data, s.batch_size, shuffle=True, generator=generator):
            student, dat = step(backbone, head, optimizer, batch, s)
            n = len(batch["labels"])
            stats.loss += float(student.total.detach() + dat.total.detach()) * n
            stats.student_task += float(student.task) * n
            stats.student_kd += float(student.kd) * n
            stats.dat_task += float(dat.task) * n
            stats.dat_kd += float(dat.kd) * n
            stats.num_examples += n
            stats.steps += 1
    optimizer.zero_grad(set_to_none=True)  # free gradient memory between rounds and clients
    stats.seconds = time.perf_counter() - start
    for field in ("loss", "student_task", "student_kd", "dat_task", "dat_kd"):
        setattr(stats, field, getattr(stats, field) / max(stats.num_examples, 1))
    backbone.set_mode("dat", s.lam)  # leave nothing trainable
    return stats


def round_lr(base_lr: float, schedule: str, min_ratio: float, server_round: int, num_rounds: int) -> float:
    """The learning rate of a round (constant within the round; the server sends it).

    cosine: base_lr in round 1 decaying to base_lr * min_ratio in the last round.
    constant: base_lr in every round.
    """
    if schedule == "constant" or num_rounds == 1:
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"Unknown lr schedule {schedule!r}; allowed: cosine, constant.")
    progress = (server_round - 1) / (num_rounds - 1)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

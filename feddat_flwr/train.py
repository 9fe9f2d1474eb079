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

from feddat_flwr.config import METHODS
from feddat_flwr.data.encode import EncodedSplit, iterate_batches
from feddat_flwr.losses import mkd_loss
from feddat_flwr.model.backbone import AdaptedBackbone, Embedded
from feddat_flwr.model.head import AnswerHead


# The FedDAT family trains the student and the DAT; the baselines train one model: the student
# (`shared`, communicated) or the local adapter (local-only: nothing is communicated).
# The evaluation variant that is each method's personalised model (its headline number).
PERSONALISED_VARIANT = {"feddat": "dat", "feddat-no-kd": "dat", "feddat-no-local": "shared",
                        "fedavg": "shared", "fedprox": "shared", "local-only": "local"}


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
    method: str = "feddat"
    prox_mu: float = 0.0

    @classmethod
    def from_config(cls, cfg, lr: float) -> TrainSettings:
        method = cfg.method
        return cls(
            lr=lr,
            weight_decay=cfg.train["weight-decay"],
            betas=(cfg.train.beta1, cfg.train.beta2),
            batch_size=cfg.train["batch-size"],
            local_epochs=cfg.train["local-epochs"],
            lam=cfg.feddat["lambda"],
            temperature=cfg.feddat["kd-temperature"],
            task_weight=cfg.feddat["task-weight"],
            kd_weight=0.0 if method == "feddat-no-kd" else cfg.feddat["kd-weight"],
            schedule=cfg.feddat.schedule,
            method=method,
            prox_mu=cfg.fedprox.mu if method == "fedprox" else 0.0,
        )


@dataclass
class TrainStats:
    """Means over the round's examples; `loss` is L_s + L_D. `student_*` are the losses of the
    communicated model, `dat_*` those of the personalised one (the local adapter for local-only)."""

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


def _logits(backbone: AdaptedBackbone, head: AnswerHead, embedded: Embedded) -> torch.Tensor:
    return head(backbone.encode(embedded))


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def reference_step(backbone, head, optimizer, batch, s: TrainSettings):
    """The authors' order: teacher pass, student step, DAT step. Returns (L_s parts, L_D parts)."""
    x = backbone.embed(batch)  # frozen: computed once for every configuration below
    y = batch["labels"]
    kd = dict(temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)
    with torch.no_grad():
        backbone.set_mode("dat", s.lam)
        z_dat0 = _logits(backbone, head, x)
    backbone.set_mode("student", s.lam, trainable=("shared",))
    z_s = _logits(backbone, head, x)
    student = mkd_loss(z_s, y, z_dat0, **kd)
    _step(optimizer, student.total)
    backbone.set_mode("dat", s.lam, trainable=("local",))
    z_dat = _logits(backbone, head, x)
    dat = mkd_loss(z_dat, y, z_s.detach(), **kd)
    _step(optimizer, dat.total)
    return student, dat


def fast_step(backbone, head, optimizer, batch, s: TrainSettings):
    """Both configurations once with gradients, each the other's detached teacher; one step."""
    x = backbone.embed(batch)  # frozen: computed once for every configuration below
    y = batch["labels"]
    kd = dict(temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)
    backbone.set_mode("student", s.lam, trainable=("shared", "local"))
    z_s = _logits(backbone, head, x)
    backbone.set_mode("dat", s.lam, trainable=("shared", "local"))
    z_dat = _logits(backbone, head, x)
    student = mkd_loss(z_s, y, z_dat.detach(), **kd)
    dat = mkd_loss(z_dat, y, z_s.detach(), **kd)
    _step(optimizer, student.total + dat.total)
    return student, dat


def global_kd_step(backbone, head, optimizer, batch, s: TrainSettings):
    """feddat-no-local: the student distils from the frozen global adapter (`teacher` alone)."""
    x = backbone.embed(batch)  # frozen: computed once for every configuration below
    with torch.no_grad():
        backbone.set_mode("global")
        z_global = _logits(backbone, head, x)
    backbone.set_mode("student", s.lam, trainable=("shared",))
    student = mkd_loss(_logits(backbone, head, x), batch["labels"], z_global,
                       temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)
    _step(optimizer, student.total)
    return student, None


def student_step(backbone, head, optimizer, batch, s: TrainSettings):
    """fedavg / fedprox: cross-entropy on the student, plus (mu/2)*||shared - global||^2 for fedprox
    (`teacher` holds the round's global adapter)."""
    backbone.set_mode("student", s.lam, trainable=("shared",))
    student = mkd_loss(_logits(backbone, head, backbone.embed(batch)), batch["labels"], None,
                       temperature=s.temperature, task_weight=1.0, kd_weight=0.0)
    loss = student.total
    if s.prox_mu > 0:
        teacher = backbone.parameters_of("teacher")
        loss = loss + 0.5 * s.prox_mu * sum(((p - t) ** 2).sum() for p, t in
                                            zip(backbone.parameters_of("shared"), teacher, strict=True))
    _step(optimizer, loss)
    return student, None


def local_step(backbone, head, optimizer, batch, s: TrainSettings):
    """local-only: cross-entropy on the client's own adapter; nothing is communicated."""
    backbone.set_mode("local", s.lam, trainable=("local",))
    local = mkd_loss(_logits(backbone, head, backbone.embed(batch)), batch["labels"], None,
                     temperature=s.temperature, task_weight=1.0, kd_weight=0.0)
    _step(optimizer, local.total)
    return None, local


FEDDAT_SCHEDULES = {"reference": reference_step, "fast": fast_step}
BASELINE_STEPS = {"feddat-no-local": global_kd_step, "fedavg": student_step, "fedprox": student_step,
                  "local-only": local_step}


def step_function(s: TrainSettings):
    if s.method in BASELINE_STEPS:
        return BASELINE_STEPS[s.method]
    if s.method not in ("feddat", "feddat-no-kd"):
        raise ValueError(f"Unknown method {s.method!r}; allowed: {', '.join(METHODS)}.")
    if s.schedule not in FEDDAT_SCHEDULES:
        raise ValueError(f"Unknown schedule {s.schedule!r}; allowed: {', '.join(FEDDAT_SCHEDULES)}.")
    return FEDDAT_SCHEDULES[s.schedule]


def train_round(
    backbone: AdaptedBackbone,
    head: AnswerHead,
    data: EncodedSplit,
    s: TrainSettings,
    *,
    generator: torch.Generator,
) -> TrainStats:
    """One round of local FedDAT training (`local-epochs` passes over the client's data)."""
    step = step_function(s)
    optimizer = make_optimizer(backbone, head, s)
    backbone.model.train()
    head.train()
    stats = TrainStats()
    start = time.perf_counter()
    for _ in range(s.local_epochs):
        for batch in iterate_batches(data, s.batch_size, shuffle=True, generator=generator):
            batch = backbone.to_device(batch)
            student, dat = step(backbone, head, optimizer, batch, s)
            n = len(batch["labels"])
            for parts, task_field, kd_field in ((student, "student_task", "student_kd"),
                                                (dat, "dat_task", "dat_kd")):
                if parts is not None:
                    stats.loss += float(parts.total.detach()) * n
                    setattr(stats, task_field, getattr(stats, task_field) + float(parts.task) * n)
                    setattr(stats, kd_field, getattr(stats, kd_field) + float(parts.kd) * n)
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

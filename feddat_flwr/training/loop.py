"""One round of local training: settings from the config, the optimizer, the epoch loop."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from feddat_flwr.data.loader import ClientSplit, Collator, make_loader
from feddat_flwr.methods import get_method
from feddat_flwr.model.backbone import AdaptedBackbone
from feddat_flwr.model.head import AnswerHead


@dataclass(frozen=True)
class TrainSettings:
    """Everything a step needs, resolved from the configuration (conf/base.yaml holds the defaults)."""

    method: str
    schedule: str
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    batch_size: int
    local_epochs: int
    lam: float
    temperature: float
    task_weight: float
    kd_weight: float  # 0 for methods without the KD terms
    prox_mu: float  # 0 for methods without the proximal term
    num_workers: int  # DataLoader worker processes decoding images (0: in the training process)

    @classmethod
    def from_config(cls, cfg: DictConfig, lr: float) -> TrainSettings:
        method = get_method(cfg["method"])
        train, feddat = cfg.train, cfg.feddat
        return cls(
            method=method.name, schedule=feddat["schedule"], lr=lr,
            weight_decay=train["weight-decay"], betas=(train["beta1"], train["beta2"]),
            batch_size=train["batch-size"], local_epochs=train["local-epochs"],
            lam=feddat["lambda"], temperature=feddat["kd-temperature"], task_weight=feddat["task-weight"],
            kd_weight=feddat["kd-weight"] if method.kd else 0.0,
            prox_mu=cfg.fedprox["mu"] if method.proximal else 0.0,
            num_workers=train["num-workers"],
        )


@dataclass
class TrainStats:
    """A round's losses, means over its examples: `loss` (sum of the trained configurations' losses)
    and `<configuration>-task` / `<configuration>-kd` for each configuration trained."""

    losses: dict[str, float]
    num_examples: int
    steps: int
    seconds: float
    data_wait_seconds: float  # of `seconds`, spent waiting for the next batch


def make_optimizer(backbone: AdaptedBackbone, head: AnswerHead, s: TrainSettings) -> torch.optim.AdamW:
    """One AdamW over the method's trained adapters and the head, fresh every round.

    A parameter whose gradient is None in a step (its adapter not trained by that step) is skipped
    by AdamW entirely, so it does not move: no decay, no stale momentum.
    """
    params = [p for a in get_method(s.method).trains for p in backbone.parameters_of(a)] + list(head.parameters())
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)


def train_round(backbone: AdaptedBackbone, head: AnswerHead, data: ClientSplit, collator: Collator,
                s: TrainSettings, *, generator: torch.Generator) -> TrainStats:
    """One round of local training (`local-epochs` passes over the client's data)."""
    step = get_method(s.method).step(s.schedule)
    optimizer = make_optimizer(backbone, head, s)
    backbone.model.train()
    head.train()
    sums: defaultdict[str, float] = defaultdict(float)
    num_examples = steps = 0
    waited = 0.0
    start = time.perf_counter()
    for _ in range(s.local_epochs):
        batches = iter(make_loader(data, collator, s.batch_size, shuffle=True, generator=generator,
                                   num_workers=s.num_workers))
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            batch = backbone.to_device(batch)
            n = len(batch["targets"])
            for configuration, parts in step(backbone, head, optimizer, batch, s).items():
                sums["loss"] += float(parts.total.detach()) * n
                sums[f"{configuration}-task"] += float(parts.task) * n
                sums[f"{configuration}-kd"] += float(parts.kd) * n
            num_examples += n
            steps += 1
    optimizer.zero_grad(set_to_none=True)  # free gradient memory between rounds and clients
    seconds = time.perf_counter() - start
    backbone.set_configuration("dat", s.lam)  # leave nothing trainable
    return TrainStats({k: v / max(num_examples, 1) for k, v in sums.items()}, num_examples, steps, seconds, waited)

"""One local training step of each method, on one batch (plain PyTorch, no Flower).

Every step has the signature `step(backbone, head, optimizer, batch, settings)` and returns the
loss parts of each model configuration it trained, keyed by configuration name (`shared`, `dat`,
`local`; see feddat_flwr.model.backbone.CONFIGURATIONS). Methods pick their step in
feddat_flwr.methods.

FedDAT's two schedules (per batch x, y):
- reference (the authors' order): z_D0 = DAT(x) without grad; student step on
  L_s = w_t*CE(z_s, y) + w_kd*KD(z_s; z_D0) updating `shared` + head; DAT step on
  L_D = w_t*CE(z_D, y) + w_kd*KD(z_D; z_s) updating `local` + head. 3 forwards, 2 backwards.
- fast: z_s = Student(x) and z_D = DAT(x) once each with gradients; L_s uses z_D detached,
  L_D uses z_s detached; one backward of L_s + L_D and one optimizer step. `shared` receives
  gradient only from L_s (it is inactive in the DAT), `local` only from L_D, the head from both.
  2 forwards, 2 backwards (one fused backward pass).
The student is the `shared` configuration; `teacher` is never trainable, so it stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from feddat_flwr.model.backbone import AdaptedBackbone, Embedded
from feddat_flwr.model.head import AnswerHead
from feddat_flwr.training.losses import LossParts, mkd_loss

if TYPE_CHECKING:
    from feddat_flwr.training.loop import TrainSettings

Batch = Mapping[str, torch.Tensor]
Step = Callable[[AdaptedBackbone, AnswerHead, torch.optim.Optimizer, Batch, "TrainSettings"],
                dict[str, LossParts]]


def logits(backbone: AdaptedBackbone, head: AnswerHead, embedded: Embedded) -> torch.Tensor:
    return head(backbone.encode(embedded))


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _mkd(z: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, s: TrainSettings) -> LossParts:
    return mkd_loss(z, y, teacher, temperature=s.temperature, task_weight=s.task_weight, kd_weight=s.kd_weight)


def reference_step(backbone: AdaptedBackbone, head: AnswerHead, optimizer: torch.optim.Optimizer, batch: Batch,
                   s: TrainSettings) -> dict[str, LossParts]:
    """The authors' order: teacher pass, student step, DAT step."""
    x = backbone.embed(batch)  # frozen: computed once for every configuration below
    y = batch["targets"]
    with torch.no_grad():
        backbone.set_configuration("dat", s.lam)
        z_dat0 = logits(backbone, head, x)
    backbone.set_configuration("shared", s.lam, trainable=("shared",))
    z_s = logits(backbone, head, x)
    student = _mkd(z_s, y, z_dat0, s)
    _update(optimizer, student.total)
    backbone.set_configuration("dat", s.lam, trainable=("local",))
    dat = _mkd(logits(backbone, head, x), y, z_s.detach(), s)
    _update(optimizer, dat.total)
    return {"shared": student, "dat": dat}


def fast_step(backbone: AdaptedBackbone, head: AnswerHead, optimizer: torch.optim.Optimizer, batch: Batch,
              s: TrainSettings) -> dict[str, LossParts]:
    """Both configurations once with gradients, each the other's detached teacher; one step."""
    x = backbone.embed(batch)  # frozen: computed once for every configuration below
    y = batch["targets"]
    backbone.set_configuration("shared", s.lam, trainable=("shared", "local"))
    z_s = logits(backbone, head, x)
    backbone.set_configuration("dat", s.lam, trainable=("shared", "local"))
    z_dat = logits(backbone, head, x)
    student = _mkd(z_s, y, z_dat.detach(), s)
    dat = _mkd(z_dat, y, z_s.detach(), s)
    _update(optimizer, student.total + dat.total)
    return {"shared": student, "dat": dat}


def global_kd_step(backbone: AdaptedBackbone, head: AnswerHead, optimizer: torch.optim.Optimizer, batch: Batch,
                   s: TrainSettings) -> dict[str, LossParts]:
    """feddat-no-local: the student distils from the frozen global adapter (`teacher` alone)."""
    x = backbone.embed(batch)  # frozen: computed once for every configuration below
    with torch.no_grad():
        backbone.set_configuration("teacher")
        z_global = logits(backbone, head, x)
    backbone.set_configuration("shared", s.lam, trainable=("shared",))
    student = _mkd(logits(backbone, head, x), batch["targets"], z_global, s)
    _update(optimizer, student.total)
    return {"shared": student}


def _task_only(configuration: str, trainable: str, backbone: AdaptedBackbone, head: AnswerHead,
               batch: Batch, s: TrainSettings) -> LossParts:
    backbone.set_configuration(configuration, s.lam, trainable=(trainable,))
    return mkd_loss(logits(backbone, head, backbone.embed(batch)), batch["targets"], None,
                    temperature=s.temperature, task_weight=1.0, kd_weight=0.0)


def shared_step(backbone: AdaptedBackbone, head: AnswerHead, optimizer: torch.optim.Optimizer, batch: Batch,
                s: TrainSettings) -> dict[str, LossParts]:
    """fedavg / fedprox: cross-entropy on the shared adapter, plus (mu/2)*||shared - global||^2 when
    prox_mu > 0 (`teacher` holds the round's global adapter)."""
    student = _task_only("shared", "shared", backbone, head, batch, s)
    loss = student.total
    if s.prox_mu > 0:
        loss = loss + 0.5 * s.prox_mu * sum(((p - t) ** 2).sum() for p, t in zip(
            backbone.parameters_of("shared"), backbone.parameters_of("teacher"), strict=True))
    _update(optimizer, loss)
    return {"shared": student}


def local_step(backbone: AdaptedBackbone, head: AnswerHead, optimizer: torch.optim.Optimizer, batch: Batch,
               s: TrainSettings) -> dict[str, LossParts]:
    """local-only: cross-entropy on the client's own adapter."""
    local = _task_only("local", "local", backbone, head, batch, s)
    _update(optimizer, local.total)
    return {"local": local}

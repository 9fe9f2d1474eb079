"""The method registry: every method of the harness is defined here, once.

A `Method` says what it trains, whether it communicates the shared adapter, its step (or, for
the FedDAT family, its schedules), which evaluation variant is its personalised model, its loss
pieces (KD on or off, proximal term) and whether the comparison counts it as a baseline. The
configuration, training, the client, the server, the comparison grid and the README's method
table all read it. Adding a method is one `register_method(Method(...))` plus its step function
(see README, "Adding a method").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feddat_flwr.fedpft.settings import ATTENTION_MODULES
from feddat_flwr.fedpft.settings import METHOD as FEDPFT
from feddat_flwr.records import VARIANTS
from feddat_flwr.training.steps import (
    Step,
    fast_step,
    global_kd_step,
    local_step,
    reference_step,
    shared_step,
)

TRAINABLE = ("shared", "local")  # the adapters a method may train (`teacher` never is)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    steps: Mapping[str, Step]  # schedule name -> step; a method with one step runs it under any schedule
    trains: tuple[str, ...]  # adapters the optimizer updates (besides the private head)
    communicates: bool  # whether the shared adapter goes to the server and back
    personalised: str  # the evaluation variant that is this method's personalised model
    kd: bool = False  # the KD terms of the mutual distillation (feddat.kd-weight) are on
    proximal: bool = False  # the FedProx term (fedprox.mu) is on
    baseline: bool = False  # the comparison's verdict compares FedDAT against it
    proxy: bool = False  # clients train on FedPFT's proxy of the model (feddat_flwr.fedpft)
    # Settings the method sets, over conf/ and the preset; the run config still overrides them.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"Method {self.name!r} has no step.")
        if not set(self.trains) <= set(TRAINABLE) or not self.trains:
            raise ValueError(f"Method {self.name!r} trains {self.trains}; allowed: a subset of {TRAINABLE}.")
        if self.personalised not in VARIANTS:
            raise ValueError(f"Method {self.name!r}: personalised variant {self.personalised!r} "
                             f"is not one of {', '.join(VARIANTS)}.")
        if self.communicates != ("shared" in self.trains):
            raise ValueError(f"Method {self.name!r}: the shared adapter is communicated exactly when it is trained.")

    def step(self, schedule: str) -> Step:
        if len(self.steps) == 1:
            return next(iter(self.steps.values()))
        if schedule not in self.steps:
            raise ValueError(f"Method {self.name!r} has no schedule {schedule!r}; allowed: {', '.join(self.steps)}.")
        return self.steps[schedule]


METHODS: dict[str, Method] = {}
PROPOSED = "feddat"  # the method the comparison's verdict sets against the best baseline


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"Method {method.name!r} is registered already.")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; allowed: {', '.join(METHODS)}.")
    return METHODS[name]


def schedules() -> tuple[str, ...]:
    """Every schedule some method offers (the choices of feddat.schedule)."""
    return tuple(dict.fromkeys(s for m in METHODS.values() if len(m.steps) > 1 for s in m.steps))


FEDDAT_SCHEDULES = {"fast": fast_step, "reference": reference_step}

register_method(Method(
    "feddat", "FedDAT: shared adapter + Dual-Adapter Teacher (local + global), mutual distillation",
    FEDDAT_SCHEDULES, trains=("shared", "local"), communicates=True, personalised="dat", kd=True))
register_method(Method(
    "feddat-no-kd", "ablation: FedDAT without the distillation terms",
    FEDDAT_SCHEDULES, trains=("shared", "local"), communicates=True, personalised="dat"))
register_method(Method(
    "feddat-no-local", "ablation: shared adapter distilled from the frozen global adapter only",
    {"single": global_kd_step}, trains=("shared",), communicates=True, personalised="shared", kd=True))
register_method(Method(
    "fedavg", "baseline: FedAvg of the shared adapter, private head, task loss only",
    {"single": shared_step}, trains=("shared",), communicates=True, personalised="shared", baseline=True))
register_method(Method(
    "fedprox", "baseline: fedavg + (mu/2)·‖shared − global‖² (fedprox.mu)",
    {"single": shared_step}, trains=("shared",), communicates=True, personalised="shared", proximal=True,
    baseline=True))
register_method(Method(
    "local-only", "baseline: the local adapter alone, nothing communicated",
    {"single": local_step}, trains=("local",), communicates=False, personalised="local", baseline=True))
register_method(Method(
    FEDPFT, "baseline: FedPFT, proxy fine-tuning (Peng et al. 2024): LoRA on the attention of a distilled "
    "sub-FM, aligned every fedpft.align-every rounds, plugged into the full model; private head",
    {"single": shared_step}, trains=("shared",), communicates=True, personalised="shared", baseline=True,
    proxy=True, settings={"lora.target-modules": ",".join(ATTENTION_MODULES)}))

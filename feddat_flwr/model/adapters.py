"""The one adapter interface every adapter kind implements, so that AdaptedBackbone has a single
code path for all of them (kinds: feddat_flwr.model.lora, feddat_flwr.model.bottleneck; the
registry of kinds: feddat_flwr.model.backbone.ADAPTER_KINDS).

A kind is a frozen spec dataclass holding its hyperparameters (hashable: the process-wide backbone
cache is keyed by it). `spec.attach(vilt, names)` injects one adapter per name into every adapted
layer of a ViltModel and returns the `AttachedAdapters`, which choose the active adapters, scale
them and re-initialise one. Every adapter parameter's name contains `.<adapter name>.` (as in
PEFT); without it (`canonical_key`) the name is the adapter-independent key of the adapter's
tensors, the key of the tensors sent, aggregated and saved.

Every kind saves an adapter as WEIGHTS_FILE (the tensors by canonical key) and CONFIG_FILE, PEFT's
file names, so that saved LoRA and bottleneck adapters look alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol

import torch
from omegaconf import DictConfig
from transformers import ViltModel

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


class SavedConfig(Protocol):
    """What a kind writes as CONFIG_FILE next to the saved tensors (peft.LoraConfig is one)."""

    def save_pretrained(self, save_directory: str) -> None: ...


class AttachedAdapters(ABC):
    """The adapters injected into one ViltModel."""

    def __init__(self, model: torch.nn.Module, vilt: ViltModel):
        self.model = model  # whose forward is the whole adapted ViLT (a PeftModel for LoRA)
        self.vilt = vilt  # the plain ViltModel, its layers adapted in place

    @abstractmethod
    def activate(self, names: Sequence[str]) -> None:
        """Make exactly these adapters act. It may change their requires_grad (PEFT's does)."""

    @abstractmethod
    def set_scale(self, name: str, scale: float) -> None:
        """The factor of adapter `name`'s contribution (1: the adapter as trained alone)."""

    @abstractmethod
    def reset(self, name: str) -> None:
        """Re-initialise adapter `name` (a no-op on the model's output), drawing from torch's RNG."""


class AdapterSpec(ABC):
    """An adapter kind with its hyperparameters (subclasses are frozen dataclasses)."""

    kind: ClassVar[str]  # the value of `adapter.kind` that selects it

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: DictConfig) -> AdapterSpec:
        """The spec of a run configuration (its `adapter` and kind-specific sections)."""

    @abstractmethod
    def attach(self, vilt: ViltModel, names: Sequence[str]) -> AttachedAdapters:
        """Inject adapters `names` into `vilt` (modified in place), each initialised as by `reset`."""

    @abstractmethod
    def saved_config(self, base_model_name_or_path: str) -> SavedConfig:
        """The configuration saved with an adapter of this spec on that base model."""


def canonical_key(param_name: str, adapter: str) -> str:
    """Parameter name -> adapter-independent key (for LoRA: PEFT's saved-adapter key format)."""
    return param_name.replace(f".{adapter}.", ".")


def adapter_parameters(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    """One adapter's parameters in `model`, by canonical key."""
    return {canonical_key(n, adapter): p for n, p in model.named_parameters() if f".{adapter}." in n}


@torch.no_grad()
def load_values(params: Mapping[str, torch.nn.Parameter], state: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy `state` into `params` (both by canonical key); the keys must be the same."""
    if set(state) != set(params):
        unexpected, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
        raise ValueError(
            f"{what} state does not match the model: "
            f"unexpected keys {unexpected[:3]}, missing keys {missing[:3]}."
        )
    for key, param in params.items():
        param.copy_(state[key])

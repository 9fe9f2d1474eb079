"""Bottleneck adapters (`adapter.kind: bottleneck`), the adapter of the FedDAT paper.

Placed as in the authors' code (`Adaptered_ViltOutput`): on the output of each ViLT layer's FFN
block, i.e. of its `output` module (dense, dropout, + residual), h -> h + A(h) with
A(h) = up(ReLU(down(h))), 768 -> 48 -> 768 on ViLT-B/32. ReLU because the authors' `Adapter` uses
it. Unlike theirs (N(0, 0.02) for both projections), the up-projection starts at zero, so a new
adapter leaves the frozen model's output unchanged, as LoRA's B = 0 does. Several adapters act
side by side: h + sum over the active adapters of scale * A(h) (the DAT: h + lam*A_local(h) +
lam*A_teacher(h), the authors' 1/2 A_c + 1/2 A_s at lam = 0.5).

Saved form (results.save_adapter): WEIGHTS_FILE with the tensors keyed by KEY_FORMAT and
CONFIG_FILE (`BottleneckConfig`); `load_bottleneck` attaches a saved adapter to a ViltModel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch import nn
from transformers import ViltModel

from feddat_flwr.model.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterSpec,
    AttachedAdapters,
    adapter_parameters,
    load_values,
)

NONLINEARITY = "relu"
PLACEMENT = "encoder.layer.*.output: h = ViltOutput(x, residual); h + A(h)"
# The canonical keys of an adapter's tensors (down: [width, hidden], up: [hidden, width]).
KEY_FORMAT = "encoder.layer.{i}.output.bottleneck.{down,up}.{weight,bias}"
DOWN_STD = 0.02  # the authors' (BERT-style) initialisation of the down-projection


class Bottleneck(nn.Module):
    """One adapter of one layer: h -> up(ReLU(down(h)))."""

    def __init__(self, hidden_size: int, width: int, device: torch.device):
        super().__init__()
        self.down = nn.Linear(hidden_size, width, device=device)
        self.up = nn.Linear(width, hidden_size, device=device)
        self.reset()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(h)))

    @torch.no_grad()
    def reset(self) -> None:
        # Drawn on the CPU, so a seed gives the same adapter whatever the device.
        self.down.weight.copy_(torch.empty(self.down.weight.shape).normal_(0.0, DOWN_STD))
        for p in (self.down.bias, self.up.weight, self.up.bias):
            p.zero_()


class BottleneckLayer(nn.Module):
    """A ViLT layer's `output` module (`base_layer`, frozen) and bottleneck adapters on what it returns."""

    def __init__(self, base_layer: nn.Module, hidden_size: int, width: int, names: Sequence[str]):
        super().__init__()
        self.base_layer = base_layer
        device = next(base_layer.parameters()).device
        self.bottleneck = nn.ModuleDict({name: Bottleneck(hidden_size, width, device) for name in names})
        self.scales = dict.fromkeys(names, 1.0)
        self.active: tuple[str, ...] = ()

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(hidden_states, input_tensor)
        out = h
        for name in self.active:
            out = out + self.scales[name] * self.bottleneck[name](h)
        return out


class BottleneckAdapters(AttachedAdapters):
    def __init__(self, vilt: ViltModel, layers: list[BottleneckLayer]):
        super().__init__(vilt, vilt)
        self._layers = layers

    def activate(self, names: Sequence[str]) -> None:
        for layer in self._layers:
            layer.active = tuple(names)

    def set_scale(self, name: str, scale: float) -> None:
        for layer in self._layers:
            layer.scales[name] = scale

    def reset(self, name: str) -> None:
        for layer in self._layers:
            layer.bottleneck[name].reset()


@dataclass(frozen=True)
class BottleneckSpec(AdapterSpec):
    width: int

    kind: ClassVar[str] = "bottleneck"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> BottleneckSpec:
        return cls(int(cfg.adapter["bottleneck-width"]))

    def attach(self, vilt: ViltModel, names: Sequence[str]) -> BottleneckAdapters:
        hidden_size = int(vilt.config.hidden_size)
        layers = []
        for vilt_layer in vilt.encoder.layer:
            vilt_layer.output = BottleneckLayer(vilt_layer.output, hidden_size, self.width, names)
            layers.append(vilt_layer.output)
        return BottleneckAdapters(vilt, layers)

    def saved_config(self, base_model_name_or_path: str) -> BottleneckConfig:
        return BottleneckConfig(self.width, base_model_name_or_path)


@dataclass(frozen=True)
class BottleneckConfig:
    """CONFIG_FILE of a saved bottleneck adapter: everything needed to rebuild and load it."""

    width: int
    base_model_name_or_path: str
    kind: str = BottleneckSpec.kind
    nonlinearity: str = NONLINEARITY
    placement: str = PLACEMENT
    key_format: str = KEY_FORMAT

    def save_pretrained(self, save_directory: str) -> None:
        (Path(save_directory) / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BottleneckConfig:
        path = Path(directory) / CONFIG_FILE
        config = json.loads(path.read_text())
        if config.get("kind") != BottleneckSpec.kind:
            raise ValueError(f"{path} is not a bottleneck adapter (a LoRA adapter loads with "
                             "peft.PeftModel.from_pretrained).")
        return cls(**config)


def load_bottleneck(vilt: ViltModel, directory: str | Path, name: str = "default") -> ViltModel:
    """Attach the bottleneck adapter saved in `directory` to `vilt` (in place, active, scale 1)
    and return `vilt`. `vilt` is the base model it was trained on (its base_model_name_or_path)."""
    config = BottleneckConfig.from_pretrained(directory)
    BottleneckSpec(config.width).attach(vilt, (name,)).activate((name,))
    load_values(adapter_parameters(vilt, name), load_file(str(Path(directory) / WEIGHTS_FILE)),
                f"Bottleneck adapter in {directory}")
    return vilt
